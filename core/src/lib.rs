//! Domain types and plumbing shared by the stylefarm coordinator, workers and CLI.
//!
//! - [`params`]: the engine parameters of one render ([`RenderParams`]), validated in
//!   one place and carried unchanged through manifests, job specs and sidecars.
//! - [`spec`]: [`JobSpec`], one job as every component sees it: input references,
//!   parameters, the weights' identity and the output key.
//! - [`rng`]: a seeded generator that is the same on every platform.
//! - [`error`]: [`InvalidField`], the validation error that names the field at fault.
//! - [`telemetry`] and [`shutdown`]: logging set-up and the SIGTERM/SIGINT future that
//!   every binary passes to its `run`.

pub mod error;
pub mod params;
pub mod rng;
pub mod shutdown;
pub mod spec;
pub mod telemetry;

pub use error::InvalidField;
pub use params::{InitKind, OptimizerKind, Pooling, RenderParams, WeightedLayer};
pub use spec::{JobSpec, ObjectRef, StyleRef};
