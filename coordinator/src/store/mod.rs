//! Durable coordinator state behind one trait, so the embedded SQLite store can be joined
//! by a PostgreSQL one for clusters. Every method commits before its future resolves:
//! what a caller acknowledges is on disk.

pub mod sqlite;

use std::future::Future;

use crate::model::{
    BatchRecord, BatchState, Completion, JobRecord, KnownWorker, Lease, LeaseAsk, NewBatch,
    NewWorker, Progress, Settled, Stats, Submitted,
};

pub use sqlite::SqliteStore;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (a statement, the disk, a lock). Each backend converts its own
    /// errors into this one, so the trait names no database library.
    #[error("database error: {cause}")]
    Backend {
        /// The backend's error (in the message, so not also a `source()`).
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A group commit failed; none of its changes were made.
    #[error("commit failed: {reason}")]
    Commit {
        /// The database's message.
        reason: String,
    },
    /// The writer thread could not start.
    #[error("cannot start the database writer: {0}")]
    Spawn(std::io::Error),
    /// The database's writer stopped; nothing more can be committed.
    #[error("the database writer has stopped")]
    Closed,
    /// The database file was written by a newer stylefarm.
    #[error("database schema version {found} is newer than this coordinator's ({supported})")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// No such batch, job or worker.
    #[error("{what} {id} does not exist")]
    NotFound {
        /// "batch", "job" or "worker".
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A fencing token that is not the job's current one: the caller's lease is gone.
    #[error(
        "job {job_id}: fencing token {token} is stale (the lease expired or moved to another attempt)"
    )]
    StaleToken {
        /// The job.
        job_id: String,
        /// The token presented.
        token: u64,
    },
    /// A client token already used for a different manifest.
    #[error("client token {token:?} was already used for a different manifest (batch {batch_id})")]
    TokenReused {
        /// The token.
        token: String,
        /// The batch it made.
        batch_id: String,
    },
    /// A job that has ended cannot be cancelled.
    #[error("job {job_id} has already {state}")]
    AlreadyEnded {
        /// The job.
        job_id: String,
        /// Its state.
        state: &'static str,
    },
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The new deadline (unix ms).
    pub deadline_ms: i64,
    /// True when the job was cancelled: stop working on it.
    pub cancelled: bool,
}

/// How many of the newest batches a listing by state looks through: a state is worked
/// out from each batch's counts, so a filter costs a read per batch it passes over.
pub const FILTER_SCAN: i64 = 20_000;

