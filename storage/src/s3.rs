//! The S3 backend (aws-sdk-s3): any S3-compatible server, path-style or virtual-host
//! addressing, objects above [`MULTIPART_THRESHOLD`] uploaded in parts. The SDK's own
//! retries are off; [`crate::retry`] retries transient failures with one policy for all.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;

use crate::retry::{retry, Attempt, Outcome, RetryPolicy};
use crate::{S3Options, StorageError};

/// Objects larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// Size of each part (S3 requires at least 5 MiB for all but the last).
pub const PART_SIZE: usize = 8 << 20;

/// An S3 client with the retry policy.
#[derive(Clone)]
pub struct S3 {
    client: Client,
    policy: RetryPolicy,
}

impl S3 {
    /// A client from the options, with credentials from the options or the usual AWS
    /// chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, instance roles).
    pub async fn connect(opts: &S3Options) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &opts.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(opts.path_style)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled());
        if shared.region().is_none() {
            conf = conf.region(aws_sdk_s3::config::Region::new("us-east-1"));
        }
        if let Some(endpoint) = &opts.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (&opts.access_key, &opts.secret_key) {
            conf = conf.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "stylefarm-flags",
            ));
        }
        Self {
            client: Client::from_conf(conf.build()),
            policy: opts.retry,
        }
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
                tracing::warn!(bucket, key, cause = %DisplayErrorContext(&e), "could not abort a failed multipart upload");
            }
        }
        result
    }

    /// Reads an object.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, StorageError> {
        let url = format!("s3://{bucket}/{key}");
        let outcome = retry(self.policy, &url, || async {
            let out = match self
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
            // A body cut off mid-stream is worth another try.
            match out.body.collect().await {
                Ok(b) => Attempt::Ok(b.into_bytes().to_vec()),
                Err(e) => Attempt::Transient(format!("reading the body: {e}")),
            }
        })
        .await;
        finish(&url, outcome)
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

/// Transient: timeouts, connection failures, 5xx, 429 and throttling codes. Permanent:
/// missing objects and buckets, refused credentials, any other 4xx.
fn classify<T, E>(
    bucket: &str,
    key: &str,
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Attempt<T, StorageError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let url = format!("s3://{bucket}/{key}");
    let full = DisplayErrorContext(err).to_string();
    match err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Attempt::Transient(full),
        SdkError::DispatchFailure(d) if !d.is_user() => Attempt::Transient(full),
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = err.code().unwrap_or_default();
            let reason = format!(
                "HTTP {status} {code}: {}",
                err.message().unwrap_or_default()
            );
            let throttled = matches!(
                code,
                "SlowDown"
                    | "Throttling"
                    | "ThrottlingException"
                    | "RequestTimeout"
                    | "InternalError"
                    | "ServiceUnavailable"
            );
            if status >= 500 || status == 429 || throttled {
                Attempt::Transient(reason)
            } else if code == "NoSuchBucket" {
                Attempt::Permanent(StorageError::NoSuchBucket {
                    url,
                    bucket: bucket.to_owned(),
                })
            } else if status == 404 || code == "NoSuchKey" || code == "NotFound" {
                Attempt::Permanent(StorageError::NotFound { url })
            } else if status == 403
                || matches!(
                    code,
                    "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"
                )
            {
                Attempt::Permanent(StorageError::Denied { url, reason })
            } else {
                Attempt::Permanent(StorageError::Failed { url, reason })
            }
        }
        _ => Attempt::Permanent(StorageError::Failed { url, reason: full }),
    }
}
