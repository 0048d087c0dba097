//! How much memory a job needs at its peak, before anything is allocated for it.
//!
//! One model for every place that decides whether a job can run: a worker refuses a job
//! over its `--max-job-memory` before it decodes an input, and the coordinator refuses at
//! submit a job that no registered worker could take. The model follows what the engine
//! holds, part by part:
//!
//! - **inputs**: each image decoded at its own size (f32 RGB, kept for the whole job),
//!   with one decoder buffer at a time;
//! - **images**: the resized content, styles and start image, in the engine's images and
//!   as tensors, the variable, its gradient and the content target;
//! - **network**: the weights file as read, and the convolutions kept;
//! - **targets**: the style images' forward passes without gradients (the widest layer's
//!   input and output at once, one style at a time) and the Gram matrices;
//! - **graph**: one forward and backward pass at the output size: the activations
//!   autograd keeps (every ReLU and pooling output, max pooling's int64 indices), a
//!   convolution's output beside its ReLU's, and the backward pass's gradients;
//! - **optimizer**: L-BFGS's history (two vectors of the image's size per entry, all
//!   `lbfgs_history` of them by the end) or Adam's two moments.
//!
//! A tiled scale ([`stylefarm_core::tiles`]) keeps the whole image and its content as
//! images and tensors, but the graph, the optimizer and the content features are one
//! tile's. [`fit`] picks the largest tile that keeps a job within a budget.
//!
//! On CPU everything is in one memory, with the process itself (libtorch mapped in) as a
//! constant; with CUDA the tensors are on the device and the images on the host. The
//! constants were measured on CPU with `stylefarm render` (peak RSS at several sizes;
//! `cli/tests/render.rs` holds the estimate to within 25% of it at three sizes on every
//! `make test`); CUDA adds its context and cuDNN workspace as a constant.

use stylefarm_core::tiles;
pub use stylefarm_core::tiles::MIN_TILE;
use stylefarm_core::{LineSearch, OptimizerKind, Pooling, RenderParams};

use crate::{Architecture, LayerKind};

/// Bytes of one f32.
const F32: u64 = 4;
/// Resident memory of a worker process before any job: libtorch's CPU kernels mapped
/// in, the allocator's arenas, the runtime (measured: about 520 MiB at 64 px).
pub const CPU_PROCESS_BYTES: u64 = 520 << 20;
/// Device memory CUDA takes before the first tensor: the context and cuDNN's workspace.
pub const CUDA_CONTEXT_BYTES: u64 = 768 << 20;
/// What libtorch's CPU kernels and the allocator hold beyond the tensors the model
/// counts (convolution workspaces, freed blocks not yet reused), as a share of them.
const CPU_OVERHEAD: f64 = 0.15;

/// Width and height of an image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
}

impl Dims {
    /// `width` x `height`.
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height }
    }

    /// A square: the largest image with this long side, when the real one is unknown.
    pub fn square(side: u32) -> Self {
        Self::new(side, side)
    }

    fn pixels(self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Scaled so the long side is `long_side`, as the engine resizes.
    pub fn fit_long_side(self, long_side: u32) -> Self {
        let long = f64::from(self.width.max(self.height).max(1));
        let scale = f64::from(long_side) / long;
        let side = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
        Self::new(side(self.width), side(self.height))
    }
}

/// The images of one job, as their headers give them.
#[derive(Debug, Clone)]
pub struct JobImages {
    /// The content photo.
    pub content: Dims,
    /// Each style image.
    pub styles: Vec<Dims>,
    /// The start image, when `init` is `image`.
    pub init: Option<Dims>,
    /// The previous frame's content and result, when the temporal term is on.
    pub previous: Option<(Dims, Dims)>,
}

/// Where the tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Host memory.
    Cpu,
    /// A CUDA device; images stay on the host.
    Cuda,
}

