//! Server-rendered pages: every value that came from the farm is escaped here, in one
//! place ([`esc`]), and the only script is `/static/app.js`.

use std::fmt::Write as _;

use stylefarm_core::{BatchState, JobState};
use stylefarm_proto::{convert, v1};

use crate::session::Session;

pub mod job;
mod workers;

pub use job::{job, job_live, JobView};
pub use workers::{worker_rows, workers};

/// `s` safe inside HTML text and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: `title`, who is signed in (with the sign-out form) and `body`.
pub fn page(title: &str, who: Option<&Session>, body: &str) -> String {
    let nav = match who {
        Some(s) => format!(
            r#"<nav aria-label="Main"><a href="/batches">Batches</a> <a href="/workers">Workers</a></nav>
<form class="who" method="post" action="/logout"><input type="hidden" name="csrf" value="{csrf}">
<span>Signed in as <strong>{name}</strong> ({roles})</span> <button type="submit">Sign out</button></form>"#,
            csrf = esc(&s.csrf),
            name = esc(&s.name),
            roles = esc(&s.roles.join(", ")),
        ),
        None => String::new(),
    };
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · stylefarm</title>
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header><span class="brand">stylefarm</span>{nav}</header>
<main id="main">
{body}
</main>
</body>
</html>
"##,
        title = esc(title),
    )
}

/// The sign-in page, with `error` above the form when the last try failed; `nonce`
/// echoes the sign-in cookie's.
pub fn login(error: Option<&str>, nonce: &str) -> String {
    let error = error.map_or(String::new(), |e| {
        format!(
            r#"<p class="error" role="alert" id="login-error">{}</p>"#,
            esc(e)
        )
    });
    page(
        "Sign in",
        None,
        &format!(
            r#"<h1>Sign in</h1>
{error}<form method="post" action="/login" class="login">
<input type="hidden" name="nonce" value="{nonce}">
<label for="token">Your stylefarm token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<p class="hint">The token from <code>stylefarm-coordinator token add</code>, as in your <code>--token-file</code>.</p>
<button type="submit">Sign in</button>
</form>"#,
            nonce = esc(nonce)
        ),
    )
}

/// An error page: what happened, in the coordinator's words.
pub fn error(who: Option<&Session>, title: &str, message: &str) -> String {
    page(
        title,
        who,
        &format!(
            r#"<h1>{}</h1><p class="error" role="alert">{}</p><p><a href="/batches">Back to the batches</a></p>"#,
            esc(title),
            esc(message)
        ),
    )
}

/// A job state's name as the pages show it.
pub fn job_state(state: i32) -> &'static str {
    convert::job_state("state", state).map_or("unknown", JobState::as_str)
}

/// A batch state's name as the pages show it.
pub fn batch_state(state: i32) -> &'static str {
    convert::batch_state("state", state).map_or("unknown", BatchState::as_str)
}

fn count(b: &v1::Batch, state: &str) -> u32 {
    b.jobs_by_state.get(state).copied().unwrap_or(0)
}

fn total(b: &v1::Batch) -> u32 {
    b.jobs_by_state
        .values()
        .fold(0, |a, n| a.saturating_add(*n))
}

fn ended(b: &v1::Batch) -> u32 {
    JobState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .fold(0, |n, s| n.saturating_add(count(b, s.as_str())))
}

/// A duration in words a wrangler reads at a glance: `45 s`, `12 min`, `3 h 5 min`.
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// How long a job's latest attempt has run (`running`: it still does, so the page counts
/// on), or ran; `None` for a job waiting in the queue or never started.
pub fn elapsed(j: &v1::JobStatus, now_ms: i64) -> Option<(i64, bool)> {
    if j.started_ms <= 0 || matches!(job_state(j.state), "queued" | "waiting" | "blocked") {
        return None;
    }
    let running = j.ended_ms <= 0;
    let end = if running { now_ms } else { j.ended_ms };
    Some((end.saturating_sub(j.started_ms).max(0), running))
}

