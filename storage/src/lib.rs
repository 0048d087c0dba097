//! Object storage for stylefarm: inputs, checkpoints and results.
//!
//! - [`url`]: addresses, `s3://bucket/key` or a local path ([`ObjectUrl`]).
//! - [`Storage`]: one interface over both. Local writes are atomic (temporary file,
//!   fsync, rename); S3 goes through [`s3`] (aws-sdk-s3, multipart for large objects).
//! - [`args`]: the flags every binary shares ([`StorageArgs`]); [`credentials`] decides
//!   from them and the environment which S3 credentials to use, once, at start.
//! - [`retry`]: transient failures (5xx, timeouts, throttling, refused or reset
//!   connections) are retried with capped exponential backoff until a deadline;
//!   permanent ones (403, 404, no such bucket, missing or refused credentials, a wrong
//!   region or endpoint) fail at once with an error naming the object and what to fix.
//! - Inputs are content-addressed: [`Storage::put_input`] stores bytes under
//!   `inputs/sha256/<hex>` below a root and skips the upload when they are there.

pub mod args;
pub mod credentials;
pub mod error;
mod local;
pub mod retry;
pub mod s3;
pub mod url;

use std::time::Duration;

use sha2::{Digest, Sha256};
use stylefarm_core::limits::MAX_INPUT_BYTES;
use stylefarm_core::ObjectRef;
use tokio::sync::OnceCell;

pub use args::StorageArgs;
pub use error::StorageError;
pub use retry::RetryPolicy;
pub use url::ObjectUrl;

/// How to reach S3. [`StorageArgs::open`] fills it from flags and the environment.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:3900` (else AWS).
    pub endpoint: Option<String>,
    /// Region (else the AWS chain's when `aws_chain`, else `us-east-1`).
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted servers need.
    pub path_style: bool,
    /// Access key id; with `secret_key`, the credentials.
    pub access_key: Option<String>,
    /// Secret key.
    pub secret_key: Option<String>,
    /// Session token of temporary keys.
    pub session_token: Option<String>,
    /// Without keys: use the AWS default credential chain (profiles, SSO, web identity,
    /// containers, EC2 instance metadata). Without keys and without this, S3 requests
    /// fail at once with [`StorageError::Credentials`].
    pub aws_chain: bool,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for S3Options {
    // Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "…"))
            .field("session_token", &self.session_token.as_ref().map(|_| "…"))
            .field("aws_chain", &self.aws_chain)
            .field("retry", &self.retry)
            .finish()
    }
}

impl S3Options {
    /// Checks what can be checked without a request: the endpoint is an http(s) URL,
    /// the region a name, and there are credentials (both keys, or the AWS chain).
    pub fn check(&self) -> Result<(), StorageError> {
        if let Some(endpoint) = &self.endpoint {
            check_endpoint(endpoint).map_err(|reason| StorageError::Config {
                setting: "S3 endpoint (--s3-endpoint, STYLEFARM_S3_ENDPOINT, AWS_ENDPOINT_URL)"
                    .into(),
                reason: format!("{endpoint:?} {reason}"),
            })?;
        }
        if let Some(region) = &self.region {
            let ok = !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                return Err(StorageError::Config {
                    setting: "S3 region (--s3-region, STYLEFARM_S3_REGION, AWS_REGION)".into(),
                    reason: format!(
                        "{region:?} is not a region name (letters, digits, '-', e.g. us-east-1)"
                    ),
                });
            }
        }
        match (&self.access_key, &self.secret_key) {
            (Some(_), Some(_)) => Ok(()),
            (Some(_), None) | (None, Some(_)) => Err(StorageError::Credentials {
                reason: format!(
                    "half a credential: only the {} is set; {}",
                    if self.access_key.is_some() {
                        "access key"
                    } else {
                        "secret key"
                    },
                    credentials::HOW_TO_GIVE
                ),
            }),
            (None, None) if self.aws_chain => Ok(()),
            (None, None) => Err(StorageError::Credentials {
                reason: credentials::NONE_FOUND.into(),
            }),
        }
    }
}

