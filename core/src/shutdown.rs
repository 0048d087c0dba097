//! Shutdown signals. Servers take a shutdown future in their `run`, so tests pass their
//! own and binaries pass [`signal`].

use std::future::Future;

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives during
/// start-up is not lost. Call it inside the runtime.
pub fn signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = ctrl_c => tracing::info!("SIGINT received"),
                }
                return;
            }
            Err(err) => {
                tracing::warn!(cause = %err, "cannot listen for SIGTERM; only Ctrl-C stops");
            }
        }
        let _ = ctrl_c.await;
    }
}
