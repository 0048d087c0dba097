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
    /// Their sum.
    pub total: f64,
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
