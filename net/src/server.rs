//! The coordinator's side of TLS: certificates read from files and re-read when they
//! change (cert-manager rotation, a SIGHUP), and an accept loop that hands tonic only
//! connections whose handshake finished.

use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use stylefarm_core::limits::PerKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::{read_pem, NetError};

/// A handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once from one address: a silent peer cannot take the
/// slots everyone else needs. Its further connections are closed at once.
const MAX_HANDSHAKES_PER_PEER: usize = 16;
/// Connections open at once, handshaking or serving; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8192;

/// The files the coordinator's TLS is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// When set, every client must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
    /// Offer HTTP/1.1 beside HTTP/2 (the web interface, for any browser); gRPC needs
    /// HTTP/2 only.
    pub http1: bool,
}

struct Loaded {
    config: Arc<ServerConfig>,
    fingerprint: [u8; 32],
}

/// The coordinator's TLS settings, reloadable while it serves.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

impl ServerTls {
    /// Reads the files; fails with what is wrong with which.
    pub fn load(files: TlsFiles) -> Result<Self, NetError> {
        let loaded = build(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(loaded),
        })
    }

    /// Re-reads the files. `Ok(true)`: they changed and new connections use them;
    /// `Ok(false)`: unchanged; an error keeps the settings in use.
    pub fn reload(&self) -> Result<bool, NetError> {
        let loaded = build(&self.files)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.fingerprint == loaded.fingerprint {
            return Ok(false);
        }
        *current = loaded;
        Ok(true)
    }

    fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(Arc::clone(&current.config))
    }

    /// The TLS connections arriving on `listener`, for `serve_with_incoming`. Failed
    /// handshakes are logged at debug level and dropped. The stream ends (and the
    /// listener closes) when the server drops it.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> ReceiverStream<std::io::Result<Conn>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
            let handshaking = PerKey::<IpAddr>::new(MAX_HANDSHAKES_PER_PEER);
            loop {
                let slot = tokio::select! {
                    slot = Arc::clone(&open).acquire_owned() => match slot {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                    () = tx.closed() => return,
                };
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: back off instead of spinning.
                            tracing::warn!(cause = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                let Some(turn) = handshaking.take(&peer.ip()) else {
                    tracing::debug!(%peer, "too many handshakes from this address; closed");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = self.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(turn);
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(Conn { tls, _slot: slot })).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, cause = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// A served TLS connection; it holds its place among [`MAX_CONNECTIONS`] until closed.
pub struct Conn {
    tls: TlsStream<TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

fn build(files: &TlsFiles) -> Result<Loaded, NetError> {
    let cert_pem = read_pem(&files.cert)?;
    let key_pem = read_pem(&files.key)?;
    let ca_pem = files.client_ca.as_deref().map(read_pem).transpose()?;
    let mut hasher = Sha256::new();
    for part in [Some(&cert_pem), Some(&key_pem), ca_pem.as_ref()] {
        let part = part.map(Vec::as_slice).unwrap_or_default();
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let tls = |path: &PathBuf, reason: String| NetError::Tls {
        path: path.clone(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls(&files.cert, "holds no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| tls(&files.key, format!("holds no private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&files.cert, e.to_string()))?;
    let builder = match (&files.client_ca, &ca_pem) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| tls(path, e.to_string()))?;
                roots.add(cert).map_err(|e| tls(path, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(tls(path, "holds no CERTIFICATE block".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls(path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls(&files.key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    if files.http1 {
        config.alpn_protocols.push(b"http/1.1".to_vec());
    }
    Ok(Loaded {
        config: Arc::new(config),
        fingerprint: hasher.finalize().into(),
    })
}
