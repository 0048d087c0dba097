//! The operations endpoint (plain HTTP): `/metrics` for Prometheus, `/livez` (the store
//! can still commit) and `/readyz` (serving and not shutting down).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::state::State;
use crate::store::Store;

/// What the endpoint reads.
pub struct Ops<S> {
    /// The coordinator's state.
    pub state: Arc<State<S>>,
    /// Set once the gRPC server accepts connections.
    pub ready: AtomicBool,
}

/// The HTTP routes.
pub fn router<S: Store>(ops: Arc<Ops<S>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/livez", get(livez::<S>))
        .route("/readyz", get(readyz::<S>))
        .with_state(ops)
}

async fn metrics<S: Store>(Extract(ops): Extract<Arc<Ops<S>>>) -> (StatusCode, String) {
    let state = &ops.state;
    match state.store.stats().await {
        Ok(stats) => {
            let since = state.clock.now_ms() - state.lease_ms();
            let body = state.metrics.render(
                &stats,
                state.workers.live(since),
                state.workers.registered(),
            );
            (StatusCode::OK, body)
        }
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {err}\n"),
        ),
    }
}

/// Fails while the store cannot commit (see [`Store::health`]), and says why.
async fn livez<S: Store>(Extract(ops): Extract<Arc<Ops<S>>>) -> (StatusCode, String) {
    match ops.state.store.health() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the database cannot commit: {reason}\n"),
        ),
    }
}

async fn readyz<S: Store>(Extract(ops): Extract<Arc<Ops<S>>>) -> (StatusCode, &'static str) {
    if ops.state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if !ops.ready.load(Ordering::SeqCst) || !ops.state.store.healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
