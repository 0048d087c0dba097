//! Storage flags shared by every binary that reads or writes objects (the worker and
//! the CLI, `stylefarm run` included), each with a `STYLEFARM_*` environment fallback.
//! [`StorageArgs::open`] applies the same credential rules everywhere
//! ([`crate::credentials`]) and refuses settings that cannot work before any request.

use std::path::PathBuf;
use std::time::Duration;

use crate::credentials::{self, Given, Resolved};
use crate::{ObjectUrl, RetryPolicy, S3Options, Storage, StorageError};

/// Where objects live and how to reach S3.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Root of inputs, checkpoints and results: `s3://bucket/prefix` or a directory.
    #[arg(long, env = "STYLEFARM_STORAGE")]
    pub storage: String,

    /// S3 endpoint of a self-hosted server, http:// or https:// (else
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, else AWS).
    #[arg(long, env = "STYLEFARM_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region (else `AWS_REGION` or `AWS_DEFAULT_REGION`, else us-east-1).
    #[arg(long, env = "STYLEFARM_S3_REGION")]
    pub s3_region: Option<String>,

    /// Path-style S3 addressing (most self-hosted servers need it).
    #[arg(long, env = "STYLEFARM_S3_PATH_STYLE")]
    pub s3_path_style: bool,

    /// S3 access key id, with --s3-secret-key or --s3-secret-key-file (else
    /// `AWS_ACCESS_KEY_ID` with `AWS_SECRET_ACCESS_KEY`).
    #[arg(long, env = "STYLEFARM_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,

    /// S3 secret key, with --s3-access-key.
    #[arg(long, env = "STYLEFARM_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,

    /// A file holding the S3 secret key (a mounted Kubernetes Secret), with
    /// --s3-access-key.
    #[arg(long, env = "STYLEFARM_S3_SECRET_KEY_FILE")]
    pub s3_secret_key_file: Option<PathBuf>,

    /// Without keys, use the AWS default credential chain (profiles, SSO, web identity,
    /// containers, EC2 instance metadata); `AWS_PROFILE` asks for it too.
    #[arg(long, env = "STYLEFARM_S3_AWS_CHAIN")]
    pub s3_aws_chain: bool,

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
            s3_aws_chain: false,
            storage_retry_ms: 120_000,
        }
    }

    /// The root URL and a client for it, with `AWS_*` settings from the process's
    /// environment. Fails at once on half a credential; with an `s3://` root, also on
    /// no credentials or an endpoint or region that cannot work.
    pub fn open(&self) -> Result<(ObjectUrl, Storage), StorageError> {
        self.open_with_env(&|k| std::env::var(k).ok())
    }

    /// [`StorageArgs::open`] with the environment given: `env` answers for a variable.
    pub fn open_with_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(ObjectUrl, Storage), StorageError> {
        let root = ObjectUrl::parse(&self.storage)?;
        let opts = self.s3_options(env)?;
        if !root.is_local() {
            opts.check()?;
        }
        Ok((root, Storage::new(opts)))
    }

    /// The S3 settings these flags and `env` give. Fails on half a credential.
    pub fn s3_options(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Options, StorageError> {
        let given = Given {
            access_key: self.s3_access_key.as_deref(),
            secret_key: self.s3_secret_key.as_deref(),
            secret_key_file: self.s3_secret_key_file.as_deref(),
            aws_chain: self.s3_aws_chain,
        };
        let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let mut opts = S3Options {
            endpoint: self
                .s3_endpoint
                .clone()
                .or_else(|| set("AWS_ENDPOINT_URL_S3"))
                .or_else(|| set("AWS_ENDPOINT_URL")),
            region: self
                .s3_region
                .clone()
                .or_else(|| set("AWS_REGION"))
                .or_else(|| set("AWS_DEFAULT_REGION")),
            path_style: self.s3_path_style,
            retry: RetryPolicy {
                deadline: Duration::from_millis(self.storage_retry_ms),
                ..RetryPolicy::default()
            },
            ..S3Options::default()
        };
        let resolved = credentials::resolve(&given, env)?;
        tracing::debug!(credentials = ?resolved, "S3 credentials");
        match resolved {
            Resolved::Keys {
                access_key,
                secret_key,
                session_token,
                ..
            } => {
                opts.access_key = Some(access_key);
                opts.secret_key = Some(secret_key);
                opts.session_token = session_token;
            }
            Resolved::AwsChain { .. } => opts.aws_chain = true,
            Resolved::None => {}
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::credentials::tests::env;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        storage: StorageArgs,
    }

    fn args(argv: &[&str]) -> StorageArgs {
        Cli::try_parse_from(std::iter::once("test").chain(argv.iter().copied()))
            .expect("parse")
            .storage
    }

    #[test]
    fn s3_roots_need_working_settings_at_open_local_ones_do_not() {
        let s3 = args(&["--storage=s3://bucket/p"]);
        let err = s3.open_with_env(&env(&[])).err().expect("no credentials");
        assert!(matches!(err, StorageError::Credentials { .. }), "{err}");
        let local = args(&["--storage=/tmp/farm"]);
        assert!(local.open_with_env(&env(&[])).is_ok());
        // Half a credential stops even a local process: it is a mistake either way.
        let half = args(&["--storage=/tmp/farm", "--s3-secret-key=S"]);
        assert!(half.open_with_env(&env(&[])).is_err());
        let bad = args(&[
            "--storage=s3://bucket/p",
            "--s3-endpoint=minio:9000",
            "--s3-aws-chain",
        ]);
        let err = bad.open_with_env(&env(&[])).err().expect("endpoint");
        assert!(matches!(err, StorageError::Config { .. }), "{err}");
    }

    #[test]
    fn aws_variables_fill_what_the_flags_leave_out() {
        let a = args(&["--storage=s3://bucket/p"]);
        let opts = a
            .s3_options(&env(&[
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "SK"),
                ("AWS_SESSION_TOKEN", "T"),
                ("AWS_ENDPOINT_URL", "http://generic:9000"),
                ("AWS_ENDPOINT_URL_S3", "http://s3-only:9000"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
            ]))
            .expect("options");
        assert_eq!(opts.access_key.as_deref(), Some("AK"));
        assert_eq!(opts.secret_key.as_deref(), Some("SK"));
        assert_eq!(opts.session_token.as_deref(), Some("T"));
        assert_eq!(opts.endpoint.as_deref(), Some("http://s3-only:9000"));
        assert_eq!(opts.region.as_deref(), Some("eu-west-1"));
        assert!(!opts.aws_chain);

        let flags = args(&[
            "--storage=s3://bucket/p",
            "--s3-endpoint=http://flag:9000",
            "--s3-region=garage",
            "--s3-access-key=A",
            "--s3-secret-key=S",
        ]);
        let opts = flags
            .s3_options(&env(&[
                ("AWS_ENDPOINT_URL", "http://generic:9000"),
                ("AWS_REGION", "eu-west-1"),
                ("AWS_PROFILE", "prod"),
            ]))
            .expect("options");
        assert_eq!(opts.endpoint.as_deref(), Some("http://flag:9000"));
        assert_eq!(opts.region.as_deref(), Some("garage"));
        assert_eq!(opts.access_key.as_deref(), Some("A"));
        assert!(!opts.aws_chain, "keys given outright win over a profile");

        let profile = a
            .s3_options(&env(&[("AWS_PROFILE", "prod")]))
            .expect("options");
        assert!(profile.aws_chain && profile.access_key.is_none());
    }
}
