//! Object storage for stylefarm: inputs, checkpoints and results.
//!
//! - [`url`]: addresses, `s3://bucket/key` or a local path ([`ObjectUrl`]).
//! - [`Storage`]: one interface over both. Local writes are atomic (temporary file,
//!   fsync, rename); S3 goes through [`s3`] (aws-sdk-s3, multipart for large objects).
//! - [`retry`]: transient failures (5xx, timeouts, throttling, connection resets) are
//!   retried with capped exponential backoff until a deadline; permanent ones (403,
//!   404, no such bucket) fail at once with an error naming the bucket and key.
//! - Inputs are content-addressed: [`Storage::put_input`] stores bytes under
//!   `inputs/sha256/<hex>` below a root and skips the upload when they are there.

pub mod args;
pub mod error;
mod local;
pub mod retry;
pub mod s3;
pub mod url;

use std::time::Duration;

use sha2::{Digest, Sha256};
use stylefarm_core::ObjectRef;
use tokio::sync::OnceCell;

pub use args::StorageArgs;
pub use error::StorageError;
pub use retry::RetryPolicy;
pub use url::ObjectUrl;

/// How to reach S3. Every field falls back to the usual AWS settings when absent.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:3900`
    /// (else `AWS_ENDPOINT_URL`, else AWS).
    pub endpoint: Option<String>,
    /// Region (else `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted servers need.
    pub path_style: bool,
    /// Access key id (else the AWS credential chain).
    pub access_key: Option<String>,
    /// Secret key.
    pub secret_key: Option<String>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

/// Reads and writes objects by address. The S3 client is made on first use, so a
/// local-only process never needs AWS settings.
pub struct Storage {
    opts: S3Options,
    s3: OnceCell<s3::S3>,
}

impl Storage {
    /// Storage with these S3 settings.
    pub fn new(opts: S3Options) -> Self {
        Self {
            opts,
            s3: OnceCell::new(),
        }
    }

    async fn s3(&self) -> &s3::S3 {
        self.s3.get_or_init(|| s3::S3::connect(&self.opts)).await
    }

    /// Stores `bytes` at `url`, replacing what is there.
    pub async fn put(&self, url: &ObjectUrl, bytes: Vec<u8>) -> Result<(), StorageError> {
        match url {
            ObjectUrl::File(p) => local::put(p, bytes).await,
            ObjectUrl::S3 { bucket, key } => self.s3().await.put(bucket, key, bytes).await,
        }
    }

    /// Reads the object at `url`.
    pub async fn get(&self, url: &ObjectUrl) -> Result<Vec<u8>, StorageError> {
        match url {
            ObjectUrl::File(p) => local::get(p).await,
            ObjectUrl::S3 { bucket, key } => self.s3().await.get(bucket, key).await,
        }
    }

    /// True when an object is at `url`.
    pub async fn exists(&self, url: &ObjectUrl) -> Result<bool, StorageError> {
        match url {
            ObjectUrl::File(p) => local::exists(p).await,
            ObjectUrl::S3 { bucket, key } => self.s3().await.exists(bucket, key).await,
        }
    }

    /// Stores an input under `root/inputs/sha256/<hex>` unless it is already there.
    /// Returns its reference and whether bytes were uploaded.
    pub async fn put_input(
        &self,
        root: &ObjectUrl,
        bytes: Vec<u8>,
    ) -> Result<(ObjectRef, bool), StorageError> {
        let sha256 = sha256_hex(&bytes);
        let url = root.join(&format!("inputs/sha256/{sha256}"))?;
        let uploaded = if self.exists(&url).await? {
            false
        } else {
            self.put(&url, bytes).await?;
            true
        };
        Ok((
            ObjectRef {
                uri: url.to_string(),
                sha256,
                label: String::new(),
            },
            uploaded,
        ))
    }

    /// Reads an input and checks its bytes against the reference's hash.
    pub async fn get_input(&self, input: &ObjectRef) -> Result<Vec<u8>, StorageError> {
        let url = ObjectUrl::parse(&input.uri)?;
        let bytes = self.get(&url).await?;
        let actual = sha256_hex(&bytes);
        if actual != input.sha256 {
            return Err(StorageError::Corrupt {
                url: input.uri.clone(),
                expected: input.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The retry policy with a different deadline.
pub fn retry_for(deadline: Duration) -> RetryPolicy {
    RetryPolicy {
        deadline,
        ..RetryPolicy::default()
    }
}
