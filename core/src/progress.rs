//! How far a job got: the loss terms of one iteration and the progress a worker reports
//! (the engine computes them, heartbeats carry them, the coordinator stores them).

use serde::{Deserialize, Serialize};

/// Loss values at one point of an optimization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    /// Weighted content term.
    pub content: f64,
    /// Weighted style term.
    pub style: f64,
    /// Weighted total-variation term.
    pub tv: f64,
    /// Weighted temporal term (0 for a frame rendered on its own).
    #[serde(default)]
    pub temporal: f64,
    /// Their sum.
    pub total: f64,
}

/// One scale of a schedule as it ran (checkpoints and sidecars record them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleRun {
    /// Long side in pixels.
    pub side: u32,
    /// The image's size at this scale.
    pub width: u32,
    /// The image's size at this scale.
    pub height: u32,
    /// Iterations the schedule gives this scale.
    pub iterations: u32,
    /// The iteration (over the whole schedule) it began at.
    pub first_iteration: u32,
    /// The index in the loss curve of its first entry.
    pub first_loss: usize,
    /// Optimization seconds spent at it, its targets included.
    pub optimize_s: f64,
    /// The long side of the tiles it was optimized in (0: whole).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tile: u32,
    /// Tiles over all its passes (0: whole). Each gets `iterations / passes` of its own
    /// iterations, so every pixel is optimized about as often as in a whole image; the
    /// scale's iteration count advances in proportion.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tiles: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Progress a worker reports for the job it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Iterations done.
    pub iteration: u32,
    /// Latest losses.
    pub losses: Losses,
    /// Latest checkpoint stored (storage key), if any.
    pub checkpoint_key: Option<String>,
}