/// Time left at the rate jobs have succeeded so far (failures and cancels take no
/// render time to speak of); `None` before the first succeeds or once none is left.
pub fn eta(b: &v1::Batch, now_ms: i64) -> Option<i64> {
    let done = i64::from(count(b, "succeeded"));
    let left = i64::from(total(b).saturating_sub(ended(b)));
    (done > 0 && left > 0).then(|| {
        now_ms
            .saturating_sub(b.created_unix_ms)
            .max(0)
            .saturating_mul(left)
            / done
    })
}

/// Time left on a batch page: the iterations its listed jobs still have to run, at the
/// rate they ran so far.
pub fn eta_of_jobs(b: &v1::Batch, now_ms: i64) -> Option<i64> {
    let done: u64 = b.jobs.iter().map(|j| u64::from(j.iteration)).sum();
    let left: u64 = b
        .jobs
        .iter()
        .filter(|j| !JobState::parse(job_state(j.state)).is_some_and(JobState::is_terminal))
        .map(|j| u64::from(j.iterations.saturating_sub(j.iteration)))
        .sum();
    let elapsed = u64::try_from(now_ms.saturating_sub(b.created_unix_ms).max(0)).unwrap_or(0);
    (done > 0 && left > 0).then(|| {
        let ms = u128::from(elapsed) * u128::from(left) / u128::from(done);
        i64::try_from(ms).unwrap_or(i64::MAX)
    })
}

pub(crate) fn progress(done: u32, all: u32, label: &str) -> String {
    let pct = (u64::from(done) * 100)
        .checked_div(u64::from(all))
        .unwrap_or(0);
    format!(
        r#"<progress max="{all}" value="{done}" aria-label="{label}">{pct}%</progress> <span class="num">{done}/{all}</span>"#,
        label = esc(label)
    )
}

