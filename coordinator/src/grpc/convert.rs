//! Requests to domain values and domain values to answers: the coordinator's edge.
//! Job specs themselves convert in `stylefarm_proto::convert`.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use sha2::{Digest, Sha256};
use stylefarm_core::limits::MAX_ATTEMPTS;
use stylefarm_core::{InvalidField, JobSpec};
use stylefarm_net::Identity;
use stylefarm_proto::v1;

use crate::config::Config;
use crate::model::{
    BatchRecord, Capacity, JobRecord, JobState, KnownWorker, NewBatch, NewJob, NewWorker,
};
use crate::state::Largest;
use stylefarm_weights::memory::{self, Backend, Dims, Fit, JobImages};
use stylefarm_weights::Architecture;

/// Longest batch name or client token.
const MAX_LABEL: usize = 200;

/// Validates a submission and expands it into the batch to store. Errors name the job
/// (index and output name) and the field.
pub fn new_batch(
    req: &v1::SubmitBatchRequest,
    config: &Config,
    owner: &Identity,
    largest: Largest,
) -> Result<NewBatch, InvalidField> {
    let size = req.encoded_len();
    if size > config.max_manifest_bytes {
        return Err(InvalidField::new(
            "manifest",
            format!(
                "{size} bytes is over the {}-byte limit (--max-manifest-bytes); split the batch",
                config.max_manifest_bytes
            ),
        ));
    }
    label("name", &req.name, false)?;
    label("client_token", &req.client_token, true)?;
    let max_attempts = match req.max_attempts {
        0 => config.max_attempts,
        n if n > MAX_ATTEMPTS => {
            return Err(InvalidField::new(
                "max_attempts",
                format!("{n} is over {MAX_ATTEMPTS}"),
            ))
        }
        n => n,
    };
    if req.jobs.is_empty() {
        return Err(InvalidField::new("jobs", "the batch has no jobs"));
    }
    if req.jobs.len() > config.max_jobs_per_batch as usize {
        return Err(InvalidField::new(
            "jobs",
            format!(
                "{} jobs is over the limit of {} per batch (--max-jobs-per-batch)",
                req.jobs.len(),
                config.max_jobs_per_batch
            ),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(req.jobs.len());
    let mut jobs = Vec::with_capacity(req.jobs.len());
    for (i, wire) in req.jobs.iter().enumerate() {
        let at = |e: InvalidField| {
            InvalidField::new(
                format!("jobs[{i}] (name {:?}) {}", wire.name, e.field),
                e.reason,
            )
        };
        let mut spec = JobSpec::try_from(wire.clone()).map_err(at)?;
        if let Some(first) = seen.insert(&wire.name, i) {
            return Err(at(InvalidField::new(
                "name",
                format!("duplicates jobs[{first}]; output names must be unique in a batch"),
            )));
        }
        runs_somewhere(&spec, largest).map_err(at)?;
        // Where results go is the coordinator's to decide.
        spec.output_key.clear();
        jobs.push(NewJob {
            name: spec.name.clone(),
            iterations: spec.params.total_iterations(),
            spec: v1::JobSpec::from(&spec).encode_to_vec(),
            after: Vec::new(),
        });
    }
    dependencies(req, &seen, &mut jobs)?;
    let mut unkeyed = req.clone();
    unkeyed.client_token.clear();
    Ok(NewBatch {
        name: req.name.clone(),
        owner: owner.name.clone(),
        adopt_unowned: owner.is_admin(),
        client_token: (!req.client_token.is_empty()).then(|| req.client_token.clone()),
        manifest_sha256: hex::encode(Sha256::digest(unkeyed.encode_to_vec())),
        priority: req.priority,
        max_attempts,
        jobs,
    })
}

/// Resolves each job's `after` names to jobs of the batch and refuses names that are
/// none of them, and dependencies that go round in a cycle (naming it).
fn dependencies(
    req: &v1::SubmitBatchRequest,
    index: &HashMap<&str, usize>,
    jobs: &mut [NewJob],
) -> Result<(), InvalidField> {
    for (i, wire) in req.jobs.iter().enumerate() {
        let mut after = Vec::with_capacity(wire.after.len());
        for (k, name) in wire.after.iter().enumerate() {
            let Some(&j) = index.get(name.as_str()) else {
                return Err(InvalidField::new(
                    format!("jobs[{i}] (name {:?}) after[{k}]", wire.name),
                    format!("{name:?} is not a job of this batch"),
                ));
            };
            after.push(j);
        }
        after.sort_unstable();
        after.dedup();
        jobs[i].after = after;
    }
    // Kahn's algorithm: what cannot be ordered lies on or behind a cycle.
    let n = jobs.len();
    let mut waits = vec![0usize; n];
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, j) in jobs.iter().enumerate() {
        waits[i] = j.after.len();
        for &a in &j.after {
            next[a].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|i| waits[*i] == 0).collect();
    let mut ordered = 0;
    while let Some(i) = ready.pop() {
        ordered += 1;
        for &d in &next[i] {
            waits[d] -= 1;
            if waits[d] == 0 {
                ready.push(d);
            }
        }
    }
    if ordered == n {
        return Ok(());
    }
    // Walk back along unordered dependencies from an unordered job until one repeats.
    let Some(mut at) = (0..n).find(|i| waits[*i] > 0) else {
        return Ok(());
    };
    let mut path = vec![at];
    let mut place = vec![usize::MAX; n];
    place[at] = 0;
    while let Some(&back) = jobs[at].after.iter().find(|a| waits[**a] > 0) {
        if place[back] != usize::MAX {
            let start = place[back];
            let mut cycle: Vec<&str> = path[start..]
                .iter()
                .map(|p| jobs[*p].name.as_str())
                .collect();
            cycle.push(&jobs[back].name);
            return Err(InvalidField::new(
                "jobs",
                format!(
                    "the jobs wait on each other in a cycle: {} (each runs after the next)",
                    cycle.join(" → ")
                ),
            ));
        }
        place[back] = path.len();
        path.push(back);
        at = back;
    }
    Err(InvalidField::new(
        "jobs",
        "the jobs wait on each other in a cycle",
    ))
}

/// Refuses a job whose memory estimate is over what one job may take on every
/// registered worker (the same estimate the workers make, from the sizes the submitter
/// read from the images' headers; a square where none was given). Without workers that
/// said, nothing is refused: workers check again when they lease it.
fn runs_somewhere(spec: &JobSpec, largest: Largest) -> Result<(), InvalidField> {
    if largest == Largest::default() {
        return Ok(());
    }
    let p = &spec.params;
    let dims = |r: &stylefarm_core::ObjectRef, side: u32| {
        r.dims.map_or(Dims::square(side), |(w, h)| Dims::new(w, h))
    };
    let style_side = (f64::from(p.size) * p.style_scale).round().max(1.0) as u32;
    let images = JobImages {
        content: dims(&spec.content, p.size),
        styles: spec
            .styles
            .iter()
            .map(|s| dims(&s.image, style_side))
            .collect(),
        init: spec.init_image.as_ref().map(|r| dims(r, p.size)),
        // The previous result is at most `size` on its long side.
        previous: spec
            .previous
            .as_ref()
            .map(|f| (dims(&f.content, p.size), Dims::square(p.size))),
    };
    // The smaller network wherever it has the layers, in tiles where the job allows
    // them: refuse only what cannot fit.
    let fit = |backend, budget| {
        memory::fit(Architecture::Vgg16, 0, p, &images, backend, budget)
            .or_else(|_| memory::fit(Architecture::Vgg19, 0, p, &images, backend, budget))
            .map_err(|e| InvalidField::new("params", e.to_string()))
    };
    let mut needs = Vec::new();
    for (budget, backend, kind) in [
        (largest.cpu, Backend::Cpu, "CPU"),
        (largest.cuda, Backend::Cuda, "CUDA"),
    ] {
        let Some(budget) = budget else { continue };
        let e = match fit(backend, budget)? {
            Fit::Whole(_) | Fit::Tiled(..) => return Ok(()),
            Fit::Never(e) => e,
        };
        let tiles = if p.tile == 0 {
            format!(" even in {} px tiles", memory::smallest_tile(p.size))
        } else {
            String::new()
        };
        needs.push(format!(
            "about {}{tiles} on a {kind} worker, where the largest takes {} per job",
            e.describe(),
            memory::gib(budget)
        ));
    }
    Err(InvalidField::new(
        "params",
        format!(
            "no registered worker can run it: it needs {} (--max-job-memory); lower size or style_scale, or use fewer or smaller style images",
            needs.join(", and ")
        ),
    ))
}

/// Validates a registration (the protocol version is checked by the service).
pub fn new_worker(
    req: &v1::RegisterWorkerRequest,
    identity: &str,
) -> Result<NewWorker, InvalidField> {
    label("name", &req.name, false)?;
    if req.name.contains('/') {
        return Err(InvalidField::new("name", "must not contain '/'"));
    }
    label("device", &req.device, false)?;
    label("gpu_model", &req.gpu_model, true)?;
    if req.slots == 0 {
        return Err(InvalidField::new("slots", "must be at least 1"));
    }
    Ok(NewWorker {
        name: req.name.clone(),
        identity: identity.to_owned(),
        device: req.device.clone(),
        gpu_model: req.gpu_model.clone(),
        gpu_memory_bytes: req.gpu_memory_bytes,
        slots: req.slots,
        capacity: Capacity {
            cuda: req.device.starts_with("cuda"),
            max_job_memory_bytes: req.max_job_memory_bytes,
        },
    })
}

/// Longest failure message kept (and logged) for a job.
pub const MAX_ERROR: usize = 4096;

/// A worker's failure message as it is kept: at most [`MAX_ERROR`] bytes, cut at a
/// character boundary and marked.
pub fn error_text(s: &str) -> String {
    if s.len() <= MAX_ERROR {
        return s.to_owned();
    }
    let mut end = MAX_ERROR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes not kept)", &s[..end], s.len() - end)
}

/// Checks a required id field.
pub fn id<'a>(field: &str, value: &'a str) -> Result<&'a str, InvalidField> {
    if value.is_empty() {
        return Err(InvalidField::new(field, "is empty"));
    }
    label(field, value, false)?;
    Ok(value)
}

