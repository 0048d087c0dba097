//! `submit`, `status`, `watch`, `cancel`, `retry` and `fetch`: batches on a cluster.

use std::path::PathBuf;

use clap::Args;
use stylefarm_net::ClientArgs;
use stylefarm_storage::StorageArgs;
use stylefarm_weights::WeightsInfo;

use crate::cluster::{self, batch_state_name, job_state_name, Coordinator};
use crate::manifest::Manifest;

/// Where the coordinator is.
#[derive(Debug, Clone, Args)]
pub struct CoordinatorArg {
    /// The coordinator's gRPC address.
    #[arg(
        long,
        env = "STYLEFARM_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub coordinator: String,

    /// TLS and the token.
    #[command(flatten)]
    pub auth: ClientArgs,
}

impl CoordinatorArg {
    /// Connects as the flags say.
    pub async fn connect(&self) -> anyhow::Result<Coordinator> {
        let auth = self
            .auth
            .load()
            .map_err(|e| crate::exit::CliError::Invalid(e.to_string()))?;
        Coordinator::connect(&self.coordinator, &auth).await
    }
}

/// `stylefarm submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The batch manifest (YAML).
    pub manifest: PathBuf,
    /// VGG weights the jobs run with (else the manifest's `weights`, else the cache).
    #[arg(long, env = "STYLEFARM_WEIGHTS", value_name = "FILE")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub coordinator: CoordinatorArg,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// `stylefarm status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A batch id (default: the newest batches).
    pub batch: Option<String>,
    /// JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How many batches to list without BATCH.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub coordinator: CoordinatorArg,
}

/// `stylefarm watch`, `stylefarm cancel`.
#[derive(Debug, Args)]
pub struct BatchArg {
    /// The batch id.
    pub batch: String,
    #[command(flatten)]
    pub coordinator: CoordinatorArg,
}

/// `stylefarm retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The batch id.
    pub batch: String,
    /// Only failed jobs (default: failed and cancelled).
    #[arg(long)]
    pub failed: bool,
    #[command(flatten)]
    pub coordinator: CoordinatorArg,
}

/// `stylefarm fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The batch id.
    pub batch: String,
    /// Where outputs, sidecars and the contact sheet go.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub coordinator: CoordinatorArg,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Loads a manifest and finds the weights its jobs name.
pub fn load(
    manifest: &std::path::Path,
    weights: Option<PathBuf>,
) -> anyhow::Result<(Manifest, WeightsInfo)> {
    let manifest = Manifest::load(manifest)?;
    let path = crate::weights::resolve(weights.or_else(|| manifest.weights.clone()))?;
    let info = WeightsInfo::inspect(&path)?;
    Ok((manifest, info))
}

/// Uploads inputs and submits; prints the batch id.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let (manifest, weights) = load(&args.manifest, args.weights)?;
    let (root, storage) = args.storage.open()?;
    let mut c = args.coordinator.connect().await?;
    let (id, existing) = c
        .submit(&manifest, &weights.sha256, &storage, &root)
        .await?;
    if existing {
        eprintln!("this manifest was submitted before: batch {id}");
    } else {
        eprintln!(
            "submitted {} jobs as batch {id} ({})",
            manifest.jobs.len(),
            manifest.batch
        );
    }
    println!("{id}");
    Ok(())
}

