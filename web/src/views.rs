//! What the interface reads from storage: the small view files workers write under each
//! attempt (previews, thumbnails, the inputs small, the progress with its loss curve),
//! and a job's output and sidecar for download. Keys are built only from what the
//! coordinator answered for the signed-in person ([`stylefarm_core::layout`]), never
//! from the request's text; every read is bounded in size, in time and in number at once.

use std::time::Duration;

use std::sync::Arc;
use stylefarm_core::layout::{
    self, AttemptProgress, View, MAX_PROGRESS_BYTES, MAX_VIEW_IMAGE_BYTES,
};
use stylefarm_storage::{Limit, ObjectUrl, Storage, StorageArgs, StorageError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Storage reads in flight at once; more wait their turn.
const MAX_READS: usize = 8;
/// Downloads of outputs and sidecars in flight at once (each may be large).
const MAX_DOWNLOADS: usize = 2;
/// A storage read's retries of transient failures stop after this.
const READ_RETRY: Duration = Duration::from_secs(10);
/// A read (its turn among the others included) gives up after this, however the
/// storage behaves: a page waits no longer for one image.
const READ_LIMIT: Duration = Duration::from_secs(15);
/// Largest output or sidecar served for download.
pub const MAX_DOWNLOAD_BYTES: u64 = 512 << 20;

/// The farm's storage as the interface reads it.
pub struct Views {
    root: ObjectUrl,
    storage: Storage,
    reads: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
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
    /// No answer within [`READ_LIMIT`] (storage slow, or too many reads at once).
    #[error("no answer from storage within {READ_LIMIT:?}")]
    Busy,
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
            reads: Arc::new(Semaphore::new(MAX_READS)),
            downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
        })
    }

    /// Reads `key` in its turn at `gate`, within [`READ_LIMIT`]; the turn comes back
    /// with the bytes, for a caller that holds it while it sends them.
    async fn get(
        &self,
        key: &str,
        limit: &Limit,
        gate: &Arc<Semaphore>,
    ) -> Result<(Vec<u8>, OwnedSemaphorePermit), ViewError> {
        let url = self.root.join(key)?;
        let read = async {
            let turn = Arc::clone(gate)
                .acquire_owned()
                .await
                .map_err(|_| ViewError::Busy)?;
            match self.storage.get(&url, limit).await {
                Ok(b) => Ok((b, turn)),
                Err(StorageError::NotFound { .. }) => Err(ViewError::Missing),
                Err(e) => Err(e.into()),
            }
        };
        tokio::time::timeout(READ_LIMIT, read)
            .await
            .map_err(|_| ViewError::Busy)?
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
        let limit = Limit::new("a view image", MAX_VIEW_IMAGE_BYTES);
        let (bytes, _) = self.get(&key, &limit, &self.reads).await?;
        if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
            Ok(bytes)
        } else {
            Err(ViewError::Malformed(format!("{key} is not a JPEG")))
        }
    }

    /// The progress file of attempt `attempt`, with its loss curve (thinned by the
    /// worker to a bounded number of points).
    pub async fn progress(
        &self,
        batch_id: &str,
        job_id: &str,
        attempt: u32,
    ) -> Result<AttemptProgress, ViewError> {
        let key = View::Progress.key(&layout::attempt_prefix(batch_id, job_id, attempt));
        let limit = Limit::new("a progress file", MAX_PROGRESS_BYTES);
        let (bytes, _) = self.get(&key, &limit, &self.reads).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ViewError::Malformed(format!("{key} does not read: {e}")))
    }

    /// An object the coordinator named for a job (its result or sidecar), for download,
    /// with its turn among the downloads: hold it until the bytes are sent.
    pub async fn download(&self, key: &str) -> Result<(Vec<u8>, OwnedSemaphorePermit), ViewError> {
        let limit = Limit::new("a download", MAX_DOWNLOAD_BYTES);
        self.get(key, &limit, &self.downloads).await
    }
}
