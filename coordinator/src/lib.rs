//! The stylefarm coordinator: the one place that knows every batch and job.
//!
//! Data flows from the edge inwards:
//! - [`grpc`]: the client service (`StyleFarm`) and the worker service (`WorkerService`).
//!   Requests are converted and validated once ([`grpc::convert`], using
//!   `stylefarm_proto::convert` for job specs), and every error becomes a status code in
//!   one place ([`grpc::error`]).
//! - [`state`]: what the services share: the store, the clock (tokio's, so tests can
//!   pause it), live workers, the wake-up for long-polling workers and the event channel
//!   behind WatchBatch. Its expiry loop requeues leases past their deadline.
//! - [`store`]: durable state behind the [`store::Store`] trait; [`store::SqliteStore`]
//!   is the embedded implementation (one WAL database file, group commits, nothing
//!   acknowledged before it is on disk). Leasing picks by batch priority, then round
//!   robin between batches, then FIFO, and fences every lease with a token so a worker
//!   presumed dead cannot overwrite a newer attempt.
//! - [`model`]: batches, jobs, workers, leases.
//! - [`ops`] and [`metrics`]: `/metrics`, `/livez`, `/readyz` over HTTP.
//! - [`auth`]: the identity behind each call's token and what each role may do; TLS
//!   itself and the tokens file format are `stylefarm_net`'s.
//! - [`config`]: flags with `STYLEFARM_*` fallbacks; [`start`]/[`run`] wire it all up.

pub mod auth;
pub mod config;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod state;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use stylefarm_net::{Identity, Role, ServerTls, Tokens};
use stylefarm_proto::v1::style_farm_server::StyleFarmServer;
use stylefarm_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

pub use config::Config;

use crate::auth::Auth;
use crate::grpc::{ClientApi, WorkerApi};
use crate::state::State;
use crate::store::{SqliteStore, StoreError};

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The database could not be opened.
    #[error("cannot open the database {path}: {cause}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why (in the message, so not also a `source()`; likewise below).
        cause: StoreError,
    },
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(tonic::transport::Error),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    /// The ready file could not be written.
    #[error("cannot write the ready file {path}: {cause}")]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The flags ask for an unprotected port without saying so.
    #[error("{0}")]
    Insecure(String),
    /// The TLS files are not usable.
    #[error("TLS: {0}")]
    Tls(stylefarm_net::NetError),
    /// The tokens file is not usable.
    #[error("tokens: {0}")]
    Tokens(stylefarm_net::token::TokenError),
    /// A server task panicked.
    #[error("a server task panicked: {0}")]
    Panicked(tokio::task::JoinError),
}

/// Largest worker-service request: every field a worker sends is bounded far below it
/// (labels, keys, a failure's message).
const MAX_WORKER_MESSAGE: usize = 64 << 10;

/// How long a shutdown waits for calls in flight before it closes their connections.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A coordinator serving in this process.
pub struct Running {
    /// Where the gRPC services listen.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics`, `/livez` and `/readyz` listen.
    pub metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    grpc: JoinHandle<Result<(), CoordinatorError>>,
    http: JoinHandle<Result<(), CoordinatorError>>,
    expiry: JoinHandle<()>,
    reload: JoinHandle<()>,
}

impl Running {
    /// Begins a graceful shutdown: stop taking work, answer waiting workers, drain.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until both servers have stopped and the last commit is on disk.
    pub async fn wait(self) -> Result<(), CoordinatorError> {
        let grpc = self.grpc.await;
        let http = self.http.await;
        self.expiry.await.map_err(CoordinatorError::Panicked)?;
        self.reload.await.map_err(CoordinatorError::Panicked)?;
        grpc.map_err(CoordinatorError::Panicked)??;
        http.map_err(CoordinatorError::Panicked)??;
        Ok(())
    }
}

