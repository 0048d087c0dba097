//! Domain types shared by the stylefarm coordinator, workers and CLI.
//!
//! - [`params`]: the engine parameters of one render ([`RenderParams`]), validated in
//!   one place and carried unchanged through manifests, job specs and sidecars.
//! - [`rng`]: a seeded generator that is the same on every platform.
//! - [`error`]: [`InvalidField`], the validation error that names the field at fault.

pub mod error;
pub mod params;
pub mod rng;

pub use error::InvalidField;
pub use params::{InitKind, OptimizerKind, Pooling, RenderParams, WeightedLayer};
