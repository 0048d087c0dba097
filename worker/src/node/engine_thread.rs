//! The engine on a thread of its own (never on the async runtime): prepares the job,
//! resumes from a checkpoint when given one, runs in stretches of `checkpoint_every`
//! iterations and reports progress, checkpoints and the result over a channel.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use stylefarm_core::JobSpec;
use stylefarm_weights::WeightsInfo;
use tch::Device;
use tokio::sync::mpsc::UnboundedSender;

use crate::device::MemoryBudget;
use crate::engine::{EngineError, Outcome, Progress, Render};
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
    /// The run ended.
    Done(Result<Finished, EngineError>),
}

/// How a run ended.
pub enum Finished {
    /// Every iteration ran (or the optimizer converged): the output.
    Rendered {
        /// The PNG.
        png: Vec<u8>,
        /// The JSON sidecar.
        sidecar: Vec<u8>,
        /// Iterations run and the losses at the output, as the sidecar records them.
        done: stylefarm_core::Progress,
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
                &format!("{}.png", job.spec.name),
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
            return Ok(Finished::Rendered {
                png: rendered.png,
                sidecar,
                done,
            });
        }
        // Only a checkpoint that holds new iterations is worth writing.
        if render.iteration() > saved {
            saved = render.iteration();
            let _ = events.send(Event::Checkpoint {
                iteration: saved,
                bytes: render.checkpoint()?,
            });
        }
        if outcome == Outcome::Cancelled {
            return Ok(Finished::Stopped {
                iteration: render.iteration(),
            });
        }
    }
}
