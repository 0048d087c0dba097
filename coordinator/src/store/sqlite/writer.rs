//! The writer thread, which commits changes in groups and keeps the store's [`Health`],
//! and the WAL checkpointer beside it.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::error::{describe, storage_failure};
use crate::store::StoreError;

/// Most changes committed in one transaction.
pub const MAX_GROUP: usize = 1024;

/// A change queued for the writer. Either it runs, inside its group's transaction, and
/// its caller hears once the group's commit is known; or it is aborted without touching
/// the database, and its caller hears why.
pub(super) trait Op: Send {
    /// Runs the change; what it returns answers the caller with the group's commit.
    fn run(self: Box<Self>, conn: &Connection) -> Ran;

    /// Tells the caller that the change was not made, and why.
    fn abort(self: Box<Self>, reason: String);
}

/// A change that ran, waiting for its group's commit.
pub(super) struct Ran {
    /// Answers the caller once the group's commit is known (`Err`: why it failed).
    reply: Box<dyn FnOnce(Result<(), String>) + Send>,
    /// Why storage refused one of the change's statements, if it did (see
    /// [`storage_failure`]).
    storage_failure: Option<String>,
}

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
    fn run(self: Box<Self>, conn: &Connection) -> Ran {
        let Self { f, tx } = *self;
        // A change that panics must not take the writer, and every later change, with it.
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
            .unwrap_or(Err(StoreError::Closed));
        Ran {
            storage_failure: out.as_ref().err().and_then(storage_failure),
            reply: Box::new(move |commit| {
                // The caller may have gone away; nobody else wants the answer.
                let _ = tx.send(
                    commit
                        .map_err(|reason| StoreError::Commit { reason })
                        .and(out),
                );
            }),
        }
    }

    fn abort(self: Box<Self>, reason: String) {
        let _ = self.tx.send(Err(StoreError::Commit { reason }));
    }
}

/// Whether the store can commit, as the writer last found out.
///
/// "Cannot commit" is a storage failure in the last group: its BEGIN or COMMIT failed,
/// SQLite rolled it back, or any statement in it met a full disk, an I/O error, a lock
/// held past the busy timeout or a damaged file. The store is unhealthy from then until
/// a group commits with no such failure. A change refused for its own reasons (a stale
/// token, a constraint) says nothing about the database and changes nothing here.
#[derive(Debug)]
pub(super) struct Health {
    /// False once the writer thread has stopped: nothing can be committed any more.
    writer_running: AtomicBool,
    /// Why the last group met a storage failure; `None` when it did not.
    failure: Mutex<Option<String>>,
}

impl Health {
    pub(super) fn new() -> Self {
        Self {
            writer_running: AtomicBool::new(true),
            failure: Mutex::new(None),
        }
    }

    /// `Ok` while the store can commit; else why not.
    pub(super) fn check(&self) -> Result<(), String> {
        if !self.writer_running() {
            return Err("the database writer has stopped".to_owned());
        }
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// True until the writer thread stops.
    pub(super) fn writer_running(&self) -> bool {
        self.writer_running.load(Ordering::SeqCst)
    }

    fn record(&self, group: Result<(), String>) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = group.err();
    }
}

/// Commits what arrives on `rx` in groups of up to [`MAX_GROUP`] until the queue closes.
pub(super) fn write_loop(conn: &Connection, rx: &mpsc::Receiver<Box<dyn Op>>, health: &Health) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        commit_group(conn, group, health);
    }
    health.writer_running.store(false, Ordering::SeqCst);
}

/// Runs a group of changes in one transaction, commits once, records in `health` whether
/// the group met a storage failure and only then answers each caller (so a caller that
/// saw its change commit finds the store healthy).
///
/// A change only ever runs inside the group's transaction. When the transaction cannot
/// begin (another connection holds the lock, the disk fails), or SQLite rolls it back
/// part way through (it may, on a full disk, an I/O error or a lock), the changes not
/// yet run are aborted: outside a transaction each statement would commit on its own,
/// and a caller told that its change failed could find it on disk.
fn commit_group(conn: &Connection, group: Vec<Box<dyn Op>>, health: &Health) {
    let changes = group.len();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let reason = format!("cannot begin a transaction: {}", describe(&e));
        tracing::error!(cause = %reason, changes, "the database cannot commit");
        health.record(Err(reason.clone()));
        for op in group {
            op.abort(reason.clone());
        }
        return;
    }
    let mut replies = Vec::with_capacity(changes);
    let mut refused = None;
    let mut waiting = group.into_iter();
    for op in waiting.by_ref() {
        let ran = op.run(conn);
        replies.push(ran.reply);
        refused = refused.or(ran.storage_failure);
        if conn.is_autocommit() {
            break;
        }
    }
    let commit = if conn.is_autocommit() {
        Err(format!(
            "SQLite rolled the transaction back: {}",
            refused.as_deref().unwrap_or("no reason given")
        ))
    } else {
        conn.execute_batch("COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            describe(&e)
        })
    };
    let outcome = match (&commit, refused) {
        (Err(reason), _) => Err(reason.clone()),
        (Ok(()), Some(reason)) => Err(format!("a statement failed: {reason}")),
        (Ok(()), None) => Ok(()),
    };
    if let Err(cause) = &outcome {
        tracing::error!(%cause, changes, "the database cannot commit");
    }
    health.record(outcome);
    if let Err(reason) = &commit {
        for op in waiting {
            op.abort(reason.clone());
        }
    }
    for reply in replies {
        reply(commit.clone());
    }
}

/// Copies the WAL back into the database file every 200 ms while the store is alive.
/// A passive checkpoint never blocks the writer, so its I/O and fsyncs stay off the
/// path of every acknowledged change; the writer only appends to the WAL.
pub(super) fn checkpoint_loop(conn: &Connection, health: &Health) {
    while health.writer_running() {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(cause = %e, "WAL checkpoint failed; will retry");
        }
    }
}
