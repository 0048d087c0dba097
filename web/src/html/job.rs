//! A job's page: its result or latest preview beside its inputs, its loss curve, its
//! parameters and attempts; and the thumbnail each job shows in its batch's grid.

use std::fmt::Write as _;

use stylefarm_core::layout::{AttemptProgress, View};
use stylefarm_core::plot;
use stylefarm_proto::v1;

use super::{action, esc, job_state, page, progress, span};
use crate::session::Session;

/// What the job page shows beyond the coordinator's answer: read from storage.
pub struct JobView {
    /// The job and its spec, as the coordinator answered.
    pub detail: v1::JobDetail,
    /// Its batch's owner (who may act on it).
    pub owner: String,
    /// Its batch's name.
    pub batch_name: String,
    /// The progress file of the attempt shown (the result's, else the current one).
    pub progress: Option<AttemptProgress>,
    /// Each listed attempt's number and progress file, newest first.
    pub attempts: Vec<(u32, Option<AttemptProgress>)>,
}

/// Whether a job can still change.
fn live(j: &v1::JobStatus) -> bool {
    matches!(
        job_state(j.state),
        "waiting" | "queued" | "leased" | "running"
    )
}

/// The attempt whose files the page shows: the one whose output counts, else the
/// latest; `None` before the first attempt.
pub fn shown_attempt(j: &v1::JobStatus) -> Option<u32> {
    match (j.result_attempt, j.attempt) {
        (0, 0) => None,
        (0, a) => Some(a),
        (r, _) => Some(r),
    }
}

/// The address of a view image of attempt `n`.
fn view_src(j: &v1::JobStatus, n: u32, view: View) -> String {
    format!("/jobs/{}/attempts/{n}/{}", esc(&j.job_id), view.file_name())
}

/// The iteration of the job's latest checkpoint (0 before one): its preview's version.
pub fn checkpointed(j: &v1::JobStatus) -> u32 {
    stylefarm_core::layout::checkpoint_iteration(&j.checkpoint_key).unwrap_or(0)
}

/// The image that stands for a job: its result's thumbnail once it succeeded, else the
/// latest preview (versioned by its checkpoint, so a browser fetches it again only when
/// a new one is written), with a caption of what it is.
fn face(j: &v1::JobStatus) -> Option<(String, &'static str)> {
    if j.result_attempt > 0 {
        return Some((view_src(j, j.result_attempt, View::Thumbnail), "result"));
    }
    (j.attempt > 0 && checkpointed(j) > 0).then(|| {
        (
            format!(
                "{}?v={}",
                view_src(j, j.attempt, View::Preview),
                checkpointed(j)
            ),
            "preview",
        )
    })
}

