//! Durable coordinator state behind one trait, so the embedded SQLite store can be joined
//! by a PostgreSQL one for clusters. Every method commits before it returns: what a
//! caller acknowledges is on disk.

pub mod sqlite;

use crate::model::{JobRecord, Lease, NewBatch, Progress};

pub use sqlite::SqliteStore;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// No such batch or job.
    #[error("{what} {id} does not exist")]
    NotFound {
        /// "batch" or "job".
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A fencing token that is not the job's current one: the caller's lease is gone.
    #[error(
        "job {job_id}: token {token} is stale (the lease expired or moved to another attempt)"
    )]
    StaleToken {
        /// The job.
        job_id: String,
        /// The token presented.
        token: u64,
    },
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The new deadline.
    pub deadline_ms: i64,
    /// True when the job was cancelled: stop working on it.
    pub cancelled: bool,
}

/// Coordinator state.
pub trait Store: Send + Sync {
    /// Stores a batch and its jobs; returns its id and whether it already existed (same
    /// client token).
    fn submit(&self, batch: &NewBatch, now_ms: i64) -> Result<(String, bool), StoreError>;

    /// Leases the next job for `worker`: highest batch priority, then the batch leased
    /// longest ago (round robin), then the oldest job. Skips batches on which this
    /// worker already failed `max_worker_failures` times.
    fn lease(
        &self,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
        max_worker_failures: u32,
    ) -> Result<Option<Lease>, StoreError>;

    /// Extends a lease and records progress.
    fn heartbeat(
        &self,
        job_id: &str,
        token: u64,
        progress: &Progress,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<HeartbeatAnswer, StoreError>;

    /// Records the attempt's output as the job's result.
    fn complete(&self, job_id: &str, token: u64, result_key: &str) -> Result<(), StoreError>;

    /// Records a failed attempt: requeued while attempts remain and `retryable`, else failed.
    fn fail(
        &self,
        job_id: &str,
        token: u64,
        error: &str,
        retryable: bool,
    ) -> Result<(), StoreError>;

    /// Returns jobs whose lease deadline passed to the queue (attempt count kept).
    fn expire(&self, now_ms: i64) -> Result<Vec<String>, StoreError>;

    /// Cancels every job of a batch that has not ended.
    fn cancel_batch(&self, batch_id: &str) -> Result<(), StoreError>;

    /// The jobs of a batch in submission order.
    fn jobs(&self, batch_id: &str) -> Result<Vec<JobRecord>, StoreError>;
}