/// Prints a batch's jobs, or the newest batches.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut c = args.coordinator.connect().await?;
    match &args.batch {
        Some(id) => {
            let b = c.batch(id).await?;
            if args.json {
                return print_json(&mut c, &b).await;
            }
            println!(
                "batch {} ({}, owner {}): {} ({})",
                b.batch_id,
                b.name,
                b.owner,
                batch_state_name(b.state),
                cluster::counts_of(&b)
            );
            // A page at a time, each with its own column widths: a batch of any size
            // prints in bounded memory.
            let mut pages = c.pages(id);
            let mut first = true;
            while let Some(page) = pages.next().await? {
                let mut rows = Vec::with_capacity(page.len() + 1);
                if std::mem::take(&mut first) {
                    rows.push(vec![
                        "JOB".into(),
                        "STATE".into(),
                        "PROGRESS".into(),
                        "ATTEMPT".into(),
                        "WORKER".into(),
                        "ERROR".into(),
                    ]);
                }
                for j in &page {
                    rows.push(vec![
                        j.name.clone(),
                        job_state_name(j.state).into(),
                        format!("{}/{}", j.iteration, j.iterations),
                        format!("{}/{}", j.attempt, j.attempts_allowed),
                        j.worker.clone(),
                        cluster::first_line(&j.error, 120),
                    ]);
                }
                print!("{}", cluster::table(&rows));
            }
        }
        None => {
            let batches = c.batches(args.limit).await?;
            if args.json {
                let all: Vec<_> = batches.iter().map(batch_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            let mut rows = vec![vec![
                "BATCH".into(),
                "NAME".into(),
                "OWNER".into(),
                "STATE".into(),
                "JOBS".into(),
            ]];
            for b in &batches {
                rows.push(vec![
                    b.batch_id.clone(),
                    b.name.clone(),
                    b.owner.clone(),
                    batch_state_name(b.state).into(),
                    cluster::counts_of(b),
                ]);
            }
            print!("{}", cluster::table(&rows));
        }
    }
    Ok(())
}

fn batch_json(b: &stylefarm_proto::v1::Batch) -> serde_json::Value {
    serde_json::json!({
        "batch_id": b.batch_id,
        "name": b.name,
        "owner": b.owner,
        "state": batch_state_name(b.state),
        "priority": b.priority,
        "created_unix_ms": b.created_unix_ms,
        "jobs_by_state": b.jobs_by_state,
    })
}

fn job_json(j: &stylefarm_proto::v1::JobStatus) -> serde_json::Value {
    serde_json::json!({
        "job_id": j.job_id,
        "name": j.name,
        "state": job_state_name(j.state),
        "iteration": j.iteration,
        "iterations": j.iterations,
        "attempt": j.attempt,
        "attempts_allowed": j.attempts_allowed,
        "worker": j.worker,
        "error": j.error,
        "result_key": j.result_key,
        "sidecar_key": j.sidecar_key,
    })
}

/// Prints a batch as one JSON object with its `jobs` array, written a page at a time.
async fn print_json(
    c: &mut cluster::Coordinator,
    b: &stylefarm_proto::v1::Batch,
) -> anyhow::Result<()> {
    use std::io::Write;
    let head = serde_json::to_string_pretty(&batch_json(b))?;
    let head = head.strip_suffix("\n}").unwrap_or(&head);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write!(out, "{head},\n  \"jobs\": [")?;
    let mut pages = c.pages(&b.batch_id);
    let mut first = true;
    while let Some(page) = pages.next().await? {
        for j in &page {
            let sep = if std::mem::take(&mut first) { "" } else { "," };
            write!(out, "{sep}\n    {}", serde_json::to_string(&job_json(j))?)?;
        }
    }
    writeln!(out, "\n  ]\n}}")?;
    out.flush()?;
    Ok(())
}

/// Follows a batch to its end; the exit code says how it ended.
pub async fn watch(args: BatchArg) -> anyhow::Result<()> {
    let mut c = args.coordinator.connect().await?;
    let b = c.watch(&args.batch, false).await?;
    eprintln!("batch {} {}", b.batch_id, batch_state_name(b.state));
    c.outcome(&b).await
}

/// Cancels a batch.
pub async fn cancel(args: BatchArg) -> anyhow::Result<()> {
    let mut c = args.coordinator.connect().await?;
    let b = c.cancel(&args.batch).await?;
    println!("batch {} {}", b.batch_id, batch_state_name(b.state));
    Ok(())
}

/// Queues failed (and cancelled) jobs again.
pub async fn retry(args: RetryArgs) -> anyhow::Result<()> {
    let mut c = args.coordinator.connect().await?;
    let b = c.retry(&args.batch, args.failed).await?;
    println!("batch {} {}", b.batch_id, batch_state_name(b.state));
    Ok(())
}

/// Downloads outputs and sidecars and writes the contact sheet.
pub async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let (root, storage) = args.storage.open()?;
    let mut c = args.coordinator.connect().await?;
    let b = c.batch(&args.batch).await?;
    let report = cluster::fetch(&mut c, &b, &storage, &root, &args.out).await?;
    if report.fetched == 0 && report.not_fetched == 0 {
        eprintln!("batch {} has no finished outputs yet", b.batch_id);
        return Ok(());
    }
    if report.fetched > 0 {
        crate::sheet::write(&report.sheet_rows, &storage, &root, &report.sheet).await?;
        eprintln!(
            "{} outputs in {}; contact sheet {}",
            report.fetched,
            args.out.display(),
            report.sheet.display()
        );
    }
    report.complete(&b)
}