/// One job's tile in a batch's grid of thumbnails.
pub(crate) fn tile(j: &v1::JobStatus) -> String {
    let none = if live(j) {
        "no preview yet"
    } else {
        "no image"
    };
    let img = face(j).map_or_else(
        || format!(r#"<span class="noimage">{none}</span>"#),
        |(src, what)| {
            format!(
                r#"<img src="{src}" alt="{name}: {what}" loading="lazy" width="160" data-face="{what}"><span class="noimage" hidden>no image yet</span>"#,
                name = esc(&j.name)
            )
        },
    );
    format!(
        r#"<li data-tile="{id}"><a href="/jobs/{id}">{img}<span class="tile-name">{name}</span></a> <span class="badge state-{state}">{state}</span></li>"#,
        id = esc(&j.job_id),
        name = esc(&j.name),
        state = job_state(j.state),
    )
}

fn figure(src: &str, caption: &str, alt: &str) -> String {
    format!(
        r#"<figure><img src="{src}" alt="{alt}"><span class="noimage" hidden>no image yet</span><figcaption>{caption}</figcaption></figure>"#,
        alt = esc(alt),
        caption = esc(caption)
    )
}

/// The part of the job page that follows the job (fetched again while it runs): its
/// state, its images and its loss curve.
pub fn job_live(j: &v1::JobStatus, spec: &v1::JobSpec, shown: Option<&AttemptProgress>) -> String {
    let state = job_state(j.state);
    let mut out = String::new();
    let losses = j.losses.unwrap_or_default();
    let _ = write!(
        out,
        r#"<p class="status"{ended}>State <span class="badge state-{state}" data-job-state>{state}</span> · attempt {attempt} of {allowed} · worker {worker} · {progress}</p>"#,
        ended = if live(j) { "" } else { " data-ended" },
        attempt = j.attempt,
        allowed = j.attempts_allowed,
        worker = if j.worker.is_empty() {
            "—".to_owned()
        } else {
            esc(&j.worker)
        },
        progress = progress(j.iteration, j.iterations, "iterations"),
    );
    if losses.total > 0.0 {
        let _ = write!(
            out,
            r#"<p class="losses">Loss {:.4e}: content {:.4e}, style {:.4e}, TV {:.4e}</p>"#,
            losses.total, losses.content, losses.style, losses.tv
        );
    }
    if !j.error.is_empty() {
        let _ = write!(
            out,
            r#"<p class="error error-text" role="alert">{}</p>"#,
            esc(&j.error)
        );
    }
    out.push_str(r#"<div class="figures">"#);
    if let Some((src, what)) = face(j) {
        let caption = if what == "result" {
            "Result".to_owned()
        } else {
            format!(
                "Latest preview (iteration {} checkpointed)",
                shown.map_or(0, |p| p.iteration)
            )
        };
        out.push_str(&figure(&src, &caption, &format!("{}: {what}", j.name)));
    }
    if let Some(n) = shown_attempt(j) {
        let label = |r: Option<&v1::ObjectRef>| {
            r.map_or(String::new(), |r| {
                if r.label.is_empty() {
                    r.uri.clone()
                } else {
                    r.label.clone()
                }
            })
        };
        out.push_str(&figure(
            &view_src(j, n, View::Content),
            &format!("Content: {}", label(spec.content.as_ref())),
            "the content photo",
        ));
        for (k, s) in spec.styles.iter().enumerate() {
            out.push_str(&figure(
                &view_src(j, n, View::Style(k)),
                &format!(
                    "Style {}: {} (weight {})",
                    k + 1,
                    label(s.image.as_ref()),
                    s.weight
                ),
                &format!("style image {}", k + 1),
            ));
        }
    }
    out.push_str("</div>");
    match shown.and_then(AttemptProgress::curve) {
        Some(curve) => {
            let _ = write!(
                out,
                r#"<figure class="curve" data-points="{}">{}<figcaption>Losses over iterations (log scale)</figcaption></figure>"#,
                curve.points.len(),
                plot::loss_svg(&j.name, &curve)
            );
        }
        None => out.push_str(
            r#"<p class="hint">No loss curve yet: the worker writes one with each checkpoint.</p>"#,
        ),
    }
    out
}

fn time(unix_s: f64, now_ms: i64) -> String {
    if unix_s <= 0.0 {
        return "—".into();
    }
    // Seconds since the epoch fit an i64 of milliseconds for any date a worker writes.
    #[allow(clippy::cast_possible_truncation)]
    let ms = (unix_s * 1000.0) as i64;
    format!("{} ago", span(now_ms.saturating_sub(ms)))
}

/// The job page.
pub fn job(who: &Session, v: &JobView, now_ms: i64) -> String {
    let j = v.detail.job.clone().unwrap_or_default();
    let spec = v.detail.spec.clone().unwrap_or_default();
    let id = esc(&j.job_id);
    let mut actions = String::new();
    if live(&j) && who.may_change(&v.owner) {
        actions = action(
            &format!("/batches/{}/jobs/{}/cancel", j.batch_id, j.job_id),
            &who.csrf,
            &format!("Cancel {}", j.name),
            "danger",
        );
    }
    let mut links = String::new();
    if !j.result_key.is_empty() {
        let _ = write!(
            links,
            r#"<p class="links"><a href="/jobs/{id}/output">Output image ({format})</a> · <a href="/jobs/{id}/sidecar.json">Sidecar (JSON)</a></p>"#,
            format = stylefarm_core::OutputFormat::from_name(&j.result_key)
                .map_or("image", stylefarm_core::OutputFormat::as_str)
        );
    }
    let mut params = String::new();
    if let Ok(serde_json::Value::Object(map)) = spec
        .params
        .clone()
        .ok_or(())
        .and_then(|p| stylefarm_core::RenderParams::try_from(p).map_err(|_| ()))
        .and_then(|p| serde_json::to_value(p).map_err(|_| ()))
    {
        for (k, value) in map {
            let _ = write!(
                params,
                "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
                esc(&k),
                esc(&value.to_string())
            );
        }
    }
    let mut attempts = String::new();
    for (n, p) in &v.attempts {
        let mark = if *n == j.result_attempt {
            " (result)"
        } else if *n == j.attempt && live(&j) {
            " (current)"
        } else {
            ""
        };
        let row = p.as_ref().map_or_else(
            || {
                if *n != j.attempt {
                    return r#"<td colspan="4">no record (it ended before its first checkpoint)</td>"#
                        .to_owned();
                }
                // The latest attempt before its first checkpoint: what the coordinator knows.
                let started = if j.started_ms > 0 {
                    format!("{} ago", span(now_ms.saturating_sub(j.started_ms)))
                } else {
                    "—".into()
                };
                let state = if live(&j) {
                    "no checkpoint yet"
                } else {
                    "ended before its first checkpoint"
                };
                format!(
                    "<td>{}</td><td>—</td><td>{started}</td><td>{state}</td>",
                    esc(&j.worker)
                )
            },
            |p| {
                format!(
                    "<td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                    esc(&p.worker),
                    esc(&p.device),
                    time(p.started_unix_s, now_ms),
                    format_args!(
                        "{} of {}, last written {}",
                        p.iteration,
                        p.iterations,
                        time(p.updated_unix_s, now_ms)
                    ),
                )
            },
        );
        let _ = write!(attempts, "<tr><th scope=\"row\">{n}{mark}</th>{row}</tr>");
    }
    let body = format!(
        r#"<p><a href="/batches/{batch}">Batch {batch_name}</a></p>
<h1>{name}</h1>
<section id="job-live" data-live="/jobs/{id}/live">{live}</section>
<div class="actions">{actions}</div>
{links}
<h2>Attempts</h2>
<table class="attempts"><caption class="sr">Attempts of {name}, newest first</caption>
<thead><tr><th scope="col">Attempt</th><th scope="col">Worker</th><th scope="col">Device</th><th scope="col">Started</th><th scope="col">Progress</th></tr></thead>
<tbody>{attempts}</tbody></table>
<h2>Parameters</h2>
<table class="params"><caption class="sr">Render parameters</caption><tbody>{params}</tbody></table>"#,
        batch = esc(&j.batch_id),
        batch_name = esc(&v.batch_name),
        name = esc(&j.name),
        live = job_live(&j, &spec, v.progress.as_ref()),
    );
    page(&j.name, Some(who), &body)
}
