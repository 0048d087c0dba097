//! `stylefarm-web`: the farm's web interface, a process of its own that is a gRPC client
//! of the coordinator.
//!
//! Why a process of its own: the coordinator is the farm's one durable, leased state, and
//! it stays small and holds no storage credentials; a browser-facing surface (sessions,
//! pages, image previews read from storage) can crash, be restarted, scaled or left out
//! without touching a lease. Every call it makes carries the signed-in person's own
//! token, so the coordinator's roles and ownership rules are the only ones there are.

pub mod config;
pub mod html;
pub mod routes;
pub mod session;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use stylefarm_net::server::{ServerTls, TlsFiles};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::WebConfig;
use routes::App;
use session::{LoginThrottle, Sessions};

/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// Connections served at once over plain HTTP (the TLS acceptor has its own cap).
const MAX_PLAIN_CONNECTIONS: usize = 8192;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the interface until `shutdown` resolves.
pub async fn run(config: WebConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.check().map_err(anyhow::Error::msg)?;
    let auth = config.client.load()?.carrying_tokens();
    let channel = auth.endpoint(&config.coordinator)?.connect_lazy();
    let views = views::Views::open(&config.storage).context("--storage")?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("--listen {}", config.listen))?;
    let addr = listener.local_addr()?;
    let tls = match (&config.https_cert_file, &config.https_key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(ServerTls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
            http1: true,
        })?)),
        _ => None,
    };
    let stop = CancellationToken::new();
    let app = Arc::new(App {
        sessions: Sessions::new(config.session_idle()),
        logins: LoginThrottle::default(),
        channel,
        https: tls.is_some(),
        shutdown: stop.clone(),
        views,
    });
    let router = routes::router(app);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %addr, %scheme, coordinator = %config.coordinator, "serving the web interface");
    if let Some(path) = &config.ready_file {
        std::fs::write(path, format!("{{\"web\":\"{addr}\"}}\n"))
            .with_context(|| format!("--ready-file {}", path.display()))?;
    }
    let conns = TaskTracker::new();
    let serve = |io, peer: SocketAddr| {
        let router = router.clone();
        let stop = stop.clone();
        conns.spawn(async move { connection(io, peer, router, stop).await });
    };
    tokio::pin!(shutdown);
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_PLAIN_CONNECTIONS));
    match tls {
        Some(tls) => {
            let mut incoming = tls.incoming(listener);
            loop {
                tokio::select! {
                    conn = incoming.next() => match conn {
                        Some(Ok(conn)) => {
                            let peer = tonic::transport::server::Connected::connect_info(&conn)
                                .get_ref()
                                .remote_addr()
                                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                            serve(Box::new(conn) as Box<dyn Io>, peer);
                        }
                        Some(Err(e)) => tracing::debug!(cause = %e, "connection failed"),
                        None => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        }
        None => loop {
            let slot = tokio::select! {
                slot = Arc::clone(&open).acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => serve(Box::new(Held { io: tcp, _slot: slot }) as Box<dyn Io>, peer),
                    Err(e) => {
                        tracing::warn!(cause = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        },
    }
    tracing::info!("shutting down: live streams end, open requests get {DRAIN:?}");
    stop.cancel();
    conns.close();
    let _ = tokio::time::timeout(DRAIN, conns.wait()).await;
    Ok(())
}

/// A served connection's byte stream.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A plain connection holding its place among [`MAX_PLAIN_CONNECTIONS`] until closed.
struct Held<T> {
    io: T,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn connection(
    io: Box<dyn Io>,
    peer: SocketAddr,
    router: axum::Router,
    stop: CancellationToken,
) {
    let router = router.layer(axum::Extension(ConnectInfo(peer)));
    let service = TowerToHyperService::new(router);
    let mut builder = Builder::new(TokioExecutor::new());
    // A peer that never finishes its headers, or holds an idle HTTP/2 connection without
    // answering pings, is dropped.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, cause = %e, "connection ended");
            }
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
