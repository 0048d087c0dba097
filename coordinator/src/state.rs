//! The coordinator's shared state: the store, the clock, who is alive, who is waiting
//! for work and who is watching. Both gRPC services and the operations endpoint hold an
//! `Arc<State<S>>`.

use std::collections::HashMap;
use std::sync::Mutex;

use std::time::Duration;
use stylefarm_core::limits::{PerKey, Place};

use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{Capacity, JobRecord};
use crate::store::Store;

/// Unix milliseconds derived from tokio's clock, so tests with paused time move it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: i64,
    base: tokio::time::Instant,
}

impl Clock {
    /// A clock that reads the system time now and runs on tokio's time from there.
    pub fn start() -> Self {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self {
            base_ms,
            base: tokio::time::Instant::now(),
        }
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.base_ms + i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX / 2)
    }
}

/// Registered workers, the identity each belongs to and when each was last heard from
/// (in memory; registrations themselves are in the store, so they survive a restart).
#[derive(Debug, Default)]
pub struct Workers {
    by_id: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    identity: String,
    /// Last heard from, or i64::MIN before any call since start-up.
    last: i64,
    /// When its idle time began: the later of `last` and start-up.
    heard: i64,
    capacity: Capacity,
}

/// The most one job may take on any registered worker, per kind of device (`None`
/// where no worker of that kind said).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Largest {
    /// Host memory on CPU workers.
    pub cpu: Option<u64>,
    /// Device memory on CUDA workers.
    pub cuda: Option<u64>,
}

/// What [`Workers::seen`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Registered by this identity: marked as heard from.
    Yours,
    /// Never registered.
    Unknown,
    /// Registered by another identity.
    NotYours,
}

impl Workers {
    /// Records a worker registered by `identity`: just now (`seen`), or loaded at
    /// start-up at `now_ms` (not yet heard from, its idle time counted from start-up).
    pub fn add(&self, id: String, identity: String, capacity: Capacity, now_ms: i64, seen: bool) {
        let last = if seen { now_ms } else { i64::MIN };
        self.lock().insert(
            id,
            Entry {
                identity,
                last,
                heard: now_ms,
                capacity,
            },
        );
    }

    /// The most one job may take on any registered worker, per kind of device.
    pub fn largest(&self) -> Largest {
        let mut out = Largest::default();
        for e in self.lock().values() {
            let bytes = e.capacity.max_job_memory_bytes;
            if bytes == 0 {
                continue;
            }
            let slot = if e.capacity.cuda {
                &mut out.cuda
            } else {
                &mut out.cpu
            };
            *slot = Some(slot.map_or(bytes, |b| b.max(bytes)));
        }
        out
    }

