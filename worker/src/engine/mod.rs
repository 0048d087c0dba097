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
pub mod image_io;
pub mod loss;
pub mod optim;
pub mod vgg;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use image::Rgb32FImage;
use sha2::{Digest, Sha256};
use stylefarm_core::rng::SplitMix64;
use stylefarm_core::{InitKind, OptimizerKind, RenderParams, WeightedLayer};
use stylefarm_weights::{LayerKind, WeightsInfo};
use tch::{Device, Tensor};

pub use error::{EngineError, ImageError};
pub use loss::Losses;

use loss::{Objective, Tap};
use optim::{Adam, Lbfgs, Optimizer, Step};

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
}

/// Reported after every iteration.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Iterations done.
    pub iteration: u32,
    /// Iterations asked for.
    pub iterations: u32,
    /// Losses at the point this iteration started from.
    pub losses: Losses,
    /// Optimization time, resumed runs included.
    pub elapsed: Duration,
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

/// One style-transfer optimization in progress.
pub struct Render {
    params: RenderParams,
    objective: Objective,
    optimizer: Optimizer,
    x: Tensor,
    iteration: u32,
    history: Vec<Losses>,
    elapsed: Duration,
    converged: bool,
    resumed_from: Option<u32>,
    fingerprint: String,
    /// The resized content photo, for colour preservation.
    content: Rgb32FImage,
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
    /// Prepares a render: validates, resizes inputs, loads the network, computes targets.
    pub fn new(
        weights: &WeightsInfo,
        params: &RenderParams,
        inputs: &RenderInputs,
        device: Device,
    ) -> Result<Self, EngineError> {
        params.validate()?;
        let params = &weights.resolve_layers(params);
        let content_taps = resolve(weights, &params.content_layers)?;
        let style_taps = resolve(weights, &params.style_layers)?;
        let all: Vec<Tap> = content_taps.iter().chain(&style_taps).copied().collect();
        let (deepest, pools, deepest_name) = depth(weights, &all);
        let blend = blend_weights(inputs.styles.len(), &inputs.style_weights)?;

        let (cw, ch) = inputs.content.dimensions();
        let (w, h) = image_io::fit_long_side(cw, ch, params.size);
        let content = image_io::resize(&inputs.content, w, h);
        check_size("the content image", &content, pools, &deepest_name)?;
        let style_side = ((params.size as f64) * params.style_scale).round().max(1.0) as u32;
        let mut styles = Vec::new();
        for (i, s) in inputs.styles.iter().enumerate() {
            let (sw, sh) = image_io::fit_long_side(s.width(), s.height(), style_side);
            let resized = image_io::resize(s, sw, sh);
            check_size(
                &format!("style image {}", i + 1),
                &resized,
                pools,
                &deepest_name,
            )?;
            styles.push(resized);
        }
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
        let fingerprint = fingerprint(weights, params, &content, &styles, &blend);

        // Colour preservation optimizes luminance only.
        let (content_target, styles) = if params.preserve_colors {
            let lum = color::luminance(&content);
            let styles: Vec<_> = styles
                .iter()
                .map(|s| color::matched_luminance(s, &content))
                .collect();
            (lum, styles)
        } else {
            (content.clone(), styles)
        };
        let start = init.unwrap_or_else(|| content_target.clone());

        guarded(|| {
            let net = vgg::Vgg::load(weights, deepest, params.pooling, device)?;
            let content_t = image_io::to_tensor(&content_target, device);
            let style_t: Vec<(Tensor, f64)> = styles
                .iter()
                .zip(&blend)
                .map(|(s, &b)| (image_io::to_tensor(s, device), b))
                .collect();
            let objective = Objective::new(
                net,
                &content_taps,
                &style_taps,
                &content_t,
                &style_t,
                params.content_weight,
                params.style_weight,
                params.tv_weight,
            );
            let x = (image_io::to_tensor(&start, device) * PIXEL_SCALE).set_requires_grad(true);
            let optimizer = match params.optimizer {
                OptimizerKind::Lbfgs => Optimizer::Lbfgs(Lbfgs::new(
                    params.learning_rate,
                    params.lbfgs_history as usize,
                )),
                OptimizerKind::Adam => Optimizer::Adam(Adam::new(params.learning_rate)),
            };
            Ok(Self {
                params: params.clone(),
                objective,
                optimizer,
                x,
                iteration: 0,
                history: Vec::new(),
                elapsed: Duration::ZERO,
                converged: false,
                resumed_from: None,
                fingerprint,
                content,
            })
        })
    }

