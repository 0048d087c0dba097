//! One leased job from start to end: fetch its inputs (and checkpoint), run the engine,
//! heartbeat, checkpoint, publish, report. Every way it can end is reported to the
//! coordinator, so the lease is never left to expire when the worker is alive.

use std::sync::Arc;
use std::time::Duration;

use stylefarm_core::limits::MAX_INPUT_BYTES;
use stylefarm_core::{layout, JobSpec, ObjectRef, PreviousFrame, Progress, RenderParams};
use stylefarm_proto::v1;
use stylefarm_storage::{Limit, ObjectUrl, StorageError};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::engine_thread::{self, EngineJob, Event, Finished, Views};
use super::heartbeat::Heartbeats;
use super::stop::{Stop, StopSignal};
use super::Node;
use crate::device::MemoryBudget;
use crate::engine::EngineError;
use crate::engine::Progress as EngineProgress;
use crate::job::{JobInputs, NamedBytes, PreviousInputs};

/// Why an attempt failed, and whether another attempt could succeed.
struct Failure {
    message: String,
    retryable: bool,
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        // An outage, a local I/O error or this worker's own storage settings
        // (credentials, endpoint, region): another worker may well succeed. Counted
        // against this worker, so a misconfigured one is kept off the batch.
        let retryable = matches!(
            e,
            StorageError::Unavailable { .. } | StorageError::Io { .. }
        ) || e.is_configuration();
        Self {
            message: e.to_string(),
            retryable,
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        // A bad input, parameter or divergence fails the same way everywhere; a libtorch
        // error (out of memory, a device fault) may not.
        let retryable = matches!(e, EngineError::Torch { .. });
        Self {
            message: e.to_string(),
            retryable,
        }
    }
}

/// A leased job and the task that heartbeats it, from the lease to the attempt's last
/// word. A prefetched job is held this way while the one before it still runs.
pub struct Held {
    lease: v1::Lease,
    stop: StopSignal,
    heartbeats: Heartbeats,
}

impl Held {
    fn new(node: &Arc<Node>, lease: v1::Lease) -> Self {
        let stop = StopSignal::default();
        let heartbeats = Heartbeats::start(node, &lease, stop.clone());
        Self {
            lease,
            stop,
            heartbeats,
        }
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("job", job = %self.lease.job_id, attempt = self.lease.attempt)
    }

    /// Hands the job back to the queue without spending an attempt.
    async fn release(mut self, node: &Node, checkpoint: (String, u32)) {
        self.heartbeats.stop().await;
        let req = v1::ReleaseJobRequest {
            worker_id: node.worker_id.clone(),
            job_id: self.lease.job_id.clone(),
            fencing_token: self.lease.fencing_token,
            checkpoint_key: checkpoint.0,
            iteration: checkpoint.1,
        };
        match node.client().release_job(req).await {
            Ok(_) => tracing::info!(iteration = checkpoint.1, "job handed back"),
            Err(s) => {
                tracing::warn!(cause = %s.message(), "could not hand the job back; its lease will expire")
            }
        }
    }

    async fn fail(mut self, node: &Node, f: &Failure) {
        self.heartbeats.stop().await;
        report_failure(node, &self.lease, f).await;
    }
}

/// A held job with its inputs fetched: ready for the engine, or failed in preparing.
pub struct Ready {
    held: Held,
    job: Result<EngineJob, Failure>,
}

/// Leases one job (long-polling) and fetches what it needs. `None` once draining.
pub async fn next(node: &Arc<Node>) -> Option<Ready> {
    let lease = lease(node).await?;
    let held = Held::new(node, lease);
    let job = prepare(node, &held.lease).instrument(held.span()).await;
    Some(Ready { held, job })
}

async fn lease(node: &Node) -> Option<v1::Lease> {
    let mut client = node.client();
    while !node.draining.is_cancelled() {
        let req = v1::LeaseJobRequest {
            worker_id: node.worker_id.clone(),
            wait_ms: 10_000,
        };
        let lease = tokio::select! {
            r = client.lease_job(req) => r,
            () = node.draining.cancelled() => break,
        };
        match lease {
            Ok(r) => {
                if let Some(lease) = r.into_inner().lease {
                    return Some(lease);
                }
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), cause = %s.message(), "lease request failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT) => {}
                    () = node.draining.cancelled() => break,
                }
            }
        }
    }
    None
}