/// A job's estimated peak, part by part.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Where the tensors live.
    pub backend: Backend,
    /// `(part, bytes)` in host memory (on CPU: all of it).
    pub host: Vec<(&'static str, u64)>,
    /// `(part, bytes)` in device memory (empty on CPU).
    pub device: Vec<(&'static str, u64)>,
}

impl Estimate {
    /// Host memory at the peak.
    pub fn host_bytes(&self) -> u64 {
        self.host.iter().map(|(_, b)| b).sum()
    }

    /// Device memory at the peak (0 on CPU).
    pub fn device_bytes(&self) -> u64 {
        self.device.iter().map(|(_, b)| b).sum()
    }

    /// The figure a budget is compared with: device memory with CUDA, else host memory.
    pub fn peak(&self) -> u64 {
        match self.backend {
            Backend::Cpu => self.host_bytes(),
            Backend::Cuda => self.device_bytes(),
        }
    }

    /// `4.10 GiB of memory (graph 2.30 GiB, optimizer 1.10 GiB, …)`: the peak and its
    /// largest parts.
    pub fn describe(&self) -> String {
        let mut parts: Vec<_> = match self.backend {
            Backend::Cpu => self.host.clone(),
            Backend::Cuda => self.device.clone(),
        };
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        let shown: Vec<String> = parts
            .iter()
            .filter(|(_, b)| *b > 0)
            .take(4)
            .map(|(what, b)| format!("{what} {}", gib(*b)))
            .collect();
        format!("{} of memory ({})", gib(self.peak()), shown.join(", "))
    }
}

/// `1.25 GiB`.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Why a job cannot be estimated: a layer the network does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{arch} has no layer {layer}")]
pub struct UnknownLayer {
    /// The network.
    pub arch: &'static str,
    /// The layer asked for.
    pub layer: String,
}

/// The peak memory of `params` on `images` with the network `arch`, whose weights file
/// has `weights_file_bytes` bytes.
pub fn estimate(
    arch: Architecture,
    weights_file_bytes: u64,
    params: &RenderParams,
    images: &JobImages,
    backend: Backend,
) -> Result<Estimate, UnknownLayer> {
    let params = &crate::with_standard_layers(params, |n| arch.layer(n).is_some());
    let layers = arch.layers();
    let index = |name: &str| {
        layers
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| UnknownLayer {
                arch: arch.name(),
                layer: name.to_owned(),
            })
    };
    let mut deepest = 0;
    let mut style_taps = Vec::new();
    for l in &params.style_layers {
        let i = index(&l.layer)?;
        style_taps.push(i);
        deepest = deepest.max(i);
    }
    let mut content_taps = Vec::new();
    for l in &params.content_layers {
        let i = index(&l.layer)?;
        content_taps.push(i);
        deepest = deepest.max(i);
    }
    let ops = &layers[..=deepest.min(layers.len() - 1)];
    let max_pooling = params.pooling == Pooling::Max;

    let out = images.content.fit_long_side(params.size);
    let style_side = (f64::from(params.size) * params.style_scale)
        .round()
        .max(1.0) as u32;
    let styles: Vec<Dims> = images
        .styles
        .iter()
        .map(|d| d.fit_long_side(style_side))
        .collect();
    let image = |d: Dims| d.pixels() * 3 * F32;
    // What one optimization step works on: the whole image, or one tile of it seen
    // with its margin.
    let tiled = tiles::is_tiled(out.width, out.height, params.tile);
    let seen = params.tile + 2 * tiles::margin(params.tile);
    let work = if tiled {
        Dims::new(out.width.min(seen), out.height.min(seen))
    } else {
        out
    };

    // Decoded inputs stay for the whole job; one decoder buffer (up to RGBA16) at a time.
    let originals = std::iter::once(images.content)
        .chain(images.styles.iter().copied())
        .chain(images.init)
        .chain(images.previous.iter().flat_map(|&(c, r)| [c, r]));
    let (mut inputs, mut decoder) = (0, 0);
    for d in originals {
        inputs += image(d);
        decoder = decoder.max(d.pixels() * 8);
    }
    // A render of several scales keeps its own copy to build each scale from; its peak
    // is at the last scale, `size`, which is what the rest counts.
    if params.schedule().len() > 1 {
        inputs *= 2;
    }
    // The engine's resized images (content twice: it and the target or start) and their
    // tensors; the variable, its gradient and the content target as tensors.
    // A frame with a temporal term also holds its predecessor's content and result
    // resized, and as tensors the warped result, its mask and the term's difference.
    let temporal = u64::from(images.previous.is_some());
    let resized_host =
        (2 + 2 * temporal) * image(out) + styles.iter().map(|&d| image(d)).sum::<u64>();
    // A tiled scale adds the tile's variable, gradient, content and blend mask.
    let tensors = (4 + 3 * temporal) * image(out)
        + styles.iter().map(|&d| image(d)).sum::<u64>()
        + u64::from(tiled) * 4 * image(work);

    let convs: u64 = ops
        .iter()
        .map(|l| match l.kind {
            LayerKind::Conv {
                in_channels,
                out_channels,
            } => (in_channels as u64 * out_channels as u64 * 9 + out_channels as u64) * F32,
            _ => 0,
        })
        .sum();
    // The targets and the image's own; a tiled scale keeps each first-pass tile's too,
    // and a tile's target moved by the image's deficit.
    let gram_set: u64 = style_taps
        .iter()
        .map(|&i| channels(ops, i).pow(2) * F32)
        .sum();
    let kept = if tiled {
        tiles::grid(out.width, out.height, params.tile)[0].len() as u64 + 2
    } else {
        0
    };
    let grams = gram_set * (2 + kept);
    let content_features: u64 = content_taps
        .iter()
        .map(|&i| activation(ops, i, work) * F32)
        .sum();
    // Without gradients, at most one layer's input and output at once (and the taps
    // reached so far, bounded by the same).
    let targets = styles
        .iter()
        .chain(std::iter::once(&work))
        .map(|&d| widest_pair(ops, d))
        .max()
        .unwrap_or(0)
        * F32
        + grams
        + content_features
        // The optical flow both ways, beside the targets: its pyramid and the maps of
        // one Lucas-Kanade step, about 25 single-channel images of the output's size.
        + temporal * 25 * out.pixels() * F32;
    let graph = graph_bytes(ops, work, max_pooling);
    let numel = work.pixels() * 3 * F32;
    let optimizer = match params.optimizer {
        // s and y per entry, and the direction, the previous gradient and the step; the
        // line search adds the start point, a trial point and up to three gradients.
        OptimizerKind::Lbfgs => {
            let search = match params.line_search {
                LineSearch::StrongWolfe => 5,
                LineSearch::None => 0,
            };
            (2 * u64::from(params.lbfgs_history) + 3 + search) * numel
        }
        // Two moments and a temporary.
        OptimizerKind::Adam => 3 * numel,
    };
    // Targets are computed first and freed but for the Gram matrices and content
    // features; the optimization comes after. The peak is the larger of the two.
    let optimizing = graph + optimizer + content_features + grams;
    let compute: Vec<(&'static str, u64)> = if targets > optimizing {
        vec![("style targets", targets)]
    } else {
        vec![
            ("graph", graph),
            ("optimizer", optimizer),
            ("targets", content_features + grams),
        ]
    };
    let compute_bytes: u64 = compute.iter().map(|(_, b)| b).sum();

    Ok(match backend {
        Backend::Cpu => {
            let overhead = ((tensors + compute_bytes) as f64 * CPU_OVERHEAD) as u64;
            let mut host = vec![
                ("process", CPU_PROCESS_BYTES),
                ("network", weights_file_bytes + convs),
                ("inputs", inputs + decoder),
                ("images", resized_host + tensors),
            ];
            host.extend(compute);
            host.push(("allocator", overhead));
            Estimate {
                backend,
                host,
                device: Vec::new(),
            }
        }
        Backend::Cuda => {
            let mut device = vec![
                ("context", CUDA_CONTEXT_BYTES),
                ("network", convs),
                ("images", tensors),
            ];
            device.extend(compute);
            Estimate {
                backend,
                host: vec![
                    ("process", CPU_PROCESS_BYTES),
                    ("network", weights_file_bytes),
                    ("inputs", inputs + decoder),
                    ("images", resized_host),
                ],
                device,
            }
        }
    })
}

