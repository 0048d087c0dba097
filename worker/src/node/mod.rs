//! The worker node: registers with the coordinator, then each slot leases a job, runs
//! it ([`attempt`]) and leases the next, until SIGTERM drains it.
//!
//! - [`attempt`]: one leased job from lease to last word (prepare, run, publish, report).
//! - [`engine_thread`]: the engine on a thread of its own, reporting over a channel.
//! - [`heartbeat`]: the heartbeats of a held job, on a task of their own.
//! - [`stop`]: why an attempt's engine was asked to stop, as one signal.
//! - [`config`]: the worker's flags.

pub mod attempt;
pub mod config;
pub mod engine_thread;
pub mod heartbeat;
pub mod stop;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use stylefarm_net::client::Channel;
use stylefarm_proto::v1;
use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;
use stylefarm_storage::{ObjectUrl, Storage};
use stylefarm_weights::WeightsInfo;
use tch::Device;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::device::MemoryBudget;
use tonic::Code;

pub use config::WorkerConfig;

/// What every slot shares.
pub struct Node {
    /// Settings.
    pub config: WorkerConfig,
    /// Where checkpoints and results go.
    pub root: ObjectUrl,
    /// The only places inputs are read from: `root/inputs/` and `--input-prefix`.
    pub inputs: Vec<ObjectUrl>,
    /// Inputs, checkpoints, results.
    pub storage: Storage,
    /// The network.
    pub weights: Arc<WeightsInfo>,
    /// Where libtorch runs.
    pub device: Device,
    /// The most memory one job may take.
    pub memory: MemoryBudget,
    /// Our id at the coordinator.
    pub worker_id: String,
    /// Heartbeat interval the coordinator asked for.
    pub heartbeat: Duration,
    /// Cancelled on SIGTERM: stop leasing, checkpoint, hand jobs back.
    pub draining: CancellationToken,
    /// Attempts whose engine has stopped, still publishing or reporting.
    pub tails: TaskTracker,
    channel: Channel,
}

impl Node {
    /// A client on the shared connection.
    pub fn client(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel.clone())
    }
}

/// Runs the worker until `shutdown` resolves and its jobs are handed back (or the grace
/// period ends).
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let device = config.device.resolve()?;
    if let Some(n) = config.threads {
        tch::set_num_threads(n.max(1));
    }
    let weights = Arc::new(WeightsInfo::inspect(&config.weights)?);
    let (root, storage) = config.store.open()?;
    let mut inputs = vec![root.join("inputs")?];
    for p in &config.input_prefix {
        inputs.push(ObjectUrl::parse(p).with_context(|| format!("--input-prefix {p}"))?);
    }
    let auth = match &config.local_auth {
        Some(auth) => auth.clone(),
        None => config.auth.load()?,
    };
    let channel = auth.connect_lazy(&config.coordinator)?;

    let draining = CancellationToken::new();
    tokio::spawn({
        let draining = draining.clone();
        async move {
            shutdown.await;
            draining.cancel();
        }
    });
    let (name_dev, gpu_model, gpu_memory) = crate::device::describe(device);
    let memory = MemoryBudget::for_device(device, config.slots, config.max_job_memory);
    tracing::info!(budget = %stylefarm_weights::memory::gib(memory.bytes), from = %memory.from, "memory one job may take");
    let register = v1::RegisterWorkerRequest {
        name: config.name.clone().unwrap_or_else(host_name),
        device: name_dev,
        gpu_model,
        gpu_memory_bytes: gpu_memory,
        slots: config.slots,
        protocol_version: stylefarm_proto::PROTOCOL_VERSION,
        max_job_memory_bytes: memory.bytes,
    };
    let mut client = WorkerServiceClient::new(channel.clone());
    let registered = loop {
        tokio::select! {
            r = client.register_worker(register.clone()) => match r {
                Ok(r) => break r.into_inner(),
                Err(s) if s.code() == Code::Unavailable => {
                    tracing::warn!(coordinator = %config.coordinator, cause = %s.message(), "coordinator unreachable; retrying");
                }
                Err(s) => anyhow::bail!("registration refused: {}", s.message()),
            },
            () = draining.cancelled() => return Ok(()),
        }
        tokio::select! {
            () = tokio::time::sleep(attempt::RECONNECT) => {}
            () = draining.cancelled() => return Ok(()),
        }
    };
    tracing::info!(
        worker = %registered.worker_id,
        ?device,
        cuda_backend = crate::device::cuda_backend_loaded(),
        weights = %weights.sha256,
        slots = config.slots,
        "registered"
    );
    let node = Arc::new(Node {
        root,
        inputs,
        storage,
        weights,
        device,
        memory,
        worker_id: registered.worker_id,
        heartbeat: Duration::from_millis(u64::from(registered.heartbeat_ms.max(100))),
        draining: draining.clone(),
        tails: TaskTracker::new(),
        channel,
        config,
    });
    let slots: Vec<_> = (0..node.config.slots)
        .map(|_| tokio::spawn(slot(Arc::clone(&node))))
        .collect();
    let all = async {
        for s in slots {
            let _ = s.await;
        }
        node.tails.close();
        node.tails.wait().await;
    };
    tokio::pin!(all);
    tokio::select! {
        () = &mut all => leave(&node).await,
        () = async { draining.cancelled().await; tokio::time::sleep(node.config.grace()).await } => {
            tracing::warn!("grace period over; exiting with jobs still running (their leases will expire)");
        }
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Tells the coordinator this worker left after a clean drain. It holds nothing now, so
/// a job the coordinator still counts as leased to it was granted in a long poll the
/// drain cut short: the coordinator requeues it at once instead of letting its lease
/// expire and spend an attempt.
async fn leave(node: &Node) {
    let req = v1::LeaveFarmRequest {
        worker_id: node.worker_id.clone(),
    };
    match tokio::time::timeout(LEAVE_TIMEOUT, node.client().leave_farm(req)).await {
        Ok(Ok(r)) => {
            let requeued = r.into_inner().requeued;
            tracing::info!(requeued, "left the farm");
        }
        Ok(Err(s)) if s.code() == Code::Unimplemented => {
            tracing::info!("the coordinator predates LeaveFarm; any lease cut short will expire");
        }
        Ok(Err(s)) => {
            tracing::warn!(code = ?s.code(), cause = %s.message(), "could not leave the farm; any lease cut short will expire");
        }
        Err(_) => {
            tracing::warn!(
                "the coordinator did not answer LeaveFarm in time; any lease cut short will expire"
            );
        }
    }
}

/// How long a draining worker waits for the coordinator to acknowledge that it left.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One slot: lease, run, repeat until draining. While a job runs, the next one may be
/// leased and fetched ([`attempt::run`] returns it).
async fn slot(node: Arc<Node>) {
    let mut ready = attempt::next(&node).await;
    while let Some(r) = ready {
        ready = match attempt::run(&node, r).await {
            Some(prefetched) => Some(prefetched),
            None => attempt::next(&node).await,
        };
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into())
}
