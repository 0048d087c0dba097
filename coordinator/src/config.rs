//! The coordinator's settings: command-line flags, each with a `STYLEFARM_*`
//! environment fallback for deployments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use stylefarm_core::limits::{MAX_ATTEMPTS, MAX_JOBS_PER_BATCH};

/// `stylefarm-coordinator` flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "stylefarm-coordinator",
    version,
    about = "The stylefarm coordinator: batches, jobs and leases over gRPC"
)]
pub struct Config {
    /// gRPC address (client and worker services, gRPC health).
    #[arg(long, env = "STYLEFARM_LISTEN", default_value = "0.0.0.0:7070")]
    pub listen: SocketAddr,

    /// HTTP address for /metrics (Prometheus), /livez and /readyz.
    #[arg(long, env = "STYLEFARM_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,

    /// The SQLite database file that holds every batch, job and lease.
    #[arg(long, env = "STYLEFARM_DB", default_value = "stylefarm.db")]
    pub db: PathBuf,

    /// A lease lasts this long unless a heartbeat extends it (milliseconds).
    #[arg(long, env = "STYLEFARM_LEASE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u32).range(100..=3_600_000))]
    pub lease_ms: u32,

    /// Heartbeat interval asked of workers (milliseconds); default a third of the lease.
    #[arg(long, env = "STYLEFARM_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u32>,

    /// Attempts per job when a batch does not say.
    #[arg(long, env = "STYLEFARM_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ATTEMPTS)))]
    pub max_attempts: u32,

    /// A worker that failed this many attempts of one batch gets no more of its jobs.
    #[arg(long, env = "STYLEFARM_MAX_WORKER_FAILURES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_worker_failures: u32,

    /// Most jobs in one batch.
    #[arg(long, env = "STYLEFARM_MAX_JOBS_PER_BATCH", default_value_t = MAX_JOBS_PER_BATCH)]
    pub max_jobs_per_batch: u32,

    /// Largest SubmitBatch request accepted, in bytes.
    #[arg(long, env = "STYLEFARM_MAX_MANIFEST_BYTES", default_value_t = 64 << 20)]
    pub max_manifest_bytes: usize,

    /// Longest a LeaseJob call waits for work (milliseconds).
    #[arg(long, env = "STYLEFARM_MAX_LEASE_WAIT_MS", default_value_t = 30_000)]
    pub max_lease_wait_ms: u32,

    /// Write the bound addresses as JSON to this file once serving (for supervisors
    /// and tests that listen on port 0).
    #[arg(long, env = "STYLEFARM_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// Threads serving gRPC and HTTP (default: one per CPU). The database writer has a
    /// thread of its own besides these.
    #[arg(long, env = "STYLEFARM_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Log JSON lines instead of text.
    #[arg(long, env = "STYLEFARM_LOG_JSON")]
    pub log_json: bool,
}

impl Config {
    /// A configuration for the given database with every other setting at its default
    /// and both servers on loopback port 0 (embedded use and tests).
    pub fn local(db: PathBuf) -> Self {
        use clap::Parser;
        let mut c = Self::parse_from(["stylefarm-coordinator"]);
        c.db = db;
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.metrics_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(u64::from(self.lease_ms))
    }

    /// The heartbeat interval workers are asked for.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(u64::from(
            self.heartbeat_ms.unwrap_or(self.lease_ms / 3).max(1),
        ))
    }
}