/// The smallest tile [`fit`] tries for a render of `size`: the smallest allowed
/// ([`tiles::smallest_tile`]) rounded up to a multiple of [`MIN_TILE`].
pub fn smallest_tile(size: u32) -> u32 {
    tiles::smallest_tile(size).next_multiple_of(MIN_TILE)
}

/// How a job fits a memory budget.
#[derive(Debug, Clone, PartialEq)]
pub enum Fit {
    /// Whole images at every scale (or in the tiles the job itself asked for).
    Whole(Estimate),
    /// In tiles of this long side, the largest (in steps of [`MIN_TILE`], down to
    /// [`tiles::smallest_tile`]) that fit.
    Tiled(u32, Estimate),
    /// Not at all: the estimate in the smallest tiles (or whole, for a size too small
    /// for tiles).
    Never(Estimate),
}

/// Whether `params` on `images` fits `budget` bytes, and when it does only in tiles
/// (`params.tile` 0, the default), the largest tile that does.
pub fn fit(
    arch: Architecture,
    weights_file_bytes: u64,
    params: &RenderParams,
    images: &JobImages,
    backend: Backend,
    budget: u64,
) -> Result<Fit, UnknownLayer> {
    let whole = estimate(arch, weights_file_bytes, params, images, backend)?;
    if whole.peak() <= budget {
        return Ok(Fit::Whole(whole));
    }
    if params.tile != 0 {
        return Ok(Fit::Never(whole));
    }
    let mut smallest = whole;
    let mut tile = (params.size - 1) / MIN_TILE * MIN_TILE;
    while tile >= smallest_tile(params.size) {
        let p = RenderParams {
            tile,
            ..params.clone()
        };
        let e = estimate(arch, weights_file_bytes, &p, images, backend)?;
        if e.peak() <= budget {
            return Ok(Fit::Tiled(tile, e));
        }
        smallest = e;
        tile -= MIN_TILE;
    }
    Ok(Fit::Never(smallest))
}

