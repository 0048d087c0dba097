//! SQLite's errors as [`StoreError`]s: the only place that knows both.

use crate::store::StoreError;

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Backend {
            source: Box::new(err),
        }
    }
}
