//! The writer thread: group commits, and the WAL checkpointer beside it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use rusqlite::Connection;

/// Most changes committed in one transaction.
pub const MAX_GROUP: usize = 1024;

pub(super) type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
pub(super) type Op = Box<dyn FnOnce(&Connection) -> Reply + Send>;

pub(super) fn write_loop(conn: &Connection, rx: &mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = format!("cannot begin a transaction: {e}");
            for op in group {
                op(conn)(Err(msg.clone()));
            }
            continue;
        }
        let mut replies = Vec::with_capacity(group.len());
        for op in group {
            replies.push(op(conn));
        }
        let commit = conn.execute_batch("COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            e.to_string()
        });
        if let Err(e) = &commit {
            tracing::error!(cause = %e, changes = replies.len(), "group commit failed");
        }
        for reply in replies {
            reply(commit.clone());
        }
    }
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