/// Output channels at layer `i` (3 before the first convolution).
fn channels(ops: &[crate::Layer], i: usize) -> u64 {
    ops[..=i.min(ops.len() - 1)]
        .iter()
        .rev()
        .find_map(|l| match l.kind {
            LayerKind::Conv { out_channels, .. } => Some(out_channels as u64),
            _ => None,
        })
        .unwrap_or(3)
}

/// The size of layer `i`'s output for an input of `d`: spatial size halves (rounding
/// down) at each pooling layer up to and including `i`.
fn spatial(ops: &[crate::Layer], i: usize, d: Dims) -> u64 {
    let pools = ops[..=i.min(ops.len() - 1)]
        .iter()
        .filter(|l| l.kind == LayerKind::Pool)
        .count() as u32;
    u64::from(d.width >> pools) * u64::from(d.height >> pools)
}

/// Elements of layer `i`'s output.
fn activation(ops: &[crate::Layer], i: usize, d: Dims) -> u64 {
    channels(ops, i) * spatial(ops, i, d)
}

/// Elements of the largest input + output of one layer (a forward pass without
/// gradients holds no more at once).
fn widest_pair(ops: &[crate::Layer], d: Dims) -> u64 {
    let mut prev = d.pixels() * 3;
    let mut widest = 0;
    for (i, _) in ops.iter().enumerate() {
        let a = activation(ops, i, d);
        widest = widest.max(prev + a);
        prev = a;
    }
    widest
}

/// Bytes one forward and backward pass holds at its peak at size `d`: the activations
/// kept for the backward pass, the convolution output beside the largest ReLU output,
/// and the two largest gradients in flight.
fn graph_bytes(ops: &[crate::Layer], d: Dims, max_pooling: bool) -> u64 {
    let mut kept = d.pixels() * 3 * F32; // the preprocessed input
    let mut largest = d.pixels() * 3;
    for (i, l) in ops.iter().enumerate() {
        let a = activation(ops, i, d);
        largest = largest.max(a);
        match l.kind {
            LayerKind::Relu => kept += a * F32,
            LayerKind::Pool => {
                kept += a * F32;
                if max_pooling {
                    kept += a * 8;
                }
            }
            LayerKind::Conv { .. } => {}
        }
    }
    kept + 3 * largest * F32
}

#[cfg(test)]
mod tests {
    use super::*;
    use stylefarm_core::WeightedLayer;

    fn params(size: u32) -> RenderParams {
        RenderParams {
            size,
            ..RenderParams::default()
        }
    }

    fn images() -> JobImages {
        JobImages {
            content: Dims::new(1024, 768),
            styles: vec![Dims::new(1024, 640)],
            init: None,
            previous: None,
        }
    }

    fn peak(p: &RenderParams, i: &JobImages) -> u64 {
        estimate(Architecture::Vgg19, 0, p, i, Backend::Cpu)
            .expect("estimate")
            .peak()
    }

    #[test]
    fn pixels_dominate_and_grow_with_the_area() {
        let small = peak(&params(512), &images()) - CPU_PROCESS_BYTES;
        let large = peak(&params(1024), &images()) - CPU_PROCESS_BYTES;
        let ratio = large as f64 / small as f64;
        assert!((3.5..4.1).contains(&ratio), "{ratio}");
    }