fn label(field: &str, value: &str, may_be_empty: bool) -> Result<(), InvalidField> {
    if value.trim().is_empty() && !may_be_empty {
        return Err(InvalidField::new(field, "is empty"));
    }
    if value.len() > MAX_LABEL || value.chars().any(char::is_control) {
        return Err(InvalidField::new(
            field,
            format!("must be at most {MAX_LABEL} bytes without control characters"),
        ));
    }
    Ok(())
}

/// Progress from a heartbeat.
pub fn progress(req: &v1::HeartbeatRequest) -> crate::model::Progress {
    crate::model::Progress {
        iteration: req.iteration,
        losses: req.losses.unwrap_or_default().into(),
        checkpoint_key: (!req.checkpoint_key.is_empty()).then(|| req.checkpoint_key.clone()),
    }
}

/// A registered worker on the wire: `heard` is when it was last heard from since
/// start-up, `live` whether that was within a lease.
pub fn worker_info(w: &KnownWorker, heard: Option<i64>, live: bool) -> v1::WorkerInfo {
    v1::WorkerInfo {
        worker_id: w.id.clone(),
        name: w.worker.name.clone(),
        identity: w.worker.identity.clone(),
        device: w.worker.device.clone(),
        gpu_model: w.worker.gpu_model.clone(),
        gpu_memory_bytes: w.worker.gpu_memory_bytes,
        slots: w.worker.slots,
        max_job_memory_bytes: w.worker.capacity.max_job_memory_bytes,
        registered_unix_ms: w.registered_ms,
        last_heard_unix_ms: heard.unwrap_or(0),
        live,
        job_ids: w.jobs.clone(),
    }
}

