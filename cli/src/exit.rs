//! Exit codes, and the one place where coordinator errors become CLI errors.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success (for `watch`/`run`: every job succeeded) |
//! | 1 | any other failure (storage, I/O, a render error, outputs `fetch` could not get) |
//! | 2 | usage: bad flags or arguments |
//! | 3 | validation: the manifest or a request was refused as invalid |
//! | 4 | the batch ended failed or cancelled |
//! | 5 | the coordinator could not be reached |

use crate::manifest::ManifestError;

/// Any other failure.
pub const FAILURE: u8 = 1;
/// Bad flags or arguments (clap exits with it too).
pub const USAGE: u8 = 2;
/// The manifest or a request is invalid.
pub const INVALID: u8 = 3;
/// The batch ended failed or cancelled.
pub const BATCH_FAILED: u8 = 4;
/// The coordinator could not be reached.
pub const UNREACHABLE: u8 = 5;

/// Errors with an exit code of their own.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Refused as invalid.
    #[error("{0}")]
    Invalid(String),
    /// The batch did not succeed.
    #[error("batch {batch} ended {state}: {detail}")]
    BatchFailed {
        /// Its id.
        batch: String,
        /// failed / cancelled.
        state: String,
        /// Counts by state.
        detail: String,
    },
    /// Some of a batch's finished outputs could not be fetched (the rest were).
    #[error(
        "{not_fetched} of {total} finished outputs of batch {batch} were not fetched (the others were):\n  {}{}",
        missing.join("\n  "),
        if *not_fetched > missing.len() { format!("\n  … and {} more", not_fetched - missing.len()) } else { String::new() }
    )]
    Incomplete {
        /// Its id.
        batch: String,
        /// Succeeded jobs in all.
        total: usize,
        /// How many were not fetched.
        not_fetched: usize,
        /// `job "NAME": why` for the first of them.
        missing: Vec<String>,
    },
    /// No answer from the coordinator.
    #[error("cannot reach the coordinator at {addr}: {cause} ({})", hint(cause))]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why.
        cause: String,
    },
}

/// What to check, from what went wrong.
fn hint(cause: &str) -> &'static str {
    if cause.contains("certificate") || cause.contains("CertificateRequired") {
        "check --tls-ca-file (the CA that signed the coordinator's certificate) and, for mutual TLS, --tls-cert-file and --tls-key-file"
    } else if cause.contains("connection closed during a call") {
        "use https:// for a coordinator with TLS; one that requires client certificates also closes connections without one"
    } else {
        "set --coordinator or STYLEFARM_COORDINATOR"
    }
}

/// The exit code for an error that reached `main`.
pub fn code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<ManifestError>().is_some() {
        return INVALID;
    }
    match err.downcast_ref::<CliError>() {
        Some(CliError::Invalid(_)) => INVALID,
        Some(CliError::BatchFailed { .. }) => BATCH_FAILED,
        Some(CliError::Unreachable { .. }) => UNREACHABLE,
        Some(CliError::Incomplete { .. }) | None => FAILURE,
    }
}

/// A coordinator status as the CLI reports it.
pub fn from_status(addr: &str, s: &tonic::Status) -> anyhow::Error {
    use tonic::Code;
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => CliError::Unreachable {
            addr: addr.to_owned(),
            cause: s.message().to_owned(),
        }
        .into(),
        // Made on this side from a connection that broke mid-call (the coordinator's own
        // answers carry no source).
        _ if std::error::Error::source(s).is_some() => CliError::Unreachable {
            addr: addr.to_owned(),
            cause: format!(
                "connection closed during a call: {}",
                std::error::Error::source(s).map_or_else(String::new, stylefarm_net::chain)
            ),
        }
        .into(),
        Code::InvalidArgument => CliError::Invalid(s.message().to_owned()).into(),
        Code::NotFound => anyhow::anyhow!("not found: {}", s.message()),
        Code::Unauthenticated => anyhow::anyhow!(
            "the coordinator at {addr} did not accept the token: {} (give --token-file or STYLEFARM_TOKEN_FILE)",
            s.message()
        ),
        Code::PermissionDenied => anyhow::anyhow!("not allowed: {}", s.message()),
        _ => anyhow::anyhow!("the coordinator answered {:?}: {}", s.code(), s.message()),
    }
}
