//! The style-transfer engine (Gatys et al. 2015) on libtorch.
//!
//! Data flows: [`image_io`] decodes inputs to RGB [0,1] -> [`Render::new`] resizes them,
//! loads the frozen [`vgg`] prefix the job needs and builds the [`loss`] objective (targets
//! computed once without gradients) -> [`Render::run_until`] alternates evaluation and an
//! [`optim`] step, reporting [`Progress`] and checking a cancel flag every iteration ->
//! [`Render::output`] gives the image, [`Render::checkpoint`] the whole state as bytes
//! ([`checkpoint`]), from which [`Render::resume`] continues bit for bit.

pub mod checkpoint;
pub mod color;
pub mod error;
pub mod flow;
pub mod image_io;
pub mod loss;
pub mod metrics;
pub mod optim;
mod tiled;
pub mod vgg;

use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use image::Rgb32FImage;
use sha2::{Digest, Sha256};
use stylefarm_core::rng::SplitMix64;
use stylefarm_core::tiles;
use stylefarm_core::{InitKind, OptimizerKind, RenderParams, Scale, WeightedLayer};
use stylefarm_weights::{LayerKind, WeightsInfo};
use tch::{Device, Tensor};

pub use error::{EngineError, ImageError};
pub use loss::Losses;
pub use stylefarm_core::progress::ScaleRun;

use loss::{Objective, StyleTargets, Tap, Weights};
use optim::{Adam, Lbfgs, Optimizer, Step};
use tiled::Tiling;

/// The decoded images of one job.
#[derive(Clone)]
pub struct RenderInputs {
    /// The content photo.
    pub content: Rgb32FImage,
    /// One or more style images.
    pub styles: Vec<Rgb32FImage>,
    /// Blend weights, one per style (empty: equal weights).
    pub style_weights: Vec<f64>,
    /// The start image when `init` is `image`.
    pub init_image: Option<Rgb32FImage>,
    /// The previous frame of a sequence, for temporal coherence (`temporal_weight`).
    pub previous: Option<PreviousImages>,
}

/// The frame before this one: its content and its styled result.
#[derive(Clone)]
pub struct PreviousImages {
    /// The previous frame's content photo.
    pub content: Rgb32FImage,
    /// The previous frame's result (what it was styled into).
    pub styled: Rgb32FImage,
}

/// Reported after every iteration.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Iterations done.
    pub iteration: u32,
    /// Iterations over the whole schedule.
    pub iterations: u32,
    /// Losses at the point this iteration started from.
    pub losses: Losses,
    /// Optimization time, resumed runs included.
    pub elapsed: Duration,
    /// The scale it ran at (0-based) of how many, and that scale's long side.
    pub scale: usize,
    /// Scales in the schedule.
    pub scales: usize,
    /// Long side at this scale.
    pub side: u32,
}

/// How a call to [`Render::run_until`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The asked-for iteration was reached.
    Reached,
    /// The optimizer converged before it.
    Converged,
    /// The cancel flag was set.
    Cancelled,
}

/// The optimized variable holds pixels on a 0-255 scale: L-BFGS's first step
/// (`min(1, 1/|g|_1)`) and Adam's rate are then in grey levels, as in Gatys et al.'s
/// and Johnson's Caffe-space implementations, whatever the network's convention.
pub const PIXEL_SCALE: f64 = 255.0;

/// One style-transfer optimization in progress, at one scale of its schedule.
pub struct Render {
    params: RenderParams,
    schedule: Vec<Scale>,
    objective: Objective,
    optimizer: Optimizer,
    x: Tensor,
    iteration: u32,
    history: Vec<Losses>,
    elapsed: Duration,
    converged: bool,
    resumed_from: Option<u32>,
    fingerprint: String,
    /// The content photo resized to the current scale, for colour preservation.
    content: Rgb32FImage,
    /// The evaluation at the current image when the line search already made it.
    pending: Option<optim::Evaluation>,
    /// Evaluations (forward and backward passes) this process made.
    evaluations: u64,
    /// The scales begun so far; the last is the current one.
    runs: Vec<ScaleRun>,
    /// What every scale is built from: the network, its taps and the decoded inputs
    /// (kept only when there is a later scale to build).
    net: Rc<vgg::Vgg>,
    taps: (Vec<Tap>, Vec<Tap>),
    blend: Vec<f64>,
    depth: (u32, String),
    originals: Option<RenderInputs>,
    output_size: (u32, u32),
    device: Device,
    /// The current scale's tiles, when it is optimized in tiles; `x` and `objective`
    /// are then the current tile's.
    tiling: Option<Tiling>,
}

