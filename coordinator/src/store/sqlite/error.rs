//! SQLite's errors as [`StoreError`]s, and which of them mean the database cannot
//! commit: the only place that knows both.

use rusqlite::ffi::ErrorCode;

use crate::store::StoreError;

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Backend {
            cause: Box::new(err),
        }
    }
}

/// Why storage, rather than the change itself, refused a statement: the disk is full, an
/// I/O error, a lock held too long, a file that went corrupt, read-only or missing. Such
/// an error from any statement means the database cannot commit (see `Health`). `None`
/// for errors of the change itself (a constraint, a stale token, a missing job), which
/// say nothing about the database.
pub(super) fn storage_failure(err: &StoreError) -> Option<String> {
    let StoreError::Backend { cause } = err else {
        return None;
    };
    let err = cause.downcast_ref::<rusqlite::Error>()?;
    let code = err.sqlite_error_code()?;
    matches!(
        code,
        ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DatabaseCorrupt
            | ErrorCode::NotADatabase
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
            | ErrorCode::FileLockingProtocolFailed
    )
    .then(|| describe(err))
}

/// An error in SQLite's own words for its code, e.g. "The database file is locked (SQLite
/// code 5)": fixed text that never quotes a statement or a value, fit for `/livez`.
pub(super) fn describe(err: &rusqlite::Error) -> String {
    match err.sqlite_error() {
        Some(e) => format!(
            "{} (SQLite code {})",
            rusqlite::ffi::code_to_str(e.extended_code),
            e.extended_code
        ),
        None => err.to_string(),
    }
}