/// A job on the wire.
pub fn job_status(j: &JobRecord) -> v1::JobStatus {
    v1::JobStatus {
        job_id: j.job_id.clone(),
        batch_id: j.batch_id.clone(),
        name: j.name.clone(),
        state: v1::JobState::from(j.state) as i32,
        attempt: j.attempt,
        iteration: j.iteration,
        iterations: j.iterations,
        losses: Some(v1::Losses::from(&j.losses)),
        worker: j.worker.clone().unwrap_or_default(),
        error: j.error.clone().unwrap_or_default(),
        result_key: j.result_key.clone().unwrap_or_default(),
        checkpoint_key: j.checkpoint_key.clone().unwrap_or_default(),
        result_attempt: j.result_attempt.unwrap_or(0),
        sidecar_key: j.sidecar_key.clone().unwrap_or_default(),
        attempts_allowed: j.attempts_allowed,
        started_ms: j.started_ms.unwrap_or(0),
        ended_ms: j.ended_ms.unwrap_or(0),
    }
}

/// Jobs in one GetBatch answer when the request does not say.
pub const DEFAULT_PAGE: usize = 1000;
/// Most jobs in one GetBatch answer.
pub const MAX_PAGE: usize = 10_000;
/// A page ends before its answer passes this many bytes, so it fits a client's default
/// 4 MiB message limit however long the jobs' errors are.
pub const PAGE_BYTES: usize = 2 << 20;

