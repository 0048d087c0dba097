//! The control plane's security, in one place for the coordinator and its clients:
//! - [`token`]: bearer tokens, the tokens file of identities and roles;
//! - [`server`]: the coordinator's TLS, reloaded when its files change;
//! - [`client`]: how `stylefarm` and `stylefarm-worker` reach a coordinator (TLS
//!   verified against a CA, a client certificate for mutual TLS, the token on each call).

pub mod client;
pub mod server;
pub mod token;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use client::{ClientArgs, ClientAuth};
pub use server::{ServerTls, TlsFiles};
pub use token::{Identity, Role, Tokens};

/// Largest PEM file read (a certificate chain or a CA bundle).
const MAX_PEM: u64 = 1 << 20;

/// Why a connection or its settings failed. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A token or tokens file.
    #[error(transparent)]
    Token(#[from] token::TokenError),
    /// A PEM file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A certificate or key file is not usable.
    #[error("{path}: {reason}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The coordinator address is not usable as given.
    #[error("coordinator address {addr:?}: {reason}")]
    Address {
        /// As given.
        addr: String,
        /// What is wrong.
        reason: String,
    },
    /// Nobody answered, or the TLS handshake failed.
    #[error("cannot reach the coordinator at {addr}: {cause}")]
    Connect {
        /// As given.
        addr: String,
        /// The whole chain of causes (a TLS refusal is at its end).
        cause: String,
    },
}

/// Reads a PEM file of bounded size.
pub(crate) fn read_pem(path: &Path) -> Result<Vec<u8>, NetError> {
    let read = |cause| NetError::Read {
        path: path.to_owned(),
        cause,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(MAX_PEM + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(NetError::Tls {
            path: path.to_owned(),
            reason: format!("larger than {MAX_PEM} bytes; not a certificate or key file"),
        });
    }
    Ok(bytes)
}

/// An error and its sources, joined: transport errors keep the useful part (an unknown
/// issuer, an expired certificate) several levels down.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}
