//! The engine on a thread of its own (never on the async runtime): prepares the job,
//! resumes from a checkpoint when given one, runs in stretches of `checkpoint_every`
//! iterations and reports progress, checkpoints and the result over a channel.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use stylefarm_core::layout::{AttemptProgress, View, VIEW_SIDE};
use stylefarm_core::JobSpec;
use stylefarm_weights::WeightsInfo;
use tch::Device;
use tokio::sync::mpsc::UnboundedSender;

use crate::device::MemoryBudget;
use crate::engine::{image_io, EngineError, Outcome, Progress, Render};
use crate::job::{self, JobInputs, PreparedJob};

/// What the engine thread reports.
pub enum Event {
    /// An iteration finished.
    Progress(Progress),
    /// The whole state after `iteration` iterations.
    Checkpoint {
        /// Iterations it holds.
        iteration: u32,
        /// Safetensors bytes.
        bytes: Vec<u8>,
    },
    /// Small files for the web interface, for the attempt's `view/` (the inputs once
    /// decoded; a preview and the losses so far with each checkpoint).
    View(Views),
    /// The run ended.
    Done(Result<Finished, EngineError>),
}

/// View files and their contents.
pub type Views = Vec<(View, Vec<u8>)>;

/// How a run ended.
pub enum Finished {
    /// Every iteration ran (or the optimizer converged): the output.
    Rendered {
        /// The output image.
        image: Vec<u8>,
        /// Its format.
        format: stylefarm_core::OutputFormat,
        /// The JSON sidecar.
        sidecar: Vec<u8>,
        /// Iterations run and the losses at the output, as the sidecar records them.
        done: stylefarm_core::Progress,
        /// The thumbnail and the last progress file.
        views: Views,
    },
    /// The cancel flag stopped it after `iteration` iterations (a checkpoint was sent).
    Stopped {
        /// Iterations done.
        iteration: u32,
    },
}

/// Everything one run needs.
pub struct EngineJob {
    /// The job.
    pub spec: JobSpec,
    /// Its input bytes.
    pub inputs: JobInputs,
    /// A checkpoint to resume from.
    pub checkpoint: Option<Vec<u8>>,
    /// The network.
    pub weights: Arc<WeightsInfo>,
    /// Where it runs.
    pub device: Device,
    /// Checkpoint every this many iterations.
    pub checkpoint_every: u32,
    /// Largest input accepted.
    pub max_input_pixels: u64,
    /// The most memory the job may take.
    pub memory: MemoryBudget,
    /// The worker running it, for the progress file.
    pub worker: String,
}

/// Starts the run on a new thread.
pub fn spawn(job: EngineJob, cancel: Arc<AtomicBool>, events: UnboundedSender<Event>) {
    let name = format!("engine-{}", job.spec.name);
    let spawned = std::thread::Builder::new().name(name).spawn({
        let events = events.clone();
        move || {
            let result = run(&job, &cancel, &events);
            let _ = events.send(Event::Done(result));
        }
    });
    if let Err(e) = spawned {
        let _ = events.send(Event::Done(Err(EngineError::Torch {
            reason: format!("cannot start the engine thread: {e}"),
        })));
    }
}

fn run(
    job: &EngineJob,
    cancel: &AtomicBool,
    events: &UnboundedSender<Event>,
) -> Result<Finished, EngineError> {
    let started = Instant::now();
    let params = &job.spec.params;
    let prepared = PreparedJob::decode(
        &job.inputs,
        params,
        job.max_input_pixels,
        &job.weights,
        &job.memory,
    )?;
    let params = &prepared.params;
    let started_unix_s = job::unix_s(SystemTime::now());
    let inputs = std::iter::once((View::Content, &prepared.inputs.content)).chain(
        prepared
            .inputs
            .styles
            .iter()
            .enumerate()
            .map(|(k, img)| (View::Style(k), img)),
    );
    let _ = events.send(Event::View(
        inputs.filter_map(|(v, img)| view_image(v, img)).collect(),
    ));
    let mut render = match &job.checkpoint {
        Some(bytes) => {
            match Render::resume(&job.weights, params, &prepared.inputs, job.device, bytes) {
                Ok(r) => {
                    tracing::info!(job = %job.spec.name, iteration = r.iteration(), "resumed from checkpoint");
                    r
                }
                Err(e) => {
                    tracing::warn!(job = %job.spec.name, cause = %e, "checkpoint unusable; starting over");
                    Render::new(&job.weights, params, &prepared.inputs, job.device)?
                }
            }
        }
        None => Render::new(&job.weights, params, &prepared.inputs, job.device)?,
    };
    let setup_s = started.elapsed().as_secs_f64();
    let every = job.checkpoint_every.max(1);
    let mut saved = render.iteration();
    loop {
        let stop_at = (render.iteration() / every + 1) * every;
        let outcome = render.run_until(stop_at, cancel, &mut |p| {
            let _ = events.send(Event::Progress(p.clone()));
        })?;
        let done = outcome == Outcome::Converged || render.iteration() >= render.total_iterations();
        if done {
            let rendered = job::finish(
                &render,
                &prepared,
                params,
                &job.weights,
                job.device,
                &stylefarm_core::layout::output_file(&job.spec.name, params.output_format),
                started,
                setup_s,
            )?;
            let sidecar =
                serde_json::to_vec_pretty(&rendered.sidecar).map_err(|e| EngineError::Torch {
                    reason: format!("encoding the sidecar: {e}"),
                })?;
            let done = stylefarm_core::Progress {
                iteration: rendered.sidecar.iterations_done,
                losses: rendered.sidecar.final_losses,
                checkpoint_key: None,
            };
            let mut views = progress_view(job, &render, started_unix_s);
            views.extend(view_image(View::Thumbnail, &render.output()));
            return Ok(Finished::Rendered {
                image: rendered.image,
                format: params.output_format,
                sidecar,
                done,
                views,
            });
        }
        // Only a checkpoint that holds new iterations is worth writing.
        if render.iteration() > saved {
            saved = render.iteration();
            let _ = events.send(Event::Checkpoint {
                iteration: saved,
                bytes: render.checkpoint()?,
            });
            let mut views = progress_view(job, &render, started_unix_s);
            views.extend(view_image(View::Preview, &render.output()));
            let _ = events.send(Event::View(views));
        }
        if outcome == Outcome::Cancelled {
            return Ok(Finished::Stopped {
                iteration: render.iteration(),
            });
        }
    }
}

/// A view image, or nothing (logged) when it cannot be encoded: the web interface's
/// files never fail a job.
fn view_image(view: View, img: &image::Rgb32FImage) -> Option<(View, Vec<u8>)> {
    match image_io::encode_view(img, VIEW_SIDE) {
        Ok(jpeg) => Some((view, jpeg)),
        Err(e) => {
            tracing::warn!(view = %view.file_name(), cause = %e, "cannot encode a view image");
            None
        }
    }
}

/// The attempt's `progress.json` as it stands.
fn progress_view(job: &EngineJob, render: &Render, started_unix_s: f64) -> Views {
    let progress = AttemptProgress {
        worker: job.worker.clone(),
        device: format!("{:?}", job.device).to_lowercase(),
        started_unix_s,
        updated_unix_s: job::unix_s(SystemTime::now()),
        iteration: render.iteration(),
        iterations: render.total_iterations(),
        ..AttemptProgress::default()
    }
    .with_curve(render.history(), render.runs());
    match serde_json::to_vec(&progress) {
        Ok(json) => vec![(View::Progress, json)],
        Err(e) => {
            tracing::warn!(cause = %e, "cannot encode the progress file");
            Vec::new()
        }
    }
}
