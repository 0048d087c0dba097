//! The workers page: every registered worker, live or lost, with its device, slots,
//! current jobs and when it was last heard from.

use std::fmt::Write as _;

use stylefarm_proto::v1;

use super::{esc, page, span};
use crate::session::Session;

fn bytes(n: u64) -> String {
    if n == 0 {
        return "—".into();
    }
    // Display only: a GiB figure with one decimal.
    #[allow(clippy::cast_precision_loss)]
    let gib = n as f64 / f64::from(1u32 << 30);
    format!("{gib:.1} GiB")
}

/// The workers table's body (also fetched on its own to refresh the page).
pub fn worker_rows(workers: &[v1::WorkerInfo], now_ms: i64) -> String {
    let mut rows = String::new();
    for w in workers {
        let state = if w.live { "live" } else { "lost" };
        let gpu = if w.gpu_model.is_empty() {
            "—".to_owned()
        } else {
            format!("{} ({})", esc(&w.gpu_model), bytes(w.gpu_memory_bytes))
        };
        let jobs = if w.job_ids.is_empty() {
            "idle".to_owned()
        } else {
            w.job_ids
                .iter()
                .map(|j| format!(r#"<a href="/jobs/{id}">{id}</a>"#, id = esc(j)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let heard = if w.last_heard_unix_ms > 0 {
            format!("{} ago", span(now_ms.saturating_sub(w.last_heard_unix_ms)))
        } else {
            "not since the coordinator started".to_owned()
        };
        let _ = write!(
            rows,
            r#"<tr data-worker="{id}"><td><strong>{name}</strong><br><span class="hint">{id}</span></td><td>{identity}</td><td><span class="badge worker-{state}">{state}</span></td><td>{device}</td><td>{gpu}</td><td class="num">{slots}</td><td class="num">{max}</td><td data-field="jobs">{jobs}</td><td class="nowrap">{heard}</td><td class="nowrap">{age} ago</td></tr>"#,
            id = esc(&w.worker_id),
            name = esc(&w.name),
            identity = esc(&w.identity),
            device = esc(&w.device),
            slots = w.slots,
            max = bytes(w.max_job_memory_bytes),
            age = span(now_ms.saturating_sub(w.registered_unix_ms)),
        );
    }
    if workers.is_empty() {
        rows.push_str(r#"<tr><td colspan="10">No workers registered.</td></tr>"#);
    }
    rows
}

/// The workers page.
pub fn workers(who: &Session, workers: &[v1::WorkerInfo], now_ms: i64) -> String {
    let live = workers.iter().filter(|w| w.live).count();
    let body = format!(
        r#"<h1>Workers</h1>
<p>{live} live of {all} registered. A lost worker's jobs go back to the queue when their leases expire.</p>
<div class="scroll" role="region" aria-label="Workers table" tabindex="0"><table class="workers" data-refresh="/workers/rows">
<caption class="sr">Registered workers</caption>
<thead><tr><th scope="col">Worker</th><th scope="col">Identity</th><th scope="col">State</th><th scope="col">Device</th><th scope="col">GPU</th><th scope="col">Slots</th><th scope="col">Memory per job</th><th scope="col">Jobs</th><th scope="col">Last heard</th><th scope="col">Registered</th></tr></thead>
<tbody>{rows}</tbody>
</table></div>"#,
        all = workers.len(),
        rows = worker_rows(workers, now_ms),
    );
    page("Workers", Some(who), &body)
}
