//! `stylefarm-worker` flags, each with a `STYLEFARM_*` (or `AWS_*`) fallback.

use std::path::PathBuf;
use std::time::Duration;

use stylefarm_storage::StorageArgs;

use crate::device::DeviceArg;

/// Jobs a worker runs at once unless told otherwise.
pub const DEFAULT_SLOTS: u32 = 1;
/// When the next job is leased, as a fraction of the running job's iterations.
pub const DEFAULT_PREFETCH_AT: f64 = 0.8;
/// Iterations between checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: u32 = 50;
/// Largest input a worker accepts unless told otherwise, in pixels.
pub const DEFAULT_MAX_INPUT_PIXELS: u64 = 100_000_000;
/// Time allowed on SIGTERM to checkpoint and hand jobs back (ms).
pub const DEFAULT_GRACE_MS: u64 = 30_000;

use stylefarm_net::{ClientArgs, ClientAuth};

/// Worker node settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "stylefarm-worker",
    version,
    about = "A stylefarm worker node: leases jobs, renders them with libtorch, publishes results"
)]
pub struct WorkerConfig {
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

    /// Settings given in-process instead of read from files (`stylefarm run`).
    #[arg(skip)]
    pub local_auth: Option<ClientAuth>,

    /// VGG weights (safetensors); jobs for other weights are refused.
    #[arg(long, env = "STYLEFARM_WEIGHTS")]
    pub weights: PathBuf,

    /// Name reported to the coordinator (default: the host name).
    #[arg(long, env = "STYLEFARM_WORKER_NAME")]
    pub name: Option<String>,

    /// Where libtorch runs.
    #[arg(long, env = "STYLEFARM_DEVICE", value_enum, default_value = "auto")]
    pub device: DeviceArg,

    /// Jobs run at once.
    #[arg(long, env = "STYLEFARM_SLOTS", default_value_t = DEFAULT_SLOTS, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub slots: u32,

    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, env = "STYLEFARM_THREADS")]
    pub threads: Option<i32>,

    /// Lease the next job and fetch its inputs once the running job is this far along
    /// (a fraction of its iterations), so the device does not wait for downloads.
    #[arg(long, env = "STYLEFARM_PREFETCH_AT", default_value_t = DEFAULT_PREFETCH_AT, value_parser = fraction)]
    pub prefetch_at: f64,

    /// Lease a job only when a slot is free (no prefetching).
    #[arg(long, env = "STYLEFARM_NO_PREFETCH")]
    pub no_prefetch: bool,

    /// Write a checkpoint every this many iterations (and on SIGTERM).
    #[arg(long, env = "STYLEFARM_CHECKPOINT_EVERY", default_value_t = DEFAULT_CHECKPOINT_EVERY, value_parser = clap::value_parser!(u32).range(1..))]
    pub checkpoint_every: u32,

    /// On SIGTERM, time allowed to checkpoint and hand jobs back before exiting (ms).
    #[arg(long, env = "STYLEFARM_GRACE_MS", default_value_t = DEFAULT_GRACE_MS)]
    pub grace_ms: u64,

    /// Largest input accepted, in pixels (checked before decoding).
    #[arg(
        long,
        env = "STYLEFARM_MAX_INPUT_PIXELS",
        default_value_t = DEFAULT_MAX_INPUT_PIXELS
    )]
    pub max_input_pixels: u64,

    /// The most memory one job may take (e.g. 6GiB): device memory with CUDA, host
    /// memory on CPU. Jobs whose estimate is over it fail at once, before any input is
    /// decoded. Default: 80% of the host's memory (its cgroup limit when lower) or 90%
    /// of the GPU's, divided by --slots.
    #[arg(long, env = "STYLEFARM_MAX_JOB_MEMORY", value_name = "SIZE", value_parser = crate::device::parse_size)]
    pub max_job_memory: Option<u64>,

    /// Further places inputs may be read from (`s3://bucket/prefix` or a directory),
    /// besides the storage root's `inputs/`; repeat, or separate with commas.
    #[arg(
        long,
        env = "STYLEFARM_INPUT_PREFIXES",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub input_prefix: Vec<String>,

    /// Storage.
    #[command(flatten)]
    pub store: StorageArgs,

    /// Log JSON lines instead of text.
    #[arg(long, env = "STYLEFARM_LOG_JSON")]
    pub log_json: bool,
}

impl WorkerConfig {
    /// A worker inside another process (`stylefarm run`): the given coordinator, weights
    /// and device, storage in a local folder, every other setting at its default.
    pub fn local(
        coordinator: String,
        storage: &std::path::Path,
        weights: PathBuf,
        name: String,
        device: DeviceArg,
        threads: Option<i32>,
        auth: ClientAuth,
    ) -> Self {
        Self {
            coordinator,
            auth: ClientArgs::default(),
            local_auth: Some(auth),
            weights,
            name: Some(name),
            device,
            slots: DEFAULT_SLOTS,
            threads,
            prefetch_at: DEFAULT_PREFETCH_AT,
            no_prefetch: false,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            grace_ms: DEFAULT_GRACE_MS,
            max_input_pixels: DEFAULT_MAX_INPUT_PIXELS,
            max_job_memory: None,
            input_prefix: Vec::new(),
            store: StorageArgs::local(storage),
            log_json: false,
        }
    }

    /// The prefetch point as a fraction of a job's iterations, unless prefetching is off.
    pub fn prefetch(&self) -> Option<f64> {
        (!self.no_prefetch).then_some(self.prefetch_at)
    }

    /// The grace period on SIGTERM.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a fraction between 0 and 1"))
    }
}