/// Runs a ready job's engine to its end and hands the rest (checkpoint uploads, publish,
/// report) to a task of its own, so that the next job's engine need not wait for them.
/// Returns the next job when it was prefetched meanwhile.
pub async fn run(node: &Arc<Node>, ready: Ready) -> Option<Ready> {
    let Ready { held, job } = ready;
    let span = held.span();
    if node.draining.is_cancelled() {
        // Leased before the drain began and not started: it goes back untouched.
        let checkpoint = (held.lease.checkpoint_key.clone(), 0);
        held.release(node, checkpoint).instrument(span).await;
        return None;
    }
    match job {
        Ok(job) => execute(node, held, job).instrument(span).await,
        Err(f) => {
            held.fail(node, &f).instrument(span).await;
            None
        }
    }
}

/// Refuses an input outside the places this worker reads inputs from: a job spec must
/// not make a worker read its own files (`/proc/self/environ`, a mounted secret) or a
/// bucket its credentials happen to reach.
fn allowed_input(node: &Node, uri: &str) -> Result<(), Failure> {
    let url = ObjectUrl::parse(uri)?;
    if node.inputs.iter().any(|p| url.is_within(p)) {
        return Ok(());
    }
    let places: Vec<String> = node.inputs.iter().map(|p| format!("{p}/")).collect();
    Err(Failure {
        message: format!(
            "input {uri} is outside the places this worker reads inputs from ({}; more with --input-prefix)",
            places.join(", ")
        ),
        retryable: false,
    })
}

async fn prepare(node: &Node, lease: &v1::Lease) -> Result<EngineJob, Failure> {
    let wire = lease.spec.clone().ok_or_else(|| Failure {
        message: "the lease carries no job spec".into(),
        retryable: false,
    })?;
    let spec = JobSpec::try_from(wire).map_err(|e| Failure {
        message: format!("invalid job spec: {e}"),
        retryable: false,
    })?;
    if spec.weights_sha256 != node.weights.sha256 {
        return Err(Failure {
            message: format!(
                "the job needs weights {}, this worker has {} ({})",
                spec.weights_sha256,
                node.weights.sha256,
                node.weights.path.display()
            ),
            retryable: true,
        });
    }
    let refs = std::iter::once(&spec.content)
        .chain(spec.styles.iter().map(|s| &s.image))
        .chain(spec.init_image.as_ref())
        .chain(spec.previous.as_ref().map(|p| &p.content));
    for r in refs {
        allowed_input(node, &r.uri)?;
    }
    let fetch = |r: ObjectRef| async move {
        let bytes = node.storage.get_input(&r).await?;
        Ok::<_, StorageError>(NamedBytes {
            source: r.uri,
            label: r.label,
            bytes,
        })
    };
    let content = fetch(spec.content.clone()).await?;
    let mut styles = Vec::new();
    for s in &spec.styles {
        styles.push((fetch(s.image.clone()).await?, s.weight));
    }
    let init_image = match &spec.init_image {
        Some(r) => Some(fetch(r.clone()).await?),
        None => None,
    };
    let previous = match spec
        .previous
        .as_ref()
        .filter(|_| spec.params.temporal_weight > 0.0)
    {
        Some(p) => Some(previous_frame(node, lease, p, fetch(p.content.clone()).await?).await?),
        None => None,
    };
    let checkpoint = if lease.checkpoint_key.is_empty() {
        None
    } else {
        let url = node.root.join(&lease.checkpoint_key)?;
        let limit = Limit::new("a checkpoint", checkpoint_limit(&spec.params, &node.memory));
        match node.storage.get(&url, &limit).await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(checkpoint = %url, cause = %e, "cannot read the checkpoint; starting over");
                None
            }
        }
    };
    Ok(EngineJob {
        spec,
        inputs: JobInputs {
            content,
            styles,
            init_image,
            previous,
        },
        checkpoint,
        weights: Arc::clone(&node.weights),
        device: node.device,
        checkpoint_every: node.config.checkpoint_every,
        max_input_pixels: node.config.max_input_pixels,
        memory: node.memory.clone(),
        worker: node.worker_id.clone(),
    })
}