/// Opens the store, binds both listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, CoordinatorError> {
    let security = config.security().map_err(CoordinatorError::Insecure)?;
    let tls = security
        .tls
        .clone()
        .map(ServerTls::load)
        .transpose()
        .map_err(CoordinatorError::Tls)?
        .map(Arc::new);
    let auth = Arc::new(match (&config.tokens_file, &config.local_token) {
        (Some(path), _) => Auth::from_file(path.clone()).map_err(CoordinatorError::Tokens)?,
        (None, Some(token)) => Auth::fixed(Tokens::single(
            Identity {
                name: "local".into(),
                roles: vec![Role::Admin],
                max_priority: i32::MAX,
            },
            &token.0,
        )),
        (None, None) => Auth::open(),
    });
    if security.insecure && config.local_token.is_none() {
        tracing::warn!(
            listen = %config.listen,
            tls = tls.is_some(),
            tokens = config.tokens_file.is_some() || config.local_token.is_some(),
            "INSECURE: serving without TLS or without tokens, as --insecure asks; \
             whoever reaches this port can read and change every batch"
        );
    }
    let store = SqliteStore::open(&config.db).map_err(|cause| CoordinatorError::Open {
        path: config.db.clone(),
        cause,
    })?;
    let grpc_listener = bind(config.listen).await?;
    let http_listener = bind(config.metrics_listen).await?;
    let grpc_addr = local_addr(&grpc_listener, config.listen)?;
    let metrics_addr = local_addr(&http_listener, config.metrics_listen)?;
    let ready_file = config.ready_file.clone();
    // A submission is refused past --max-manifest-bytes (its encoded size), so nothing
    // larger is decoded; a little more for the gRPC frame.
    let max_message = config.max_manifest_bytes.saturating_add(1024);

    let db = config.db.clone();
    let state = Arc::new(
        State::new(store, config)
            .await
            .map_err(|cause| CoordinatorError::Open { path: db, cause })?,
    );
    let shutdown = state.shutdown.clone();
    let ops = Arc::new(ops::Ops {
        state: Arc::clone(&state),
        ready: false.into(),
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<StyleFarmServer<ClientApi<SqliteStore>>>()
        .await;
    health
        .set_serving::<WorkerServiceServer<WorkerApi<SqliteStore>>>()
        .await;
    // Dead peers are found by HTTP/2 pings; one connection cannot open streams without end.
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .max_concurrent_streams(Some(4096))
        .add_service(health_service)
        .add_service(InterceptedService::new(
            StyleFarmServer::new(ClientApi::new(Arc::clone(&state)))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(usize::MAX),
            auth.interceptor(),
        ))
        .add_service(InterceptedService::new(
            WorkerServiceServer::new(WorkerApi::new(Arc::clone(&state)))
                .max_decoding_message_size(MAX_WORKER_MESSAGE),
            auth.interceptor(),
        ));
    let grpc_shutdown = shutdown.clone();
    let grpc_tls = tls.clone();
    let drain_shutdown = shutdown.clone();
    let grpc = tokio::spawn(async move {
        let signal = async move {
            grpc_shutdown.cancelled().await;
            health
                .set_not_serving::<StyleFarmServer<ClientApi<SqliteStore>>>()
                .await;
            health
                .set_not_serving::<WorkerServiceServer<WorkerApi<SqliteStore>>>()
                .await;
            tracing::info!("draining gRPC requests");
        };
        let serve = async move {
            match grpc_tls {
                Some(tls) => {
                    server
                        .serve_with_incoming_shutdown(tls.incoming(grpc_listener), signal)
                        .await
                }
                None => {
                    let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener)
                        .with_nodelay(Some(true));
                    server.serve_with_incoming_shutdown(incoming, signal).await
                }
            }
        };
        // A drain has a limit: a client that stops reading a stream would otherwise hold
        // its connection, and the coordinator, open for ever.
        let limit = async {
            drain_shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_LIMIT).await;
        };
        tokio::select! {
            served = serve => served.map_err(CoordinatorError::Serve),
            () = limit => {
                tracing::warn!(limit_s = DRAIN_LIMIT.as_secs(), "connections still open after the drain limit; closing them");
                Ok(())
            }
        }
    });
    let reload = tokio::spawn(reload_loop(
        tls.clone(),
        Arc::clone(&auth),
        state.config.reload_interval(),
        shutdown.clone(),
    ));
    let http_shutdown = shutdown.clone();
    let router = ops::router(Arc::clone(&ops));
    let http = tokio::spawn(async move {
        axum::serve(http_listener, router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
            .map_err(CoordinatorError::Http)
    });
    let expiry_state = Arc::clone(&state);
    let expiry = tokio::spawn(async move { expiry_state.expire_loop().await });

    ops.ready.store(true, Ordering::SeqCst);
    tracing::info!(grpc = %grpc_addr, metrics = %metrics_addr, db = %state.config.db.display(), tls = tls.is_some(), "coordinator serving");
    if let Some(path) = ready_file {
        let body = format!("{{\"grpc\":\"{grpc_addr}\",\"metrics\":\"{metrics_addr}\"}}\n");
        // Its fsyncs on a blocking thread, off the runtime that now serves.
        let target = path.clone();
        tokio::task::spawn_blocking(move || {
            stylefarm_core::fs::write_atomic(&target, body.as_bytes())
        })
        .await
        .map_err(CoordinatorError::Panicked)?
        .map_err(|cause| CoordinatorError::ReadyFile { path, cause })?;
    }
    Ok(Running {
        grpc_addr,
        metrics_addr,
        shutdown,
        grpc,
        http,
        expiry,
        reload,
    })
}

/// Re-reads the TLS and tokens files on SIGHUP and whenever `every` passes; a file that
/// changed takes effect for the next connection (TLS) or call (tokens). A file that no
/// longer loads keeps what was loaded before, and says why.
async fn reload_loop(
    tls: Option<Arc<ServerTls>>,
    auth: Arc<Auth>,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    if tls.is_none() && !auth.reloadable() {
        return;
    }
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(cause = %e, "no SIGHUP reloads; files are still polled"))
        .ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<()>();
        let asked = tokio::select! {
            _ = tick.tick() => false,
            () = hup => true,
            () = shutdown.cancelled() => return,
        };
        // File reads: on a blocking thread, off the runtime that serves.
        let (tls_files, auth_file) = (tls.clone(), Arc::clone(&auth));
        let Ok((tls_reloaded, tokens_reloaded)) = tokio::task::spawn_blocking(move || {
            (tls_files.map(|t| t.reload()), auth_file.reload())
        })
        .await
        else {
            continue;
        };
        match tls_reloaded {
            Some(Ok(true)) => tracing::info!("TLS certificate reloaded"),
            Some(Ok(false)) if asked => tracing::info!("TLS files unchanged"),
            Some(Ok(false)) | None => {}
            Some(Err(e)) => {
                tracing::error!(cause = %e, "TLS files not reloaded; the previous ones stay in use")
            }
        }
        match tokens_reloaded {
            Ok(Some(n)) => tracing::info!(identities = n, "tokens file reloaded"),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(cause = %e, "tokens file not reloaded; the previous identities stay in use")
            }
        }
    }
}

/// Serves until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CoordinatorError> {
    let running = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    running.shutdown();
    running.wait().await?;
    tracing::info!("coordinator stopped");
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, CoordinatorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| CoordinatorError::Bind { addr, cause })
}

fn local_addr(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, CoordinatorError> {
    l.local_addr()
        .map_err(|cause| CoordinatorError::Bind { addr, cause })
}
