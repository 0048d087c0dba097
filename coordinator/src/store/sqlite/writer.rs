//! The writer thread, which commits changes in groups, and the WAL checkpointer beside
//! it.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::StoreError;

/// Most changes committed in one transaction.
pub const MAX_GROUP: usize = 1024;

/// A change queued for the writer. Either it runs, inside its group's transaction, and
/// its caller hears once the group's commit is known; or it is aborted without touching
/// the database, and its caller hears why.
pub(super) trait Op: Send {
    /// Runs the change; what it returns answers the caller with the group's commit.
    fn run(self: Box<Self>, conn: &Connection) -> Reply;

    /// Tells the caller that the change was not made, and why.
    fn abort(self: Box<Self>, reason: String);
}

/// Answers a change's caller once its group's commit is known (`Err`: why it failed).
pub(super) type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A change from the store: `f` runs on the writer's connection, its outcome goes to `tx`.
pub(super) struct Change<T, F> {
    pub(super) f: F,
    pub(super) tx: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Op for Change<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Reply {
        let Self { f, tx } = *self;
        // A change that panics must not take the writer, and every later change, with it.
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
            .unwrap_or(Err(StoreError::Closed));
        Box::new(move |commit| {
            // The caller may have gone away; nobody else wants the answer.
            let _ = tx.send(
                commit
                    .map_err(|reason| StoreError::Commit { reason })
                    .and(out),
            );
        })
    }

    fn abort(self: Box<Self>, reason: String) {
        let _ = self.tx.send(Err(StoreError::Commit { reason }));
    }
}

/// Commits what arrives on `rx` in groups of up to [`MAX_GROUP`] until the queue closes.
pub(super) fn write_loop(conn: &Connection, rx: &mpsc::Receiver<Box<dyn Op>>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let changes = group.len();
        if let Err(cause) = commit_group(conn, group) {
            tracing::error!(%cause, changes, "group commit failed");
        }
    }
}

/// Runs a group of changes in one transaction, commits once and answers each caller.
///
/// A change only ever runs inside the group's transaction. When the transaction cannot
/// begin (another connection holds the lock, the disk fails), or SQLite rolls it back
/// part way through (it may, on a full disk, an I/O error or a lock), the changes not
/// yet run are aborted: outside a transaction each statement would commit on its own,
/// and a caller told that its change failed could find it on disk.
fn commit_group(conn: &Connection, group: Vec<Box<dyn Op>>) -> Result<(), String> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let reason = format!("cannot begin a transaction: {e}");
        for op in group {
            op.abort(reason.clone());
        }
        return Err(reason);
    }
    let mut replies = Vec::with_capacity(group.len());
    let mut waiting = group.into_iter();
    for op in waiting.by_ref() {
        replies.push(op.run(conn));
        if conn.is_autocommit() {
            break;
        }
    }
    let commit = if conn.is_autocommit() {
        Err("SQLite rolled the transaction back part way through".to_owned())
    } else {
        conn.execute_batch("COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            e.to_string()
        })
    };
    if let Err(reason) = &commit {
        for op in waiting {
            op.abort(reason.clone());
        }
    }
    for reply in replies {
        reply(commit.clone());
    }
    commit
}

/// Copies the WAL back into the database file every 200 ms while the store is alive.
/// A passive checkpoint never blocks the writer, so its I/O and fsyncs stay off the
/// path of every acknowledged change; the writer only appends to the WAL.
pub(super) fn checkpoint_loop(conn: &Connection, alive: &AtomicBool) {
    while alive.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(cause = %e, "WAL checkpoint failed; will retry");
        }
    }
}
