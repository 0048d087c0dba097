//! Domain types and plumbing shared by the stylefarm coordinator, workers and CLI.
//!
//! - [`params`]: the engine parameters of one render ([`RenderParams`]), validated in
//!   one place and carried unchanged through manifests, job specs and sidecars.
//! - [`spec`]: [`JobSpec`], one job as every component sees it: input references,
//!   parameters, the weights' identity and the output key.
//! - [`progress`]: [`Losses`] and [`Progress`], how far a job got.
//! - [`state`]: [`JobState`] and [`BatchState`], the lives of jobs and batches.
//! - [`limits`]: bounds that several components check (attempts, jobs per batch).
//! - [`frames`]: frame ranges (`1001-1100x2`) and numbered file patterns (`####`).
//! - [`fs`]: [`fs::write_atomic`], the one way files are replaced.
//! - [`layout`]: where a batch's objects live in storage (outputs, attempts, the
//!   small view files the web interface shows).
//! - [`plot`]: loss curves as SVG, for the CLI's files and the web's job page.
//! - [`tiles`]: how a scale too large for memory is cut into overlapping tiles.
//! - [`rng`]: a seeded generator that is the same on every platform.
//! - [`error`]: [`InvalidField`], the validation error that names the field at fault.
//! - [`telemetry`] and [`shutdown`]: logging set-up and the SIGTERM/SIGINT future that
//!   every binary passes to its `run`.

pub mod error;
pub mod frames;
pub mod fs;
pub mod layout;
pub mod limits;
pub mod params;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod shutdown;
pub mod spec;
pub mod state;
pub mod telemetry;
pub mod tiles;

pub use error::InvalidField;
pub use params::{
    InitKind, LineSearch, OptimizerKind, OutputFormat, Pooling, RenderParams, Scale, Transfer,
    WeightedLayer,
};
pub use progress::{Losses, Progress, ScaleRun};
pub use spec::{JobSpec, ObjectRef, PreviousFrame, StyleRef};
pub use state::{BatchState, JobState};