/// Jobs per state: every state with its live-updated count (`all`), or only those
/// that have jobs.
fn counts(b: &v1::Batch, all: bool) -> String {
    let mut out = String::from(r#"<ul class="counts">"#);
    for s in JobState::ALL.map(JobState::as_str) {
        if !all && count(b, s) == 0 {
            continue;
        }
        let _ = write!(
            out,
            r#"<li class="state-{s}"><span class="label">{s}</span> <span data-count="{s}">{}</span></li>"#,
            count(b, s)
        );
    }
    out.push_str("</ul>");
    out
}

/// The batches page's table body (also fetched on its own to refresh the page).
pub fn batch_rows(batches: &[v1::Batch], now_ms: i64) -> String {
    let mut rows = String::new();
    for b in batches {
        let id = esc(&b.batch_id);
        let eta = eta(b, now_ms).map_or("—".to_owned(), |ms| format!("≈ {}", span(ms)));
        let _ = write!(
            rows,
            r#"<tr data-batch="{id}"><td><a href="/batches/{id}">{name}</a></td><td>{owner}</td><td class="num">{prio}</td><td><span class="badge state-{state}">{state}</span></td><td>{counts}</td><td>{progress}</td><td class="nowrap">{eta}</td><td class="nowrap">{age}</td></tr>"#,
            name = esc(&b.name),
            owner = esc(&b.owner),
            prio = b.priority,
            state = batch_state(b.state),
            counts = counts(b, false),
            progress = progress(ended(b), total(b), &format!("{} jobs ended", b.name)),
            age = span(now_ms.saturating_sub(b.created_unix_ms)),
        );
    }
    if batches.is_empty() {
        rows.push_str(r#"<tr><td colspan="8">No batches.</td></tr>"#);
    }
    rows
}

/// The batches page.
pub fn batches(who: &Session, batches: &[v1::Batch], filter: Option<&str>, now_ms: i64) -> String {
    let mut options = String::from(r#"<option value="">every state</option>"#);
    for s in BatchState::ALL.map(BatchState::as_str) {
        let selected = if filter == Some(s) { " selected" } else { "" };
        let _ = write!(options, r#"<option value="{s}"{selected}>{s}</option>"#);
    }
    let body = format!(
        r#"<h1>Batches</h1>
<form method="get" action="/batches" class="filter"><label for="state">State</label>
<select id="state" name="state">{options}</select> <button type="submit">Filter</button></form>
<div class="scroll" role="region" aria-label="Batches table" tabindex="0"><table class="batches" data-refresh="/batches/rows{query}">
<caption class="sr">Batches, newest first</caption>
<thead><tr><th scope="col">Name</th><th scope="col">Owner</th><th scope="col">Priority</th><th scope="col">State</th><th scope="col">Jobs</th><th scope="col">Progress</th><th scope="col">ETA</th><th scope="col">Age</th></tr></thead>
<tbody>{rows}</tbody>
</table></div>"#,
        query = filter.map_or(String::new(), |f| format!("?state={}", esc(f))),
        rows = batch_rows(batches, now_ms),
    );
    page("Batches", Some(who), &body)
}

pub(crate) fn action(path: &str, csrf: &str, label: &str, class: &str) -> String {
    format!(
        r#"<form method="post" action="{path}" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="{class}">{label}</button></form>"#,
        path = esc(path),
        csrf = esc(csrf),
        label = esc(label),
        class = esc(class),
    )
}

fn job_row(j: &v1::JobStatus, batch_id: &str, who: &Session, owner: &str, now_ms: i64) -> String {
    let state = job_state(j.state);
    let live = matches!(state, "waiting" | "queued" | "leased" | "running");
    let cancel = if live && who.may_change(owner) {
        action(
            &format!("/batches/{batch_id}/jobs/{}/cancel", j.job_id),
            &who.csrf,
            &format!("Cancel {}", j.name),
            "danger",
        )
    } else {
        String::new()
    };
    format!(
        r#"<tr data-job="{id}"><td><a href="/jobs/{id}">{name}</a></td><td data-field="state"><span class="badge state-{state}">{state}</span></td><td class="num" data-field="attempt">{attempt}</td><td data-field="worker">{worker}</td><td data-field="progress">{progress}</td><td class="num nowrap" data-field="elapsed"{ticks}>{elapsed}</td><td data-field="losses" class="num">{loss}</td><td data-field="error" class="error-text">{error}</td><td>{cancel}</td></tr>"#,
        id = esc(&j.job_id),
        name = esc(&j.name),
        attempt = j.attempt,
        worker = esc(&j.worker),
        progress = progress(j.iteration, j.iterations, &format!("{} iterations", j.name)),
        elapsed = elapsed(j, now_ms).map_or(String::new(), |(ms, _)| span(ms)),
        ticks = elapsed(j, now_ms)
            .filter(|(_, running)| *running)
            .map_or(String::new(), |(ms, _)| format!(r#" data-running="{ms}""#)),
        loss = j
            .losses
            .as_ref()
            .filter(|l| l.total > 0.0)
            .map_or(String::new(), |l| format!("{:.4e}", l.total)),
        error = esc(&j.error),
    )
}

/// One batch: its counts, actions and a page of its jobs.
pub fn batch(who: &Session, b: &v1::Batch, page_token: &str, now_ms: i64) -> String {
    let id = esc(&b.batch_id);
    let mut actions = String::new();
    if who.may_change(&b.owner) {
        if matches!(batch_state(b.state), "queued" | "running") {
            actions.push_str(&action(
                &format!("/batches/{}/cancel", b.batch_id),
                &who.csrf,
                "Cancel batch",
                "danger",
            ));
        }
        let retry = |query: &str, label: &str| {
            action(
                &format!("/batches/{}/retry{query}", b.batch_id),
                &who.csrf,
                label,
                "",
            )
        };
        let (failed, cancelled) = (count(b, "failed") > 0, count(b, "cancelled") > 0);
        if failed {
            actions.push_str(&retry("", "Retry failed jobs"));
        }
        if failed && cancelled {
            actions.push_str(&retry(
                "?include=cancelled",
                "Retry failed and cancelled jobs",
            ));
        } else if cancelled {
            actions.push_str(&retry("?include=cancelled", "Retry cancelled jobs"));
        }
    }
    let mut rows = String::new();
    let mut tiles = String::new();
    for j in &b.jobs {
        rows.push_str(&job_row(j, &b.batch_id, who, &b.owner, now_ms));
        tiles.push_str(&job::tile(j));
    }
    let mut pager = String::new();
    if !page_token.is_empty() {
        let _ = write!(pager, r#"<a href="/batches/{id}">First page</a> "#);
    }
    if !b.next_page_token.is_empty() {
        let _ = write!(
            pager,
            r#"<a href="/batches/{id}?page={}" rel="next">Next page</a>"#,
            esc(&b.next_page_token)
        );
    }
    let eta = eta_of_jobs(b, now_ms).map_or("—".to_owned(), |ms| format!("≈ {}", span(ms)));
    let body = format!(
        r#"<p><a href="/batches">All batches</a></p>
<h1>{name}</h1>
<section class="summary" data-batch="{id}" data-events="/batches/{id}/events{page}">
<p>Owner <strong>{owner}</strong> · priority {prio} · state <span class="badge state-{state}" data-batch-state>{state}</span> · submitted {age} ago · ETA {eta}</p>
{counts}
<div class="actions">{actions}</div>
</section>
<div class="scroll" role="region" aria-label="Jobs table" tabindex="0"><table class="jobs">
<caption class="sr">Jobs of {name}</caption>
<thead><tr><th scope="col">Job</th><th scope="col">State</th><th scope="col">Attempt</th><th scope="col">Worker</th><th scope="col">Iterations</th><th scope="col">Elapsed</th><th scope="col">Loss</th><th scope="col">Error</th><th scope="col"><span class="sr">Actions</span></th></tr></thead>
<tbody>{rows}</tbody>
</table></div>
<nav class="pager" aria-label="Pages of jobs">{pager}</nav>
<p class="live" aria-live="polite" id="live-status"></p>
<h2>Images</h2>
<ul class="tiles" aria-label="Results and live previews of the jobs above">{tiles}</ul>"#,
        name = esc(&b.name),
        owner = esc(&b.owner),
        prio = b.priority,
        state = batch_state(b.state),
        age = span(now_ms.saturating_sub(b.created_unix_ms)),
        counts = counts(b, true),
        page = if page_token.is_empty() {
            String::new()
        } else {
            format!("?page={}", esc(page_token))
        },
    );
    page(&b.name, Some(who), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn farm_text_is_escaped() {
        assert_eq!(
            esc(r#"<script>"a"&'b'"#),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;"
        );
        let b = v1::Batch {
            batch_id: "b1".into(),
            name: "<img src=x onerror=alert(1)>".into(),
            owner: "alice".into(),
            ..Default::default()
        };
        let rows = batch_rows(&[b], 0);
        assert!(!rows.contains("<img"), "{rows}");
        assert!(rows.contains("&lt;img"));
    }

    #[test]
    fn eta_follows_the_rate_jobs_ended_at() {
        let mut b = v1::Batch {
            created_unix_ms: 0,
            ..Default::default()
        };
        b.jobs_by_state.insert("succeeded".into(), 1);
        b.jobs_by_state.insert("failed".into(), 5);
        b.jobs_by_state.insert("queued".into(), 3);
        assert_eq!(
            eta(&b, 60_000),
            Some(180_000),
            "failures say nothing of the rate"
        );
        b.jobs_by_state.insert("queued".into(), 0);
        assert_eq!(eta(&b, 60_000), None, "nothing left");
        assert_eq!(span(3_725_000), "1 h 2 min");
    }
}
