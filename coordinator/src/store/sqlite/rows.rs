//! Row mapping: job and batch records from their rows, and the reads built on them.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row};

use crate::model::{BatchRecord, JobRecord, JobState, Losses};
use crate::store::StoreError;

/// The columns [`job_row`] reads, in its order.
pub(super) const JOB_COLUMNS: &str =
    "id, batch_id, name, state, attempt, worker, iteration, iterations,
    loss_content, loss_style, loss_tv, loss_total, checkpoint_key, result_key, result_attempt,
    error, deadline_ms, version, sidecar_key, attempt_limit, started_ms, ended_ms";

pub(super) fn state_of(s: &str) -> JobState {
    // Only this store writes the column, with `as_str` names.
    JobState::parse(s).unwrap_or(JobState::Failed)
}

pub(super) fn job_row(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let state: String = r.get(3)?;
    Ok(JobRecord {
        job_id: r.get(0)?,
        batch_id: r.get(1)?,
        name: r.get(2)?,
        state: state_of(&state),
        attempt: r.get(4)?,
        worker: r.get(5)?,
        iteration: r.get(6)?,
        iterations: r.get(7)?,
        losses: Losses {
            content: r.get(8)?,
            style: r.get(9)?,
            tv: r.get(10)?,
            total: r.get(11)?,
            // The store keeps the terms the dashboard shows; the temporal term is in
            // the total and in the job's sidecar.
            temporal: 0.0,
        },
        checkpoint_key: r.get(12)?,
        result_key: r.get(13)?,
        result_attempt: r.get(14)?,
        error: r.get(15)?,
        deadline_ms: r.get(16)?,
        version: r.get(17)?,
        sidecar_key: r.get(18)?,
        attempts_allowed: r.get(19)?,
        started_ms: r.get(20)?,
        ended_ms: r.get(21)?,
    })
}

pub(super) fn job(conn: &Connection, job_id: &str) -> Result<JobRecord, StoreError> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row([job_id], job_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "job",
            id: job_id.to_owned(),
        })
}

pub(super) fn jobs_where(
    conn: &Connection,
    clause: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<JobRecord>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {clause}"))?;
    let rows = stmt.query_map(args, job_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn batch_exists(conn: &Connection, batch_id: &str) -> Result<(), StoreError> {
    let found: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM batches WHERE id = ?1")?
        .query_row([batch_id], |r| r.get(0))
        .optional()?;
    found.map(|_| ()).ok_or_else(|| StoreError::NotFound {
        what: "batch",
        id: batch_id.to_owned(),
    })
}

pub(super) fn counts(
    conn: &Connection,
    batch_id: &str,
) -> Result<BTreeMap<JobState, u64>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT state, n FROM batch_counts WHERE batch_id = ?1 AND n > 0")?;
    let rows = stmt
        .query_map([batch_id], |r| {
            let s: String = r.get(0)?;
            Ok((state_of(&s), r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn batch_row(conn: &Connection, r: &Row<'_>) -> Result<BatchRecord, StoreError> {
    let batch_id: String = r.get(0)?;
    Ok(BatchRecord {
        counts: counts(conn, &batch_id)?,
        batch_id,
        name: r.get(1)?,
        priority: r.get(2)?,
        max_attempts: r.get(3)?,
        created_ms: r.get(4)?,
        owner: r.get(5)?,
    })
}