    /// Prepares the same render as [`Render::new`] and restores a checkpoint's state.
    pub fn resume(
        weights: &WeightsInfo,
        params: &RenderParams,
        inputs: &RenderInputs,
        device: Device,
        checkpoint_bytes: &[u8],
    ) -> Result<Self, EngineError> {
        let mut render = Self::new(weights, params, inputs, device)?;
        guarded(|| {
            let (image, state, meta) = checkpoint::decode(checkpoint_bytes, device)?;
            let bad = |reason: String| EngineError::Checkpoint { reason };
            if meta.fingerprint != render.fingerprint {
                return Err(bad(
                    "it belongs to another job (inputs, parameters or weights differ)".into(),
                ));
            }
            if meta.optimizer != optimizer_name(params.optimizer) {
                return Err(bad(format!("it was made by {}", meta.optimizer)));
            }
            if image.size() != render.x.size() {
                return Err(bad(format!(
                    "image shape {:?} is not {:?}",
                    image.size(),
                    render.x.size()
                )));
            }
            if meta.iteration > params.iterations
                || meta.history.len() > params.iterations as usize + 1
            {
                return Err(bad(format!(
                    "it claims iteration {} with {} recorded losses; the job runs {} iterations",
                    meta.iteration,
                    meta.history.len(),
                    params.iterations
                )));
            }
            let numel = render.x.numel() as i64;
            render.optimizer.restore(state, numel).map_err(bad)?;
            render.x = image.set_requires_grad(true);
            render.iteration = meta.iteration;
            render.history = meta.history;
            render.elapsed = Duration::from_secs_f64(meta.elapsed_s.max(0.0));
            render.converged = meta.converged;
            render.resumed_from = Some(meta.iteration);
            Ok(render)
        })
    }

    /// The job's parameters, with the layers the weights gave an empty list filled in.
    pub fn params(&self) -> &RenderParams {
        &self.params
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

    /// True when the optimizer can make no more progress.
    pub fn converged(&self) -> bool {
        self.converged
    }

    /// A copy of the optimized variable: `[1, 3, H, W]` pixels on a 0-255 scale.
    pub fn variable(&self) -> Tensor {
        self.x.detach().copy()
    }

    /// Output size (width, height).
    pub fn output_size(&self) -> (u32, u32) {
        self.content.dimensions()
    }

    /// Runs all the job's iterations.
    pub fn run(
        &mut self,
        cancel: &AtomicBool,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, EngineError> {
        self.run_until(self.params.iterations, cancel, on_progress)
    }

    /// Runs until `stop_at` iterations are done (at most the job's total), the optimizer
    /// converges or `cancel` is set (checked before every iteration).
    pub fn run_until(
        &mut self,
        stop_at: u32,
        cancel: &AtomicBool,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, EngineError> {
        let stop_at = stop_at.min(self.params.iterations);
        guarded(|| {
            while self.iteration < stop_at {
                if self.converged {
                    return Ok(Outcome::Converged);
                }
                if cancel.load(Ordering::Relaxed) {
                    return Ok(Outcome::Cancelled);
                }
                let started = Instant::now();
                let (losses, grad) = self.evaluate_with_grad()?;
                let step = self
                    .optimizer
                    .step(&mut self.x, losses.total, &grad.view([-1]));
                self.history.push(losses);
                self.elapsed += started.elapsed();
                if step == Step::Converged {
                    self.converged = true;
                    return Ok(Outcome::Converged);
                }
                self.iteration += 1;
                on_progress(&Progress {
                    iteration: self.iteration,
                    iterations: self.params.iterations,
                    losses,
                    elapsed: self.elapsed,
                });
            }
            Ok(if self.converged {
                Outcome::Converged
            } else if self.iteration >= self.params.iterations || self.iteration >= stop_at {
                Outcome::Reached
            } else {
                Outcome::Cancelled
            })
        })
    }

    /// The losses and their gradient with respect to the pixels, at the current image.
    pub fn evaluate_with_grad(&self) -> Result<(Losses, Tensor), EngineError> {
        let (total, losses) = self.objective.evaluate(&(&self.x / PIXEL_SCALE));
        if !losses.total.is_finite() {
            return Err(EngineError::Diverged {
                iteration: self.iteration,
                value: losses.total,
            });
        }
        let grad = Tensor::run_backward(&[&total], &[&self.x], false, false)
            .pop()
            .ok_or_else(|| EngineError::Torch {
                reason: "backward returned no gradient".into(),
            })?;
        Ok((losses, grad))
    }

    /// The losses at the current image.
    pub fn losses(&self) -> Result<Losses, EngineError> {
        guarded(|| Ok(tch::no_grad(|| self.objective.evaluate(&(&self.x / PIXEL_SCALE))).1))
    }

    /// The current image (with the content's colours when colour preservation is on).
    pub fn output(&self) -> Rgb32FImage {
        let img = image_io::from_tensor(&(&self.x / PIXEL_SCALE));
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
                fingerprint: self.fingerprint.clone(),
                optimizer: optimizer_name(self.params.optimizer).to_owned(),
                optimizer_state: serde_json::Value::Null,
                history: self.history.clone(),
                elapsed_s: self.elapsed.as_secs_f64(),
                converged: self.converged,
            };
            checkpoint::encode(&self.x, self.optimizer.save(), meta)
        })
    }
}

fn optimizer_name(kind: OptimizerKind) -> &'static str {
    match kind {
        OptimizerKind::Lbfgs => "lbfgs",
        OptimizerKind::Adam => "adam",
    }
}

/// Identifies a job by what decides its result; the iteration count is left out so a
/// job may be extended.
fn fingerprint(
    weights: &WeightsInfo,
    params: &RenderParams,
    content: &Rgb32FImage,
    styles: &[Rgb32FImage],
    blend: &[f64],
) -> String {
    let mut p = params.clone();
    p.iterations = 0;
    let mut h = Sha256::new();
    h.update(weights.sha256.as_bytes());
    h.update(serde_json::to_vec(&p).unwrap_or_default());
    for img in std::iter::once(content).chain(styles) {
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
