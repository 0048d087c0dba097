//! The coordinator's settings: command-line flags, each with a `STYLEFARM_*`
//! environment fallback for deployments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use stylefarm_core::limits::{MAX_ATTEMPTS, MAX_JOBS_PER_BATCH};
use stylefarm_net::{Role, TlsFiles};

/// `stylefarm-coordinator` flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "stylefarm-coordinator",
    version,
    about = "The stylefarm coordinator: batches, jobs and leases over gRPC",
    args_conflicts_with_subcommands = true
)]
pub struct Config {
    /// Without a subcommand: serve.
    #[command(subcommand)]
    pub command: Option<Command>,

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

    /// Forget a worker's registration once it has not been heard from for this long
    /// (milliseconds; a live worker calls all the time). It must register again.
    #[arg(long, env = "STYLEFARM_FORGET_WORKERS_AFTER_MS", default_value_t = 7 * 24 * 3_600_000, value_parser = clap::value_parser!(u32).range(1000..))]
    pub forget_workers_after_ms: u32,

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

    /// The gRPC port's certificate chain (PEM). Re-read when it changes and on SIGHUP.
    #[arg(
        long,
        env = "STYLEFARM_TLS_CERT_FILE",
        value_name = "FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// Its private key (PEM).
    #[arg(
        long,
        env = "STYLEFARM_TLS_KEY_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// Require every client to present a certificate signed by this CA (mutual TLS).
    #[arg(
        long,
        env = "STYLEFARM_TLS_CLIENT_CA_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub tls_client_ca_file: Option<PathBuf>,

    /// The identities allowed in: one line per identity, `NAME ROLES sha256:HEX
    /// [max-priority=N]` (see `token add`). Re-read when it changes and on SIGHUP.
    #[arg(long, env = "STYLEFARM_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,

    /// How often the TLS and tokens files are checked for changes (milliseconds).
    #[arg(long, env = "STYLEFARM_RELOAD_INTERVAL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u32).range(100..))]
    pub reload_interval_ms: u32,

    /// Serve without TLS or without a tokens file. Anyone who reaches the port can then
    /// read and change everything; loopback only unless --insecure-non-loopback.
    #[arg(long, env = "STYLEFARM_INSECURE")]
    pub insecure: bool,

    /// With --insecure, also listen on addresses other than loopback.
    #[arg(long, env = "STYLEFARM_INSECURE_NON_LOOPBACK", requires = "insecure")]
    pub insecure_non_loopback: bool,

    /// A token this process gave itself (`stylefarm run`): one `local` identity holding
    /// every role, in memory only.
    #[arg(skip)]
    pub local_token: Option<LocalToken>,
}

/// `stylefarm-coordinator` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Manage the tokens file.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `stylefarm-coordinator token ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Add an identity with a new token: prints the token once (only its hash is kept).
    Add {
        /// The identity's name (batches it submits are owned by it).
        name: String,
        /// Its roles (repeat or separate with commas).
        #[arg(long, required = true, value_delimiter = ',')]
        role: Vec<Role>,
        /// The highest batch priority it may submit at (submitters).
        #[arg(long, default_value_t = 0)]
        max_priority: i32,
        /// The tokens file (created, readable by its owner only, when missing).
        #[arg(long, env = "STYLEFARM_TOKENS_FILE", value_name = "FILE")]
        tokens_file: PathBuf,
    },
}

/// Runs a subcommand; its output is for a person at a terminal.
pub fn run_command(command: &Command) -> std::process::ExitCode {
    match command {
        Command::Token(TokenCommand::Add {
            name,
            role,
            max_priority,
            tokens_file,
        }) => {
            let mut roles = role.clone();
            roles.sort();
            roles.dedup();
            let identity = stylefarm_net::Identity {
                name: name.clone(),
                roles,
                max_priority: *max_priority,
            };
            match stylefarm_net::token::add(tokens_file, &identity) {
                Ok(token) => {
                    println!("{token}");
                    eprintln!(
                        "added {name} to {}; the token above is shown only now: put it in the \
                         client's --token-file (the coordinator re-reads the tokens file within \
                         its reload interval, or at once on SIGHUP)",
                        tokens_file.display()
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// A token kept out of debug output.
#[derive(Clone)]
pub struct LocalToken(pub String);

impl std::fmt::Debug for LocalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalToken(..)")
    }
}

/// How the gRPC port is protected, as the flags ask.
#[derive(Debug)]
pub struct Security {
    /// TLS, when configured.
    pub tls: Option<TlsFiles>,
    /// Whether it runs without TLS or tokens, by request.
    pub insecure: bool,
}

impl Config {
    /// A configuration for the given database with every other setting at its default,
    /// both servers on loopback port 0 and no TLS (embedded use and tests).
    pub fn local(db: PathBuf) -> Self {
        use clap::Parser;
        let mut c = Self::parse_from(["stylefarm-coordinator"]);
        c.db = db;
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.metrics_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        // Nothing from a deployment's environment: no certificates or tokens files meant
        // for a coordinator elsewhere.
        c.tls_cert_file = None;
        c.tls_key_file = None;
        c.tls_client_ca_file = None;
        c.tokens_file = None;
        c.insecure_non_loopback = false;
        // Loopback, for this machine's processes; callers that share it further add a
        // token (`local_token`) or a tokens file.
        c.insecure = true;
        c
    }

    /// What the security flags ask for, or why they cannot be served: the coordinator
    /// does not start without TLS and a tokens file unless told `--insecure`, and an
    /// insecure one stays on loopback unless told `--insecure-non-loopback` too.
    pub fn security(&self) -> Result<Security, String> {
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca_file.clone(),
                http1: false,
            }),
            _ => None,
        };
        let authenticated = self.tokens_file.is_some() || self.local_token.is_some();
        if tls.is_some() && authenticated {
            return Ok(Security {
                tls,
                insecure: false,
            });
        }
        if !self.insecure {
            let missing = match (tls.is_some(), authenticated) {
                (false, false) => {
                    "TLS (--tls-cert-file, --tls-key-file) and a tokens file (--tokens-file)"
                }
                (false, true) => "TLS (--tls-cert-file, --tls-key-file)",
                _ => "a tokens file (--tokens-file)",
            };
            return Err(format!(
                "refusing to serve without {missing}: anyone who reaches {} could read and change every batch. \
                 Give them, or --insecure to run without on loopback",
                self.listen
            ));
        }
        if !self.listen.ip().is_loopback() && !self.insecure_non_loopback {
            return Err(format!(
                "--insecure serves {} without protection, which is not loopback; \
                 add --insecure-non-loopback if that is really meant",
                self.listen
            ));
        }
        Ok(Security {
            tls,
            insecure: true,
        })
    }

    /// The interval at which TLS and tokens files are checked for changes.
    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.reload_interval_ms))
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
