//! Storage flags shared by every binary that reads or writes objects (the worker and
//! the CLI), each with a `STYLEFARM_*` environment fallback.

use std::path::PathBuf;
use std::time::Duration;

use crate::{ObjectUrl, RetryPolicy, S3Options, Storage, StorageError};

/// Where objects live and how to reach S3.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Root of inputs, checkpoints and results: `s3://bucket/prefix` or a directory.
    #[arg(long, env = "STYLEFARM_STORAGE")]
    pub storage: String,

    /// S3 endpoint of a self-hosted server (else `AWS_ENDPOINT_URL`, else AWS).
    #[arg(long, env = "STYLEFARM_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region (else `AWS_REGION`).
    #[arg(long, env = "STYLEFARM_S3_REGION")]
    pub s3_region: Option<String>,

    /// Path-style S3 addressing (most self-hosted servers need it).
    #[arg(long, env = "STYLEFARM_S3_PATH_STYLE")]
    pub s3_path_style: bool,

    /// S3 access key id (else the AWS credential chain).
    #[arg(long, env = "STYLEFARM_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,

    /// S3 secret key.
    #[arg(long, env = "STYLEFARM_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,

    /// A file holding the S3 secret key (a mounted Kubernetes Secret).
    #[arg(long, env = "STYLEFARM_S3_SECRET_KEY_FILE")]
    pub s3_secret_key_file: Option<PathBuf>,

    /// Give up on a storage request after retrying transient failures this long (ms).
    #[arg(long, env = "STYLEFARM_STORAGE_RETRY_MS", default_value_t = 120_000)]
    pub storage_retry_ms: u64,
}

impl StorageArgs {
    /// Local storage rooted at `dir`, with the default retry deadline.
    pub fn local(dir: &std::path::Path) -> Self {
        Self {
            storage: dir.display().to_string(),
            s3_endpoint: None,
            s3_region: None,
            s3_path_style: false,
            s3_access_key: None,
            s3_secret_key: None,
            s3_secret_key_file: None,
            storage_retry_ms: 120_000,
        }
    }

    /// The root URL and a client for it.
    pub fn open(&self) -> Result<(ObjectUrl, Storage), StorageError> {
        let root = ObjectUrl::parse(&self.storage)?;
        let secret = match (&self.s3_secret_key, &self.s3_secret_key_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|source| StorageError::Io {
                        path: format!("S3 secret key file {}", f.display()),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let storage = Storage::new(S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            access_key: self.s3_access_key.clone(),
            secret_key: secret,
            retry: RetryPolicy {
                deadline: Duration::from_millis(self.storage_retry_ms),
                ..RetryPolicy::default()
            },
        });
        Ok((root, storage))
    }
}