/// Coordinator state. Times are unix milliseconds passed in by the caller, so the
/// service's clock (paused in tests) is the only clock.
pub trait Store: Send + Sync + 'static {
    /// Stores a batch and its jobs, or returns the batch an earlier submission with the
    /// same client token and manifest made.
    fn submit(
        &self,
        batch: NewBatch,
        now_ms: i64,
    ) -> impl Future<Output = Result<Submitted, StoreError>> + Send;

    /// Records a worker and returns its id.
    fn register_worker(
        &self,
        worker: NewWorker,
        now_ms: i64,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Every registered worker as it registered, with the jobs leased to it now
    /// (loaded at start-up; listed by ListWorkers).
    fn workers(&self) -> impl Future<Output = Result<Vec<KnownWorker>, StoreError>> + Send;

    /// Deletes these workers' registrations (and their failure counts).
    fn forget_workers(
        &self,
        ids: Vec<String>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Leases the next job for the asking worker: highest batch priority, then the
    /// batch whose turn came longest ago (round robin), then the oldest job. Skips
    /// batches on which this worker already failed `max_worker_failures` times.
    fn lease(
        &self,
        ask: LeaseAsk,
    ) -> impl Future<Output = Result<Option<(Lease, JobRecord)>, StoreError>> + Send;

    /// Extends a lease and records progress.
    fn heartbeat(
        &self,
        job_id: &str,
        token: u64,
        progress: Progress,
        now_ms: i64,
        lease_ms: i64,
    ) -> impl Future<Output = Result<(HeartbeatAnswer, JobRecord), StoreError>> + Send;

    /// Records the attempt's output (and its sidecar, if any) as the job's result, with
    /// the iterations it ran and its final losses.
    fn complete(
        &self,
        job_id: &str,
        token: u64,
        done: Completion,
        now_ms: i64,
    ) -> impl Future<Output = Result<Settled<JobRecord>, StoreError>> + Send;

    /// Records a failed attempt: requeued while attempts remain and `retryable`, else
    /// failed. Retryable failures count against the worker on this batch.
    fn fail(
        &self,
        job_id: &str,
        token: u64,
        error: &str,
        retryable: bool,
        now_ms: i64,
    ) -> impl Future<Output = Result<Settled<JobRecord>, StoreError>> + Send;

    /// Hands a leased job back unfinished: requeued at once with its checkpoint (a
    /// cancelled job stays cancelled), and the attempt is not counted against the
    /// job's allowance or the worker.
    fn release(
        &self,
        job_id: &str,
        token: u64,
        progress: Progress,
        now_ms: i64,
    ) -> impl Future<Output = Result<JobRecord, StoreError>> + Send;

    /// Requeues every job still leased to `worker`, uncharged like [`Store::release`]
    /// (iteration and checkpoint kept), and forgets the worker's registration: it left
    /// after a clean drain, so any lease it still holds was granted in an answer it never
    /// received.
    fn leave(
        &self,
        worker: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// Returns jobs whose lease deadline passed to the queue (attempt count kept).
    fn expire(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<Settled<Vec<JobRecord>>, StoreError>> + Send;

    /// Cancels every job of a batch that has not ended; returns the jobs it changed.
    fn cancel_batch(
        &self,
        batch_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// Cancels one job that has not ended.
    fn cancel_job(
        &self,
        job_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Settled<JobRecord>, StoreError>> + Send;

    /// Requeues failed (and, if asked, cancelled) jobs with a fresh allowance of attempts,
    /// and forgets the batch's worker failures; returns the jobs it changed.
    fn retry(
        &self,
        batch_id: &str,
        include_cancelled: bool,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// One batch with its job counts.
    fn batch(&self, batch_id: &str)
        -> impl Future<Output = Result<BatchRecord, StoreError>> + Send;

    /// The newest batches first; with `state`, only those in it (at most `limit` of them,
    /// found among the newest [`FILTER_SCAN`]).
    fn batches(
        &self,
        limit: u32,
        state: Option<BatchState>,
    ) -> impl Future<Output = Result<Vec<BatchRecord>, StoreError>> + Send;

    /// Up to `limit` jobs of a batch in submission order, after the job `after` (from
    /// the first when `None`).
    fn jobs_page(
        &self,
        batch_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// The jobs of a batch in submission order.
    fn jobs(
        &self,
        batch_id: &str,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// One job.
    fn job(&self, job_id: &str) -> impl Future<Output = Result<JobRecord, StoreError>> + Send;

    /// Where the job named `name` of a batch published its result, once it succeeded
    /// (a frame's predecessor, for the temporal term); `None` before that.
    fn result_of(
        &self,
        batch_id: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// One job and its encoded spec, read together.
    fn job_with_spec(
        &self,
        job_id: &str,
    ) -> impl Future<Output = Result<(JobRecord, Vec<u8>), StoreError>> + Send;

    /// Counts for the metrics endpoint.
    fn stats(&self) -> impl Future<Output = Result<Stats, StoreError>> + Send;

    /// `Ok` while the store can commit; otherwise why not (its last storage failure, in
    /// words fit for an operator: no statement, value or credential), for liveness.
    fn health(&self) -> Result<(), String>;

    /// False while the store cannot commit (see [`Store::health`]).
    fn healthy(&self) -> bool {
        self.health().is_ok()
    }
}
