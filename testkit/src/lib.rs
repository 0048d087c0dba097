//! Fixtures for integration tests that run real servers.
//!
//! - [`garage::Garage`]: a single-node Garage (an S3-compatible object store) on free
//!   loopback ports with a generated config, key and bucket, started from the binary
//!   that `make garage` builds once and caches outside the checkout.
//! - [`process`]: the farm's own binaries as child processes on port 0.
//! - [`farm`]: valid requests and the coordinator binary with its gRPC clients.
//! - [`fixtures`]: the shared fixture images and real weights.

pub mod farm;
pub mod fixtures;
pub mod garage;
pub mod pki;
pub mod process;