/// One scale's objective and starting pixels, and its tiles when it is tiled.
struct ScaleState {
    objective: Objective,
    x: Tensor,
    tiling: Option<Tiling>,
}

/// The images one scale optimizes against.
struct StageImages {
    /// The content photo at this scale.
    content: Rgb32FImage,
    /// What the content term matches (its luminance when colours are preserved).
    content_target: Rgb32FImage,
    /// The styles at `side * style_scale` (luminance-matched when colours are preserved).
    styles: Vec<Rgb32FImage>,
    /// The previous frame's content and result at this scale (its luminance when
    /// colours are preserved, as the optimized image is), when the temporal term is on.
    previous: Option<(Rgb32FImage, Rgb32FImage)>,
}

/// The deepest `features` index and the poolings before it.
fn depth(info: &WeightsInfo, taps: &[Tap]) -> (usize, u32, String) {
    let deepest = taps.iter().map(|&(i, _)| i).max().unwrap_or(0);
    let layers = info.architecture.layers();
    let pools = layers
        .iter()
        .filter(|l| l.kind == LayerKind::Pool && l.index < deepest)
        .count() as u32;
    let name = layers
        .iter()
        .find(|l| l.index == deepest)
        .map(|l| l.name.clone())
        .unwrap_or_default();
    (deepest, pools, name)
}

fn resolve(info: &WeightsInfo, layers: &[WeightedLayer]) -> Result<Vec<Tap>, EngineError> {
    layers
        .iter()
        .map(|l| Ok((info.layer(&l.layer)?.index, l.weight)))
        .collect()
}

fn blend_weights(n: usize, given: &[f64]) -> Result<Vec<f64>, EngineError> {
    let styles_err = |reason: String| EngineError::Styles { reason };
    if n == 0 {
        return Err(styles_err("at least one style image is needed".into()));
    }
    if given.is_empty() {
        return Ok(vec![1.0 / n as f64; n]);
    }
    if given.len() != n {
        return Err(styles_err(format!(
            "{} blend weights for {n} style images",
            given.len()
        )));
    }
    if let Some(w) = given.iter().find(|w| !w.is_finite() || **w < 0.0) {
        return Err(styles_err(format!(
            "blend weight {w} is not a finite number >= 0"
        )));
    }
    let sum: f64 = given.iter().sum();
    if sum <= 0.0 {
        return Err(styles_err("blend weights sum to 0".into()));
    }
    Ok(given.iter().map(|w| w / sum).collect())
}

/// Seeded uniform noise in [0, 1), the same on every platform.
fn noise(width: u32, height: u32, seed: u64) -> Rgb32FImage {
    let mut rng = SplitMix64::new(seed);
    Rgb32FImage::from_fn(width, height, |_, _| {
        image::Rgb([rng.next_f32(), rng.next_f32(), rng.next_f32()])
    })
}

fn check_size(what: &str, img: &Rgb32FImage, pools: u32, layer: &str) -> Result<(), EngineError> {
    let min = (1u32 << pools).max(4);
    let (width, height) = img.dimensions();
    if width < min || height < min {
        return Err(EngineError::TooSmall {
            what: what.to_owned(),
            width,
            height,
            layer: layer.to_owned(),
            pools,
            min,
        });
    }
    Ok(())
}

/// Runs libtorch work, turning its panics (out of memory, device errors) into errors.
fn guarded<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown libtorch failure".to_owned());
            Err(EngineError::Torch { reason })
        }
    }
}

