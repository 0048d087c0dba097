//! The coordinator's domain: batches, jobs, workers and leases. Their states are core's
//! [`JobState`] and [`BatchState`], shared with the CLI.

use std::collections::BTreeMap;

pub use stylefarm_core::{BatchState, JobState, Losses, Progress};

/// One job of a batch to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Output name, unique within the batch.
    pub name: String,
    /// Iterations the job runs (for progress display).
    pub iterations: u32,
    /// The job spec as the wire carries it (opaque to the store).
    pub spec: Vec<u8>,
    /// The jobs of the same batch (by their place in it) that must succeed first.
    pub after: Vec<usize>,
}

/// A change of jobs, and what it meant for the jobs that run after them: released
/// (queued) when they succeeded, blocked when they failed or were cancelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled<T> {
    /// What changed.
    pub changed: T,
    /// The jobs that run after it and changed with it.
    pub dependants: Vec<JobRecord>,
}

/// A validated batch to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBatch {
    /// Display name.
    pub name: String,
    /// The identity that submits it.
    pub owner: String,
    /// Whether the same client token also finds a batch submitted before batches had
    /// owners (true for admins, `stylefarm run`'s own identity among them).
    pub adopt_unowned: bool,
    /// Idempotency token: the same token and manifest return the same batch.
    pub client_token: Option<String>,
    /// SHA-256 of the submitted manifest, to tell a retry from a reused token.
    pub manifest_sha256: String,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts per job before it fails.
    pub max_attempts: u32,
    /// The jobs, in submission order.
    pub jobs: Vec<NewJob>,
}

/// What a submission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The batch.
    pub batch_id: String,
    /// True when the client token matched an earlier submission.
    pub existing: bool,
}

/// A worker node as it registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorker {
    /// Its name (host or pod name).
    pub name: String,
    /// The identity that registers it: only that identity may act as this worker.
    pub identity: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// GPU model, empty on CPU.
    pub gpu_model: String,
    /// GPU memory in bytes, 0 on CPU.
    pub gpu_memory_bytes: u64,
    /// Jobs it runs at once.
    pub slots: u32,
    /// What one job may take on it.
    pub capacity: Capacity,
}

/// What one job may take on a worker, as it registered (`--max-job-memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Whether its tensors live on a CUDA device (else host memory).
    pub cuda: bool,
    /// Bytes one job may take; 0 when the worker did not say.
    pub max_job_memory_bytes: u64,
}

/// A registration as the store holds it, with the jobs it holds leases on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownWorker {
    /// Its id.
    pub id: String,
    /// How it registered.
    pub worker: NewWorker,
    /// When it registered.
    pub registered_ms: i64,
    /// The jobs leased to it now.
    pub jobs: Vec<String>,
}

/// A job handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The job.
    pub job_id: String,
    /// Its batch.
    pub batch_id: String,
    /// The job's output name.
    pub name: String,
    /// The job spec.
    pub spec: Vec<u8>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Fencing token: only its holder may heartbeat, complete or fail the job.
    pub token: u64,
    /// The lease ends then (unix ms) unless a heartbeat extends it.
    pub deadline_ms: i64,
    /// The latest checkpoint of an earlier attempt, to resume from.
    pub checkpoint_key: Option<String>,
}

/// A worker asking for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAsk {
    /// The worker's id.
    pub worker: String,
    /// Now (unix ms).
    pub now_ms: i64,
    /// How long the lease lasts.
    pub lease_ms: i64,
    /// Batches on which the worker failed this often are skipped.
    pub max_worker_failures: u32,
}

/// What a finished attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The output image.
    pub result_key: String,
    /// Its JSON sidecar, if written.
    pub sidecar_key: Option<String>,
    /// Iterations the attempt ran and the losses at the output; `None` from a worker
    /// that does not report them (the last heartbeat's figures stand).
    pub progress: Option<(u32, Losses)>,
}

/// A job's stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// Id.
    pub job_id: String,
    /// Batch.
    pub batch_id: String,
    /// Output name.
    pub name: String,
    /// State.
    pub state: JobState,
    /// Attempts started.
    pub attempt: u32,
    /// Current or last worker.
    pub worker: Option<String>,
    /// Latest progress.
    pub iteration: u32,
    /// Iterations the job runs.
    pub iterations: u32,
    /// Latest losses.
    pub losses: Losses,
    /// Latest checkpoint.
    pub checkpoint_key: Option<String>,
    /// Result of the attempt that counts.
    pub result_key: Option<String>,
    /// The attempt whose output `result_key` is.
    pub result_attempt: Option<u32>,
    /// The JSON sidecar of the result.
    pub sidecar_key: Option<String>,
    /// Last failure.
    pub error: Option<String>,
    /// Lease deadline (unix ms) while leased.
    pub deadline_ms: Option<i64>,
    /// Bumped by every change of the job.
    pub version: u64,
    /// Attempts it may start in all: the batch's `max_attempts`, raised by one for each
    /// attempt handed back unfinished (ReleaseJob); a retry allows `max_attempts` more.
    pub attempts_allowed: u32,
    /// When the latest attempt was leased (unix ms).
    pub started_ms: Option<i64>,
    /// When the latest attempt ended (unix ms): completed, failed, handed back, expired or
    /// cancelled; `None` while it runs.
    pub ended_ms: Option<i64>,
}

/// A batch's stored record with its job counts.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    /// Id.
    pub batch_id: String,
    /// Display name.
    pub name: String,
    /// The identity that submitted it.
    pub owner: String,
    /// Priority.
    pub priority: i32,
    /// Attempts per job.
    pub max_attempts: u32,
    /// Submission time (unix ms).
    pub created_ms: i64,
    /// Jobs per state.
    pub counts: BTreeMap<JobState, u64>,
}

impl BatchRecord {
    /// The batch's state.
    pub fn state(&self) -> BatchState {
        BatchState::of(&self.counts)
    }
}

/// Figures for the metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Jobs per state, over every batch.
    pub jobs_by_state: BTreeMap<JobState, u64>,
    /// Batches with queued jobs (a count: nothing about any batch leaves through metrics).
    pub batches_waiting: u64,
}
