//! The client side of the control plane (`stylefarm` and `stylefarm-worker`): one way to
//! reach a coordinator, over TLS verified against a CA, with a bearer token on every call.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::token::read_token;
use crate::{read_pem, NetError};

/// A connection to a coordinator that sends the caller's token with every call.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// How a client proves who it is and checks who it talks to (flags of `stylefarm` and
/// `stylefarm-worker`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientArgs {
    /// CA certificate (PEM) that signed the coordinator's certificate (default: the
    /// system's roots). Used with https:// addresses.
    #[arg(long, env = "STYLEFARM_TLS_CA_FILE", value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for coordinators that require one (mutual TLS).
    #[arg(
        long,
        env = "STYLEFARM_TLS_CLIENT_CERT_FILE",
        value_name = "FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "STYLEFARM_TLS_CLIENT_KEY_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// File holding this caller's bearer token (from `stylefarm-coordinator token add`).
    #[arg(long, env = "STYLEFARM_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl ClientArgs {
    /// Reads the files the flags name.
    pub fn load(&self) -> Result<ClientAuth, NetError> {
        let token = self
            .token_file
            .as_deref()
            .map(read_token)
            .transpose()
            .map_err(NetError::Token)?;
        let mut tls = None;
        if self.tls_ca_file.is_some() || self.tls_cert_file.is_some() {
            let mut c = ClientTlsConfig::new();
            c = match &self.tls_ca_file {
                Some(ca) => c.ca_certificate(Certificate::from_pem(read_pem(ca)?)),
                None => c.with_native_roots(),
            };
            if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
                c = c.identity(tonic::transport::Identity::from_pem(
                    read_pem(cert)?,
                    read_pem(key)?,
                ));
            }
            tls = Some(c);
        }
        Ok(ClientAuth {
            tls,
            token: token.map(Arc::from),
            carries_tokens: false,
        })
    }
}

/// What [`ClientArgs`] named, read: the TLS settings and the token.
#[derive(Clone, Default)]
pub struct ClientAuth {
    tls: Option<ClientTlsConfig>,
    token: Option<Arc<str>>,
    /// Its channel carries other callers' tokens ([`as_caller`]): held to the same
    /// rule as its own token.
    carries_tokens: bool,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish()
    }
}

impl ClientAuth {
    /// Plaintext with `token` (a process talking to its own loopback coordinator).
    pub fn loopback(token: &str) -> Self {
        Self {
            tls: None,
            token: Some(Arc::from(token)),
            carries_tokens: false,
        }
    }

    /// TLS verified against the CA certificate at `ca`, with `token`.
    pub fn with_ca(ca: &Path, token: Option<&str>) -> Result<Self, NetError> {
        Ok(Self {
            tls: Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca)?))),
            token: token.map(Arc::from),
            carries_tokens: false,
        })
    }

    /// This for a channel that will carry its callers' tokens ([`as_caller`]): like
    /// its own token, they never travel in plaintext beyond loopback.
    pub fn carrying_tokens(mut self) -> Self {
        self.carries_tokens = true;
        self
    }

    /// This with the client certificate and key at `cert` and `key` (mutual TLS).
    pub fn with_identity(mut self, cert: &Path, key: &Path) -> Result<Self, NetError> {
        let id = tonic::transport::Identity::from_pem(read_pem(cert)?, read_pem(key)?);
        self.tls = Some(self.tls.unwrap_or_default().identity(id));
        Ok(self)
    }

    /// The endpoint for `addr` (`https://HOST:PORT`, or `http://` to a loopback
    /// coordinator that runs without TLS).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, NetError> {
        let bad = |reason: String| NetError::Address {
            addr: addr.to_owned(),
            reason,
        };
        let endpoint = Endpoint::from_shared(addr.to_owned()).map_err(|e| bad(e.to_string()))?;
        let uri = endpoint.uri().clone();
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        match uri.scheme_str() {
            Some("https") => {
                let tls = self
                    .tls
                    .clone()
                    .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots());
                endpoint.tls_config(tls).map_err(|e| bad(crate::chain(&e)))
            }
            Some("http") => {
                if self.tls.is_some() {
                    return Err(bad(
                        "TLS files are given but the address is http://; use https://".into(),
                    ));
                }
                let tokens = self.token.is_some() || self.carries_tokens;
                if tokens && !is_loopback(uri.host().unwrap_or_default()) {
                    return Err(bad(
                        "a token is never sent in plaintext beyond this machine; use https://"
                            .into(),
                    ));
                }
                Ok(endpoint)
            }
            _ => Err(bad(
                "the address must start with https:// (or http:// on loopback)".into(),
            )),
        }
    }

    /// Connects now, failing when the coordinator cannot be reached or proven.
    pub async fn connect(&self, addr: &str) -> Result<Channel, NetError> {
        let channel = self
            .endpoint(addr)?
            .connect()
            .await
            .map_err(|e| NetError::Connect {
                addr: addr.to_owned(),
                cause: crate::chain(&e),
            })?;
        Ok(self.wrap(channel))
    }

    /// A channel that connects on first use (and reconnects after failures).
    pub fn connect_lazy(&self, addr: &str) -> Result<Channel, NetError> {
        Ok(self.wrap(self.endpoint(addr)?.connect_lazy()))
    }

    fn wrap(&self, channel: tonic::transport::Channel) -> Channel {
        InterceptedService::new(channel, Bearer::new(self.token.as_deref()))
    }
}

/// `channel` (one connection, shared) with `token` on every call: a process that acts for
/// many callers in turn (the web interface, for whoever is signed in) makes one of
/// these per call, so the coordinator decides what each caller may do.
pub fn as_caller(channel: tonic::transport::Channel, token: &str) -> Channel {
    InterceptedService::new(channel, Bearer::new(Some(token)))
}

/// Puts `authorization: Bearer TOKEN` on every call, marked sensitive so that HTTP/2
/// never indexes it and debug output hides it.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn new(token: Option<&str>) -> Self {
        // read_token admits printable ASCII only, which is always a valid header value.
        Self(token.and_then(|t| {
            let mut v: MetadataValue<Ascii> = format!("Bearer {t}").parse().ok()?;
            v.set_sensitive(true);
            Some(v)
        }))
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(..)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_travels_in_plaintext_beyond_loopback() {
        let carrier = ClientAuth::default().carrying_tokens();
        assert!(
            carrier.endpoint("http://10.0.0.5:7070").is_err(),
            "others' tokens neither"
        );
        assert!(carrier.endpoint("http://127.0.0.1:7070").is_ok());
        let auth = ClientAuth::loopback("sft_x");
        assert!(auth.endpoint("http://127.0.0.1:7070").is_ok());
        assert!(auth.endpoint("http://[::1]:7070").is_ok());
        assert!(auth.endpoint("http://localhost:7070").is_ok());
        let err = auth
            .endpoint("http://10.0.0.5:7070")
            .expect_err("remote")
            .to_string();
        assert!(err.contains("never sent in plaintext"), "{err}");
        let err = auth.endpoint("ftp://x").expect_err("scheme").to_string();
        assert!(err.contains("https://"), "{err}");
        assert!(ClientAuth::default()
            .endpoint("http://10.0.0.5:7070")
            .is_ok());
    }
}