    #[test]
    fn the_issues_bombs_are_counted_before_anything_is_allocated() {
        // size 8192 with style_scale 8: the style is resized to 65536 px.
        let p = RenderParams {
            size: 8192,
            style_scale: 8.0,
            ..RenderParams::default()
        };
        let e = estimate(
            Architecture::Vgg19,
            0,
            &p,
            &JobImages {
                content: Dims::square(8192),
                styles: vec![Dims::new(4000, 3000)],
                init: None,
                previous: None,
            },
            Backend::Cpu,
        )
        .expect("estimate");
        assert!(e.peak() > 50 << 30, "{}", e.describe());
        // Sixteen 10,000 px styles: inputs alone hold about 20 GB.
        let e = estimate(
            Architecture::Vgg19,
            0,
            &params(512),
            &JobImages {
                content: Dims::new(1024, 768),
                styles: vec![Dims::square(10_000); 16],
                init: None,
                previous: None,
            },
            Backend::Cpu,
        )
        .expect("estimate");
        let inputs = e
            .host
            .iter()
            .find(|(w, _)| *w == "inputs")
            .expect("inputs")
            .1;
        assert!(inputs > 17 << 30, "{}", e.describe());
    }

    #[test]
    fn lbfgs_history_and_deeper_layers_cost_more() {
        let base = peak(&params(512), &images());
        let short = RenderParams {
            lbfgs_history: 5,
            ..params(512)
        };
        assert!(peak(&short, &images()) < base);
        let adam = RenderParams {
            optimizer: OptimizerKind::Adam,
            ..params(512)
        };
        assert!(peak(&adam, &images()) < base);
        let deep = RenderParams {
            content_layers: vec![WeightedLayer {
                layer: "relu5_2".into(),
                weight: 1.0,
            }],
            ..params(512)
        };
        assert!(peak(&deep, &images()) > base);
    }

    #[test]
    fn cuda_counts_tensors_on_the_device_and_images_on_the_host() {
        let e = estimate(
            Architecture::Vgg19,
            9 << 20,
            &params(1024),
            &images(),
            Backend::Cuda,
        )
        .expect("estimate");
        assert_eq!(e.peak(), e.device_bytes());
        assert!(e.device_bytes() > CUDA_CONTEXT_BYTES);
        assert!(e.host_bytes() < e.device_bytes() + CPU_PROCESS_BYTES);
    }

    #[test]
    fn an_unknown_layer_is_named() {
        let p = RenderParams {
            style_layers: vec![WeightedLayer {
                layer: "relu9_9".into(),
                weight: 1.0,
            }],
            ..params(64)
        };
        let err =
            estimate(Architecture::Vgg16, 0, &p, &images(), Backend::Cpu).expect_err("unknown");
        assert_eq!(err.to_string(), "vgg16 has no layer relu9_9");
    }

    #[test]
    fn tiles_bound_the_graph_and_the_optimizer_but_not_the_images() {
        let whole = params(2048);
        let tiled = RenderParams {
            tile: 512,
            ..params(2048)
        };
        let (w, t) = (peak(&whole, &images()), peak(&tiled, &images()));
        assert!(t < w / 3, "{t} vs {w}");
        // A tile as large as the image changes nothing.
        let same = RenderParams {
            tile: 2048,
            ..params(2048)
        };
        assert_eq!(peak(&same, &images()), w);
        // The images of the whole scale are still there: more than the 512 px job.
        assert!(t > peak(&params(512), &images()));
    }

    #[test]
    fn fit_picks_the_largest_tile_within_the_budget() {
        let p = params(2048);
        let fits =
            |budget| fit(Architecture::Vgg19, 0, &p, &images(), Backend::Cpu, budget).expect("fit");
        let whole = peak(&p, &images());
        assert!(matches!(fits(whole), Fit::Whole(_)));
        let Fit::Tiled(tile, e) = fits(whole / 2) else {
            panic!("half the memory should fit in tiles")
        };
        assert!(e.peak() <= whole / 2 && tile % MIN_TILE == 0 && tile < 2048);
        // The next larger tile would not have fitted.
        let larger = RenderParams {
            tile: tile + MIN_TILE,
            ..p.clone()
        };
        assert!(peak(&larger, &images()) > whole / 2);
        assert!(matches!(fits(CPU_PROCESS_BYTES), Fit::Never(_)));
        // A tile the job names is kept: it fits or it does not.
        let named = RenderParams { tile: 256, ..p };
        assert!(matches!(
            fit(
                Architecture::Vgg19,
                0,
                &named,
                &images(),
                Backend::Cpu,
                whole / 2
            )
            .expect("fit"),
            Fit::Whole(_)
        ));
    }

    #[test]
    fn fit_long_side_matches_the_engine() {
        assert_eq!(Dims::new(1024, 768).fit_long_side(512), Dims::new(512, 384));
        assert_eq!(Dims::new(10, 1000).fit_long_side(64), Dims::new(1, 64));
    }
}