/// Why `endpoint` is not an `http://` or `https://` URL with a host, if it is not.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return Err(
            "is not a URL: it needs http:// or https://, e.g. http://127.0.0.1:3900".into(),
        );
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("has scheme {scheme}://; use http:// or https://"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err("has an unclosed '[' in its host".into()),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("names no host".into());
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>\\^`{|}\"".contains(c))
    {
        return Err(format!("has an invalid host {host:?}"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("has an invalid port {p:?}"));
        }
    }
    Ok(())
}

/// Reads and writes objects by address. The S3 client is made on first use, so a
/// local-only process never needs S3 settings; settings that cannot work fail that
/// first use (and every later one) at once.
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

    async fn s3(&self) -> Result<&s3::S3, StorageError> {
        self.s3
            .get_or_try_init(|| s3::S3::connect(&self.opts))
            .await
    }

    /// Stores `bytes` at `url`, replacing what is there.
    pub async fn put(&self, url: &ObjectUrl, bytes: Vec<u8>) -> Result<(), StorageError> {
        match url {
            ObjectUrl::File(p) => local::put(p, bytes).await,
            ObjectUrl::S3 { bucket, key } => self.s3().await?.put(bucket, key, bytes).await,
        }
    }

    /// Reads the object at `url` if it holds at most `limit` bytes. A larger one is
    /// refused from its stated size, or as soon as more arrives: never read whole.
    pub async fn get(&self, url: &ObjectUrl, limit: &Limit) -> Result<Vec<u8>, StorageError> {
        Ok(self.fetch(url, limit).await?.bytes)
    }

    async fn fetch(&self, url: &ObjectUrl, limit: &Limit) -> Result<Fetched, StorageError> {
        match url {
            ObjectUrl::File(p) => local::get(p, limit).await,
            ObjectUrl::S3 { bucket, key } => self.s3().await?.get(bucket, key, limit).await,
        }
    }

    /// Removes the object at `url`; removing one that is not there is not an error.
    pub async fn delete(&self, url: &ObjectUrl) -> Result<(), StorageError> {
        match url {
            ObjectUrl::File(p) => local::delete(p).await,
            ObjectUrl::S3 { bucket, key } => self.s3().await?.delete(bucket, key).await,
        }
    }

    /// True when an object is at `url`.
    pub async fn exists(&self, url: &ObjectUrl) -> Result<bool, StorageError> {
        match url {
            ObjectUrl::File(p) => local::exists(p).await,
            ObjectUrl::S3 { bucket, key } => self.s3().await?.exists(bucket, key).await,
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
                dims: None,
            },
            uploaded,
        ))
    }

    /// Reads an input of at most [`MAX_INPUT_BYTES`] and checks its bytes against the
    /// reference's hash, computed as they arrive (no second pass, no copy).
    pub async fn get_input(&self, input: &ObjectRef) -> Result<Vec<u8>, StorageError> {
        let url = ObjectUrl::parse(&input.uri)?;
        let Fetched { bytes, sha256 } = self
            .fetch(&url, &Limit::new("an input image", MAX_INPUT_BYTES))
            .await?;
        if hex::encode(sha256.finalize()) != input.sha256 {
            return Err(StorageError::Corrupt {
                url: input.uri.clone(),
                expected: input.sha256.clone(),
            });
        }
        Ok(bytes)
    }
}

/// How many bytes a read accepts, and what for (named in the error).
#[derive(Debug, Clone)]
pub struct Limit {
    what: &'static str,
    bytes: u64,
}

impl Limit {
    /// At most `bytes` of `what` ("an input image", "a checkpoint").
    pub const fn new(what: &'static str, bytes: u64) -> Self {
        Self { what, bytes }
    }

    /// The number of bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn check(
        &self,
        url: impl std::fmt::Display,
        size: impl TryInto<u64>,
    ) -> Result<(), StorageError> {
        match size.try_into() {
            Ok(n) if n <= self.bytes => Ok(()),
            _ => Err(StorageError::TooLarge {
                url: url.to_string(),
                what: self.what.into(),
                limit: self.bytes,
            }),
        }
    }
}

/// Bytes read and their SHA-256, hashed as they arrived.
struct Fetched {
    bytes: Vec<u8>,
    sha256: Sha256,
}

impl Fetched {
    /// Room for `expected` bytes (already checked against the limit), at most 64 MiB
    /// up front: a stated length is a claim, and the rest grows as bytes arrive.
    fn with_capacity(expected: u64) -> Self {
        let room = expected.min(64 << 20);
        Self {
            bytes: Vec::with_capacity(usize::try_from(room).unwrap_or(0)),
            sha256: Sha256::new(),
        }
    }

    fn extend(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        self.sha256.update(chunk);
    }

    fn len(&self) -> usize {
        self.bytes.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed() -> S3Options {
        S3Options {
            access_key: Some("A".into()),
            secret_key: Some("S".into()),
            ..S3Options::default()
        }
    }

    #[test]
    fn endpoints_must_be_http_urls_with_a_host() {
        for good in [
            "http://127.0.0.1:3900",
            "https://s3.example.com",
            "http://minio.storage.svc:9000/",
            "http://[::1]:3900",
            "https://user@host/base",
        ] {
            assert_eq!(check_endpoint(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1:3900",
            "localhost",
            "http//127.0.0.1:3900",
            "ftp://host",
            "http://",
            "http://:3900",
            "http://host:port",
            "http://host:99999",
            "http://ho st",
            "http://[::1:3900",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_are_checked_before_any_request() {
        assert!(keyed().check().is_ok());
        let chain = S3Options {
            aws_chain: true,
            ..S3Options::default()
        };
        assert!(chain.check().is_ok());

        let err = S3Options::default().check().expect_err("no credentials");
        assert!(matches!(err, StorageError::Credentials { .. }), "{err}");
        assert!(err.to_string().contains("--s3-aws-chain"), "{err}");
        let half = S3Options {
            secret_key: Some("S".into()),
            ..S3Options::default()
        };
        let err = half.check().expect_err("half");
        assert!(err.to_string().contains("half a credential"), "{err}");

        let bad_endpoint = S3Options {
            endpoint: Some("localhost:3900".into()),
            ..keyed()
        };
        let err = bad_endpoint.check().expect_err("endpoint");
        assert!(matches!(err, StorageError::Config { .. }), "{err}");
        assert!(err.to_string().contains("--s3-endpoint"), "{err}");
        let bad_region = S3Options {
            region: Some("us east 1".into()),
            ..keyed()
        };
        let err = bad_region.check().expect_err("region");
        assert!(err.to_string().contains("--s3-region"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let opts = S3Options {
            secret_key: Some("TOPSECRET".into()),
            session_token: Some("TOKEN".into()),
            ..keyed()
        };
        let shown = format!("{opts:?}");
        assert!(
            !shown.contains("TOPSECRET") && !shown.contains("TOKEN"),
            "{shown}"
        );
    }

    /// Without credentials an S3 request fails at once, asking nothing of the network,
    /// and a local-only process never needs them.
    #[tokio::test]
    async fn no_credentials_fail_the_first_s3_request_not_local_ones() {
        let storage = Storage::new(S3Options::default());
        let url = ObjectUrl::parse("s3://some-bucket/key").expect("url");
        let err = storage
            .get(&url, &Limit::new("an object", 1))
            .await
            .expect_err("no credentials");
        assert!(matches!(err, StorageError::Credentials { .. }), "{err}");
        assert!(err.is_configuration());
        let dir = tempfile::tempdir().expect("tempdir");
        let local = ObjectUrl::File(dir.path().join("x"));
        storage.put(&local, b"x".to_vec()).await.expect("local put");
    }
}
