//! The S3 backend (aws-sdk-s3): any S3-compatible server, path-style or virtual-host
//! addressing, objects above [`MULTIPART_THRESHOLD`] uploaded in parts. The SDK's own
//! retries are off; [`crate::retry`] retries transient failures with one policy for all.

use std::error::Error;

use aws_sdk_s3::config::{Credentials, ProvideCredentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;

use crate::retry::{retry, Attempt, Outcome, RetryPolicy};
use crate::{Fetched, Limit, S3Options, StorageError};

/// Objects larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// Size of each part (S3 requires at least 5 MiB for all but the last).
pub const PART_SIZE: usize = 8 << 20;
/// The region when none is given (and the AWS chain, when used, finds none).
pub const DEFAULT_REGION: &str = "us-east-1";

/// An S3 client with the retry policy.
#[derive(Clone)]
pub struct S3 {
    client: Client,
    policy: RetryPolicy,
}

impl S3 {
    /// A client from the options after [`S3Options::check`]. With keys it is built
    /// from them alone, so nothing else (no profile, no instance metadata) is asked;
    /// the AWS default chain is loaded only when `opts.aws_chain` asks for it.
    pub async fn connect(opts: &S3Options) -> Result<Self, StorageError> {
        opts.check()?;
        let region = opts.region.clone();
        let mut conf = match (&opts.access_key, &opts.secret_key) {
            (Some(id), Some(secret)) => aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(Region::new(region.unwrap_or_else(|| DEFAULT_REGION.into())))
                .credentials_provider(Credentials::new(
                    id.clone(),
                    secret.clone(),
                    opts.session_token.clone(),
                    None,
                    "stylefarm",
                )),
            _ => {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(region) = region {
                    loader = loader.region(Region::new(region));
                }
                let shared = loader.load().await;
                let conf = aws_sdk_s3::config::Builder::from(&shared);
                if shared.region().is_none() {
                    conf.region(Region::new(DEFAULT_REGION))
                } else {
                    conf
                }
            }
        };
        conf = conf
            .force_path_style(opts.path_style)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled());
        if let Some(endpoint) = &opts.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        Ok(Self {
            client: Client::from_conf(conf.build()),
            policy: opts.retry,
        })
    }

    /// Stores an object (in parts when large).
    pub async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        // Shared, so a retry or a part is a reference, not a copy of the buffer.
        let bytes = Bytes::from(bytes);
        if bytes.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(bucket, key, bytes).await;
        }
        self.run(bucket, key, || {
            let req = self
                .client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(bytes.clone()));
            async move { req.send().await.map(|_| ()) }
        })
        .await
    }

    async fn put_multipart(
        &self,
        bucket: &str,
        key: &str,
        bytes: Bytes,
    ) -> Result<(), StorageError> {
        let upload_id = self
            .run(bucket, key, || {
                let req = self
                    .client
                    .create_multipart_upload()
                    .bucket(bucket)
                    .key(key);
                async move {
                    req.send()
                        .await
                        .map(|o| o.upload_id().unwrap_or_default().to_owned())
                }
            })
            .await?;
        let result = async {
            let mut parts = Vec::new();
            for (i, start) in (0..bytes.len()).step_by(PART_SIZE).enumerate() {
                let chunk = bytes.slice(start..(start + PART_SIZE).min(bytes.len()));
                let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
                let etag = self
                    .run(bucket, key, || {
                        let req = self
                            .client
                            .upload_part()
                            .bucket(bucket)
                            .key(key)
                            .upload_id(&upload_id)
                            .part_number(number)
                            .body(ByteStream::from(chunk.clone()));
                        async move { req.send().await.map(|o| o.e_tag().map(str::to_owned)) }
                    })
                    .await?;
                parts.push(
                    CompletedPart::builder()
                        .set_e_tag(etag)
                        .part_number(number)
                        .build(),
                );
            }
            let done = CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build();
            self.run(bucket, key, || {
                let req = self
                    .client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(done.clone());
                async move { req.send().await.map(|_| ()) }
            })
            .await
        }
        .await;
        if result.is_err() {
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id);
            if let Err(e) = abort.send().await {
                tracing::debug!(bucket, key, error = %DisplayErrorContext(&e), "aborting a multipart upload failed");
                tracing::warn!(bucket, key, cause = %innermost(&e), "could not abort a failed multipart upload");
            }
        }
        result
    }

    /// Reads an object of at most `limit` bytes, hashing it as it streams in. A larger
    /// one is refused from its stated length, or once more than the limit arrives.
    pub(crate) async fn get(
        &self,
        bucket: &str,
        key: &str,
        limit: &Limit,
    ) -> Result<Fetched, StorageError> {
        let url = format!("s3://{bucket}/{key}");
        let outcome = retry(self.policy, &url, || async {
            let mut out = match self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) => return classify(bucket, key, &e),
            };
            let stated = out.content_length().unwrap_or(0);
            if let Err(e) = limit.check(&url, stated) {
                return Attempt::Permanent(e);
            }
            let mut fetched = Fetched::with_capacity(u64::try_from(stated).unwrap_or(0));
            loop {
                match out.body.try_next().await {
                    Ok(Some(chunk)) => {
                        fetched.extend(&chunk);
                        if let Err(e) = limit.check(&url, fetched.len()) {
                            return Attempt::Permanent(e);
                        }
                    }
                    Ok(None) => return Attempt::Ok(fetched),
                    // A body cut off mid-stream is worth another try.
                    Err(e) => {
                        return Attempt::Transient {
                            cause: format!("the response body was cut off: {e}"),
                            detail: DisplayErrorContext(&e).to_string(),
                        }
                    }
                }
            }
        })
        .await;
        finish(&url, outcome)
    }

    /// Removes an object (S3 answers the same whether it was there or not).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        self.run(bucket, key, || {
            let req = self.client.delete_object().bucket(bucket).key(key);
            async move { req.send().await.map(|_| ()) }
        })
        .await
    }

    /// True when the object exists.
    pub async fn exists(&self, bucket: &str, key: &str) -> Result<bool, StorageError> {
        let found = self
            .run(bucket, key, || {
                let req = self.client.head_object().bucket(bucket).key(key);
                async move { req.send().await.map(|_| ()) }
            })
            .await;
        match found {
            Ok(()) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs one request with the retry policy and maps its error.
    async fn run<T, E, F, Fut>(
        &self,
        bucket: &str,
        key: &str,
        mut request: F,
    ) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<
            Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
        >,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let url = format!("s3://{bucket}/{key}");
        let outcome = retry(self.policy, &url, || {
            let fut = request();
            async move {
                match fut.await {
                    Ok(v) => Attempt::Ok(v),
                    Err(e) => classify(bucket, key, &e),
                }
            }
        })
        .await;
        finish(&url, outcome)
    }
}