/// The previous frame's content (fetched) and result: the output its job of the same
/// batch published (the coordinator names it in the lease), which succeeded before this
/// job could be leased.
async fn previous_frame(
    node: &Node,
    lease: &v1::Lease,
    previous: &PreviousFrame,
    content: NamedBytes,
) -> Result<PreviousInputs, Failure> {
    if lease.previous_result_key.is_empty() {
        return Err(Failure {
            message: format!(
                "the coordinator gave no result for the previous frame ({}); it has not succeeded",
                previous.name
            ),
            retryable: false,
        });
    }
    let url = node.root.join(&lease.previous_result_key)?;
    let limit = Limit::new("the previous frame's result", MAX_INPUT_BYTES);
    let bytes = node.storage.get(&url, &limit).await.map_err(|e| {
        let f = Failure::from(e);
        Failure {
            message: format!(
                "cannot read the previous frame's result ({}): {}",
                previous.name, f.message
            ),
            ..f
        }
    })?;
    Ok(PreviousInputs {
        content,
        result: NamedBytes {
            source: url.to_string(),
            label: previous.name.clone(),
            bytes,
        },
    })
}

/// The largest checkpoint a job can have written: its image and optimizer state at the
/// largest image its size allows (square), its loss history, and room for the header;
/// never more than the job's memory budget.
fn checkpoint_limit(params: &RenderParams, budget: &MemoryBudget) -> u64 {
    let numel = 3 * u64::from(params.size).pow(2);
    let vectors = 2 * u64::from(params.lbfgs_history) + 6;
    let history = u64::from(params.total_iterations()) * 256 + 4096;
    (numel * 4 * vectors + history + (1 << 20)).min(budget.bytes)
}

/// Where the progress of the running job must reach before the next job is leased and
/// its inputs fetched; `None` when prefetching is off.
fn prefetch_at(node: &Node, iterations: u32) -> Option<u32> {
    let at = node.config.prefetch()?;
    // The fraction is in 0..=1 (clap checks it), so this fits.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((f64::from(iterations) * at).floor() as u32)
}

/// The running attempt as [`execute`] follows it: the checkpoint uploads beside the run,
/// the newest checkpoint stored, and the next job once prefetching began.
struct Running {
    held: Held,
    prefetch_from: Option<u32>,
    prefetch: Option<tokio::task::JoinHandle<Option<Ready>>>,
    uploads: tokio::task::JoinSet<(Result<(), StorageError>, String, u32)>,
    checkpoint: (String, u32),
    /// The view files uploading (one set at a time, so an older progress file never
    /// lands after a newer one) and the newest set waiting its turn.
    views: tokio::task::JoinSet<()>,
    next_views: Option<Views>,
}

impl Running {
    /// An iteration finished: report it, and start prefetching once it is far enough.
    fn on_progress(&mut self, node: &Arc<Node>, p: &EngineProgress) {
        if self.prefetch.is_none()
            && !node.draining.is_cancelled()
            && self.prefetch_from.is_some_and(|at| p.iteration >= at)
        {
            tracing::debug!(iteration = p.iteration, "prefetching the next job");
            let node = Arc::clone(node);
            self.prefetch = Some(tokio::spawn(async move { next(&node).await }));
        }
        self.held.heartbeats.update(|hb| {
            hb.iteration = p.iteration;
            hb.losses = p.losses;
        });
    }

    /// The engine sent a checkpoint: upload it beside the run, unless the job is
    /// cancelled or lost. A newer checkpoint supersedes one still uploading (during a
    /// storage outage they would pile up in memory).
    fn on_checkpoint(&mut self, node: &Arc<Node>, iteration: u32, bytes: Vec<u8>) {
        if matches!(self.held.stop.reason(), Some(Stop::Cancelled | Stop::Lost)) {
            return;
        }
        let key =
            stylefarm_core::layout::checkpoint_key(&self.held.lease.attempt_prefix, iteration);
        let node = Arc::clone(node);
        self.uploads.abort_all();
        self.uploads
            .spawn(async move { (upload(&node, &key, bytes).await, key, iteration) });
    }

    /// The engine sent view files: upload them beside the run, best effort, one set at
    /// a time. A set that comes while another uploads waits, and a newer one replaces
    /// it (previews and progress only: the inputs come first, alone).
    fn on_view(&mut self, node: &Arc<Node>, views: Views) {
        if self.held.stop.reason().is_some() {
            return;
        }
        if self.views.is_empty() {
            let node = Arc::clone(node);
            let prefix = self.held.lease.attempt_prefix.clone();
            self.views
                .spawn(async move { upload_views(&node, &prefix, views).await });
        } else {
            self.next_views = Some(views);
        }
    }

