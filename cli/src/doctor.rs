//! `stylefarm doctor`: what a machine lacks for its role, found before a job finds it.
//!
//! One line per check — libtorch, CUDA, weights, the coordinator, storage, free disk —
//! each `ok`, `warn` or `fail` with what to do. The exit code is 0 when every check the
//! role needs passes (render: libtorch and weights; submit: weights, the coordinator
//! and storage; worker: all of those), else 1. `--json` prints the same as one object.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use stylefarm_net::NetError;
use stylefarm_proto::v1;
use stylefarm_proto::v1::style_farm_client::StyleFarmClient;
use stylefarm_proto::PROTOCOL;
use stylefarm_storage::{Limit, ObjectUrl, StorageArgs};
use stylefarm_weights::WeightsInfo;
use tonic::Code;

use crate::batch::CoordinatorArg;

/// What the machine is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `stylefarm render` and `stylefarm run` here.
    Render,
    /// `stylefarm submit`, `watch` and `fetch` against a farm.
    Submit,
    /// A farm's worker (`stylefarm-worker` with the same settings).
    Worker,
}

/// `stylefarm doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// What this machine is for: which checks must pass.
    #[arg(long, value_enum, default_value = "render")]
    pub role: Role,
    /// VGG weights (else `STYLEFARM_WEIGHTS`, else the cache).
    #[arg(long, env = "STYLEFARM_WEIGHTS", value_name = "FILE")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub coordinator: CoordinatorArg,
    /// Storage and its S3 settings (`--storage` is optional here); checked with a test
    /// object written, read back and removed.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// One JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth knowing (no GPU, little disk).
    Warn,
    /// Does not work.
    Fail,
    /// Not checked for this role.
    Skip,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub check: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Whether the role needs it to pass.
    pub needed: bool,
}

