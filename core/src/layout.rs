//! Where a batch's objects live under the farm's storage root. The coordinator names
//! outputs and attempt prefixes from these; workers write under them; the web interface
//! reads the small view files from them. Every key is built from ids the coordinator
//! issued, never from a client's text.
//!
//! ```text
//! batches/B/outputs/NAME.EXT                          the published output
//! batches/B/jobs/J/attempt-NNN/NAME.EXT, NAME.json    an attempt's output (png, exr or
//!                                                     jpg) and sidecar
//! batches/B/jobs/J/attempt-NNN/checkpoint-IIIIII.safetensors
//! batches/B/jobs/J/attempt-NNN/view/preview.jpg       the image at the last checkpoint
//! batches/B/jobs/J/attempt-NNN/view/progress.json     losses so far, who ran it, when
//! batches/B/jobs/J/attempt-NNN/view/thumbnail.jpg     the result, small
//! batches/B/jobs/J/attempt-NNN/view/content.jpg       the content photo, small
//! batches/B/jobs/J/attempt-NNN/view/style-K.jpg       each style image, small
//! ```
//!
//! Output names cannot hold a `/` ([`crate::spec::check_name`]), so `view/` never
//! meets an output of the attempt.

use serde::{Deserialize, Serialize};

use crate::params::OutputFormat;
use crate::progress::{Losses, ScaleRun};

/// Longest side of every view image, in pixels: small enough that a page of a hundred
/// thumbnails stays light, large enough to judge a look.
pub const VIEW_SIDE: u32 = 320;

/// Largest view image accepted back from storage.
pub const MAX_VIEW_IMAGE_BYTES: u64 = 1 << 20;

/// Largest `progress.json` read back (its curve is thinned to [`PROGRESS_POINTS`]).
pub const MAX_PROGRESS_BYTES: u64 = 1 << 20;

/// Most points of a progress file's loss curve: longer runs keep every n-th.
pub const PROGRESS_POINTS: usize = 2000;

/// Most scales a progress file lists.
pub const PROGRESS_SCALES: usize = 64;

/// An output's file name: the job's name and its format's extension.
pub fn output_file(name: &str, format: OutputFormat) -> String {
    format!("{name}.{}", format.as_str())
}

/// Where the published output of a job goes.
pub fn output_key(batch_id: &str, name: &str, format: OutputFormat) -> String {
    format!("batches/{batch_id}/outputs/{}", output_file(name, format))
}

/// Where an attempt's output goes.
pub fn result_key(attempt_prefix: &str, name: &str, format: OutputFormat) -> String {
    format!("{attempt_prefix}/{}", output_file(name, format))
}

/// Where an attempt's sidecar goes.
pub fn sidecar_key(attempt_prefix: &str, name: &str) -> String {
    format!("{attempt_prefix}/{name}.json")
}

/// Under which prefix one attempt writes its checkpoints, output and view files.
pub fn attempt_prefix(batch_id: &str, job_id: &str, attempt: u32) -> String {
    format!("batches/{batch_id}/jobs/{job_id}/attempt-{attempt:03}")
}

/// Where an attempt's checkpoint after `iteration` iterations goes.
pub fn checkpoint_key(attempt_prefix: &str, iteration: u32) -> String {
    format!("{attempt_prefix}/checkpoint-{iteration:06}.safetensors")
}

/// The iteration a [`checkpoint_key`] holds, if `key` is one.
pub fn checkpoint_iteration(key: &str) -> Option<u32> {
    key.rsplit_once("/checkpoint-")?
        .1
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// One of an attempt's view files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The image at the attempt's latest checkpoint.
    Preview,
    /// The attempt's losses so far, its worker and times ([`AttemptProgress`]).
    Progress,
    /// The attempt's result, small.
    Thumbnail,
    /// The content photo, small.
    Content,
    /// Style image number K (from 0), small.
    Style(usize),
}

impl View {
    /// The file's name under `view/`.
    pub fn file_name(self) -> String {
        match self {
            Self::Preview => "preview.jpg".into(),
            Self::Progress => "progress.json".into(),
            Self::Thumbnail => "thumbnail.jpg".into(),
            Self::Content => "content.jpg".into(),
            Self::Style(k) => format!("style-{k}.jpg"),
        }
    }

    /// The view named `file` (as [`Self::file_name`] writes it), if any.
    pub fn parse(file: &str) -> Option<Self> {
        match file {
            "preview.jpg" => Some(Self::Preview),
            "progress.json" => Some(Self::Progress),
            "thumbnail.jpg" => Some(Self::Thumbnail),
            "content.jpg" => Some(Self::Content),
            _ => {
                let k = file.strip_prefix("style-")?.strip_suffix(".jpg")?;
                // Digits only, no sign or leading zeros: one spelling per style.
                if k.is_empty()
                    || !k.bytes().all(|b| b.is_ascii_digit())
                    || (k.len() > 1 && k.starts_with('0'))
                {
                    return None;
                }
                k.parse().ok().map(Self::Style)
            }
        }
    }

    /// Its key under an attempt's prefix.
    pub fn key(self, attempt_prefix: &str) -> String {
        format!("{attempt_prefix}/view/{}", self.file_name())
    }
}