fn finish<T>(url: &str, outcome: Outcome<T, StorageError>) -> Result<T, StorageError> {
    match outcome {
        Outcome::Ok(v) => Ok(v),
        Outcome::Permanent(e) => Err(e),
        Outcome::GaveUp {
            attempts,
            elapsed,
            last,
        } => Err(StorageError::Unavailable {
            url: url.to_owned(),
            attempts,
            seconds: elapsed.as_secs_f64(),
            reason: last,
        }),
    }
}

/// What the AWS default credential chain tries, in order, for messages.
const CHAIN_SOURCES: &str = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the profile (AWS_PROFILE, \
~/.aws/config, ~/.aws/credentials), web identity (AWS_WEB_IDENTITY_TOKEN_FILE), container \
credentials (AWS_CONTAINER_CREDENTIALS_*) and the EC2 instance metadata service";

/// Where to set the region, for messages.
const REGION_HINT: &str =
    "check the region (--s3-region, STYLEFARM_S3_REGION, AWS_REGION) and the endpoint (--s3-endpoint, STYLEFARM_S3_ENDPOINT, AWS_ENDPOINT_URL)";

/// Transient: timeouts, refused or reset connections, 5xx, 429 and throttling codes.
/// Permanent: missing objects and buckets, refused credentials, credentials that could
/// not be loaded, a wrong region, an endpoint that is not a URL or whose host does not
/// exist, any other 4xx. A permanent error's full chain is logged once at debug level;
/// a transient one's by the retry loop.
fn classify<T, E>(
    bucket: &str,
    key: &str,
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Attempt<T, StorageError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let url = format!("s3://{bucket}/{key}");
    let detail = DisplayErrorContext(err).to_string();
    let transient = |cause: String| Attempt::Transient {
        cause,
        detail: detail.clone(),
    };
    let object = url.clone();
    let permanent = |e: StorageError| {
        tracing::debug!(object = %object, error = %detail, "storage request failed");
        Attempt::Permanent(e)
    };
    let innermost = innermost(err);
    match err {
        SdkError::TimeoutError(_) => transient("the request timed out".into()),
        SdkError::ResponseError(_) => {
            transient(format!("the response could not be read: {innermost}"))
        }
        SdkError::DispatchFailure(d) => {
            if let Some(cred) = credentials_error(err) {
                permanent(StorageError::Credentials {
                    reason: format!(
                        "the AWS credential chain (asked for with --s3-aws-chain, STYLEFARM_S3_AWS_CHAIN or AWS_PROFILE) gave none for {url}; it tries {CHAIN_SOURCES}: {}",
                        credentials_summary(cred)
                    ),
                })
            } else if is_unknown_host(err) {
                permanent(StorageError::Misconfigured {
                    reason: format!(
                        "the S3 endpoint's host does not exist ({innermost}); {REGION_HINT}"
                    ),
                    url,
                })
            } else if d.is_io() || d.is_timeout() || d.as_other().is_some() {
                transient(format!("connection failed: {innermost}"))
            } else {
                // Not a network failure: the request could not be made as configured
                // (an endpoint the SDK cannot use, an unreadable response).
                permanent(StorageError::Misconfigured {
                    reason: format!("the request could not be made: {innermost}; {REGION_HINT}"),
                    url,
                })
            }
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = err.code().unwrap_or_default();
            let message = err.message().unwrap_or_default();
            let reason = crate::retry::sentence(&format!("HTTP {status} {code}: {message}"));
            let throttled = matches!(
                code,
                "SlowDown"
                    | "Throttling"
                    | "ThrottlingException"
                    | "RequestTimeout"
                    | "InternalError"
                    | "ServiceUnavailable"
            );
            let wrong_place = matches!(
                code,
                "AuthorizationHeaderMalformed"
                    | "AuthorizationQueryParametersError"
                    | "IllegalLocationConstraintException"
                    | "InvalidRegion"
                    | "PermanentRedirect"
                    | "Redirect"
            ) || (300..400).contains(&status)
                || (status == 400 && code.is_empty());
            if status >= 500 || status == 429 || throttled {
                transient(reason)
            } else if code == "NoSuchBucket" {
                permanent(StorageError::NoSuchBucket {
                    url,
                    bucket: bucket.to_owned(),
                })
            } else if status == 404 || code == "NoSuchKey" || code == "NotFound" {
                // Not worth a debug line: exists() asks this on every new object.
                Attempt::Permanent(StorageError::NotFound { url })
            } else if status == 403
                || matches!(
                    code,
                    "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"
                )
            {
                permanent(StorageError::Denied { url, reason })
            } else if wrong_place {
                permanent(StorageError::Misconfigured {
                    url,
                    reason: format!("{reason}; {REGION_HINT}"),
                })
            } else {
                permanent(StorageError::Failed { url, reason })
            }
        }
        _ => permanent(StorageError::Failed {
            url,
            reason: crate::retry::sentence(&innermost),
        }),
    }
}