impl Render {
    /// Prepares a render: validates, resizes inputs to the first scale, loads the network
    /// and computes that scale's targets.
    pub fn new(
        weights: &WeightsInfo,
        params: &RenderParams,
        inputs: &RenderInputs,
        device: Device,
    ) -> Result<Self, EngineError> {
        params.validate()?;
        let params = weights.resolve_layers(params);
        let content_taps = resolve(weights, &params.content_layers)?;
        let style_taps = resolve(weights, &params.style_layers)?;
        let all: Vec<Tap> = content_taps.iter().chain(&style_taps).copied().collect();
        let (deepest, pools, deepest_name) = depth(weights, &all);
        let blend = blend_weights(inputs.styles.len(), &inputs.style_weights)?;
        let schedule = params.schedule();
        let fingerprint = fingerprint(weights, &params, &schedule, inputs, &blend);
        let depth = (pools, deepest_name);

        let first = schedule[0];
        let stage = stage_images(inputs, &params, first.side, &depth)?;
        let (w, h) = stage.content.dimensions();
        let init = match params.init {
            InitKind::Content => None,
            InitKind::Noise => Some(noise(w, h, params.seed)),
            InitKind::Image => {
                let img = inputs
                    .init_image
                    .as_ref()
                    .ok_or_else(|| EngineError::Styles {
                        reason: "init is `image` but no init image was given".into(),
                    })?;
                Some(image_io::resize(img, w, h))
            }
        };
        let start = init.unwrap_or_else(|| stage.content_target.clone());
        let (cw, ch) = inputs.content.dimensions();
        let output_size = image_io::fit_long_side(cw, ch, params.size);

        guarded(|| {
            let net = Rc::new(vgg::Vgg::load(weights, deepest, params.pooling, device)?);
            let taps = (content_taps, style_taps);
            let start = image_io::to_tensor(&start, device) * PIXEL_SCALE;
            let state = scale_state(
                &net,
                &taps,
                &stage,
                &blend,
                &params,
                device,
                (start, first.iterations),
                true,
            );
            Ok(Self {
                optimizer: new_optimizer(&params),
                objective: state.objective,
                x: state.x.set_requires_grad(true),
                iteration: 0,
                history: Vec::new(),
                elapsed: Duration::ZERO,
                converged: false,
                resumed_from: None,
                fingerprint,
                content: stage.content,
                pending: None,
                evaluations: 0,
                runs: vec![scale_run(first, (w, h), &state.tiling, 0, 0)],
                net,
                taps,
                blend,
                depth,
                originals: (schedule.len() > 1).then(|| inputs.clone()),
                output_size,
                device,
                schedule,
                params,
                tiling: state.tiling,
            })
        })
    }