    /// A set of view files is uploaded: the one waiting goes next.
    fn on_view_uploaded(&mut self, node: &Arc<Node>) {
        if let Some(views) = self.next_views.take() {
            self.on_view(node, views);
        }
    }

    /// A checkpoint upload ended; the newest one stored is reported at once.
    fn on_upload(&mut self, done: UploadDone) {
        if record_upload(done, &mut self.checkpoint, &self.held.heartbeats) {
            self.held.heartbeats.now();
        }
    }

    /// SIGTERM: stop at the next iteration, checkpoint and hand the job back.
    fn on_drain(&self) {
        tracing::info!(
            "draining: stopping at the next iteration to checkpoint and hand the job back"
        );
        self.held.stop.request(Stop::Drain);
    }
}

type UploadDone = Result<(Result<(), StorageError>, String, u32), tokio::task::JoinError>;

async fn execute(node: &Arc<Node>, held: Held, job: EngineJob) -> Option<Ready> {
    let name = job.spec.name.clone();
    let prefetch_from = prefetch_at(node, job.spec.params.total_iterations());
    let (tx, mut events) = mpsc::unbounded_channel();
    if held.stop.reason().is_none() {
        engine_thread::spawn(job, held.stop.flag(), tx);
    } else {
        // Cancelled (or lost) while it waited as the prefetched job: nothing to run.
        drop(tx);
    }
    let mut stop_changed = held.stop.watch();
    let mut run = Running {
        prefetch_from,
        checkpoint: (held.lease.checkpoint_key.clone(), 0),
        held,
        prefetch: None,
        uploads: tokio::task::JoinSet::new(),
        views: tokio::task::JoinSet::new(),
        next_views: None,
    };
    let finished = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Progress(p)) => run.on_progress(node, &p),
                Some(Event::Checkpoint { iteration, bytes }) => run.on_checkpoint(node, iteration, bytes),
                Some(Event::View(views)) => run.on_view(node, views),
                Some(Event::Done(result)) => break Some(result),
                None => break None,
            },
            Some(done) = run.uploads.join_next(), if !run.uploads.is_empty() => run.on_upload(done),
            Some(_) = run.views.join_next(), if !run.views.is_empty() => run.on_view_uploaded(node),
            () = node.draining.cancelled(), if run.held.stop.reason().is_none() => run.on_drain(),
            _ = stop_changed.changed() => {}
        }
    };
    let Running {
        held,
        prefetch,
        mut uploads,
        mut checkpoint,
        mut views,
        next_views,
        ..
    } = run;
    let tail = {
        let node = Arc::clone(node);
        async move {
            while let Some(done) = uploads.join_next().await {
                record_upload(done, &mut checkpoint, &held.heartbeats);
            }
            // A stopped attempt's views are not worth waiting for; a finished one's
            // last set lands before its final files, which are then the newest.
            if held.stop.reason().is_some() {
                views.abort_all();
            }
            while views.join_next().await.is_some() {}
            if let (Some(set), None) = (next_views, held.stop.reason()) {
                upload_views(&node, &held.lease.attempt_prefix, set).await;
            }
            conclude(&node, held, finished, checkpoint, &name).await;
        }
    };
    node.tails.spawn(tail.instrument(tracing::Span::current()));
    match prefetch {
        Some(p) => p.await.ok().flatten(),
        None => None,
    }
}

/// The attempt's last word, once its engine has stopped: publish and complete, fail,
/// or hand the job back.
async fn conclude(
    node: &Node,
    mut held: Held,
    finished: Option<Result<Finished, EngineError>>,
    checkpoint: (String, u32),
    name: &str,
) {
    let finished = match finished {
        Some(f) => f,
        None if held.stop.reason().is_some() => Ok(Finished::Stopped { iteration: 0 }),
        None => Err(EngineError::Torch {
            reason: "the engine thread ended without a result".into(),
        }),
    };
    match (finished, held.stop.reason()) {
        (_, Some(Stop::Lost)) => held.heartbeats.stop().await,
        // A render that finished is published even when a drain began meanwhile.
        (
            Ok(Finished::Rendered {
                image,
                format,
                sidecar,
                done,
                views,
            }),
            None | Some(Stop::Drain),
        ) => {
            let published = publish(node, &held.lease, name, (image, format), sidecar, &done).await;
            upload_views(node, &held.lease.attempt_prefix, views).await;
            held.heartbeats.stop().await;
            match published {
                Ok(req) => complete(node, req).await,
                Err(f) => report_failure(node, &held.lease, &f).await,
            }
        }
        (Ok(_), Some(Stop::Cancelled)) => {
            let f = Failure {
                message: "cancelled".into(),
                retryable: false,
            };
            held.fail(node, &f).await;
        }
        (Ok(_), _) => held.release(node, checkpoint).await,
        (Err(e), _) => held.fail(node, &Failure::from(e)).await,
    }
}