    /// Removes and returns the workers not heard from since `before_ms`.
    pub fn take_idle(&self, before_ms: i64) -> Vec<String> {
        let mut map = self.lock();
        let idle: Vec<String> = map
            .iter()
            .filter(|(_, e)| e.heard < before_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &idle {
            map.remove(id);
        }
        idle
    }

    /// Forgets a worker that left.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Marks a worker as seen when `identity` registered it.
    pub fn seen(&self, id: &str, identity: &str, now_ms: i64) -> Seen {
        match self.lock().get_mut(id) {
            Some(e) if e.identity == identity => {
                e.last = now_ms;
                e.heard = now_ms;
                Seen::Yours
            }
            Some(_) => Seen::NotYours,
            None => Seen::Unknown,
        }
    }

    /// Workers heard from since `since_ms`.
    pub fn live(&self, since_ms: i64) -> usize {
        self.lock().values().filter(|e| e.last >= since_ms).count()
    }

    /// When a worker was last heard from since start-up, if it was.
    pub fn last_heard(&self, id: &str) -> Option<i64> {
        self.lock()
            .get(id)
            .map(|e| e.last)
            .filter(|&t| t != i64::MIN)
    }

    /// Workers ever registered.
    pub fn registered(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Most WatchBatch streams one identity holds open at once: each holds a batch's
/// snapshot and a task.
pub const MAX_WATCHES_PER_IDENTITY: usize = 64;

/// Open WatchBatch streams per identity.
#[derive(Debug)]
pub struct Watchers(PerKey<String>);

impl Default for Watchers {
    fn default() -> Self {
        Self(PerKey::new(MAX_WATCHES_PER_IDENTITY))
    }
}

impl Watchers {
    /// Takes a place for `who` (given back when dropped), or says it holds too many.
    pub fn enter(&self, who: &str) -> Result<Place<String>, crate::grpc::ApiError> {
        self.0
            .take(&who.to_owned())
            .ok_or_else(|| crate::grpc::ApiError::TooManyWatches {
                who: who.to_owned(),
                limit: self.0.max(),
            })
    }
}

/// Everything the services share.
pub struct State<S> {
    /// Durable state.
    pub store: S,
    /// Settings.
    pub config: Config,
    /// The clock every deadline is computed with.
    pub clock: Clock,
    /// Registered workers.
    pub workers: Workers,
    /// Open WatchBatch streams.
    pub watchers: Watchers,
    /// Woken whenever jobs become leasable (long-polling LeaseJob waits on it).
    pub work: Notify,
    /// Every change of a job, for WatchBatch.
    pub events: broadcast::Sender<JobRecord>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Cancelled when the coordinator begins to shut down.
    pub shutdown: CancellationToken,
}

impl<S: Store> State<S> {
    /// State over an opened store; loads the registered workers.
    pub async fn new(store: S, config: Config) -> Result<Self, crate::store::StoreError> {
        let workers = Workers::default();
        let clock = Clock::start();
        for w in store.workers().await? {
            workers.add(
                w.id,
                w.worker.identity,
                w.worker.capacity,
                clock.now_ms(),
                false,
            );
        }
        let (events, _) = broadcast::channel(4096);
        Ok(Self {
            store,
            config,
            clock,
            workers,
            watchers: Watchers::default(),
            work: Notify::new(),
            events,
            metrics: Metrics::new(),
            shutdown: CancellationToken::new(),
        })
    }

    /// Announces changed jobs to watchers; wakes waiting workers when any is queued.
    pub fn publish(&self, jobs: impl IntoIterator<Item = JobRecord>) {
        let mut queued = false;
        for job in jobs {
            queued |= job.state == crate::model::JobState::Queued;
            // No receiver is not an error: nobody is watching.
            let _ = self.events.send(job);
        }
        if queued {
            self.work.notify_waiters();
        }
    }

    /// Announces a settled change: the jobs that changed, then those that run after
    /// them and changed with them (released or blocked in the same commit).
    pub fn publish_settled(&self, settled: crate::model::Settled<JobRecord>) {
        self.publish(std::iter::once(settled.changed).chain(settled.dependants));
    }

    /// Lease length in milliseconds.
    pub fn lease_ms(&self) -> i64 {
        i64::from(self.config.lease_ms)
    }

    /// Requeues expired leases once (or fails their jobs when their attempts are spent);
    /// returns how many.
    pub async fn expire_once(&self) -> Result<usize, crate::store::StoreError> {
        let settled = self.store.expire(self.clock.now_ms()).await?;
        let expired = settled.changed;
        let n = expired.len();
        for job in &expired {
            match job.state {
                crate::model::JobState::Failed => {
                    tracing::warn!(job = %job.job_id, attempt = job.attempt, worker = ?job.worker, cause = job.error.as_deref().unwrap_or_default(), "lease expired; attempts spent, job failed")
                }
                _ => {
                    tracing::warn!(job = %job.job_id, attempt = job.attempt, worker = ?job.worker, "lease expired; job requeued")
                }
            }
        }
        self.metrics.expirations.inc_by(n as u64);
        self.publish(expired.into_iter().chain(settled.dependants));
        Ok(n)
    }

    /// Forgets registrations not heard from for `--forget-workers-after-ms` (a live
    /// worker long-polls all the time, so only gone ones are forgotten); returns how many.
    pub async fn forget_idle_workers(&self) -> Result<usize, crate::store::StoreError> {
        let before = self
            .clock
            .now_ms()
            .saturating_sub(i64::from(self.config.forget_workers_after_ms));
        let idle = self.workers.take_idle(before);
        if idle.is_empty() {
            return Ok(0);
        }
        let n = idle.len();
        tracing::info!(workers = n, first = %idle[0], "forgetting workers not heard from");
        self.store.forget_workers(idle).await?;
        Ok(n)
    }

    /// Runs [`Self::expire_once`] every quarter lease (at least every second) until
    /// shutdown.
    pub async fn expire_loop(&self) {
        let every =
            (self.config.lease() / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
            if let Err(err) = self.expire_once().await {
                tracing::error!(cause = %err, "lease expiry failed");
            }
            if let Err(err) = self.forget_idle_workers().await {
                tracing::error!(cause = %err, "forgetting idle workers failed");
            }
        }
    }
}
