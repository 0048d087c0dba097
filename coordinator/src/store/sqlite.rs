//! The embedded store: one SQLite database file in WAL mode, `synchronous=FULL`, one
//! transaction per change.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{HeartbeatAnswer, Store, StoreError};
use crate::model::{JobRecord, JobState, Lease, NewBatch, Progress};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    client_token TEXT NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    last_leased_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL REFERENCES batches(id),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    spec BLOB NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,
    deadline_ms INTEGER,
    worker TEXT,
    iteration INTEGER NOT NULL DEFAULT 0,
    checkpoint_key TEXT,
    result_key TEXT,
    error TEXT,
    UNIQUE (batch_id, name)
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, batch_id, seq);
CREATE INDEX IF NOT EXISTS jobs_deadline ON jobs (state, deadline_ms);
CREATE TABLE IF NOT EXISTS worker_failures (
    worker TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    failures INTEGER NOT NULL,
    PRIMARY KEY (worker, batch_id)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('token', 0), ('id', 0);
";

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with_tx<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

fn next(tx: &rusqlite::Transaction<'_>, counter: &str) -> Result<i64, StoreError> {
    Ok(tx.query_row(
        "UPDATE counters SET value = value + 1 WHERE name = ?1 RETURNING value",
        [counter],
        |r| r.get(0),
    )?)
}

/// Checks the token and returns (state, attempt, batch max_attempts, worker, batch id).
fn fenced(
    tx: &rusqlite::Transaction<'_>,
    job_id: &str,
    token: u64,
) -> Result<(JobState, u32, u32, Option<String>, String), StoreError> {
    let row: Option<(String, i64, u32, u32, Option<String>, String)> = tx
        .query_row(
            "SELECT j.state, j.token, j.attempt, b.max_attempts, j.worker, j.batch_id
             FROM jobs j JOIN batches b ON b.id = j.batch_id WHERE j.id = ?1",
            [job_id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .optional()?;
    let Some((state, current, attempt, max_attempts, worker, batch_id)) = row else {
        return Err(StoreError::NotFound {
            what: "job",
            id: job_id.to_owned(),
        });
    };
    let state = JobState::parse(&state).unwrap_or(JobState::Failed);
    // A cancelled job still accepts its holder's last word (so it can release the lease).
    if current as u64 != token || !matches!(state, JobState::Leased | JobState::Cancelled) {
        return Err(StoreError::StaleToken {
            job_id: job_id.to_owned(),
            token,
        });
    }
    Ok((state, attempt, max_attempts, worker, batch_id))
}

impl Store for SqliteStore {
    fn submit(&self, batch: &NewBatch, now_ms: i64) -> Result<(String, bool), StoreError> {
        self.with_tx(|tx| {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT id FROM batches WHERE client_token = ?1",
                    [&batch.client_token],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = existing {
                return Ok((id, true));
            }
            let id = format!("b{:08}", next(tx, "id")?);
            tx.execute(
                "INSERT INTO batches (id, name, client_token, priority, max_attempts, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, batch.name, batch.client_token, batch.priority, batch.max_attempts, now_ms],
            )?;
            let mut insert = tx.prepare(
                "INSERT INTO jobs (id, batch_id, seq, name, spec, state) VALUES (?1, ?2, ?3, ?4, ?5, 'queued')",
            )?;
            for (seq, job) in batch.jobs.iter().enumerate() {
                insert.execute(params![
                    format!("{id}-j{seq:06}"),
                    id,
                    seq as i64,
                    job.name,
                    job.spec
                ])?;
            }
            Ok((id, false))
        })
    }

    fn lease(
        &self,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
        max_worker_failures: u32,
    ) -> Result<Option<Lease>, StoreError> {
        self.with_tx(|tx| {
            let picked: Option<(String, String)> = tx
                .query_row(
                    "SELECT j.id, j.batch_id FROM jobs j JOIN batches b ON b.id = j.batch_id
                     WHERE j.state = 'queued'
                       AND NOT EXISTS (SELECT 1 FROM worker_failures f
                                       WHERE f.worker = ?1 AND f.batch_id = j.batch_id AND f.failures >= ?2)
                     ORDER BY b.priority DESC, b.last_leased_ms ASC, j.seq ASC LIMIT 1",
                    params![worker, max_worker_failures],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((job_id, batch_id)) = picked else {
                return Ok(None);
            };
            let token = next(tx, "token")?;
            let deadline = now_ms + lease_ms;
            // The batch's turn moves to the back of its priority level.
            let turn = next(tx, "id")?;
            tx.execute(
                "UPDATE batches SET last_leased_ms = ?2 WHERE id = ?1",
                params![batch_id, turn],
            )?;
            let (spec, attempt, checkpoint_key): (Vec<u8>, u32, Option<String>) = tx.query_row(
                "UPDATE jobs SET state = 'leased', attempt = attempt + 1, token = ?2, deadline_ms = ?3, worker = ?4
                 WHERE id = ?1 RETURNING spec, attempt, checkpoint_key",
                params![job_id, token, deadline, worker],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(Some(Lease {
                job_id,
                batch_id,
                spec,
                attempt,
                token: token as u64,
                deadline_ms: deadline,
                checkpoint_key,
            }))
        })
    }

    fn heartbeat(
        &self,
        job_id: &str,
        token: u64,
        progress: &Progress,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<HeartbeatAnswer, StoreError> {
        self.with_tx(|tx| {
            let (state, ..) = fenced(tx, job_id, token)?;
            let deadline = now_ms + lease_ms;
            tx.execute(
                "UPDATE jobs SET deadline_ms = ?2, iteration = ?3,
                        checkpoint_key = COALESCE(?4, checkpoint_key)
                 WHERE id = ?1",
                params![
                    job_id,
                    deadline,
                    progress.iteration,
                    progress.checkpoint_key
                ],
            )?;
            Ok(HeartbeatAnswer {
                deadline_ms: deadline,
                cancelled: state == JobState::Cancelled,
            })
        })
    }

    fn complete(&self, job_id: &str, token: u64, result_key: &str) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            let (state, ..) = fenced(tx, job_id, token)?;
            if state == JobState::Cancelled {
                return Ok(());
            }
            tx.execute(
                "UPDATE jobs SET state = 'succeeded', result_key = ?2, deadline_ms = NULL WHERE id = ?1",
                params![job_id, result_key],
            )?;
            Ok(())
        })
    }

    fn fail(
        &self,
        job_id: &str,
        token: u64,
        error: &str,
        retryable: bool,
    ) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            let (state, attempt, max_attempts, worker, batch_id) = fenced(tx, job_id, token)?;
            if let Some(w) = worker {
                tx.execute(
                    "INSERT INTO worker_failures (worker, batch_id, failures) VALUES (?1, ?2, 1)
                     ON CONFLICT (worker, batch_id) DO UPDATE SET failures = failures + 1",
                    params![w, batch_id],
                )?;
            }
            let next_state = if state == JobState::Cancelled {
                JobState::Cancelled
            } else if retryable && attempt < max_attempts {
                JobState::Queued
            } else {
                JobState::Failed
            };
            tx.execute(
                "UPDATE jobs SET state = ?2, error = ?3, deadline_ms = NULL WHERE id = ?1",
                params![job_id, next_state.as_str(), error],
            )?;
            Ok(())
        })
    }

    fn expire(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.with_tx(|tx| {
            let mut stmt = tx.prepare(
                "UPDATE jobs SET state = CASE WHEN state = 'cancelled' THEN 'cancelled' ELSE 'queued' END,
                        deadline_ms = NULL
                 WHERE state IN ('leased', 'cancelled') AND deadline_ms IS NOT NULL AND deadline_ms < ?1
                 RETURNING id",
            )?;
            let ids = stmt
                .query_map([now_ms], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
    }

    fn cancel_batch(&self, batch_id: &str) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM batches WHERE id = ?1", [batch_id], |r| r.get(0))
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::NotFound {
                    what: "batch",
                    id: batch_id.to_owned(),
                });
            }
            tx.execute(
                "UPDATE jobs SET state = 'cancelled' WHERE batch_id = ?1 AND state IN ('queued', 'leased')",
                [batch_id],
            )?;
            Ok(())
        })
    }

    fn jobs(&self, batch_id: &str) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare(
            "SELECT id, batch_id, name, state, attempt, worker, iteration, checkpoint_key, result_key, error
             FROM jobs WHERE batch_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map([batch_id], |r| {
                let state: String = r.get(3)?;
                Ok(JobRecord {
                    job_id: r.get(0)?,
                    batch_id: r.get(1)?,
                    name: r.get(2)?,
                    state: JobState::parse(&state).unwrap_or(JobState::Failed),
                    attempt: r.get(4)?,
                    worker: r.get(5)?,
                    iteration: r.get(6)?,
                    checkpoint_key: r.get(7)?,
                    result_key: r.get(8)?,
                    error: r.get(9)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewJob;

    fn batch(token: &str, priority: i32, n: usize) -> NewBatch {
        NewBatch {
            name: token.to_owned(),
            client_token: token.to_owned(),
            priority,
            max_attempts: 3,
            jobs: (0..n)
                .map(|i| NewJob {
                    name: format!("out{i}"),
                    spec: vec![i as u8],
                })
                .collect(),
        }
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("state.db")).expect("open");
        (dir, s)
    }

    #[test]
    fn submit_is_idempotent_per_token() {
        let (_d, s) = store();
        let (a, existed) = s.submit(&batch("t1", 0, 2), 0).expect("submit");
        assert!(!existed);
        let (b, existed) = s.submit(&batch("t1", 0, 2), 1).expect("submit");
        assert!(existed);
        assert_eq!(a, b);
        assert_eq!(s.jobs(&a).expect("jobs").len(), 2);
    }

    #[test]
    fn priority_then_round_robin_then_fifo() {
        let (_d, s) = store();
        let (low, _) = s.submit(&batch("low", 0, 2), 0).expect("submit");
        let (a, _) = s.submit(&batch("a", 5, 2), 0).expect("submit");
        let (b, _) = s.submit(&batch("b", 5, 2), 0).expect("submit");
        let order: Vec<String> = (0..6)
            .map(|_| {
                s.lease("w", 0, 1000, 2)
                    .expect("lease")
                    .expect("a job")
                    .job_id
            })
            .collect();
        assert_eq!(
            order,
            vec![
                format!("{a}-j000000"),
                format!("{b}-j000000"),
                format!("{a}-j000001"),
                format!("{b}-j000001"),
                format!("{low}-j000000"),
                format!("{low}-j000001"),
            ]
        );
        assert!(s.lease("w", 0, 1000, 2).expect("lease").is_none());
    }

    #[test]
    fn expiry_requeues_with_checkpoint_and_fences_the_old_token() {
        let (_d, s) = store();
        let (id, _) = s.submit(&batch("t", 0, 1), 0).expect("submit");
        let first = s.lease("w1", 0, 100, 2).expect("lease").expect("job");
        let progress = Progress {
            iteration: 40,
            loss: 1.0,
            checkpoint_key: Some("ck/40".into()),
        };
        s.heartbeat(&first.job_id, first.token, &progress, 50, 100)
            .expect("heartbeat");
        assert!(
            s.expire(149).expect("expire").is_empty(),
            "deadline was extended"
        );
        assert_eq!(s.expire(151).expect("expire"), vec![first.job_id.clone()]);
        let second = s.lease("w2", 200, 100, 2).expect("lease").expect("job");
        assert_eq!(second.attempt, 2);
        assert_eq!(second.checkpoint_key.as_deref(), Some("ck/40"));
        assert!(second.token > first.token);
        let stale = s.complete(&first.job_id, first.token, "late/output.png");
        assert!(
            matches!(stale, Err(StoreError::StaleToken { .. })),
            "{stale:?}"
        );
        s.complete(&second.job_id, second.token, "attempt2/output.png")
            .expect("complete");
        let job = &s.jobs(&id).expect("jobs")[0];
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.result_key.as_deref(), Some("attempt2/output.png"));
    }

    #[test]
    fn failures_retry_then_fail_and_bad_workers_are_kept_off_the_batch() {
        let (_d, s) = store();
        let (id, _) = s.submit(&batch("t", 0, 2), 0).expect("submit");
        for _ in 0..2 {
            let l = s.lease("bad", 0, 100, 2).expect("lease").expect("job");
            s.fail(&l.job_id, l.token, "CUDA error", true)
                .expect("fail");
        }
        assert!(
            s.lease("bad", 0, 100, 2).expect("lease").is_none(),
            "bad worker is kept off"
        );
        let l = s.lease("good", 0, 100, 2).expect("lease").expect("job");
        s.fail(&l.job_id, l.token, "corrupt input", false)
            .expect("fail");
        let jobs = s.jobs(&id).expect("jobs");
        assert_eq!(
            jobs.iter().filter(|j| j.state == JobState::Failed).count(),
            1
        );
        assert_eq!(
            jobs.iter()
                .find(|j| j.state == JobState::Failed)
                .and_then(|j| j.error.clone())
                .as_deref(),
            Some("corrupt input")
        );
    }

    #[test]
    fn cancel_reaches_the_heartbeat_and_state_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let (id, lease) = {
            let s = SqliteStore::open(&path).expect("open");
            let (id, _) = s.submit(&batch("t", 0, 3), 0).expect("submit");
            let lease = s.lease("w", 0, 10_000, 2).expect("lease").expect("job");
            s.cancel_batch(&id).expect("cancel");
            (id, lease)
        };
        let s = SqliteStore::open(&path).expect("reopen");
        let answer = s
            .heartbeat(&lease.job_id, lease.token, &Progress::default(), 10, 10_000)
            .expect("heartbeat");
        assert!(answer.cancelled);
        let jobs = s.jobs(&id).expect("jobs");
        assert!(jobs.iter().all(|j| j.state == JobState::Cancelled));
        assert!(matches!(
            s.cancel_batch("nope"),
            Err(StoreError::NotFound { .. })
        ));
    }
}
