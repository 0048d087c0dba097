//! The embedded store: one SQLite database file in WAL mode with `synchronous=FULL`.
//!
//! Writes go to one writer thread that commits them in groups: it takes every change
//! waiting in its queue (up to [`MAX_GROUP`]), runs them in one transaction, commits
//! once (one fsync) and only then answers each caller. A change of several statements
//! runs in a savepoint of its own, so one that fails is undone alone. Reads use a second connection, which in
//! WAL mode sees every committed change and never blocks the writer.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{HeartbeatAnswer, Store, StoreError};
use crate::model::{
    BatchRecord, Completion, JobRecord, JobState, Lease, LeaseAsk, Losses, NewBatch, NewWorker,
    Progress, Stats, Submitted,
};

/// Most changes committed in one transaction.
pub const MAX_GROUP: usize = 1024;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    client_token TEXT UNIQUE,
    manifest_sha256 TEXT NOT NULL,
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    turn INTEGER NOT NULL DEFAULT 0,
    queued INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_ready ON batches (priority DESC, turn) WHERE queued > 0;
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL REFERENCES batches(id),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    iterations INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    attempt_limit INTEGER NOT NULL,
    token INTEGER NOT NULL DEFAULT 0,
    deadline_ms INTEGER,
    worker TEXT,
    iteration INTEGER NOT NULL DEFAULT 0,
    loss_content REAL NOT NULL DEFAULT 0,
    loss_style REAL NOT NULL DEFAULT 0,
    loss_tv REAL NOT NULL DEFAULT 0,
    loss_total REAL NOT NULL DEFAULT 0,
    checkpoint_key TEXT,
    result_key TEXT,
    result_attempt INTEGER,
    sidecar_key TEXT,
    error TEXT,
    version INTEGER NOT NULL DEFAULT 0,  -- bumped by every change (see BUMP)
    UNIQUE (batch_id, name)
) WITHOUT ROWID;
-- Rows stay small (specs live apart and are only read), and ids sort by batch and
-- sequence, so the jobs a group commit touches share pages.
CREATE TABLE IF NOT EXISTS specs (
    job_id TEXT PRIMARY KEY,
    spec BLOB NOT NULL
) WITHOUT ROWID;
-- Only queued jobs are indexed for leasing: a lease removes one entry, and the jobs
-- that run or ended cost the index nothing. (Per-batch lookups use the unique
-- (batch_id, name) index.)
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (batch_id, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_deadline ON jobs (deadline_ms) WHERE deadline_ms IS NOT NULL;
-- batches.queued follows the jobs in state 'queued', so leasing finds a batch with work
-- through an index instead of scanning jobs.
CREATE TRIGGER IF NOT EXISTS jobs_queued_count AFTER UPDATE OF state ON jobs
WHEN (old.state = 'queued') <> (new.state = 'queued')
BEGIN
    UPDATE batches SET queued = queued + (CASE WHEN new.state = 'queued' THEN 1 ELSE -1 END)
    WHERE id = new.batch_id;
END;
CREATE TABLE IF NOT EXISTS worker_failures (
    worker TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    failures INTEGER NOT NULL,
    PRIMARY KEY (worker, batch_id)
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    device TEXT NOT NULL,
    gpu_model TEXT NOT NULL,
    gpu_memory_bytes INTEGER NOT NULL,
    slots INTEGER NOT NULL,
    registered_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('id', 0);
";

/// Part of every `UPDATE jobs`: a watcher drops events older than what it has seen.
const BUMP: &str = "version = version + 1";

/// The holder of a live lease: `?1` is the job, `?2` the fencing token. A cancelled job
/// still accepts its holder's last word while the lease is live.
const LIVE_LEASE: &str = "id = ?1 AND token = ?2
    AND (state IN ('leased', 'running') OR (state = 'cancelled' AND deadline_ms IS NOT NULL))";

const JOB_COLUMNS: &str = "id, batch_id, name, state, attempt, worker, iteration, iterations,
    loss_content, loss_style, loss_tv, loss_total, checkpoint_key, result_key, result_attempt,
    error, deadline_ms, version, sidecar_key";

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Op = Box<dyn FnOnce(&Connection) -> Reply + Send>;

#[derive(Debug, Default)]
struct Counters {
    token: AtomicI64,
    turn: AtomicI64,
}

impl Counters {
    fn next_token(&self) -> i64 {
        self.token.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn next_turn(&self) -> i64 {
        self.turn.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    ops: Option<mpsc::Sender<Op>>,
    /// Last fencing token and batch turn handed out. Only the writer thread moves them;
    /// they start from the largest values on disk, so tokens only grow across restarts.
    counters: Arc<Counters>,
    writer: Option<JoinHandle<()>>,
    reader: Arc<Mutex<Connection>>,
    alive: Arc<AtomicBool>,
}

impl SqliteStore {
    /// Opens (or creates) the database file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = connect(path)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let counters = Arc::new(Counters {
            token: AtomicI64::new(conn.query_row(
                "SELECT COALESCE(MAX(token), 0) FROM jobs",
                [],
                |r| r.get(0),
            )?),
            turn: AtomicI64::new(conn.query_row(
                "SELECT COALESCE(MAX(turn), 0) FROM batches",
                [],
                |r| r.get(0),
            )?),
        });
        // The writer never checkpoints; a thread of its own does, beside it.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let reader = connect(path)?;
        let checkpointer = connect(path)?;
        let (ops, rx) = mpsc::channel::<Op>();
        let alive = Arc::new(AtomicBool::new(true));
        let writer_alive = Arc::clone(&alive);
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                write_loop(&conn, &rx);
                writer_alive.store(false, Ordering::SeqCst);
            })
            .map_err(StoreError::Spawn)?;
        let checkpoint_alive = Arc::clone(&alive);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &checkpoint_alive))
            .map_err(StoreError::Spawn)?;
        Ok(Self {
            ops: Some(ops),
            counters,
            writer: Some(writer),
            reader: Arc::new(Mutex::new(reader)),
            alive,
        })
    }

    /// Runs `f` in the next group commit, inside a savepoint of its own so that an error
    /// undoes its changes alone, and resolves once it is on disk.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_one(move |conn| {
            let saved = run_cached(conn, "SAVEPOINT op");
            let out = f(conn);
            if saved {
                if out.is_err() {
                    run_cached(conn, "ROLLBACK TO op");
                }
                run_cached(conn, "RELEASE op");
            }
            out
        })
        .await
    }

    /// [`Self::write`] without the savepoint, for changes made by one statement (SQLite
    /// undoes a failed statement by itself) or whose partial effect is harmless.
    async fn write_one<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let op: Op = Box::new(move |conn| {
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or(Err(StoreError::Closed));
            let reply: Reply = Box::new(move |commit| {
                let _ = tx.send(match commit {
                    Ok(()) => out,
                    Err(reason) => Err(StoreError::Commit { reason }),
                });
            });
            reply
        });
        let sender = self.ops.as_ref().ok_or(StoreError::Closed)?;
        sender.send(op).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on the read connection off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what it holds and stop.
        drop(self.ops.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // 16 MiB of page cache: the hot part of a 100k-job queue. (A much larger cache
    // costs more than it saves: SQLite walks it at the end of every transaction.)
    conn.pragma_update(None, "cache_size", -16_384)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

fn write_loop(conn: &Connection, rx: &mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = format!("cannot begin a transaction: {e}");
            for op in group {
                op(conn)(Err(msg.clone()));
            }
            continue;
        }
        let mut replies = Vec::with_capacity(group.len());
        for op in group {
            replies.push(op(conn));
        }
        let commit = conn.execute_batch("COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            e.to_string()
        });
        if let Err(e) = &commit {
            tracing::error!(cause = %e, changes = replies.len(), "group commit failed");
        }
        for reply in replies {
            reply(commit.clone());
        }
    }
}

