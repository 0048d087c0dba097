//! The stylefarm worker: the style-transfer engine and, around it, the node that leases
//! jobs from the coordinator.
//!
//! - [`engine`]: Gatys-style neural style transfer on libtorch (VGG features, losses,
//!   L-BFGS/Adam, checkpoints). The CLI's local modes use it directly.
//! - [`job`]: one render from input bytes to PNG and sidecar bytes.
//! - [`report`]: the JSON sidecar written beside every output.
//! - [`device`]: CPU or CUDA, and how the node describes it.
//! - [`node`]: the `stylefarm-worker` node: registration, leases, heartbeats,
//!   checkpoints to storage, resume, publish, drain on SIGTERM. The engine runs on a
//!   thread of its own ([`node::engine_thread`]), never on the async runtime.

pub mod device;
pub mod engine;
pub mod job;
pub mod node;
pub mod report;
