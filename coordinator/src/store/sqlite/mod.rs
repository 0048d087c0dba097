//! The embedded store: one SQLite database file in WAL mode with `synchronous=FULL`.
//!
//! Writes go to one writer thread that commits them in groups: it takes every change
//! waiting in its queue (up to [`MAX_GROUP`]), runs them in one transaction, commits
//! once (one fsync) and only then answers each caller. A change of several statements
//! runs in a savepoint of its own, so one that fails is undone alone. Reads use a second
//! connection, which in WAL mode sees every committed change and never blocks the writer.
//!
//! - [`writer`]: the writer thread (group commits: each change runs inside its group's
//!   transaction or not at all) with the store's health, and the WAL checkpointer.
//! - `schema.sql`: the tables, indexes and trigger, each with its reason.
//! - [`rows`]: job and batch records from their rows.
//! - [`error`]: SQLite's errors as [`StoreError`]s, and which mean it cannot commit.
//! - this module: opening the file, the write and read paths, and the [`Store`] impl.

mod error;
mod rows;
mod writer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use self::rows::{batch_exists, batch_row, job, job_row, jobs_where, state_of, JOB_COLUMNS};
pub use self::writer::MAX_GROUP;
use self::writer::{checkpoint_loop, write_loop, Change, Health, Op};

use super::{HeartbeatAnswer, Store, StoreError};
use crate::model::{
    BatchRecord, BatchState, Capacity, Completion, JobRecord, JobState, KnownWorker, Lease,
    LeaseAsk, NewBatch, NewWorker, Progress, Settled, Stats, Submitted,
};

/// Version 6 added job dependencies (`job_deps`, the states `waiting` and `blocked`):
/// nothing to migrate, but a binary from before must not open a file that has them.
const SCHEMA_VERSION: i64 = 6;

/// From version 1: batches gained owners and workers the identity that registered them.
/// (A column added with a default is a change to the schema record only: instant.)
/// Jobs count their expired leases and whose they were. Client tokens become `OWNER:TOKEN`; batches from before owners have the owner ''
/// (admins still find them by token, see `NewBatch::adopt_unowned`). Workers registered
/// before identities belong to nobody: they register again.
const MIGRATE_FROM_1: &str = "ALTER TABLE batches ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN expiries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN expired_workers TEXT NOT NULL DEFAULT '';
    ALTER TABLE workers ADD COLUMN identity TEXT NOT NULL DEFAULT '';
    UPDATE batches SET client_token = ':' || client_token WHERE client_token IS NOT NULL;";

/// From version 2: workers say what one job may take on them (0: not said).
const MIGRATE_FROM_2: &str =
    "ALTER TABLE workers ADD COLUMN max_job_memory_bytes INTEGER NOT NULL DEFAULT 0;";

/// Up to version 3, batches' job counts were counted on each read: after the schema
/// made `batch_counts`, it is filled from the jobs as they are.
/// From version 4: jobs record when their latest attempt started and ended (unknown for
/// the attempts before).
const MIGRATE_FROM_4: &str = "ALTER TABLE jobs ADD COLUMN started_ms INTEGER;
    ALTER TABLE jobs ADD COLUMN ended_ms INTEGER;";

const COUNT_FROM_3: &str = "INSERT INTO batch_counts (batch_id, state, n)
    SELECT batch_id, state, COUNT(*) FROM jobs GROUP BY batch_id, state;";

const SCHEMA: &str = include_str!("schema.sql");

/// Part of every `UPDATE jobs`: a watcher drops events older than what it has seen.
const BUMP: &str = "version = version + 1";

/// Cancels a job that has not ended (`?2` is now): an attempt that runs ends now as far
/// as its elapsed time goes (its holder's last word may still come, and keeps this end:
/// every change that ends an attempt sets `ended_ms` only if it is not set).
const CANCEL: &str = "state = 'cancelled',
    ended_ms = CASE WHEN state IN ('leased', 'running') THEN ?2 ELSE ended_ms END";

/// The holder of a live lease: `?1` is the job, `?2` the fencing token. A cancelled job
/// still accepts its holder's last word while the lease is live.
const LIVE_LEASE: &str = "id = ?1 AND token = ?2
    AND (state IN ('leased', 'running') OR (state = 'cancelled' AND deadline_ms IS NOT NULL))";