/// Notes a finished checkpoint upload; true when it is the newest stored, which the
/// next heartbeat (sent at once) reports.
fn record_upload(
    done: UploadDone,
    checkpoint: &mut (String, u32),
    heartbeats: &Heartbeats,
) -> bool {
    match done {
        Ok((Ok(()), key, iteration)) if iteration > checkpoint.1 => {
            heartbeats.update(|hb| hb.checkpoint_key = Some(key.clone()));
            *checkpoint = (key, iteration);
            true
        }
        Ok((Ok(()), ..)) => false,
        Ok((Err(e), _, iteration)) => {
            tracing::warn!(cause = %e, iteration, "checkpoint upload failed; the job goes on");
            false
        }
        Err(e) if e.is_cancelled() => false,
        Err(e) => {
            tracing::warn!(cause = %e, "checkpoint upload task failed");
            false
        }
    }
}

/// The longest one set of view files may take to upload: during a storage outage they
/// give way rather than hold up the job's end.
const VIEW_UPLOAD_LIMIT: Duration = Duration::from_secs(15);

/// Uploads view files under `prefix/view/`, one after another, for at most
/// [`VIEW_UPLOAD_LIMIT`]; a failure is logged and the rest go on (the web interface's
/// files never fail a job).
async fn upload_views(node: &Node, prefix: &str, views: Views) {
    let all = async {
        for (view, bytes) in views {
            if let Err(e) = upload(node, &view.key(prefix), bytes).await {
                tracing::warn!(view = %view.file_name(), cause = %e, "view file upload failed; the job goes on");
            }
        }
    };
    if tokio::time::timeout(VIEW_UPLOAD_LIMIT, all).await.is_err() {
        tracing::warn!(
            "view files not uploaded within {VIEW_UPLOAD_LIMIT:?}; the job goes on without them"
        );
    }
}

async fn upload(node: &Node, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
    node.storage.put(&node.root.join(key)?, bytes).await
}

/// Uploads the output and its sidecar under the attempt's prefix (heartbeats go on
/// meanwhile) and returns the completion to report; the coordinator decides whether
/// this attempt's output is the result.
async fn publish(
    node: &Node,
    lease: &v1::Lease,
    name: &str,
    (image, format): (Vec<u8>, stylefarm_core::OutputFormat),
    sidecar: Vec<u8>,
    done: &Progress,
) -> Result<v1::CompleteJobRequest, Failure> {
    let result_key = layout::result_key(&lease.attempt_prefix, name, format);
    let sidecar_key = layout::sidecar_key(&lease.attempt_prefix, name);
    upload(node, &result_key, image).await?;
    upload(node, &sidecar_key, sidecar).await?;
    Ok(v1::CompleteJobRequest {
        worker_id: node.worker_id.clone(),
        job_id: lease.job_id.clone(),
        fencing_token: lease.fencing_token,
        result_key,
        sidecar_key,
        iteration: done.iteration,
        losses: Some(v1::Losses::from(&done.losses)),
    })
}

async fn complete(node: &Node, req: v1::CompleteJobRequest) {
    match node.client().complete_job(req).await {
        Ok(_) => tracing::info!("job completed"),
        Err(s) => {
            tracing::warn!(code = ?s.code(), cause = %s.message(), "completion refused; this attempt's output is not the result")
        }
    }
}

async fn report_failure(node: &Node, lease: &v1::Lease, f: &Failure) {
    tracing::warn!(cause = %f.message, retryable = f.retryable, "attempt failed");
    let req = v1::FailJobRequest {
        worker_id: node.worker_id.clone(),
        job_id: lease.job_id.clone(),
        fencing_token: lease.fencing_token,
        error: f.message.clone(),
        retryable: f.retryable,
    };
    if let Err(s) = node.client().fail_job(req).await {
        tracing::warn!(cause = %s.message(), "could not report the failure; the lease will expire");
    }
}

/// How long to wait before asking again after the coordinator could not be reached.
pub const RECONNECT: Duration = Duration::from_secs(2);
