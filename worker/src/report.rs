//! The JSON sidecar written next to every output image: what was asked, what was used,
//! how long it took and how the loss went.

use serde::{Deserialize, Serialize};
use stylefarm_core::RenderParams;

use crate::engine::Losses;

/// One input file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputRecord {
    /// Where its bytes are (path or URL).
    pub source: String,
    /// What the submitter called it (the path or URI in their manifest), when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    /// Hex sha256 of its bytes.
    pub sha256: String,
    /// Pixel size as decoded.
    pub width: u32,
    /// Pixel size as decoded.
    pub height: u32,
    /// Blend weight (styles only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// What its values were taken to be: `srgb` (used as they are) or `linear`
    /// (encoded to sRGB, values above 1 clipped).
    #[serde(default)]
    pub transfer: String,
}

/// The weights used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightsRecord {
    /// Where they were read from.
    pub path: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// vgg16 / vgg19.
    pub architecture: String,
    /// caffe / torchvision.
    pub convention: String,
}

/// Timings in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Decoding inputs, loading the network, computing targets.
    pub setup_s: f64,
    /// The optimization (all attempts, for resumed jobs).
    pub optimize_s: f64,
    /// Mean seconds per iteration.
    pub per_iteration_s: f64,
    /// Forward and backward passes this run made (the line search makes more than one
    /// in some iterations; a resumed run counts its own).
    #[serde(default)]
    pub evaluations: u64,
    /// Wall time of this run, start to written output.
    pub total_s: f64,
    /// When this run started (decoding its inputs), seconds since the Unix epoch.
    #[serde(default)]
    pub started_unix_s: f64,
    /// When its output was encoded, seconds since the Unix epoch.
    #[serde(default)]
    pub finished_unix_s: f64,
}

/// A render's memory: what the estimate said before it began and what the process held
/// at its peak.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// The estimate's peak (host memory on CPU; on a GPU, the device's is the one that
    /// bounds the job), when the inputs' headers gave their sizes.
    pub estimate_bytes: Option<u64>,
    /// The process's peak resident memory when the output was written (Linux): for
    /// `stylefarm render` this job's; a worker's covers every job it ran before.
    pub peak_rss_bytes: Option<u64>,
}

/// The previous frame of a sequence a frame was rendered against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviousRecord {
    /// Its content photo.
    pub content: InputRecord,
    /// Its result.
    pub result: InputRecord,
}

/// The sidecar.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    /// stylefarm version that wrote it.
    pub stylefarm_version: String,
    /// The output image.
    pub output: String,
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// True when the output carries the content's alpha channel (the content had one,
    /// and the format holds it: PNG and OpenEXR do, JPEG does not).
    #[serde(default)]
    pub alpha: bool,
    /// Every engine parameter.
    pub params: RenderParams,
    /// The content photo.
    pub content: InputRecord,
    /// The style images.
    pub styles: Vec<InputRecord>,
    /// The previous frame it kept close to, when the temporal term was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousRecord>,
    /// The weights.
    pub weights: WeightsRecord,
    /// Its estimated and measured memory.
    #[serde(default)]
    pub memory: MemoryRecord,
    /// cpu / cuda:N and the thread count.
    pub device: String,
    /// CPU threads libtorch used.
    pub threads: i32,
    /// Iterations done.
    pub iterations_done: u32,
    /// True when the optimizer converged before the last iteration.
    pub converged: bool,
    /// The checkpoint's iteration when the run resumed from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u32>,
    /// Losses at the output.
    pub final_losses: Losses,
    /// Losses at each iteration.
    pub loss_curve: Vec<Losses>,
    /// The scales it ran at, coarse to fine, each with where its losses begin in
    /// `loss_curve` and its time.
    #[serde(default)]
    pub schedule: Vec<crate::engine::ScaleRun>,
    /// Timings.
    pub timings: Timings,
}