    /// Prepares the same render as [`Render::new`] and restores a checkpoint's state,
    /// at the scale it was made at.
    pub fn resume(
        weights: &WeightsInfo,
        params: &RenderParams,
        inputs: &RenderInputs,
        device: Device,
        checkpoint_bytes: &[u8],
    ) -> Result<Self, EngineError> {
        let mut render = Self::new(weights, params, inputs, device)?;
        guarded(|| {
            let (image, canvas, state, meta) = checkpoint::decode(checkpoint_bytes, device)?;
            let bad = |reason: String| EngineError::Checkpoint { reason };
            if meta.fingerprint != render.fingerprint {
                return Err(bad(
                    "it belongs to another job (inputs, parameters or weights differ)".into(),
                ));
            }
            if meta.optimizer != optimizer_name(params.optimizer) {
                return Err(bad(format!("it was made by {}", meta.optimizer)));
            }
            let total = render.total_iterations();
            if meta.iteration > total || meta.history.len() > total as usize + 1 {
                return Err(bad(format!(
                    "it claims iteration {} with {} recorded losses; the job runs {total} iterations",
                    meta.iteration,
                    meta.history.len(),
                )));
            }
            let scale = meta.runs.len().max(1) - 1;
            if scale >= render.schedule.len()
                || meta
                    .runs
                    .iter()
                    .zip(&render.schedule)
                    .any(|(r, s)| r.side != s.side)
            {
                return Err(bad(format!(
                    "it is at scale {} of a schedule this job does not have",
                    scale + 1
                )));
            }
            // The image's size at this scale, from the job, not from the checkpoint.
            let (w, h) = match scale {
                0 => (render.runs[0].width, render.runs[0].height),
                k => render.output_size_at(k),
            };
            let whole_shape = [1, 3, i64::from(h), i64::from(w)];
            let tiled = tiles::is_tiled(w, h, render.params.tile);
            match (&canvas, tiled) {
                (Some(c), true) if c.size() == whole_shape => {}
                (None, false) if meta.tile_iterations == 0 => {}
                _ => {
                    return Err(bad(format!(
                        "its image does not match this job's tiles at scale {}",
                        scale + 1
                    )))
                }
            }
            if let Some(run) = meta.runs.get(scale) {
                if (run.width, run.height) != (w, h)
                    || (tiled && run.iterations != render.schedule[scale].iterations)
                {
                    return Err(bad(format!(
                        "it was made for {} x {} px and {} iterations at scale {}",
                        run.width,
                        run.height,
                        run.iterations,
                        scale + 1
                    )));
                }
            }
            let whole = canvas.unwrap_or_else(|| image.shallow_clone());
            if scale > 0 {
                render.enter_scale(scale, whole)?;
            } else if let Some(t) = render.tiling.as_mut() {
                t.set_canvas(whole);
            }
            if !meta.runs.is_empty() {
                render.runs = meta.runs;
            }
            let weights = render.weights();
            let iterations = render.schedule[scale].iterations;
            let first = render.runs[scale].first_iteration;
            let want = match render.tiling.as_mut() {
                Some(t) => {
                    if meta.tile_iterations > t.total()
                        || meta.iteration
                            != first
                                + Tiling::progress_at(meta.tile_iterations, t.total(), iterations)
                    {
                        return Err(bad(format!(
                            "it claims {} tile iterations of {} at iteration {}",
                            meta.tile_iterations,
                            t.total(),
                            meta.iteration
                        )));
                    }
                    t.done = meta.tile_iterations;
                    let i = t.current();
                    if i < t.regions.len() {
                        render.objective = t.begin(i, &render.net, &render.taps.0, weights).0;
                    }
                    let r = t.regions[i.min(t.regions.len() - 1)];
                    [1, 3, i64::from(r.height), i64::from(r.width)]
                }
                None => whole_shape,
            };
            if image.size() != want {
                return Err(bad(format!(
                    "image shape {:?} is not {want:?}",
                    image.size()
                )));
            }
            render
                .optimizer
                .restore(state, want.iter().product())
                .map_err(bad)?;
            render.x = image.set_requires_grad(true);
            render.iteration = meta.iteration;
            render.history = meta.history;
            render.elapsed = Duration::from_secs_f64(meta.elapsed_s.max(0.0));
            render.converged = meta.converged;
            render.resumed_from = Some(meta.iteration);
            Ok(render)
        })
    }

    /// Builds scale `k`'s targets in place of the current ones, starting from `start`
    /// (the whole image at that scale, 0-255).
    fn enter_scale(&mut self, k: usize, start: Tensor) -> Result<(), EngineError> {
        let inputs = self.originals.as_ref().ok_or_else(|| EngineError::Torch {
            reason: "a later scale without the inputs to build it".into(),
        })?;
        let stage = stage_images(inputs, &self.params, self.schedule[k].side, &self.depth)?;
        let state = scale_state(
            &self.net,
            &self.taps,
            &stage,
            &self.blend,
            &self.params,
            self.device,
            (start, self.schedule[k].iterations),
            false,
        );
        self.objective = state.objective;
        self.x = state.x.set_requires_grad(true);
        self.tiling = state.tiling;
        self.content = stage.content;
        self.pending = None;
        Ok(())
    }

    /// Moves to the next scale: its targets, the image upsampled (bicubic) and the
    /// optimizer's state carried over (a fresh one for each tile of a tiled scale).
    fn advance(&mut self) -> Result<(), EngineError> {
        let k = self.runs.len();
        let (cw, ch) = self.output_size_at(k);
        let whole = self.whole();
        let from = whole.size();
        let to = [1, 3, i64::from(ch), i64::from(cw)];
        let start = tch::no_grad(|| {
            whole
                .upsample_bicubic2d([to[2], to[3]], false, None, None)
                .clamp(0.0, PIXEL_SCALE)
        });
        let was_tiled = self.tiling.is_some();
        self.enter_scale(k, start)?;
        if was_tiled || self.tiling.is_some() {
            self.optimizer = new_optimizer(&self.params);
        } else {
            self.optimizer.rescale(&from, &to);
        }
        self.runs.push(scale_run(
            self.schedule[k],
            (cw, ch),
            &self.tiling,
            self.iteration,
            self.history.len(),
        ));
        Ok(())
    }