impl Check {
    fn new(check: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            check,
            status,
            detail: detail.into(),
            fix: None,
            needed: false,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Less free disk than this is a warning (a job's inputs, checkpoints and outputs).
const LOW_DISK: u64 = 5 << 30;

/// Runs every check for the role, prints them and says whether the role is served.
pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let role = args.role;
    let needs = |c: &str| match role {
        Role::Render => matches!(c, "libtorch" | "weights"),
        Role::Submit => matches!(c, "weights" | "coordinator" | "storage"),
        Role::Worker => matches!(c, "libtorch" | "weights" | "coordinator" | "storage"),
    };
    let mut checks = vec![libtorch(), cuda(role)];
    let weights = weights(args.weights.clone());
    checks.push(weights.0);
    checks.push(if role == Role::Render {
        Check::new("coordinator", Status::Skip, "not needed to render here")
    } else {
        coordinator(&args.coordinator, role).await
    });
    let given = (!args.storage.storage.is_empty()).then_some(&args.storage);
    let (storage_check, local_root) = storage(given, role).await;
    checks.push(storage_check);
    let mut places: Vec<(String, PathBuf)> = Vec::new();
    if let Some(dir) = crate::weights::cache_dir() {
        places.push(("the weights cache".into(), dir));
    }
    if let Some(root) = local_root {
        places.push(("storage".into(), root));
    }
    places.push((
        "this folder".into(),
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    ));
    checks.push(disk(&places));
    for c in &mut checks {
        c.needed = needs(c.check);
    }
    let served = checks
        .iter()
        .all(|c| !c.needed || c.status == Status::Ok || c.status == Status::Warn);
    if args.json {
        let out = serde_json::json!({ "role": role, "ok": served, "checks": checks });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for c in &checks {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            println!("{status:<5} {:<12} {}", c.check, c.detail);
            if let Some(fix) = &c.fix {
                println!("{:<18} fix: {fix}", "");
            }
        }
    }
    if served {
        Ok(())
    } else {
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| c.needed && c.status == Status::Fail)
            .map(|c| c.check)
            .collect();
        anyhow::bail!(
            "this machine is not ready to {}: {} failed",
            match role {
                Role::Render => "render",
                Role::Submit => "submit",
                Role::Worker => "work",
            },
            failed.join(", ")
        )
    }
}

fn libtorch() -> Check {
    let (dir, version) = stylefarm_worker::device::libtorch();
    match version {
        Some(v) => Check::new("libtorch", Status::Ok, format!("{v} ({dir})")),
        None => Check::new(
            "libtorch",
            Status::Warn,
            format!("linked from {dir}; its version file is not there"),
        )
        .fix("reinstall with `make venv` (PyPI's torch) and rebuild"),
    }
}

fn cuda(role: Role) -> Check {
    use stylefarm_worker::device::{describe, CUDA_BACKEND_LINKED};
    if tch::Cuda::is_available() {
        let n = tch::Cuda::device_count();
        let gpus: Vec<String> = (0..n)
            .map(|i| {
                let (name, model, memory) = describe(tch::Device::Cuda(i as usize));
                format!(
                    "{name} {model} ({})",
                    stylefarm_weights::memory::gib(memory)
                )
            })
            .collect();
        return Check::new("cuda", Status::Ok, gpus.join("; "));
    }
    let why = if CUDA_BACKEND_LINKED {
        "the CUDA backend is linked but sees no GPU (check the driver and CUDA_VISIBLE_DEVICES)"
    } else {
        "this build's libtorch is CPU-only"
    };
    let status = if role == Role::Submit {
        Status::Skip
    } else {
        Status::Warn
    };
    Check::new(
        "cuda",
        status,
        format!("no GPU: {why}; renders run on the CPU"),
    )
}

fn weights(given: Option<PathBuf>) -> (Check, Option<WeightsInfo>) {
    let path = match crate::weights::resolve(given) {
        Ok(p) => p,
        Err(e) => {
            return (
                Check::new("weights", Status::Fail, format!("{e:#}")).fix(
                    "`stylefarm weights fetch vgg19` (548 MB, once), or --weights FILE / STYLEFARM_WEIGHTS",
                ),
                None,
            )
        }
    };
    match WeightsInfo::inspect(&path) {
        Ok(info) => {
            let layers = match (info.layers.first(), info.layers.last()) {
                (Some(a), Some(b)) => format!("{a}..{b}"),
                _ => "no layers".into(),
            };
            let (content, style) =
                stylefarm_weights::standard_layers(|n| info.layers.iter().any(|l| l == n));
            let layers = format!(
                "{layers}; jobs that name none use content {} and style {}",
                content.join(","),
                style.join(",")
            );
            (
                Check::new(
                    "weights",
                    Status::Ok,
                    format!(
                        "{}: {}, {} convention, layers {layers}",
                        path.display(),
                        info.architecture.name(),
                        info.convention.name()
                    ),
                ),
                Some(info),
            )
        }
        Err(e) => (
            Check::new("weights", Status::Fail, format!("{}: {e}", path.display())).fix(
                "give a VGG16/VGG19 safetensors file (`stylefarm weights fetch vgg19` makes one)",
            ),
            None,
        ),
    }
}

/// Connects as the flags say and makes one call the role's identity may make.
async fn coordinator(c: &CoordinatorArg, role: Role) -> Check {
    let addr = c.coordinator.clone();
    let auth = match c.auth.load() {
        Ok(a) => a,
        Err(e) => {
            return Check::new("coordinator", Status::Fail, format!("{addr}: {e}"))
                .fix("check --tls-ca-file, --tls-cert-file, --tls-key-file and --token-file")
        }
    };
    let channel = match tokio::time::timeout(Duration::from_secs(15), auth.connect(&addr)).await {
        Ok(Ok(ch)) => ch,
        Ok(Err(NetError::Connect { cause, .. })) => {
            return Check::new("coordinator", Status::Fail, format!("{addr}: unreachable: {cause}"))
                .fix("check --coordinator (STYLEFARM_COORDINATOR), that the coordinator runs, and for https:// the CA (--tls-ca-file)")
        }
        Ok(Err(e)) => return Check::new("coordinator", Status::Fail, format!("{addr}: {e}")),
        Err(_) => {
            return Check::new("coordinator", Status::Fail, format!("{addr}: no answer in 15 s"))
                .fix("check --coordinator and the network between here and it")
        }
    };
    let tls = if addr.starts_with("https://") {
        "over TLS"
    } else {
        "in plaintext"
    };
    let what = if role == Role::Worker {
        "worker"
    } else {
        "submitter"
    };
    match StyleFarmClient::new(channel)
        .get_server_info(v1::GetServerInfoRequest {})
        .await
    {
        Ok(info) => {
            let info = info.into_inner();
            let speaks = format!(
                "coordinator {} speaking {}",
                info.version, info.protocol
            );
            if info.protocol != PROTOCOL {
                return Check::new(
                    "coordinator",
                    Status::Fail,
                    format!("{addr}: reachable {tls}; {speaks}, this stylefarm speaks {PROTOCOL}"),
                )
                .fix("use a stylefarm release that matches the coordinator's");
            }
            let roles = info.roles.join(", ");
            let accepted = format!("{addr}: reachable {tls}; {speaks}; token of {} ({roles})", info.caller);
            if info.roles.iter().any(|r| r == what || r == "admin") {
                Check::new("coordinator", Status::Ok, format!("{accepted}: accepted as a {what}"))
            } else {
                Check::new("coordinator", Status::Fail, format!("{accepted}: not a {what}"))
                    .fix(format!("use a token whose identity has the {what} role"))
            }
        }
        Err(s) if s.code() == Code::Unauthenticated => {
            Check::new("coordinator", Status::Fail, format!("{addr}: reachable {tls}; token refused: {}", s.message()))
                .fix("give this machine's token with --token-file (an admin makes one with `stylefarm-coordinator token add`)")
        }
        Err(s) if s.code() == Code::Unimplemented => Check::new(
            "coordinator",
            Status::Fail,
            format!("{addr}: reachable {tls}; it does not report its protocol (a release older than this one)"),
        )
        .fix("upgrade the coordinator to this stylefarm's release"),
        Err(s) => Check::new(
            "coordinator",
            Status::Fail,
            format!("{addr}: {}", crate::exit::from_status(&addr, &s)),
        ),
    }
}

/// Writes, reads back and removes a test object under the storage root. Returns the
/// root's folder when it is local (for the disk check).
async fn storage(args: Option<&StorageArgs>, role: Role) -> (Check, Option<PathBuf>) {
    let Some(args) = args else {
        let status = if role == Role::Render {
            Status::Skip
        } else {
            Status::Fail
        };
        let check = Check::new("storage", status, "no storage given");
        return (
            if status == Status::Fail {
                check.fix("--storage s3://bucket/prefix or a folder (STYLEFARM_STORAGE), with its S3 settings")
            } else {
                check
            },
            None,
        );
    };
    let (root, storage) = match args.open() {
        Ok(x) => x,
        Err(e) => {
            return (
                Check::new("storage", Status::Fail, e.to_string())
                    .fix("see the S3 settings in README.md"),
                None,
            )
        }
    };
    let local = match &root {
        ObjectUrl::File(p) => Some(p.clone()),
        ObjectUrl::S3 { .. } => None,
    };
    // Unique per run, so doctors on machines sharing a bucket never touch each other's.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let probe = match root.join(&format!("doctor/probe-{}-{nonce}", std::process::id())) {
        Ok(u) => u,
        Err(e) => return (Check::new("storage", Status::Fail, e.to_string()), local),
    };
    let bytes = b"stylefarm doctor".to_vec();
    let result = async {
        storage.put(&probe, bytes.clone()).await?;
        let back = storage
            .get(&probe, &Limit::new("the doctor's probe", 1024))
            .await;
        // Removed whatever the read gave.
        let removed = storage.delete(&probe).await;
        let back = back?;
        removed?;
        Ok::<_, stylefarm_storage::StorageError>(back == bytes)
    };
    let answer = tokio::time::timeout(Duration::from_secs(60), result).await;
    if answer.is_err() {
        let _ = tokio::time::timeout(Duration::from_secs(10), storage.delete(&probe)).await;
    }
    if let Some(dir) = &local {
        // The probe's folder, when the doctor made it and nothing else is in it.
        let _ = std::fs::remove_dir(dir.join("doctor"));
    }
    let check = match answer {
        Ok(Ok(true)) => Check::new(
            "storage",
            Status::Ok,
            format!("{root}: wrote, read back and removed a test object"),
        ),
        Ok(Ok(false)) => Check::new(
            "storage",
            Status::Fail,
            format!("{root}: a test object came back changed"),
        ),
        Ok(Err(e)) => Check::new("storage", Status::Fail, e.to_string())
            .fix("check the bucket, the credentials and their permissions (read, write, delete)"),
        Err(_) => Check::new(
            "storage",
            Status::Fail,
            format!("{root}: no answer in 60 s"),
        )
        .fix("check --s3-endpoint and the network"),
    };
    (check, local)
}

/// Free space where this machine keeps files.
fn disk(places: &[(String, PathBuf)]) -> Check {
    let mut parts = Vec::new();
    let mut low = Vec::new();
    for (what, path) in places {
        match free_bytes(path) {
            Some(free) => {
                parts.push(format!(
                    "{} free for {what} ({})",
                    stylefarm_weights::memory::gib(free),
                    path.display()
                ));
                if free < LOW_DISK {
                    low.push(what.clone());
                }
            }
            None => parts.push(format!("{what} ({}): not there yet", path.display())),
        }
    }
    let check = Check::new(
        "disk",
        if low.is_empty() {
            Status::Ok
        } else {
            Status::Warn
        },
        parts.join("; "),
    );
    if low.is_empty() {
        check
    } else {
        check.fix(format!("free some space for {}", low.join(", ")))
    }
}

/// Free bytes on the filesystem holding `path` (or its nearest existing parent).
fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let s = rustix::fs::statvfs(existing).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}