/// Which page of jobs a GetBatch asks for.
pub struct Page<'a> {
    /// The last job of the page before, if any.
    pub after: Option<&'a str>,
    /// Most jobs.
    pub size: usize,
}

/// The page a request asks for: its size within bounds and its token a job id.
pub fn page(req: &v1::GetBatchRequest) -> Result<Page<'_>, InvalidField> {
    let size = match req.page_size {
        0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    };
    let after = if req.page_token.is_empty() {
        None
    } else {
        Some(id("page_token", &req.page_token)?)
    };
    Ok(Page { after, size })
}

/// Puts up to `size` of `jobs` (which may hold one more, to tell whether more follow)
/// in `answer`, stopping before [`PAGE_BYTES`], and sets where the next page starts.
pub fn fill_page(answer: &mut v1::Batch, jobs: &[JobRecord], size: usize) {
    let mut bytes = answer.encoded_len();
    for j in jobs.iter().take(size) {
        let status = job_status(j);
        // A field's tag and length prefix: a few bytes beyond the message itself.
        let len = status.encoded_len() + 8;
        if bytes + len > PAGE_BYTES && !answer.jobs.is_empty() {
            break;
        }
        bytes += len;
        answer.jobs.push(status);
    }
    if answer.jobs.len() < jobs.len() {
        if let Some(last) = answer.jobs.last() {
            answer.next_page_token = last.job_id.clone();
        }
    }
}

/// Jobs per state on the wire (states with none left out).
pub fn counts(counts: &BTreeMap<JobState, u64>) -> HashMap<String, u32> {
    counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| (s.as_str().to_owned(), u32::try_from(*n).unwrap_or(u32::MAX)))
        .collect()
}

/// A batch on the wire, with its jobs when given.
pub fn batch(b: &BatchRecord, jobs: &[JobRecord]) -> v1::Batch {
    v1::Batch {
        batch_id: b.batch_id.clone(),
        name: b.name.clone(),
        owner: b.owner.clone(),
        state: v1::BatchState::from(b.state()) as i32,
        priority: b.priority,
        created_unix_ms: b.created_ms,
        jobs_by_state: counts(&b.counts),
        jobs: jobs.iter().map(job_status).collect(),
        next_page_token: String::new(),
    }
}
