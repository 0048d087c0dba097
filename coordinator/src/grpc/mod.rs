//! The gRPC edge: the two services, the conversions between wire and domain values, and
//! the one mapping from errors to status codes.

pub mod client;
pub mod convert;
pub mod error;
pub mod worker;

pub use client::ClientApi;
pub use error::ApiError;
pub use worker::WorkerApi;
