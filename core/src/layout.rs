//! Where a batch's objects live under the farm's storage root. The coordinator names
//! outputs and attempt prefixes from these; workers write under them; the web interface
//! reads the small view files from them. Every key is built from ids the coordinator
//! issued, never from a client's text.
//!
//! ```text
//! batches/B/outputs/NAME.png                          the published output
//! batches/B/jobs/J/attempt-NNN/NAME.png, NAME.json    an attempt's output and sidecar
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

use crate::progress::{Losses, ScaleRun};

/// Longest side of every view image, in pixels: small enough that a page of a hundred
/// thumbnails stays light, large enough to judge a look.
pub const VIEW_SIDE: u32 = 320;

/// Largest view image accepted back from storage.
pub const MAX_VIEW_IMAGE_BYTES: u64 = 1 << 20;

/// Largest `progress.json` or sidecar read back for a loss curve.
pub const MAX_CURVE_BYTES: u64 = 32 << 20;

/// Where the published output of a job goes.
pub fn output_key(batch_id: &str, name: &str) -> String {
    format!("batches/{batch_id}/outputs/{name}.png")
}

/// Under which prefix one attempt writes its checkpoints, output and view files.
pub fn attempt_prefix(batch_id: &str, job_id: &str, attempt: u32) -> String {
    format!("batches/{batch_id}/jobs/{job_id}/attempt-{attempt:03}")
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
    /// Losses at each iteration.
    pub loss_curve: Vec<Losses>,
    /// The scales begun so far, coarse to fine, each with where its losses begin in
    /// `loss_curve`.
    #[serde(default)]
    pub schedule: Vec<ScaleRun>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    #[test]
    fn a_progress_file_draws_as_a_curve_with_its_scales() {
        let p = AttemptProgress {
            worker: "w1".into(),
            iteration: 3,
            iterations: 10,
            loss_curve: vec![
                Losses {
                    content: 1.0,
                    style: 2.0,
                    tv: 0.5,
                    total: 3.5
                };
                3
            ],
            schedule: vec![run(256, 0), run(512, 2)],
            ..AttemptProgress::default()
        };
        let json = serde_json::to_value(&p).unwrap();
        let curve = crate::plot::from_sidecar(&json).unwrap();
        assert_eq!(curve.points.len(), 3);
        assert_eq!(curve.points[0], [3.5, 1.0, 2.0, 0.5]);
        assert_eq!(curve.scales, vec![(0, 256), (2, 512)]);
    }
}
