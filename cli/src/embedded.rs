//! `stylefarm run`: a whole farm in one process. An embedded coordinator (SQLite in the
//! output folder), N workers and local-directory storage run the manifest's batch
//! through the same code as a cluster (gRPC on loopback, the worker node, the storage
//! layer), then the outputs, sidecars and contact sheet are written to the folder.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use stylefarm_net::ClientAuth;
use stylefarm_storage::StorageArgs;
use stylefarm_worker::device::DeviceArg;
use stylefarm_worker::node::WorkerConfig;
use tokio_util::sync::CancellationToken;

use crate::batch;
use crate::cluster::{self, Coordinator};

/// `stylefarm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The batch manifest (YAML).
    pub manifest: PathBuf,
    /// Where outputs, sidecars and the contact sheet go (the farm's own state is kept
    /// in OUT/.stylefarm, so a second run of the same manifest reuses what is done).
    #[arg(long)]
    pub out: PathBuf,
    /// Local workers (jobs rendered at once).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// VGG weights (else the manifest's `weights`, else the cache).
    #[arg(long, env = "STYLEFARM_WEIGHTS", value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Where libtorch runs.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the batch to its end; the error says how it failed.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let (manifest, weights) = batch::load(&args.manifest, args.weights.clone())?;
    let state = args.out.join(".stylefarm");
    let store = state.join("store");
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    // Loopback only, and even there only this process's workers and client get in: with
    // a token it gave itself, in memory only.
    let token = stylefarm_net::token::generate();
    let auth = ClientAuth::loopback(&token);
    let mut config = stylefarm_coordinator::Config::local(state.join("coordinator.db"));
    config.local_token = Some(stylefarm_coordinator::config::LocalToken(token));
    let coordinator = stylefarm_coordinator::start(config).await?;
    let addr = format!("http://{}", coordinator.grpc_addr);

    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let threads = (cores / args.workers as usize).max(1);
    let stop = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..args.workers {
        let config = WorkerConfig::local(
            addr.clone(),
            &store,
            weights.path.clone(),
            format!("local-{i}"),
            args.device,
            Some(i32::try_from(threads).unwrap_or(i32::MAX)),
            auth.clone(),
        );
        let stop = stop.clone();
        workers.spawn(
            async move { stylefarm_worker::node::run(config, stop.cancelled_owned()).await },
        );
    }

    let (root, storage) = StorageArgs::local(&store).open()?;
    let mut c = Coordinator::connect(&addr, &auth).await?;
    let (id, existing) = c
        .submit(&manifest, &weights.sha256, &storage, &root)
        .await?;
    if existing {
        eprintln!("{}: resuming batch {id}", manifest.batch);
    } else {
        eprintln!(
            "{}: {} jobs on {} local worker(s)",
            manifest.batch,
            manifest.jobs.len(),
            args.workers
        );
    }
    // Ctrl-C or SIGTERM: the workers checkpoint and hand their jobs back, so a second
    // run of the same manifest resumes at once instead of waiting for leases to lapse.
    let interrupted = stylefarm_core::shutdown::signal();
    let ended = tokio::select! {
        b = c.watch(&id, args.quiet) => Some(b),
        () = interrupted => None,
    };
    stop.cancel();
    while let Some(w) = workers.join_next().await {
        if let Ok(Err(e)) = w {
            tracing::warn!(cause = %e, "a local worker failed");
        }
    }
    // The outputs are fetched while the coordinator still answers (a page of jobs at
    // a time); it stops whatever happened.
    let finished = match ended {
        None => Err(anyhow::anyhow!(
            "interrupted: running jobs were checkpointed; run the same command again to resume"
        )),
        Some(Err(e)) => Err(e),
        Some(Ok(b)) => finish(&mut c, &b, &storage, &root, &args.out).await,
    };
    coordinator.shutdown();
    let _ = coordinator.wait().await;
    finished
}

/// Fetches a finished batch's outputs, writes the contact sheet and says how the batch
/// ended.
async fn finish(
    c: &mut Coordinator,
    b: &stylefarm_proto::v1::Batch,
    storage: &stylefarm_storage::Storage,
    root: &stylefarm_storage::ObjectUrl,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let report = cluster::fetch(c, b, storage, root, out).await?;
    if report.fetched > 0 {
        crate::sheet::write(&report.sheet_rows, storage, root, &report.sheet).await?;
        eprintln!("{} outputs in {}", report.fetched, out.display());
        eprintln!("contact sheet: {}", report.sheet.display());
    }
    // How the batch ended comes first; outputs it could not fetch are still said.
    let incomplete = report.complete(b);
    match c.outcome(b).await {
        Ok(()) => incomplete,
        Err(e) => {
            if let Err(i) = incomplete {
                eprintln!("{i:#}");
            }
            Err(e)
        }
    }
}
