//! The stylefarm coordinator: the one place that knows every batch and job.
//!
//! - [`model`]: batches, jobs, states, leases.
//! - [`store`]: durable state behind the [`store::Store`] trait; [`store::SqliteStore`]
//!   is the embedded implementation (one WAL database file, a transaction per change).
//!   Leasing picks by batch priority, then round robin between batches, then FIFO, and
//!   fences every lease with a token so a worker presumed dead cannot overwrite a newer
//!   attempt.
//!
//! The gRPC services, the `stylefarm-coordinator` binary and its operations endpoints
//! are built on these (issue 3, in progress).

pub mod model;
pub mod store;
