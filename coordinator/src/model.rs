//! The coordinator's domain: batches, jobs, their states and leases.

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Leased to a worker (attempt n).
    Leased,
    /// Finished; one attempt's output is the result.
    Succeeded,
    /// Out of attempts, or failed on a bad input.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "leased" => Self::Leased,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// True for states a job does not leave on its own.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// One job of a batch to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Output name, unique within the batch.
    pub name: String,
    /// The job spec as the wire carries it (opaque to the store).
    pub spec: Vec<u8>,
}

/// A validated batch to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBatch {
    /// Display name.
    pub name: String,
    /// Idempotency token: the same token returns the same batch.
    pub client_token: String,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts per job before it fails.
    pub max_attempts: u32,
    /// The jobs, in submission order.
    pub jobs: Vec<NewJob>,
}

/// A job handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The job.
    pub job_id: String,
    /// Its batch.
    pub batch_id: String,
    /// The job spec.
    pub spec: Vec<u8>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Fencing token: only its holder may heartbeat, complete or fail the job.
    pub token: u64,
    /// The lease ends then unless a heartbeat extends it.
    pub deadline_ms: i64,
    /// The latest checkpoint of an earlier attempt, to resume from.
    pub checkpoint_key: Option<String>,
}

/// Progress a worker reports with a heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Iterations done.
    pub iteration: u32,
    /// Latest total loss.
    pub loss: f64,
    /// Latest checkpoint written.
    pub checkpoint_key: Option<String>,
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
    /// Latest checkpoint.
    pub checkpoint_key: Option<String>,
    /// Result of the attempt that counts.
    pub result_key: Option<String>,
    /// Last failure.
    pub error: Option<String>,
}
