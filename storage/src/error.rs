//! Storage errors. Each names the object (bucket and key, or path) it is about.

/// What went wrong with an object.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The address cannot be used.
    #[error("{url:?} is not a storage address: {reason}")]
    InvalidUrl {
        /// The address given.
        url: String,
        /// Why.
        reason: String,
    },
    /// No object there.
    #[error("{url}: no such object")]
    NotFound {
        /// The object.
        url: String,
    },
    /// The bucket does not exist.
    #[error("{url}: bucket {bucket} does not exist")]
    NoSuchBucket {
        /// The object asked for.
        url: String,
        /// Its bucket.
        bucket: String,
    },
    /// The credentials were refused or lack the permission.
    #[error("{url}: access denied ({reason}); check the access key, the secret key and the bucket's permissions (--s3-access-key, --s3-secret-key[-file] or their STYLEFARM_S3_* variables; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")]
    Denied {
        /// The object.
        url: String,
        /// The server's code and message.
        reason: String,
    },
    /// Transient failures (5xx, timeouts, throttling, resets) outlasted the retries.
    #[error("{url}: storage unavailable after {attempts} attempts over {seconds:.0} s: {reason}")]
    Unavailable {
        /// The object.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent retrying.
        seconds: f64,
        /// The last failure.
        reason: String,
    },
    /// S3 credentials are missing, half given, or could not be loaded. Found before
    /// any request, or on the first; never retried.
    #[error("S3 credentials: {reason}")]
    Credentials {
        /// What is wrong and which flags and variables to set.
        reason: String,
    },
    /// A setting cannot work (an endpoint that is not a URL). Found at start.
    #[error("{setting}: {reason}")]
    Config {
        /// The flag and variable.
        setting: String,
        /// Why, and what would work.
        reason: String,
    },
    /// The request cannot reach its object as configured: a wrong region, an endpoint
    /// whose host does not resolve. Never retried.
    #[error("{url}: {reason}")]
    Misconfigured {
        /// The object.
        url: String,
        /// What is wrong and which setting to check.
        reason: String,
    },
    /// Any other refusal from the server.
    #[error("{url}: {reason}")]
    Failed {
        /// The object.
        url: String,
        /// The server's code and message.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// Why (in the message, so not also a `source()`).
        cause: std::io::Error,
    },
    /// The object is larger than the reader accepts; nothing beyond the limit was read.
    #[error("{url}: larger than the {limit} bytes accepted for {what}")]
    TooLarge {
        /// The object.
        url: String,
        /// What it was read as (an input image, a checkpoint).
        what: String,
        /// The most accepted.
        limit: u64,
    },
    /// The stored bytes are not what their address promises. (The bytes' own hash is
    /// not kept: an error that told it would let whoever names an object learn its
    /// content's hash.)
    #[error("{url}: content does not match its sha256 {expected}")]
    Corrupt {
        /// The object.
        url: String,
        /// Its address's hash.
        expected: String,
    },
}

impl StorageError {
    /// True for [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// True when the process's configuration is at fault (credentials, endpoint,
    /// region), not the object: every request would fail the same way until an
    /// operator changes a setting.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::Credentials { .. }
                | Self::Config { .. }
                | Self::Misconfigured { .. }
                | Self::Denied { .. }
        )
    }
}