/// Copies the WAL back into the database file every 200 ms while the store is alive.
/// A passive checkpoint never blocks the writer, so its I/O and fsyncs stay off the
/// path of every acknowledged change; the writer only appends to the WAL.
fn checkpoint_loop(conn: &Connection, alive: &AtomicBool) {
    while alive.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(cause = %e, "WAL checkpoint failed; will retry");
        }
    }
}

/// Runs a parameterless statement through the statement cache; true when it succeeded.
fn run_cached(conn: &Connection, sql: &str) -> bool {
    conn.prepare_cached(sql)
        .and_then(|mut st| st.execute([]))
        .is_ok()
}

fn next(conn: &Connection, counter: &str) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "UPDATE counters SET value = value + 1 WHERE name = ?1 RETURNING value",
        [counter],
        |r| r.get(0),
    )?)
}

fn state_of(s: &str) -> JobState {
    // Only this module writes the column, with `as_str` names.
    JobState::parse(s).unwrap_or(JobState::Failed)
}

fn job_row(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let state: String = r.get(3)?;
    Ok(JobRecord {
        job_id: r.get(0)?,
        batch_id: r.get(1)?,
        name: r.get(2)?,
        state: state_of(&state),
        attempt: r.get(4)?,
        worker: r.get(5)?,
        iteration: r.get(6)?,
        iterations: r.get(7)?,
        losses: Losses {
            content: r.get(8)?,
            style: r.get(9)?,
            tv: r.get(10)?,
            total: r.get(11)?,
        },
        checkpoint_key: r.get(12)?,
        result_key: r.get(13)?,
        result_attempt: r.get(14)?,
        error: r.get(15)?,
        deadline_ms: r.get(16)?,
        version: r.get(17)?,
        sidecar_key: r.get(18)?,
    })
}

