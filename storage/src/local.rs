//! The local directory backend: writes go to a temporary file that is synced and
//! renamed into place, so a reader never sees half an object.

use std::path::Path;

use crate::url::stays_inside;
use crate::StorageError;

fn io(path: &Path, source: std::io::Error) -> StorageError {
    if source.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound {
            url: path.display().to_string(),
        }
    } else {
        StorageError::Io {
            path: path.display().to_string(),
            source,
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
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(&path, e)
        })
    })
    .await
    .map_err(|e| StorageError::Io {
        path: String::new(),
        source: std::io::Error::other(e),
    })?
}

/// Reads the file at `path`.
pub async fn get(path: &Path) -> Result<Vec<u8>, StorageError> {
    checked(path)?;
    tokio::fs::read(path).await.map_err(|e| io(path, e))
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
