//! The local directory backend: writes go through core's `write_atomic` (a hidden
//! temporary file, synced and renamed into place), so a reader never sees half an object.

use std::path::Path;

use crate::url::stays_inside;
use crate::{Fetched, Limit, StorageError};

fn io(path: &Path, cause: std::io::Error) -> StorageError {
    if cause.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound {
            url: path.display().to_string(),
        }
    } else {
        StorageError::Io {
            path: path.display().to_string(),
            cause,
        }
    }
}

fn checked(path: &Path) -> Result<(), StorageError> {
    if stays_inside(path) {
        Ok(())
    } else {
        Err(StorageError::InvalidUrl {
            url: path.display().to_string(),
            reason: "must not contain '..'".into(),
        })
    }
}

/// Writes `bytes` to `path` atomically, creating directories.
pub async fn put(path: &Path, bytes: Vec<u8>) -> Result<(), StorageError> {
    checked(path)?;
    let shown = path.to_owned();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        stylefarm_core::fs::write_atomic(&path, &bytes).map_err(|e| io(&path, e))
    })
    .await
    .map_err(|e| io(&shown, std::io::Error::other(e)))?
}

/// Reads the regular file at `path` if it holds at most `limit` bytes, hashing as it
/// reads; more is never read (a file that grows meanwhile is refused too).
pub async fn get(path: &Path, limit: &Limit) -> Result<Fetched, StorageError> {
    checked(path)?;
    let owned = path.to_owned();
    let limit = limit.clone();
    tokio::task::spawn_blocking(move || {
        let path = owned.as_path();
        // The type first: opening a FIFO would wait for a writer.
        let before = std::fs::metadata(path).map_err(|e| io(path, e))?;
        if !before.is_file() {
            return Err(StorageError::Failed {
                url: path.display().to_string(),
                reason: "not a regular file".into(),
            });
        }
        let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
        let meta = file.metadata().map_err(|e| io(path, e))?;
        if !meta.is_file() {
            return Err(StorageError::Failed {
                url: path.display().to_string(),
                reason: "not a regular file".into(),
            });
        }
        limit.check(path.display(), meta.len())?;
        let mut fetched = Fetched::with_capacity(meta.len());
        let mut reader = std::io::Read::take(file, limit.bytes + 1);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf).map_err(|e| io(path, e))?;
            if n == 0 {
                break;
            }
            fetched.extend(&buf[..n]);
            limit.check(path.display(), fetched.len())?;
        }
        Ok(fetched)
    })
    .await
    .map_err(|e| io(path, std::io::Error::other(e)))?
}

/// Removes the file at `path` (none there is fine).
pub async fn delete(path: &Path) -> Result<(), StorageError> {
    checked(path)?;
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path, e)),
        _ => Ok(()),
    }
}

/// True when `path` is a file.
pub async fn exists(path: &Path) -> Result<bool, StorageError> {
    checked(path)?;
    match tokio::fs::metadata(path).await {
        Ok(m) => Ok(m.is_file()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path, e)),
    }
}