fn job(conn: &Connection, job_id: &str) -> Result<JobRecord, StoreError> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row([job_id], job_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "job",
            id: job_id.to_owned(),
        })
}

fn jobs_where(
    conn: &Connection,
    clause: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<JobRecord>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {clause}"))?;
    let rows = stmt.query_map(args, job_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

fn batch_exists(conn: &Connection, batch_id: &str) -> Result<(), StoreError> {
    let found: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM batches WHERE id = ?1")?
        .query_row([batch_id], |r| r.get(0))
        .optional()?;
    found.map(|_| ()).ok_or_else(|| StoreError::NotFound {
        what: "batch",
        id: batch_id.to_owned(),
    })
}

/// Why a fenced update matched no row: the job is missing or the token is not live.
fn not_live(conn: &Connection, job_id: &str, token: u64) -> StoreError {
    match job(conn, job_id) {
        Ok(_) => StoreError::StaleToken {
            job_id: job_id.to_owned(),
            token,
        },
        Err(e) => e,
    }
}

/// Runs a fenced `UPDATE jobs SET {set} WHERE <live lease>` and returns the new record.
fn fenced_update(
    conn: &Connection,
    job_id: &str,
    token: u64,
    set: &str,
    extra: &[&dyn rusqlite::ToSql],
) -> Result<JobRecord, StoreError> {
    let sql = format!("UPDATE jobs SET {set}, {BUMP} WHERE {LIVE_LEASE} RETURNING {JOB_COLUMNS}");
    let token_sql = i64::try_from(token).unwrap_or(-1);
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&job_id, &token_sql];
    args.extend_from_slice(extra);
    conn.prepare_cached(&sql)?
        .query_row(args.as_slice(), job_row)
        .optional()?
        .ok_or_else(|| not_live(conn, job_id, token))
}

/// Leases the next job for `ask.worker` (see [`Store::lease`]).
fn lease_tx(
    tx: &Connection,
    counters: &Counters,
    ask: &LeaseAsk,
) -> Result<Option<(Lease, JobRecord)>, StoreError> {
    let batch_id: Option<String> = tx
        .prepare_cached(
            "SELECT b.id FROM batches b
             WHERE b.queued > 0
               AND NOT EXISTS (SELECT 1 FROM worker_failures f
                               WHERE f.worker = ?1 AND f.batch_id = b.id AND f.failures >= ?2)
             ORDER BY b.priority DESC, b.turn ASC LIMIT 1",
        )?
        .query_row(params![ask.worker, ask.max_worker_failures], |r| r.get(0))
        .optional()?;
    let Some(batch_id) = batch_id else {
        return Ok(None);
    };
    let token = counters.next_token();
    let deadline = ask.now_ms + ask.lease_ms;
    // The batch's turn moves to the back of its priority level. (Should the job update
    // below fail, a moved turn is harmless.)
    tx.prepare_cached("UPDATE batches SET turn = ?2 WHERE id = ?1")?
        .execute(params![batch_id, counters.next_turn()])?;
    let record = tx
        .prepare_cached(&format!(
            "UPDATE jobs SET state = 'leased', attempt = attempt + 1, token = ?2,
                    deadline_ms = ?3, worker = ?4, error = NULL, {BUMP}
             WHERE id = (SELECT id FROM jobs WHERE batch_id = ?1 AND state = 'queued'
                         ORDER BY seq LIMIT 1)
             RETURNING {JOB_COLUMNS}"
        ))?
        .query_row(params![batch_id, token, deadline, ask.worker], job_row)?;
    let spec: Vec<u8> = tx
        .prepare_cached("SELECT spec FROM specs WHERE job_id = ?1")?
        .query_row([&record.job_id], |r| r.get(0))?;
    let lease = Lease {
        job_id: record.job_id.clone(),
        batch_id,
        name: record.name.clone(),
        spec,
        attempt: record.attempt,
        token: token as u64,
        deadline_ms: deadline,
        checkpoint_key: record.checkpoint_key.clone(),
    };
    Ok(Some((lease, record)))
}

/// Records a completion (see [`Store::complete`]). A cancelled job stays cancelled: the
/// holder's last word only releases it.
fn complete_tx(
    tx: &Connection,
    job_id: &str,
    token: u64,
    done: &Completion,
) -> Result<JobRecord, StoreError> {
    fenced_update(
        tx,
        job_id,
        token,
        "result_key = CASE WHEN state = 'cancelled' THEN result_key ELSE ?3 END,
         result_attempt = CASE WHEN state = 'cancelled' THEN result_attempt ELSE attempt END,
         sidecar_key = CASE WHEN state = 'cancelled' THEN sidecar_key ELSE ?4 END,
         state = CASE WHEN state = 'cancelled' THEN 'cancelled' ELSE 'succeeded' END,
         deadline_ms = NULL",
        &[&done.result_key, &done.sidecar_key],
    )
}

fn counts(conn: &Connection, batch_id: &str) -> Result<BTreeMap<JobState, u64>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT state, COUNT(*) FROM jobs WHERE batch_id = ?1 GROUP BY state")?;
    let rows = stmt
        .query_map([batch_id], |r| {
            let s: String = r.get(0)?;
            Ok((state_of(&s), r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

fn batch_row(conn: &Connection, r: &Row<'_>) -> Result<BatchRecord, StoreError> {
    let batch_id: String = r.get(0)?;
    Ok(BatchRecord {
        counts: counts(conn, &batch_id)?,
        batch_id,
        name: r.get(1)?,
        priority: r.get(2)?,
        max_attempts: r.get(3)?,
        created_ms: r.get(4)?,
    })
}

impl Store for SqliteStore {
    async fn submit(&self, batch: NewBatch, now_ms: i64) -> Result<Submitted, StoreError> {
        self.write(move |tx| {
            if let Some(token) = &batch.client_token {
                let existing: Option<(String, String)> = tx
                    .query_row(
                        "SELECT id, manifest_sha256 FROM batches WHERE client_token = ?1",
                        [token],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((batch_id, sha)) = existing {
                    if sha != batch.manifest_sha256 {
                        return Err(StoreError::TokenReused {
                            token: token.clone(),
                            batch_id,
                        });
                    }
                    return Ok(Submitted {
                        batch_id,
                        existing: true,
                    });
                }
            }
            let id = format!("b{:08}", next(tx, "id")?);
            tx.execute(
                "INSERT INTO batches (id, name, client_token, manifest_sha256, priority, max_attempts, created_ms, queued)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id,
                    batch.name,
                    batch.client_token,
                    batch.manifest_sha256,
                    batch.priority,
                    batch.max_attempts,
                    now_ms,
                    batch.jobs.len() as i64
                ],
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO jobs (id, batch_id, seq, name, iterations, state, attempt_limit)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6)",
            )?;
            let mut insert_spec =
                tx.prepare_cached("INSERT INTO specs (job_id, spec) VALUES (?1, ?2)")?;
            for (seq, job) in batch.jobs.iter().enumerate() {
                let job_id = format!("{id}-j{seq:06}");
                insert.execute(params![
                    job_id,
                    id,
                    seq as i64,
                    job.name,
                    job.iterations,
                    batch.max_attempts
                ])?;
                insert_spec.execute(params![job_id, job.spec])?;
            }
            Ok(Submitted {
                batch_id: id,
                existing: false,
            })
        })
        .await
    }

    async fn register_worker(&self, w: NewWorker, now_ms: i64) -> Result<String, StoreError> {
        self.write(move |tx| {
            let id = format!("w{:06}-{}", next(tx, "id")?, w.name);
            tx.execute(
                "INSERT INTO workers (id, name, device, gpu_model, gpu_memory_bytes, slots, registered_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![id, w.name, w.device, w.gpu_model, w.gpu_memory_bytes as i64, w.slots, now_ms],
            )?;
            Ok(id)
        })
        .await
    }

    async fn workers(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT id, name FROM workers ORDER BY id")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn lease(&self, ask: LeaseAsk) -> Result<Option<(Lease, JobRecord)>, StoreError> {
        let counters = Arc::clone(&self.counters);
        self.write_one(move |tx| lease_tx(tx, &counters, &ask))
            .await
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        token: u64,
        progress: Progress,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(HeartbeatAnswer, JobRecord), StoreError> {
        let job_id = job_id.to_owned();
        self.write_one(move |tx| {
            let deadline = now_ms + lease_ms;
            let l = progress.losses;
            let record = fenced_update(
                tx,
                &job_id,
                token,
                "deadline_ms = ?3, iteration = ?4,
                 loss_content = ?5, loss_style = ?6, loss_tv = ?7, loss_total = ?8,
                 checkpoint_key = COALESCE(?9, checkpoint_key),
                 state = CASE WHEN state = 'leased' THEN 'running' ELSE state END",
                &[
                    &deadline,
                    &progress.iteration,
                    &l.content,
                    &l.style,
                    &l.tv,
                    &l.total,
                    &progress.checkpoint_key,
                ],
            )?;
            let answer = HeartbeatAnswer {
                deadline_ms: deadline,
                cancelled: record.state == JobState::Cancelled,
            };
            Ok((answer, record))
        })
        .await
    }

    async fn complete(
        &self,
        job_id: &str,
        token: u64,
        done: Completion,
    ) -> Result<JobRecord, StoreError> {
        let job_id = job_id.to_owned();
        self.write_one(move |tx| complete_tx(tx, &job_id, token, &done))
            .await
    }

    async fn complete_and_lease(
        &self,
        job_id: &str,
        token: u64,
        done: Completion,
        ask: LeaseAsk,
    ) -> Result<(JobRecord, Option<(Lease, JobRecord)>), StoreError> {
        let job_id = job_id.to_owned();
        let counters = Arc::clone(&self.counters);
        // One savepoint: a completion refused (stale token) leases nothing either.
        self.write(move |tx| {
            let record = complete_tx(tx, &job_id, token, &done)?;
            Ok((record, lease_tx(tx, &counters, &ask)?))
        })
        .await
    }

    async fn fail(
        &self,
        job_id: &str,
        token: u64,
        error: &str,
        retryable: bool,
    ) -> Result<JobRecord, StoreError> {
        let (job_id, error) = (job_id.to_owned(), error.to_owned());
        self.write(move |tx| {
            let record = fenced_update(
                tx,
                &job_id,
                token,
                "state = CASE WHEN state = 'cancelled' THEN 'cancelled'
                              WHEN ?4 AND attempt < attempt_limit THEN 'queued'
                              ELSE 'failed' END,
                 error = ?3, deadline_ms = NULL",
                &[&error, &retryable],
            )?;
            if let (Some(w), true) = (&record.worker, retryable) {
                tx.prepare_cached(
                    "INSERT INTO worker_failures (worker, batch_id, failures) VALUES (?1, ?2, 1)
                     ON CONFLICT (worker, batch_id) DO UPDATE SET failures = failures + 1",
                )?
                .execute(params![w, record.batch_id])?;
            }
            Ok(record)
        })
        .await
    }

    async fn release(
        &self,
        job_id: &str,
        token: u64,
        progress: Progress,
    ) -> Result<JobRecord, StoreError> {
        let job_id = job_id.to_owned();
        self.write_one(move |tx| {
            fenced_update(
                tx,
                &job_id,
                token,
                "state = CASE WHEN state = 'cancelled' THEN 'cancelled' ELSE 'queued' END,
                 attempt_limit = attempt_limit + 1, deadline_ms = NULL,
                 iteration = ?3, checkpoint_key = COALESCE(?4, checkpoint_key)",
                &[&progress.iteration, &progress.checkpoint_key],
            )
        })
        .await
    }

    async fn expire(&self, now_ms: i64) -> Result<Vec<JobRecord>, StoreError> {
        self.write(move |tx| {
            let ids: Vec<String> = tx
                .prepare_cached(
                    "UPDATE jobs SET state = CASE WHEN state = 'cancelled' THEN 'cancelled' ELSE 'queued' END,
                            deadline_ms = NULL, version = version + 1
                     WHERE deadline_ms IS NOT NULL AND deadline_ms < ?1
                     RETURNING id",
                )?
                .query_map([now_ms], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids.iter().map(|id| job(tx, id)).collect()
        })
        .await
    }

    async fn cancel_batch(&self, batch_id: &str) -> Result<Vec<JobRecord>, StoreError> {
        let batch_id = batch_id.to_owned();
        self.write(move |tx| {
            batch_exists(tx, &batch_id)?;
            let ids: Vec<String> = tx
                .prepare_cached(
                    "UPDATE jobs SET state = 'cancelled', version = version + 1
                     WHERE batch_id = ?1 AND state IN ('queued', 'leased', 'running')
                     RETURNING id",
                )?
                .query_map([&batch_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids.iter().map(|id| job(tx, id)).collect()
        })
        .await
    }

    async fn cancel_job(&self, job_id: &str) -> Result<JobRecord, StoreError> {
        let job_id = job_id.to_owned();
        self.write(move |tx| {
            let current = job(tx, &job_id)?;
            match current.state {
                JobState::Succeeded | JobState::Failed => Err(StoreError::AlreadyEnded {
                    job_id,
                    state: current.state.as_str(),
                }),
                JobState::Cancelled => Ok(current),
                _ => {
                    tx.execute(
                        "UPDATE jobs SET state = 'cancelled', version = version + 1 WHERE id = ?1",
                        [&job_id],
                    )?;
                    job(tx, &job_id)
                }
            }
        })
        .await
    }

    async fn retry(
        &self,
        batch_id: &str,
        include_cancelled: bool,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let batch_id = batch_id.to_owned();
        self.write(move |tx| {
            batch_exists(tx, &batch_id)?;
            tx.execute("DELETE FROM worker_failures WHERE batch_id = ?1", [&batch_id])?;
            let ids: Vec<String> = tx
                .prepare_cached(
                    "UPDATE jobs SET state = 'queued', error = NULL, version = version + 1,
                            attempt_limit = attempt + (SELECT max_attempts FROM batches WHERE id = ?1)
                     WHERE batch_id = ?1 AND deadline_ms IS NULL
                       AND (state = 'failed' OR (?2 AND state = 'cancelled'))
                     RETURNING id",
                )?
                .query_map(params![batch_id, include_cancelled], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids.iter().map(|id| job(tx, id)).collect()
        })
        .await
    }

    async fn batch(&self, batch_id: &str) -> Result<BatchRecord, StoreError> {
        let batch_id = batch_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, priority, max_attempts, created_ms FROM batches WHERE id = ?1",
            )?;
            let mut rows = stmt.query([&batch_id])?;
            match rows.next()? {
                Some(r) => batch_row(conn, r),
                None => Err(StoreError::NotFound {
                    what: "batch",
                    id: batch_id,
                }),
            }
        })
        .await
    }

    async fn batches(&self, limit: u32) -> Result<Vec<BatchRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, priority, max_attempts, created_ms FROM batches
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let mut rows = stmt.query([limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(batch_row(conn, r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn jobs(&self, batch_id: &str) -> Result<Vec<JobRecord>, StoreError> {
        let batch_id = batch_id.to_owned();
        self.read(move |conn| {
            batch_exists(conn, &batch_id)?;
            jobs_where(conn, "batch_id = ?1 ORDER BY seq", [&batch_id])
        })
        .await
    }

    async fn job(&self, job_id: &str) -> Result<JobRecord, StoreError> {
        let job_id = job_id.to_owned();
        self.read(move |conn| job(conn, &job_id)).await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        self.read(|conn| {
            let jobs_by_state = conn
                .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?
                .query_map([], |r| {
                    let s: String = r.get(0)?;
                    Ok((state_of(&s), r.get::<_, i64>(1)? as u64))
                })?
                .collect::<Result<_, _>>()?;
            let queued_by_batch = conn
                .prepare_cached(
                    "SELECT id, name, queued FROM batches WHERE queued > 0 ORDER BY id",
                )?
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
                })?
                .collect::<Result<_, _>>()?;
            Ok(Stats {
                jobs_by_state,
                queued_by_batch,
            })
        })
        .await
    }

    fn healthy(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewJob;

    fn batch(token: &str, priority: i32, n: usize) -> NewBatch {
        NewBatch {
            name: token.to_owned(),
            client_token: Some(token.to_owned()),
            manifest_sha256: format!("sha-{token}-{n}"),
            priority,
            max_attempts: 3,
            jobs: (0..n)
                .map(|i| NewJob {
                    name: format!("out{i}"),
                    iterations: 10,
                    spec: vec![i as u8],
                })
                .collect(),
        }
    }

    fn done(key: &str) -> Completion {
        Completion {
            result_key: key.to_owned(),
            sidecar_key: None,
            iteration: 10,
            losses: Losses::default(),
        }
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("state.db")).expect("open");
        (dir, s)
    }

    async fn lease(s: &SqliteStore, worker: &str, now: i64, ms: i64) -> Option<Lease> {
        let ask = LeaseAsk {
            worker: worker.to_owned(),
            now_ms: now,
            lease_ms: ms,
            max_worker_failures: 2,
        };
        s.lease(ask).await.expect("lease").map(|(l, _)| l)
    }

    #[tokio::test]
    async fn submit_is_idempotent_per_token_and_refuses_a_reused_token() {
        let (_d, s) = store();
        let a = s.submit(batch("t1", 0, 2), 0).await.expect("submit");
        assert!(!a.existing);
        let b = s.submit(batch("t1", 0, 2), 1).await.expect("submit");
        assert!(b.existing);
        assert_eq!(a.batch_id, b.batch_id);
        assert_eq!(s.jobs(&a.batch_id).await.expect("jobs").len(), 2);
        let other = s.submit(batch("t1", 0, 3), 2).await;
        assert!(
            matches!(other, Err(StoreError::TokenReused { .. })),
            "{other:?}"
        );
    }

    #[tokio::test]
    async fn priority_then_round_robin_then_fifo() {
        let (_d, s) = store();
        let low = s
            .submit(batch("low", 0, 2), 0)
            .await
            .expect("submit")
            .batch_id;
        let a = s
            .submit(batch("a", 5, 2), 0)
            .await
            .expect("submit")
            .batch_id;
        let b = s
            .submit(batch("b", 5, 2), 0)
            .await
            .expect("submit")
            .batch_id;
        let mut order = Vec::new();
        for _ in 0..6 {
            order.push(lease(&s, "w", 0, 1000).await.expect("a job").job_id);
        }
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
        assert!(lease(&s, "w", 0, 1000).await.is_none());
        let stats = s.stats().await.expect("stats");
        assert_eq!(stats.jobs_by_state.get(&JobState::Leased), Some(&6));
        assert!(stats.queued_by_batch.is_empty());
    }

    #[tokio::test]
    async fn expiry_requeues_with_checkpoint_and_fences_the_old_token() {
        let (_d, s) = store();
        let id = s
            .submit(batch("t", 0, 1), 0)
            .await
            .expect("submit")
            .batch_id;
        let first = lease(&s, "w1", 0, 100).await.expect("job");
        let progress = Progress {
            iteration: 40,
            losses: Losses::default(),
            checkpoint_key: Some("ck/40".into()),
        };
        let (_, rec) = s
            .heartbeat(&first.job_id, first.token, progress, 50, 100)
            .await
            .expect("heartbeat");
        assert_eq!(rec.state, JobState::Running);
        assert!(
            s.expire(149).await.expect("expire").is_empty(),
            "deadline was extended"
        );
        let expired = s.expire(151).await.expect("expire");
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].state, JobState::Queued);
        assert!(expired[0].version > rec.version);
        let second = lease(&s, "w2", 200, 100).await.expect("job");
        assert_eq!(second.attempt, 2);
        assert_eq!(second.checkpoint_key.as_deref(), Some("ck/40"));
        assert!(second.token > first.token);
        let stale = s
            .complete(&first.job_id, first.token, done("late/output.png"))
            .await;
        assert!(
            matches!(stale, Err(StoreError::StaleToken { .. })),
            "{stale:?}"
        );
        s.complete(&second.job_id, second.token, done("attempt2/output.png"))
            .await
            .expect("complete");
        let job = &s.jobs(&id).await.expect("jobs")[0];
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.result_key.as_deref(), Some("attempt2/output.png"));
        assert_eq!(job.result_attempt, Some(2));
    }

    #[tokio::test]
    async fn failures_retry_then_fail_bad_workers_are_kept_off_and_retry_requeues() {
        let (_d, s) = store();
        let id = s
            .submit(batch("t", 0, 2), 0)
            .await
            .expect("submit")
            .batch_id;
        for _ in 0..2 {
            let l = lease(&s, "bad", 0, 100).await.expect("job");
            s.fail(&l.job_id, l.token, "CUDA error", true)
                .await
                .expect("fail");
        }
        assert!(
            lease(&s, "bad", 0, 100).await.is_none(),
            "bad worker is kept off"
        );
        let l = lease(&s, "good", 0, 100).await.expect("job");
        s.fail(&l.job_id, l.token, "corrupt input", false)
            .await
            .expect("fail");
        let jobs = s.jobs(&id).await.expect("jobs");
        let failed: Vec<_> = jobs
            .iter()
            .filter(|j| j.state == JobState::Failed)
            .collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].error.as_deref(), Some("corrupt input"));
        let batch = s.batch(&id).await.expect("batch");
        assert_eq!(batch.counts.get(&JobState::Queued), Some(&1));
        // Retrying forgets the bad worker's record and requeues the failed job.
        let requeued = s.retry(&id, false).await.expect("retry");
        assert_eq!(requeued.len(), 1);
        assert!(lease(&s, "bad", 0, 100).await.is_some());
    }

    #[tokio::test]
    async fn cancel_reaches_the_heartbeat_and_state_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let (id, lease_) = {
            let s = SqliteStore::open(&path).expect("open");
            let id = s
                .submit(batch("t", 0, 3), 0)
                .await
                .expect("submit")
                .batch_id;
            let l = lease(&s, "w", 0, 10_000).await.expect("job");
            let changed = s.cancel_batch(&id).await.expect("cancel");
            assert_eq!(changed.len(), 3);
            (id, l)
        };
        let s = SqliteStore::open(&path).expect("reopen");
        let (answer, _) = s
            .heartbeat(
                &lease_.job_id,
                lease_.token,
                Progress::default(),
                10,
                10_000,
            )
            .await
            .expect("heartbeat");
        assert!(answer.cancelled);
        let jobs = s.jobs(&id).await.expect("jobs");
        assert!(jobs.iter().all(|j| j.state == JobState::Cancelled));
        assert!(matches!(
            s.cancel_batch("nope").await,
            Err(StoreError::NotFound { .. })
        ));
        // The holder's last word releases the lease; the token is then stale.
        s.fail(&lease_.job_id, lease_.token, "cancelled", false)
            .await
            .expect("release");
        let again = s.complete(&lease_.job_id, lease_.token, done("x")).await;
        assert!(
            matches!(again, Err(StoreError::StaleToken { .. })),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn complete_and_lease_is_one_change_and_a_stale_completion_leases_nothing() {
        let (_d, s) = store();
        s.submit(batch("t", 0, 3), 0).await.expect("submit");
        let first = lease(&s, "w", 0, 100).await.expect("job");
        let ask = |now| LeaseAsk {
            worker: "w".into(),
            now_ms: now,
            lease_ms: 100,
            max_worker_failures: 2,
        };
        let (rec, next) = s
            .complete_and_lease(&first.job_id, first.token, done("r1"), ask(1))
            .await
            .expect("complete and lease");
        assert_eq!(rec.state, JobState::Succeeded);
        let (next, _) = next.expect("next job");
        assert_ne!(next.job_id, first.job_id);
        let stale = s
            .complete_and_lease(&first.job_id, first.token, done("again"), ask(2))
            .await;
        assert!(
            matches!(stale, Err(StoreError::StaleToken { .. })),
            "{stale:?}"
        );
        // The refused call leased nothing: one job is still queued.
        let stats = s.stats().await.expect("stats");
        assert_eq!(stats.jobs_by_state.get(&JobState::Queued), Some(&1));
    }

    #[tokio::test]
    async fn a_released_job_is_requeued_with_its_checkpoint_without_spending_an_attempt() {
        let (_d, s) = store();
        let mut b = batch("t", 0, 1);
        b.max_attempts = 1;
        s.submit(b, 0).await.expect("submit");
        let first = lease(&s, "w", 0, 100).await.expect("job");
        let progress = Progress {
            iteration: 30,
            losses: Losses::default(),
            checkpoint_key: Some("ck/30".into()),
        };
        let rec = s
            .release(&first.job_id, first.token, progress)
            .await
            .expect("release");
        assert_eq!((rec.state, rec.iteration), (JobState::Queued, 30));
        let second = lease(&s, "w", 1, 100).await.expect("requeued");
        assert_eq!(second.checkpoint_key.as_deref(), Some("ck/30"));
        // The release did not use up the one allowed attempt: the second one ran, and
        // its failure is the one that ends the job.
        let rec = s
            .fail(&second.job_id, second.token, "oom", true)
            .await
            .expect("fail");
        assert_eq!(
            rec.state,
            JobState::Failed,
            "the released attempt did not count, this one did"
        );
    }

    #[tokio::test]
    async fn concurrent_writers_share_group_commits_and_lose_nothing() {
        let (_d, s) = store();
        let s = Arc::new(s);
        let id = s
            .submit(batch("t", 0, 500), 0)
            .await
            .expect("submit")
            .batch_id;
        let mut tasks = Vec::new();
        for w in 0..50 {
            let s = Arc::clone(&s);
            tasks.push(tokio::spawn(async move {
                let mut finished = 0;
                while let Some(l) = lease(&s, &format!("w{w}"), 0, 10_000).await {
                    s.complete(&l.job_id, l.token, done("out"))
                        .await
                        .expect("complete");
                    finished += 1;
                }
                finished
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task");
        }
        assert_eq!(total, 500, "every job leased exactly once");
        let b = s.batch(&id).await.expect("batch");
        assert_eq!(b.counts.get(&JobState::Succeeded), Some(&500));
    }
}