/// What a worker writes to `view/progress.json` with every checkpoint, and the web
/// interface reads back: the attempt's loss curve so far, in the sidecar's shape (so
/// [`crate::plot::from_sidecar`] reads either), and who ran it when.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AttemptProgress {
    /// The worker that ran the attempt.
    pub worker: String,
    /// Its device (`cpu`, `cuda:0`).
    #[serde(default)]
    pub device: String,
    /// When the attempt began, seconds since the Unix epoch.
    pub started_unix_s: f64,
    /// When this file was written.
    pub updated_unix_s: f64,
    /// Iterations done.
    pub iteration: u32,
    /// Iterations over the whole schedule.
    pub iterations: u32,
    /// Losses at every `loss_stride`-th iteration, from the first.
    pub loss_curve: Vec<Losses>,
    /// Iterations between entries of `loss_curve`.
    #[serde(default = "one")]
    pub loss_stride: usize,
    /// The scales begun so far, coarse to fine, each with where its losses begin in
    /// `loss_curve`.
    #[serde(default)]
    pub schedule: Vec<ScaleRun>,
}

fn one() -> usize {
    1
}

impl AttemptProgress {
    /// Sets the loss curve from every iteration's `history`, keeping at most
    /// [`PROGRESS_POINTS`] (every n-th), and the first [`PROGRESS_SCALES`] of
    /// `schedule` with their starts moved to match.
    pub fn with_curve(mut self, history: &[Losses], schedule: &[ScaleRun]) -> Self {
        let stride = history.len().div_ceil(PROGRESS_POINTS).max(1);
        self.loss_curve = history.iter().step_by(stride).copied().collect();
        self.loss_stride = stride;
        self.schedule = schedule
            .iter()
            .take(PROGRESS_SCALES)
            .map(|r| ScaleRun {
                first_loss: r.first_loss.div_ceil(stride),
                ..r.clone()
            })
            .collect();
        self
    }

    /// The loss curve to draw.
    pub fn curve(&self) -> Option<crate::plot::Curve> {
        (!self.loss_curve.is_empty()).then(|| crate::plot::Curve {
            points: self
                .loss_curve
                .iter()
                .map(|l| [l.total, l.content, l.style, l.tv])
                .collect(),
            scales: self
                .schedule
                .iter()
                .take(PROGRESS_SCALES)
                .map(|r| (r.first_loss, r.side))
                .collect(),
            stride: self.loss_stride.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_key_names_its_iteration() {
        let key = checkpoint_key(&attempt_prefix("b1", "j1", 2), 250);
        assert_eq!(
            key,
            "batches/b1/jobs/j1/attempt-002/checkpoint-000250.safetensors"
        );
        assert_eq!(checkpoint_iteration(&key), Some(250));
        for other in [
            "",
            "ck/40",
            "a/checkpoint-x.safetensors",
            "a/checkpoint-12.json",
        ] {
            assert_eq!(checkpoint_iteration(other), None, "{other}");
        }
    }

    #[test]
    fn every_view_reads_back_from_its_name_and_nothing_else_does() {
        let views = [
            View::Preview,
            View::Progress,
            View::Thumbnail,
            View::Content,
            View::Style(0),
            View::Style(12),
        ];
        for v in views {
            assert_eq!(View::parse(&v.file_name()), Some(v), "{v:?}");
        }
        for bad in [
            "",
            "style-.jpg",
            "style-01.jpg",
            "style--1.jpg",
            "style-+1.jpg",
            "style-1.png",
            "../preview.jpg",
            "preview.jpg/",
            "PREVIEW.jpg",
            "style-99999999999999999999999.jpg",
        ] {
            assert_eq!(View::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            View::Style(2).key(&attempt_prefix("b1", "j1", 3)),
            "batches/b1/jobs/j1/attempt-003/view/style-2.jpg"
        );
    }

    fn run(side: u32, first_loss: usize) -> ScaleRun {
        ScaleRun {
            side,
            width: side,
            height: side,
            iterations: 2,
            first_iteration: 0,
            first_loss,
            optimize_s: 0.0,
            tile: 0,
            tiles: 0,
        }
    }

    #[test]
    fn a_long_run_is_thinned_to_a_bounded_curve_that_keeps_its_iterations_and_scales() {
        let history: Vec<Losses> = (0..5000)
            .map(|i| {
                let f = f64::from(i);
                Losses {
                    content: 1.0,
                    style: 1e4 / (1.0 + f),
                    tv: 0.5,
                    total: 1.5 + 1e4 / (1.0 + f),
                    temporal: 0.0,
                }
            })
            .collect();
        let p = AttemptProgress {
            worker: "w1".into(),
            iteration: 5000,
            iterations: 5000,
            ..AttemptProgress::default()
        }
        .with_curve(&history, &[run(256, 0), run(512, 3000)]);
        assert_eq!((p.loss_stride, p.loss_curve.len()), (3, 1667));
        assert!(p.loss_curve.len() <= PROGRESS_POINTS);
        assert_eq!(p.loss_curve[1], history[3], "every third iteration");
        let curve = p.curve().expect("a curve");
        assert_eq!(
            curve.scales,
            vec![(0, 256), (1000, 512)],
            "the 512 px scale begins at 3000 / 3"
        );
        // The file reads back to the same curve, as the CLI's reader of sidecars sees it.
        let json = serde_json::to_value(&p).expect("json");
        assert_eq!(crate::plot::from_sidecar(&json), Some(curve.clone()));
        assert!(serde_json::to_vec(&p).expect("json").len() < MAX_PROGRESS_BYTES as usize);
        // The axis counts iterations, not points.
        let svg = crate::plot::loss_svg("t", &curve);
        assert!(svg.contains(">4000</text>"), "{svg}");
        // A short run keeps every iteration.
        let short = AttemptProgress::default().with_curve(&history[..10], &[]);
        assert_eq!((short.loss_stride, short.loss_curve.len()), (1, 10));
    }
}