/// `err` and its sources, outermost first.
fn chain<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |e| (*e).source())
}

/// The deepest cause's message, on one line.
fn innermost(err: &(dyn Error + 'static)) -> String {
    chain(err)
        .last()
        .map(|e| crate::retry::sentence(&e.to_string()))
        .unwrap_or_default()
}

/// The credentials provider's error in `err`'s chain, if there is one: the AWS chain
/// found no credentials, or could not load them. The error's type is taken from what a
/// provider returns, so this crate needs no direct dependency on aws-credential-types.
fn credentials_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
    fn find<'a, T, E, F>(
        _provide: impl FnOnce() -> F,
        err: &'a (dyn Error + 'static),
    ) -> Option<&'a (dyn Error + 'static)>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: Error + 'static,
    {
        chain(err).find(|e| e.is::<E>())
    }
    let probe = Credentials::new("", "", None, None, "type probe");
    find(|| probe.provide_credentials(), err)
}

/// A credentials error and its causes (which sources the chain tried and why each
/// gave nothing) on one line.
fn credentials_summary(err: &(dyn Error + 'static)) -> String {
    let text = chain(err)
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    let one_line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // The chain's list is short; the cap keeps a surprise from flooding a terminal.
    one_line.chars().take(800).collect()
}

/// True when the endpoint's host name does not resolve (not a lookup that may work
/// on a second try, such as a DNS server timing out).
fn is_unknown_host(err: &(dyn Error + 'static)) -> bool {
    let dns = chain(err).any(|e| e.to_string() == "dns error");
    dns && chain(err).any(|e| {
        let m = e.to_string();
        m.contains("Name or service not known")
            || m.contains("No address associated with hostname")
            || m.contains("nodename nor servname provided")
            || m.contains("No such host is known")
    })
}