    /// The image's size at scale `k`.
    fn output_size_at(&self, k: usize) -> (u32, u32) {
        let (w, h) = self
            .originals
            .as_ref()
            .map_or(self.output_size, |i| i.content.dimensions());
        image_io::fit_long_side(w, h, self.schedule[k].side)
    }

    /// The whole image at the current scale (0-255, detached): at a tiled scale, with
    /// the current tile blended in as far as it got.
    fn whole(&self) -> Tensor {
        match &self.tiling {
            Some(t) => t.preview(&self.x.detach()),
            None => self.x.detach(),
        }
    }

    fn weights(&self) -> Weights {
        weights_of(&self.params)
    }

    /// The iteration the current scale ends at.
    fn scale_end(&self) -> u32 {
        self.schedule[..self.runs.len()]
            .iter()
            .map(|s| s.iterations)
            .sum()
    }

    /// The job's parameters, with the layers the weights gave an empty list filled in.
    pub fn params(&self) -> &RenderParams {
        &self.params
    }

    /// The scales begun so far, the current one last.
    pub fn runs(&self) -> &[ScaleRun] {
        &self.runs
    }

    /// Forward and backward passes made by this process (a line search makes more than
    /// one in some iterations).
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    /// Iterations over the whole schedule.
    pub fn total_iterations(&self) -> u32 {
        self.schedule.iter().map(|s| s.iterations).sum()
    }

    /// The iteration a checkpoint restored, when this render was resumed.
    pub fn resumed_from(&self) -> Option<u32> {
        self.resumed_from
    }

    /// Iterations done so far.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// The losses of every iteration so far.
    pub fn history(&self) -> &[Losses] {
        &self.history
    }

    /// Optimization time so far, resumed runs included.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// True when the optimizer can make no more progress at the last scale.
    pub fn converged(&self) -> bool {
        self.converged
    }

    /// A copy of the optimized image: `[1, 3, H, W]` pixels on a 0-255 scale (at a
    /// tiled scale, the whole image with the current tile blended in).
    pub fn variable(&self) -> Tensor {
        self.whole().copy()
    }

    /// Output size (width, height) at the last scale.
    pub fn output_size(&self) -> (u32, u32) {
        self.output_size
    }

