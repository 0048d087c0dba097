//! Every error a handler can meet, and the one function that picks its gRPC code.

use stylefarm_core::InvalidField;
use tonic::{Code, Status};

use crate::store::StoreError;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or out of range.
    #[error("{0}")]
    Invalid(#[from] InvalidField),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A worker that speaks another protocol version.
    #[error("worker speaks protocol version {worker}, this coordinator speaks {coordinator}; upgrade one of them")]
    ProtocolMismatch {
        /// The worker's version.
        worker: u32,
        /// Ours.
        coordinator: u32,
    },
    /// A worker id this coordinator never registered.
    #[error("worker {worker_id} is not registered with this coordinator; register again")]
    UnknownWorker {
        /// The id given.
        worker_id: String,
    },
    /// A stored job spec that no longer decodes.
    #[error("job {job_id}: stored spec does not decode: {reason}")]
    CorruptSpec {
        /// The job.
        job_id: String,
        /// The decoder's message.
        reason: String,
    },
    /// The coordinator is shutting down.
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// No usable bearer token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A known caller without the right.
    #[error("{0}")]
    Forbidden(String),
    /// An identity holds as many WatchBatch streams as it may.
    #[error("{who} already follows {limit} batches; close one first")]
    TooManyWatches {
        /// The identity.
        who: String,
        /// How many it may.
        limit: usize,
    },
    /// A worker reported a key outside its attempt's prefix.
    #[error("{field} {key:?} is not under this attempt's prefix {prefix}/")]
    KeyOutsideAttempt {
        /// Which key.
        field: &'static str,
        /// As reported.
        key: String,
        /// Where it must lie.
        prefix: String,
    },
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let code = match &err {
            ApiError::Invalid(_) => Code::InvalidArgument,
            ApiError::ProtocolMismatch { .. } => Code::FailedPrecondition,
            ApiError::UnknownWorker { .. } => Code::NotFound,
            ApiError::CorruptSpec { .. } => Code::Internal,
            ApiError::ShuttingDown => Code::Unavailable,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::Forbidden(_) => Code::PermissionDenied,
            ApiError::KeyOutsideAttempt { .. } => Code::InvalidArgument,
            ApiError::TooManyWatches { .. } => Code::ResourceExhausted,
            ApiError::Store(s) => match s {
                StoreError::NotFound { .. } => Code::NotFound,
                StoreError::StaleToken { .. } | StoreError::AlreadyEnded { .. } => {
                    Code::FailedPrecondition
                }
                StoreError::TokenReused { .. } => Code::AlreadyExists,
                StoreError::Closed | StoreError::Commit { .. } => Code::Unavailable,
                StoreError::Backend { .. }
                | StoreError::Spawn(_)
                | StoreError::SchemaTooNew { .. } => Code::Internal,
            },
        };
        if code == Code::Internal
            || matches!(
                err,
                ApiError::Store(StoreError::Closed | StoreError::Commit { .. })
            )
        {
            tracing::error!(cause = %err, "request failed");
        }
        Status::new(code, err.to_string())
    }
}
