//! What the interface reads from storage: the small view files workers write under each
//! attempt (previews, thumbnails, the inputs small, the progress with its loss curve),
//! and a job's output and sidecar for download. Keys are built only from what the
//! coordinator answered for the signed-in person ([`stylefarm_core::layout`]), never
//! from the request's text; every read is bounded in size, in time and in number at once.

use std::time::Duration;

use stylefarm_core::layout::{self, AttemptProgress, View, MAX_CURVE_BYTES, MAX_VIEW_IMAGE_BYTES};
use stylefarm_storage::{Limit, ObjectUrl, Storage, StorageArgs, StorageError};
use tokio::sync::Semaphore;

/// Storage reads in flight at once; more wait their turn.
const MAX_READS: usize = 8;
/// Downloads of outputs and sidecars in flight at once (each may be large).
const MAX_DOWNLOADS: usize = 2;
/// A storage read gives up after this (a page waits no longer for one image).
const READ_RETRY: Duration = Duration::from_secs(10);
/// Largest output or sidecar served for download.
pub const MAX_DOWNLOAD_BYTES: u64 = 512 << 20;

/// The farm's storage as the interface reads it.
pub struct Views {
    root: ObjectUrl,
    storage: Storage,
    reads: Semaphore,
    downloads: Semaphore,
}

/// A view image or download that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Not written (yet): no checkpoint so far, no result, an older worker.
    #[error("not written yet")]
    Missing,
    /// Storage failed or refused; the message names the object, never a credential.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The object is not what its name says (not a JPEG, not JSON).
    #[error("{0}")]
    Malformed(String),
}

impl Views {
    /// Opens storage from the flags; reads retry at most [`READ_RETRY`].
    pub fn open(args: &StorageArgs) -> Result<Self, StorageError> {
        let mut args = args.clone();
        args.storage_retry_ms = args
            .storage_retry_ms
            .min(u64::try_from(READ_RETRY.as_millis()).unwrap_or(u64::MAX));
        let (root, storage) = args.open()?;
        Ok(Self {
            root,
            storage,
            reads: Semaphore::new(MAX_READS),
            downloads: Semaphore::new(MAX_DOWNLOADS),
        })
    }

    async fn get(&self, key: &str, limit: &Limit, gate: &Semaphore) -> Result<Vec<u8>, ViewError> {
        let _turn = gate
            .acquire()
            .await
            .map_err(|_| ViewError::Malformed("shutting down".into()))?;
        let url = self.root.join(key)?;
        match self.storage.get(&url, limit).await {
            Ok(b) => Ok(b),
            Err(StorageError::NotFound { .. }) => Err(ViewError::Missing),
            Err(e) => Err(e.into()),
        }
    }

    /// A view image of attempt `attempt` of a job: JPEG bytes.
    pub async fn image(
        &self,
        batch_id: &str,
        job_id: &str,
        attempt: u32,
        view: View,
    ) -> Result<Vec<u8>, ViewError> {
        let key = view.key(&layout::attempt_prefix(batch_id, job_id, attempt));
        let bytes = self
            .get(
                &key,
                &Limit::new("a view image", MAX_VIEW_IMAGE_BYTES),
                &self.reads,
            )
            .await?;
        if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
            Ok(bytes)
        } else {
            Err(ViewError::Malformed(format!("{key} is not a JPEG")))
        }
    }

    /// The progress file of attempt `attempt`, with its loss curve.
    pub async fn progress(
        &self,
        batch_id: &str,
        job_id: &str,
        attempt: u32,
    ) -> Result<AttemptProgress, ViewError> {
        let key = View::Progress.key(&layout::attempt_prefix(batch_id, job_id, attempt));
        let bytes = self
            .get(
                &key,
                &Limit::new("a progress file", MAX_CURVE_BYTES),
                &self.reads,
            )
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ViewError::Malformed(format!("{key} does not read: {e}")))
    }

    /// An object the coordinator named for a job (its result or sidecar), for download.
    pub async fn download(&self, key: &str) -> Result<Vec<u8>, ViewError> {
        self.get(
            key,
            &Limit::new("a download", MAX_DOWNLOAD_BYTES),
            &self.downloads,
        )
        .await
    }
}