    /// Runs all the job's iterations.
    pub fn run(
        &mut self,
        cancel: &AtomicBool,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, EngineError> {
        self.run_until(self.total_iterations(), cancel, on_progress)
    }

    /// Runs until `stop_at` iterations are done (at most the schedule's total), the
    /// optimizer converges at the last scale or `cancel` is set (checked before every
    /// iteration). An optimizer that converges at an earlier scale moves on to the next.
    pub fn run_until(
        &mut self,
        stop_at: u32,
        cancel: &AtomicBool,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, EngineError> {
        let total = self.total_iterations();
        let stop_at = stop_at.min(total);
        guarded(|| {
            while self.iteration < stop_at {
                if self.converged {
                    return Ok(Outcome::Converged);
                }
                if cancel.load(Ordering::Relaxed) {
                    return Ok(Outcome::Cancelled);
                }
                let started = Instant::now();
                if self.iteration >= self.scale_end() && self.runs.len() < self.schedule.len() {
                    self.advance()?;
                }
                let (losses, grad) = match self.pending.take() {
                    Some(at) => at,
                    None => {
                        self.evaluations += 1;
                        self.evaluate_with_grad()?
                    }
                };
                let (objective, iteration, shape) =
                    (&self.objective, self.iteration, self.x.size());
                let evaluations = &mut self.evaluations;
                let (step, reached) = self.optimizer.step(
                    &mut self.x,
                    losses.total,
                    &grad.view([-1]),
                    &mut |flat: &Tensor| {
                        *evaluations += 1;
                        let x = flat.view(shape.as_slice()).detach().set_requires_grad(true);
                        evaluate(objective, &x, iteration).map(|(l, g)| (l, g.view([-1])))
                    },
                )?;
                self.pending = reached;
                if self.tiling.is_some() {
                    let before = self.iteration;
                    self.tile_step(step == Step::Converged);
                    let spent = started.elapsed();
                    self.elapsed += spent;
                    if let Some(run) = self.runs.last_mut() {
                        run.optimize_s += spent.as_secs_f64();
                    }
                    if self.iteration > before {
                        self.history.push(losses);
                        on_progress(&self.progress(total, losses));
                    }
                    continue;
                }
                self.history.push(losses);
                let spent = started.elapsed();
                self.elapsed += spent;
                if let Some(run) = self.runs.last_mut() {
                    run.optimize_s += spent.as_secs_f64();
                }
                if step == Step::Converged {
                    if self.runs.len() == self.schedule.len() {
                        self.converged = true;
                        return Ok(Outcome::Converged);
                    }
                    // Nothing left to do at this scale: on to the next.
                    self.iteration = self.scale_end();
                } else {
                    self.iteration += 1;
                }
                on_progress(&self.progress(total, losses));
            }
            Ok(if self.converged {
                Outcome::Converged
            } else if self.iteration >= stop_at {
                Outcome::Reached
            } else {
                Outcome::Cancelled
            })
        })
    }

    fn progress(&self, total: u32, losses: Losses) -> Progress {
        Progress {
            iteration: self.iteration,
            iterations: total,
            losses,
            elapsed: self.elapsed,
            scale: self.runs.len() - 1,
            scales: self.schedule.len(),
            side: self.runs.last().map_or(0, |r| r.side),
        }
    }

    /// Counts one iteration of the current tile (all of its remaining ones when its
    /// optimizer converged); a finished tile is blended in and the next one begun.
    fn tile_step(&mut self, converged: bool) {
        let weights = self.weights();
        let end = self.scale_end();
        let Some(t) = self.tiling.as_mut() else {
            return;
        };
        let i = t.current();
        t.done = if converged {
            (i as u32 + 1) * t.per_tile
        } else {
            t.done + 1
        };
        if i >= t.regions.len() {
            // Every tile is done (a resumed state can say so): the scale is over.
            self.iteration = end;
            return;
        }
        if t.current() > i {
            t.finish(i, &self.x);
            if t.current() < t.regions.len() {
                let (objective, x) = t.begin(t.current(), &self.net, &self.taps.0, weights);
                self.objective = objective;
                self.x = x.set_requires_grad(true);
                self.optimizer = new_optimizer(&self.params);
                self.pending = None;
            }
        }
        let k = self.runs.len() - 1;
        self.iteration = self.runs[k].first_iteration + t.progress(self.schedule[k].iterations);
    }

    /// The losses and their gradient with respect to the pixels, at the current image
    /// (at a tiled scale, the current tile's).
    pub fn evaluate_with_grad(&self) -> Result<(Losses, Tensor), EngineError> {
        evaluate(&self.objective, &self.x, self.iteration)
    }

    /// The losses at the current image (at a tiled scale, averaged over the first
    /// pass's tiles by area).
    pub fn losses(&self) -> Result<Losses, EngineError> {
        guarded(|| {
            Ok(match &self.tiling {
                Some(t) => t.losses(&self.whole(), &self.net, &self.taps.0, self.weights()),
                None => tch::no_grad(|| self.objective.evaluate(&(&self.x / PIXEL_SCALE))).1,
            })
        })
    }

    /// The current image (with the content's colours when colour preservation is on).
    pub fn output(&self) -> Rgb32FImage {
        let img = image_io::from_tensor(&(self.whole() / PIXEL_SCALE));
        if self.params.preserve_colors {
            color::recolor(&img, &self.content)
        } else {
            img
        }
    }

    /// The whole state as bytes; [`Render::resume`] continues from it bit for bit.
    pub fn checkpoint(&self) -> Result<Vec<u8>, EngineError> {
        guarded(|| {
            let meta = checkpoint::Meta {
                format: checkpoint::FORMAT,
                iteration: self.iteration,
                runs: self.runs.clone(),
                fingerprint: self.fingerprint.clone(),
                optimizer: optimizer_name(self.params.optimizer).to_owned(),
                optimizer_state: serde_json::Value::Null,
                history: self.history.clone(),
                elapsed_s: self.elapsed.as_secs_f64(),
                converged: self.converged,
                tile_iterations: self.tiling.as_ref().map_or(0, |t| t.done),
            };
            checkpoint::encode(
                &self.x,
                self.tiling.as_ref().map(Tiling::canvas),
                self.optimizer.save(),
                meta,
            )
        })
    }
}

/// The losses at `x` (pixels on a 0-255 scale, requiring grad) and their gradient.
fn evaluate(
    objective: &Objective,
    x: &Tensor,
    iteration: u32,
) -> Result<(Losses, Tensor), EngineError> {
    let (total, losses) = objective.evaluate(&(x / PIXEL_SCALE));
    if !losses.total.is_finite() {
        return Err(EngineError::Diverged {
            iteration,
            value: losses.total,
        });
    }
    let grad = Tensor::run_backward(&[&total], &[x], false, false)
        .pop()
        .ok_or_else(|| EngineError::Torch {
            reason: "backward returned no gradient".into(),
        })?;
    Ok((losses, grad))
}

fn optimizer_name(kind: OptimizerKind) -> &'static str {
    match kind {
        OptimizerKind::Lbfgs => "lbfgs",
        OptimizerKind::Adam => "adam",
    }
}

/// The inputs resized for the scale whose long side is `side`.
fn stage_images(
    inputs: &RenderInputs,
    params: &RenderParams,
    side: u32,
    (pools, deepest): &(u32, String),
) -> Result<StageImages, EngineError> {
    let (cw, ch) = inputs.content.dimensions();
    let (w, h) = image_io::fit_long_side(cw, ch, side);
    let content = image_io::resize(&inputs.content, w, h);
    check_size("the content image", &content, *pools, deepest)?;
    let style_side = (f64::from(side) * params.style_scale).round().max(1.0) as u32;
    let mut styles = Vec::new();
    for (i, s) in inputs.styles.iter().enumerate() {
        let (sw, sh) = image_io::fit_long_side(s.width(), s.height(), style_side);
        let resized = image_io::resize(s, sw, sh);
        check_size(&format!("style image {}", i + 1), &resized, *pools, deepest)?;
        styles.push(resized);
    }
    let previous = inputs
        .previous
        .as_ref()
        .filter(|_| params.temporal_weight > 0.0)
        .map(|p| {
            let styled = image_io::resize(&p.styled, w, h);
            (
                image_io::resize(&p.content, w, h),
                if params.preserve_colors {
                    color::luminance(&styled)
                } else {
                    styled
                },
            )
        });
    // Colour preservation optimizes luminance only.
    Ok(if params.preserve_colors {
        StageImages {
            content_target: color::luminance(&content),
            styles: styles
                .iter()
                .map(|s| color::matched_luminance(s, &content))
                .collect(),
            content,
            previous,
        }
    } else {
        StageImages {
            content_target: content.clone(),
            styles,
            content,
            previous,
        }
    })
}

/// The temporal term of one scale: the previous result warped along the flow from the
/// previous content to this one, trusted where the flows both ways agree.
fn temporal_term(
    stage: &StageImages,
    (previous_content, previous_styled): &(Rgb32FImage, Rgb32FImage),
    weight: f64,
    device: Device,
) -> loss::Temporal {
    let current = image_io::to_tensor(&stage.content, device);
    let previous = image_io::to_tensor(previous_content, device);
    let backward = flow::estimate(&current, &previous);
    let forward = flow::estimate(&previous, &current);
    let mask = flow::consistent(&backward, &forward);
    let warped = tch::no_grad(|| {
        flow::warp(&image_io::to_tensor(previous_styled, device), &backward).clamp(0.0, 1.0)
    });
    loss::Temporal {
        warped,
        mask,
        weight,
    }
}

fn weights_of(params: &RenderParams) -> Weights {
    Weights {
        content: params.content_weight,
        style: params.style_weight,
        tv: params.tv_weight,
    }
}

/// One scale's objective (targets from its images, the shared network) and where it
/// starts: `start` (the whole image at this scale, 0-255) for a scale with
/// `iterations`, or the warped previous frame on a sequence frame's `first` scale. A
/// scale larger than `params.tile` starts at its first tile.
#[allow(clippy::too_many_arguments)]
fn scale_state(
    net: &Rc<vgg::Vgg>,
    (content_taps, style_taps): &(Vec<Tap>, Vec<Tap>),
    stage: &StageImages,
    blend: &[f64],
    params: &RenderParams,
    device: Device,
    (start, iterations): (Tensor, u32),
    first: bool,
) -> ScaleState {
    let styles: Vec<(Tensor, f64)> = stage
        .styles
        .iter()
        .zip(blend)
        .map(|(s, &b)| (image_io::to_tensor(s, device), b))
        .collect();
    let style = StyleTargets::new(net, content_taps, style_taps, &styles);
    drop(styles);
    let temporal = stage
        .previous
        .as_ref()
        .map(|p| temporal_term(stage, p, params.temporal_weight, device));
    // A frame of a sequence starts from its predecessor's result carried along the flow
    // (Ruder et al.): most of it is already styled the way it should stay.
    let start = match (&temporal, first) {
        (Some(t), true) => &t.warped * PIXEL_SCALE,
        _ => start,
    };
    let content = image_io::to_tensor(&stage.content_target, device);
    let (w, h) = stage.content.dimensions();
    let weights = weights_of(params);
    if !tiles::is_tiled(w, h, params.tile) {
        let objective =
            Objective::with_style(Rc::clone(net), content_taps, &style, &content, weights);
        return ScaleState {
            objective: match temporal {
                Some(t) => objective.with_temporal(t),
                None => objective,
            },
            x: start,
            tiling: None,
        };
    }
    let tiling = Tiling::new(
        start,
        content,
        style,
        temporal,
        params.tile,
        iterations,
        net,
        content_taps,
        weights,
    );
    let (objective, x) = tiling.begin(0, net, content_taps, weights);
    ScaleState {
        objective,
        x,
        tiling: Some(tiling),
    }
}

/// The record of a scale begun at `first_iteration`.
fn scale_run(
    scale: Scale,
    (width, height): (u32, u32),
    tiling: &Option<Tiling>,
    first_iteration: u32,
    first_loss: usize,
) -> ScaleRun {
    ScaleRun {
        side: scale.side,
        width,
        height,
        iterations: scale.iterations,
        first_iteration,
        first_loss,
        optimize_s: 0.0,
        tile: tiling.as_ref().map_or(0, |t| t.tile),
        tiles: tiling.as_ref().map_or(0, |t| t.regions.len() as u32),
    }
}

fn new_optimizer(params: &RenderParams) -> Optimizer {
    match params.optimizer {
        OptimizerKind::Lbfgs => Optimizer::Lbfgs(Lbfgs::new(
            params.learning_rate,
            params.lbfgs_history as usize,
            params.line_search,
        )),
        OptimizerKind::Adam => Optimizer::Adam(Adam::new(params.learning_rate)),
    }
}

/// Identifies a job by what decides its result: the weights, the parameters, the
/// schedule and the decoded inputs. The last scale's iteration count is left out so a
/// job may be extended.
fn fingerprint(
    weights: &WeightsInfo,
    params: &RenderParams,
    schedule: &[Scale],
    inputs: &RenderInputs,
    blend: &[f64],
) -> String {
    let mut p = params.clone();
    p.iterations = 0;
    p.scale_iterations = 0;
    let mut schedule = schedule.to_vec();
    if let Some(last) = schedule.last_mut() {
        last.iterations = 0;
    }
    let mut h = Sha256::new();
    h.update(weights.sha256.as_bytes());
    h.update(serde_json::to_vec(&p).unwrap_or_default());
    h.update(serde_json::to_vec(&schedule).unwrap_or_default());
    let images = std::iter::once(&inputs.content)
        .chain(&inputs.styles)
        .chain(
            inputs
                .init_image
                .as_ref()
                .filter(|_| params.init == InitKind::Image),
        )
        .chain(
            inputs
                .previous
                .iter()
                .filter(|_| params.temporal_weight > 0.0)
                .flat_map(|p| [&p.content, &p.styled]),
        );
    for img in images {
        h.update(img.width().to_le_bytes());
        h.update(img.height().to_le_bytes());
        for v in img.as_raw() {
            h.update(v.to_le_bytes());
        }
    }
    for b in blend {
        h.update(b.to_le_bytes());
    }
    hex::encode(h.finalize())
}
