//! The stylefarm worker: the style-transfer engine and, around it, the node that leases
//! jobs from the coordinator.
//!
//! - [`engine`]: Gatys-style neural style transfer on libtorch (VGG features, losses,
//!   L-BFGS/Adam, checkpoints). The CLI's local modes use it directly.
//! - [`job`]: one render from input bytes to PNG and sidecar bytes.
//! - [`report`]: the JSON sidecar written beside every output.

pub mod engine;
pub mod job;
pub mod report;
