//! The heartbeats of one held job, on a task of their own, so that nothing the attempt
//! waits for (a storage outage while uploading, a long iteration) can let the lease
//! lapse. The attempt writes its latest [`Progress`] here; the task sends it every
//! interval (or at once when asked) and turns the coordinator's answers into a
//! [`Stop`] request.

use std::sync::{Arc, Mutex};

use stylefarm_core::Progress;
use stylefarm_proto::v1;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::stop::{Stop, StopSignal};
use super::Node;

/// The heartbeat task of one lease and the progress it reports.
pub struct Heartbeats {
    progress: Arc<Mutex<Progress>>,
    now: Arc<Notify>,
    done: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Heartbeats {
    /// Starts heartbeating `lease`; answers reach `stop`.
    pub fn start(node: &Arc<Node>, lease: &v1::Lease, stop: StopSignal) -> Self {
        let progress = Arc::new(Mutex::new(Progress::default()));
        let now = Arc::new(Notify::new());
        let done = CancellationToken::new();
        let task = tokio::spawn(beat(
            Arc::clone(node),
            Lessee {
                job_id: lease.job_id.clone(),
                fencing_token: lease.fencing_token,
            },
            Arc::clone(&progress),
            stop,
            Arc::clone(&now),
            done.clone(),
        ));
        Self {
            progress,
            now,
            done,
            task: Some(task),
        }
    }

    /// Changes the progress the next heartbeat reports.
    pub fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Sends a heartbeat now rather than at the next interval.
    pub fn now(&self) {
        self.now.notify_one();
    }

    /// Stops the heartbeats and waits for the task, so that none arrives after the
    /// attempt's last word.
    pub async fn stop(&mut self) {
        self.done.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Which lease the heartbeats are for.
struct Lessee {
    job_id: String,
    fencing_token: u64,
}

async fn beat(
    node: Arc<Node>,
    lessee: Lessee,
    progress: Arc<Mutex<Progress>>,
    stop: StopSignal,
    now: Arc<Notify>,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(node.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = now.notified() => {}
            () = done.cancelled() => return,
        }
        let p = progress.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let req = v1::HeartbeatRequest {
            worker_id: node.worker_id.clone(),
            job_id: lessee.job_id.clone(),
            fencing_token: lessee.fencing_token,
            iteration: p.iteration,
            losses: Some(v1::Losses::from(&p.losses)),
            checkpoint_key: p.checkpoint_key.unwrap_or_default(),
        };
        match node.client().heartbeat(req).await {
            Ok(r) if r.get_ref().cancelled => {
                if stop.reason().is_none() && stop.request(Stop::Cancelled) {
                    tracing::info!("the coordinator cancelled the job");
                }
            }
            Ok(_) => {}
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                tracing::warn!(cause = %s.message(), "the lease is gone; abandoning the attempt");
                stop.request(Stop::Lost);
                return;
            }
            Err(s) => tracing::warn!(cause = %s.message(), "heartbeat failed; will retry"),
        }
    }
}