#[derive(Debug, Default)]
struct Counters {
    turn: AtomicI64,
}

impl Counters {
    /// A fencing token nobody can guess (63 random bits): a lease is proven by holding
    /// its token, so tokens must not be derivable from one another.
    fn next_token(&self) -> i64 {
        let mut bytes = [0u8; 8];
        // Without the system's generator there is no safe token; it does not fail on
        // the systems stylefarm runs on.
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
        (i64::from_le_bytes(bytes) & i64::MAX).max(1)
    }

    fn next_turn(&self) -> i64 {
        self.turn.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    ops: Option<mpsc::Sender<Box<dyn Op>>>,
    /// The last batch turn handed out. Only the writer thread moves it; it starts from
    /// the largest value on disk.
    counters: Arc<Counters>,
    writer: Option<JoinHandle<()>>,
    reader: Arc<Mutex<Connection>>,
    health: Arc<Health>,
}

/// How [`SqliteStore::open_with`] opens the file.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a statement waits for a lock held by another connection (another
    /// process on the file, a backup) before it fails as busy. 5 s by default.
    pub busy_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl SqliteStore {
    /// Opens (or creates) the database file with the default [`Options`] and starts its
    /// writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &Options::default())
    }

    /// Opens (or creates) the database file and starts its writer thread.
    pub fn open_with(path: &Path, options: &Options) -> Result<Self, StoreError> {
        let conn = connect(path, options)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        // Migration, schema and version in one transaction: a crash or error part way
        // leaves the file as it was.
        let migrate = match found {
            1 => format!("{MIGRATE_FROM_1} {MIGRATE_FROM_2} {MIGRATE_FROM_4}"),
            2 => format!("{MIGRATE_FROM_2} {MIGRATE_FROM_4}"),
            3 | 4 => MIGRATE_FROM_4.to_owned(),
            _ => String::new(),
        };
        let fill = if (1..=3).contains(&found) {
            COUNT_FROM_3
        } else {
            ""
        };
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {migrate} {SCHEMA} {fill} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
        let counters = Arc::new(Counters {
            turn: AtomicI64::new(conn.query_row(
                "SELECT COALESCE(MAX(turn), 0) FROM batches",
                [],
                |r| r.get(0),
            )?),
        });
        // The writer never checkpoints; a thread of its own does, beside it.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let reader = connect(path, options)?;
        let checkpointer = connect(path, options)?;
        let (ops, rx) = mpsc::channel::<Box<dyn Op>>();
        let health = Arc::new(Health::new());
        let writer_health = Arc::clone(&health);
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                write_loop(&conn, &rx, &writer_health);
            })
            .map_err(StoreError::Spawn)?;
        let checkpoint_health = Arc::clone(&health);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &checkpoint_health))
            .map_err(StoreError::Spawn)?;
        Ok(Self {
            ops: Some(ops),
            counters,
            writer: Some(writer),
            reader: Arc::new(Mutex::new(reader)),
            health,
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
        let sender = self.ops.as_ref().ok_or(StoreError::Closed)?;
        sender
            .send(Box::new(Change { f, tx }))
            .map_err(|_| StoreError::Closed)?;
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

fn connect(path: &Path, options: &Options) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(options.busy_timeout)?;
    // 16 MiB of page cache: the hot part of a 100k-job queue. (A much larger cache
    // costs more than it saves: SQLite walks it at the end of every transaction.)
    conn.pragma_update(None, "cache_size", -16_384)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
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

/// Runs `UPDATE jobs SET {set}, {BUMP} WHERE {filter}` and returns every row it changed,
/// whole, in no particular order.
fn update_jobs(
    tx: &Connection,
    set: &str,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<JobRecord>, StoreError> {
    let sql = format!("UPDATE jobs SET {set}, {BUMP} WHERE {filter} RETURNING {JOB_COLUMNS}");
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt.query_map(args, job_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// A job that waits on one that has not succeeded.
const UNMET: &str = "EXISTS (SELECT 1 FROM job_deps d JOIN jobs a ON a.id = d.after_id
    WHERE d.job_id = jobs.id AND a.state <> 'succeeded')";

/// Queues the waiting jobs that run after `job_id` (which has just succeeded) and wait
/// on nothing else that has not.
fn release(tx: &Connection, job_id: &str) -> Result<Vec<JobRecord>, StoreError> {
    update_jobs(
        tx,
        "state = 'queued'",
        &format!(
            "state = 'waiting' AND id IN (SELECT job_id FROM job_deps WHERE after_id = ?1)
             AND NOT {UNMET}"
        ),
        [job_id],
    )
}

/// Why the jobs that wait on a job in `state` will not run.
fn why(name: &str, state: &str) -> String {
    match state {
        "failed" => format!("runs after {name}, which failed"),
        "cancelled" => format!("runs after {name}, which was cancelled"),
        _ => format!("runs after {name}, which will not run"),
    }
}

/// Blocks every waiting job that runs after (at any depth) one of `seeds` (failed,
/// cancelled or blocked jobs: id, name, state), its error naming the seed it came from.
/// A walk over waiting jobs only, each visited once, so its cost is the jobs it blocks.
fn block(
    tx: &Connection,
    seeds: Vec<(String, String, String)>,
) -> Result<Vec<JobRecord>, StoreError> {
    let mut children = tx.prepare_cached(
        "SELECT d.job_id FROM job_deps d JOIN jobs j ON j.id = d.job_id
         WHERE d.after_id = ?1 AND j.state = 'waiting'",
    )?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<(String, Rc<String>)> = seeds
        .into_iter()
        .map(|(id, name, state)| (id, Rc::new(why(&name, &state))))
        .collect();
    let mut found = Vec::new();
    while let Some((id, reason)) = queue.pop_front() {
        let kids: Vec<String> = children
            .query_map([&id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for kid in kids {
            if seen.insert(kid.clone()) {
                found.push((kid.clone(), Rc::clone(&reason)));
                queue.push_back((kid, Rc::clone(&reason)));
            }
        }
    }
    let mut update = tx.prepare_cached(&format!(
        "UPDATE jobs SET state = 'blocked', error = ?2, {BUMP}
         WHERE id = ?1 AND state = 'waiting' RETURNING {JOB_COLUMNS}"
    ))?;
    let mut out = Vec::with_capacity(found.len());
    for (id, reason) in found {
        if let Some(r) = update
            .query_row(params![id, reason.as_str()], job_row)
            .optional()?
        {
            out.push(r);
        }
    }
    Ok(out)
}

/// What one job's change means for the jobs that run after it: released when it
/// succeeded, blocked when it failed or was cancelled.
fn settle(tx: &Connection, job: &JobRecord) -> Result<Vec<JobRecord>, StoreError> {
    match job.state {
        JobState::Succeeded => release(tx, &job.job_id),
        JobState::Failed | JobState::Cancelled => block(
            tx,
            vec![(
                job.job_id.clone(),
                job.name.clone(),
                job.state.as_str().to_owned(),
            )],
        ),
        _ => Ok(Vec::new()),
    }
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
                    deadline_ms = ?3, worker = ?4, error = NULL,
                    started_ms = ?5, ended_ms = NULL, {BUMP}
             WHERE id = (SELECT id FROM jobs WHERE batch_id = ?1 AND state = 'queued'
                         ORDER BY seq LIMIT 1)
             RETURNING {JOB_COLUMNS}"
        ))?
        .query_row(
            params![batch_id, token, deadline, ask.worker, ask.now_ms],
            job_row,
        )?;
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

/// Records a completion (see [`Store::complete`]): the result, and the iterations and
/// losses it ended with. A cancelled job stays cancelled: the holder's last word only
/// releases it.
fn complete_tx(
    tx: &Connection,
    job_id: &str,
    token: u64,
    done: &Completion,
    now_ms: i64,
) -> Result<JobRecord, StoreError> {
    fenced_update(
        tx,
        job_id,
        token,
        "result_key = CASE WHEN state = 'cancelled' THEN result_key ELSE ?3 END,
         result_attempt = CASE WHEN state = 'cancelled' THEN result_attempt ELSE attempt END,
         sidecar_key = CASE WHEN state = 'cancelled' THEN sidecar_key ELSE ?4 END,
         iteration = CASE WHEN state = 'cancelled' THEN iteration ELSE COALESCE(?5, iteration) END,
         loss_content = CASE WHEN state = 'cancelled' THEN loss_content ELSE COALESCE(?6, loss_content) END,
         loss_style = CASE WHEN state = 'cancelled' THEN loss_style ELSE COALESCE(?7, loss_style) END,
         loss_tv = CASE WHEN state = 'cancelled' THEN loss_tv ELSE COALESCE(?8, loss_tv) END,
         loss_total = CASE WHEN state = 'cancelled' THEN loss_total ELSE COALESCE(?9, loss_total) END,
         state = CASE WHEN state = 'cancelled' THEN 'cancelled' ELSE 'succeeded' END,
         deadline_ms = NULL, ended_ms = COALESCE(ended_ms, ?10)",
        &[
            &done.result_key,
            &done.sidecar_key,
            &done.progress.map(|(i, _)| i),
            &done.progress.map(|(_, l)| l.content),
            &done.progress.map(|(_, l)| l.style),
            &done.progress.map(|(_, l)| l.tv),
            &done.progress.map(|(_, l)| l.total),
            &now_ms,
        ],
    )
}

impl Store for SqliteStore {
    async fn submit(&self, batch: NewBatch, now_ms: i64) -> Result<Submitted, StoreError> {
        self.write(move |tx| {
            // Tokens are the owner's: the same token from another identity is another batch.
            let client_key = batch
                .client_token
                .as_ref()
                .map(|t| format!("{}:{t}", batch.owner));
            if let (Some(token), Some(key)) = (&batch.client_token, &client_key) {
                let unowned = format!(":{token}");
                let mut find = tx.prepare_cached(
                    "SELECT id, manifest_sha256 FROM batches WHERE client_token = ?1",
                )?;
                let mut existing: Option<(String, String)> = find
                    .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if existing.is_none() && batch.adopt_unowned {
                    existing = find
                        .query_row([&unowned], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                }
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
                "INSERT INTO batches (id, name, client_token, manifest_sha256, priority, max_attempts, created_ms, queued, owner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    id,
                    batch.name,
                    client_key,
                    batch.manifest_sha256,
                    batch.priority,
                    batch.max_attempts,
                    now_ms,
                    batch.jobs.len() as i64,
                    batch.owner
                ],
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO jobs (id, batch_id, seq, name, iterations, state, attempt_limit)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut insert_spec =
                tx.prepare_cached("INSERT INTO specs (job_id, spec) VALUES (?1, ?2)")?;
            let mut insert_dep =
                tx.prepare_cached("INSERT INTO job_deps (job_id, after_id) VALUES (?1, ?2)")?;
            let job_id = |seq: usize| format!("{id}-j{seq:06}");
            for (seq, job) in batch.jobs.iter().enumerate() {
                // A job with dependencies waits for them; the others are leasable now.
                let state = if job.after.is_empty() {
                    JobState::Queued
                } else {
                    JobState::Waiting
                };
                insert.execute(params![
                    job_id(seq),
                    id,
                    seq as i64,
                    job.name,
                    job.iterations,
                    state.as_str(),
                    batch.max_attempts
                ])?;
                insert_spec.execute(params![job_id(seq), job.spec])?;
                for &after in &job.after {
                    insert_dep.execute(params![job_id(seq), job_id(after)])?;
                }
            }
            let waiting = batch.jobs.iter().filter(|j| !j.after.is_empty()).count() as i64;
            let queued = batch.jobs.len() as i64 - waiting;
            tx.execute(
                "UPDATE batches SET queued = ?2 WHERE id = ?1",
                params![id, queued],
            )?;
            tx.execute(
                "INSERT INTO batch_counts (batch_id, state, n)
                 VALUES (?1, 'queued', ?2), (?1, 'waiting', ?3)",
                params![id, queued, waiting],
            )?;
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
                "INSERT INTO workers (id, name, device, gpu_model, gpu_memory_bytes, slots, registered_ms, identity, max_job_memory_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    id,
                    w.name,
                    w.device,
                    w.gpu_model,
                    w.gpu_memory_bytes as i64,
                    w.slots,
                    now_ms,
                    w.identity,
                    i64::try_from(w.capacity.max_job_memory_bytes).unwrap_or(i64::MAX)
                ],
            )?;
            Ok(id)
        })
        .await
    }

    async fn forget_workers(&self, ids: Vec<String>) -> Result<(), StoreError> {
        self.write(move |tx| {
            let mut worker = tx.prepare_cached("DELETE FROM workers WHERE id = ?1")?;
            let mut failures =
                tx.prepare_cached("DELETE FROM worker_failures WHERE worker = ?1")?;
            for id in &ids {
                worker.execute([id])?;
                failures.execute([id])?;
            }
            Ok(())
        })
        .await
    }

    async fn workers(&self) -> Result<Vec<KnownWorker>, StoreError> {
        self.read(|conn| {
            let mut held: HashMap<String, Vec<String>> = HashMap::new();
            let mut leases = conn.prepare(
                "SELECT worker, id FROM jobs WHERE deadline_ms IS NOT NULL AND worker IS NOT NULL ORDER BY id",
            )?;
            for row in leases.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
                let (worker, job) = row?;
                held.entry(worker).or_default().push(job);
            }
            let mut stmt = conn.prepare(
                "SELECT id, identity, device, max_job_memory_bytes, name, gpu_model, gpu_memory_bytes, slots, registered_ms
                 FROM workers ORDER BY id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    let id: String = r.get(0)?;
                    let device: String = r.get(2)?;
                    let bytes: i64 = r.get(3)?;
                    let gpu_bytes: i64 = r.get(6)?;
                    Ok(KnownWorker {
                        worker: NewWorker {
                            identity: r.get(1)?,
                            capacity: Capacity {
                                cuda: device.starts_with("cuda"),
                                max_job_memory_bytes: u64::try_from(bytes).unwrap_or(0),
                            },
                            device,
                            name: r.get(4)?,
                            gpu_model: r.get(5)?,
                            gpu_memory_bytes: u64::try_from(gpu_bytes).unwrap_or(0),
                            slots: r.get(7)?,
                        },
                        registered_ms: r.get(8)?,
                        jobs: held.remove(&id).unwrap_or_default(),
                        id,
                    })
                })?
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
        now_ms: i64,
    ) -> Result<Settled<JobRecord>, StoreError> {
        let job_id = job_id.to_owned();
        self.write(move |tx| {
            let record = complete_tx(tx, &job_id, token, &done, now_ms)?;
            Ok(Settled {
                dependants: settle(tx, &record)?,
                changed: record,
            })
        })
        .await
    }

    async fn fail(
        &self,
        job_id: &str,
        token: u64,
        error: &str,
        retryable: bool,
        now_ms: i64,
    ) -> Result<Settled<JobRecord>, StoreError> {
        let (job_id, error) = (job_id.to_owned(), error.to_owned());
        self.write(move |tx| {
            let record = fenced_update(
                tx,
                &job_id,
                token,
                "state = CASE WHEN state = 'cancelled' THEN 'cancelled'
                              WHEN ?4 AND attempt < attempt_limit THEN 'queued'
                              ELSE 'failed' END,
                 error = ?3, deadline_ms = NULL, ended_ms = COALESCE(ended_ms, ?5)",
                &[&error, &retryable, &now_ms],
            )?;
            if let (Some(w), true) = (&record.worker, retryable) {
                tx.prepare_cached(
                    "INSERT INTO worker_failures (worker, batch_id, failures) VALUES (?1, ?2, 1)
                     ON CONFLICT (worker, batch_id) DO UPDATE SET failures = failures + 1",
                )?
                .execute(params![w, record.batch_id])?;
            }
            Ok(Settled {
                dependants: settle(tx, &record)?,
                changed: record,
            })
        })
        .await
    }

    async fn release(
        &self,
        job_id: &str,
        token: u64,
        progress: Progress,
        now_ms: i64,
    ) -> Result<JobRecord, StoreError> {
        let job_id = job_id.to_owned();
        self.write_one(move |tx| {
            fenced_update(
                tx,
                &job_id,
                token,
                "state = CASE WHEN state = 'cancelled' THEN 'cancelled' ELSE 'queued' END,
                 attempt_limit = attempt_limit + 1, deadline_ms = NULL,
                 iteration = ?3, checkpoint_key = COALESCE(?4, checkpoint_key),
                 ended_ms = COALESCE(ended_ms, ?5)",
                &[&progress.iteration, &progress.checkpoint_key, &now_ms],
            )
        })
        .await
    }

    async fn leave(&self, worker: &str, now_ms: i64) -> Result<Vec<JobRecord>, StoreError> {
        let worker = worker.to_owned();
        self.write(move |tx| {
            let requeued = update_jobs(
                tx,
                "state = CASE WHEN state = 'cancelled' THEN 'cancelled' ELSE 'queued' END,
                 attempt_limit = attempt_limit + 1, deadline_ms = NULL,
                 ended_ms = COALESCE(ended_ms, ?2)",
                "worker = ?1 AND deadline_ms IS NOT NULL",
                params![worker, now_ms],
            )?;
            tx.prepare_cached("DELETE FROM workers WHERE id = ?1")?
                .execute([&worker])?;
            tx.prepare_cached("DELETE FROM worker_failures WHERE worker = ?1")?
                .execute([&worker])?;
            Ok(requeued)
        })
        .await
    }

    async fn expire(&self, now_ms: i64) -> Result<Settled<Vec<JobRecord>>, StoreError> {
        self.write(move |tx| {
            // An expired lease is a spent attempt (its worker died, hung or was cut off):
            // once the attempts are spent the job fails and says how. (SET sees the row
            // as it was, so every expression below reads the old state and counts.)
            update_jobs(
                tx,
                "state = CASE WHEN state = 'cancelled' THEN 'cancelled'
                              WHEN attempt < attempt_limit THEN 'queued'
                              ELSE 'failed' END,
                 expiries = expiries + 1,
                 expired_workers = expired_workers
                     || CASE WHEN expired_workers = '' THEN '' ELSE ', ' END
                     || COALESCE(worker, '?'),
                 error = CASE WHEN state <> 'cancelled' AND attempt >= attempt_limit THEN
                     'attempts spent (' || attempt || ' of ' || attempt_limit || '): lease expired '
                     || (expiries + 1) || CASE WHEN expiries = 0 THEN ' time' ELSE ' times' END
                     || ', workers ' || expired_workers
                     || CASE WHEN expired_workers = '' THEN '' ELSE ', ' END || COALESCE(worker, '?')
                     ELSE error END,
                 deadline_ms = NULL, ended_ms = COALESCE(ended_ms, ?1)",
                "deadline_ms IS NOT NULL AND deadline_ms < ?1",
                [now_ms],
            )
            .and_then(|expired| {
                // Jobs that ran after one whose attempts are now spent will not run.
                let mut dependants = Vec::new();
                for job in &expired {
                    dependants.extend(settle(tx, job)?);
                }
                Ok(Settled {
                    changed: expired,
                    dependants,
                })
            })
        })
        .await
    }

    async fn cancel_batch(
        &self,
        batch_id: &str,
        now_ms: i64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let batch_id = batch_id.to_owned();
        self.write(move |tx| {
            batch_exists(tx, &batch_id)?;
            update_jobs(
                tx,
                CANCEL,
                "batch_id = ?1 AND state IN ('waiting', 'queued', 'leased', 'running')",
                params![batch_id, now_ms],
            )
        })
        .await
    }

    async fn cancel_job(
        &self,
        job_id: &str,
        now_ms: i64,
    ) -> Result<Settled<JobRecord>, StoreError> {
        let job_id = job_id.to_owned();
        self.write(move |tx| {
            let cancelled = update_jobs(
                tx,
                CANCEL,
                "id = ?1 AND state IN ('waiting', 'queued', 'leased', 'running')",
                params![job_id, now_ms],
            )?;
            if let Some(record) = cancelled.into_iter().next() {
                return Ok(Settled {
                    dependants: settle(tx, &record)?,
                    changed: record,
                });
            }
            // Nothing changed: the job is missing, has ended, or was already cancelled.
            let current = job(tx, &job_id)?;
            match current.state {
                JobState::Succeeded | JobState::Failed | JobState::Blocked => {
                    Err(StoreError::AlreadyEnded {
                        job_id,
                        state: current.state.as_str(),
                    })
                }
                _ => Ok(Settled {
                    changed: current,
                    dependants: Vec::new(),
                }),
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
            tx.execute(
                "DELETE FROM worker_failures WHERE batch_id = ?1",
                [&batch_id],
            )?;
            // Failed jobs (and cancelled ones, if asked), and the jobs they blocked, come
            // back: waiting if they run after others, else queued.
            let mut changed = update_jobs(
                tx,
                "state = CASE WHEN EXISTS (SELECT 1 FROM job_deps WHERE job_id = jobs.id)
                              THEN 'waiting' ELSE 'queued' END,
                 error = NULL,
                 attempt_limit = attempt + (SELECT max_attempts FROM batches WHERE id = ?1)",
                "batch_id = ?1 AND deadline_ms IS NULL
                 AND (state IN ('failed', 'blocked') OR (?2 AND state = 'cancelled'))",
                params![batch_id, include_cancelled],
            )?;
            // Those that run after a job still cancelled stay blocked; those whose jobs
            // have all succeeded run now.
            let seeds = tx
                .prepare_cached(
                    "SELECT id, name, state FROM jobs
                     WHERE batch_id = ?1 AND state IN ('failed', 'cancelled', 'blocked')",
                )?
                .query_map([&batch_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            changed.extend(block(tx, seeds)?);
            changed.extend(update_jobs(
                tx,
                "state = 'queued'",
                &format!("batch_id = ?1 AND state = 'waiting' AND NOT {UNMET}"),
                [&batch_id],
            )?);
            Ok(changed)
        })
        .await
    }

    async fn batch(&self, batch_id: &str) -> Result<BatchRecord, StoreError> {
        let batch_id = batch_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, priority, max_attempts, created_ms, owner FROM batches WHERE id = ?1",
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

    async fn batches(
        &self,
        limit: u32,
        state: Option<BatchState>,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        self.read(move |conn| {
            // A batch's state follows from its counts (`BatchState::of`, the one
            // definition), so a filter walks back from the newest until it has enough.
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, priority, max_attempts, created_ms, owner FROM batches
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let scan = if state.is_some() {
                super::FILTER_SCAN
            } else {
                i64::from(limit)
            };
            let mut rows = stmt.query([scan])?;
            let mut out = Vec::new();
            while out.len() < limit as usize {
                let Some(r) = rows.next()? else { break };
                let b = batch_row(conn, r)?;
                if state.is_none_or(|s| b.state() == s) {
                    out.push(b);
                }
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

    async fn jobs_page(
        &self,
        batch_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let batch_id = batch_id.to_owned();
        let after = after.unwrap_or_default().to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Job ids sort by batch and sequence: the primary key walks the page. (`+batch_id`
        // keeps the planner off the (batch_id, name) index, which would read every job of
        // the batch and sort them to find one page.)
        self.read(move |conn| {
            batch_exists(conn, &batch_id)?;
            jobs_where(
                conn,
                // The batch's ids are `BATCH-j...`: a range of the key ('.' follows '-').
                "id > max(?2, ?1 || '-') AND id < ?1 || '.' AND +batch_id = ?1
                 ORDER BY id LIMIT ?3",
                rusqlite::params![&batch_id, &after, limit],
            )
        })
        .await
    }

    async fn job(&self, job_id: &str) -> Result<JobRecord, StoreError> {
        let job_id = job_id.to_owned();
        self.read(move |conn| job(conn, &job_id)).await
    }

    async fn result_of(&self, batch_id: &str, name: &str) -> Result<Option<String>, StoreError> {
        let (batch_id, name) = (batch_id.to_owned(), name.to_owned());
        self.read(move |conn| {
            let key: Option<Option<String>> = conn
                .prepare_cached(
                    "SELECT result_key FROM jobs
                     WHERE batch_id = ?1 AND name = ?2 AND state = 'succeeded'",
                )?
                .query_row([&batch_id, &name], |r| r.get(0))
                .optional()?;
            Ok(key.flatten())
        })
        .await
    }

    async fn job_with_spec(&self, job_id: &str) -> Result<(JobRecord, Vec<u8>), StoreError> {
        let job_id = job_id.to_owned();
        self.read(move |conn| {
            let record = job(conn, &job_id)?;
            let spec: Vec<u8> = conn
                .prepare_cached("SELECT spec FROM specs WHERE job_id = ?1")?
                .query_row([&job_id], |r| r.get(0))?;
            Ok((record, spec))
        })
        .await
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
            let batches_waiting: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM batches WHERE queued > 0")?
                .query_row([], |r| r.get(0))?;
            Ok(Stats {
                jobs_by_state,
                batches_waiting: batches_waiting as u64,
            })
        })
        .await
    }

    fn health(&self) -> Result<(), String> {
        self.health.check()
    }
}

#[cfg(test)]
mod tests;
