//! The `stylefarm` command line.
//!
//! - [`render`]: `stylefarm render`, one image on this machine through the engine.
//! - [`embedded`]: `stylefarm run`, a manifest on a farm inside this process.
//! - [`batch`]: `submit`, `status`, `watch`, `cancel`, `retry`, `fetch` on a cluster,
//!   through [`cluster`] (the coordinator client) and [`sheet`] (the contact sheet).
//! - [`manifest`]: YAML batch manifests and their wedges.
//! - [`input`]: what may be uploaded as an input image (regular image files, capped).
//! - [`weights`]: `weights fetch`, `list` and `inspect`: torchvision's VGG converted to
//!   safetensors, the cache, a file's layers.
//! - [`doctor`]: `stylefarm doctor`, what a machine lacks for its role.
//! - [`exit`]: exit codes, and where coordinator errors become CLI errors.
//!
//! `main.rs` parses [`Cli`], starts tracing and calls [`run`]; errors reach `main` as
//! `anyhow` and leave through [`exit_code`].

pub mod batch;
pub mod cluster;
pub mod doctor;
pub mod embedded;
pub mod exit;
pub mod input;
pub mod manifest;
pub mod render;
pub mod sheet;
pub mod weights;

use clap::{Parser, Subcommand};

/// stylefarm: neural style transfer, from one image to a render farm.
#[derive(Debug, Parser)]
#[command(
    name = "stylefarm",
    version,
    about,
    propagate_version = true,
    after_help = "Exit codes: 0 success, 1 failure, 2 usage, 3 invalid manifest or request, \
                  4 batch failed or cancelled, 5 coordinator unreachable."
)]
pub struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true, env = "STYLEFARM_LOG_JSON")]
    pub log_json: bool,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render one image on this machine.
    Render(render::RenderArgs),
    /// Run a manifest on this machine: embedded coordinator, local workers and storage.
    Run(embedded::RunArgs),
    /// Upload a manifest's inputs and submit it to a coordinator; prints the batch id.
    Submit(batch::SubmitArgs),
    /// Show a batch's jobs, or the newest batches.
    Status(batch::StatusArgs),
    /// Follow a batch until it ends (exit code 0 when every job succeeded).
    Watch(batch::BatchArg),
    /// Cancel a batch's unfinished jobs.
    Cancel(batch::BatchArg),
    /// Queue a batch's failed (and cancelled) jobs again.
    Retry(batch::RetryArgs),
    /// Download a batch's outputs and sidecars and write a contact sheet.
    Fetch(batch::FetchArgs),
    /// Check this machine for a role: libtorch, CUDA, weights, coordinator, storage, disk.
    #[command(mut_arg("storage", |a| a.required(false).default_value("")))]
    Doctor(doctor::DoctorArgs),
    /// VGG weights files: fetch torchvision's, list the cache, inspect a file.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
    /// Print a shell completion script (e.g. `stylefarm completions bash > /etc/bash_completion.d/stylefarm`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Starts the tracing subscriber (stderr; `RUST_LOG` overrides the level).
pub fn init_tracing(json: bool, verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    stylefarm_core::telemetry::init(json, level);
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::Render(args) => return render::run(args),
        Command::Weights(cmd) => return weights::run(cmd),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "stylefarm",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        other => other,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command {
            Command::Render(_) | Command::Weights(_) | Command::Completions { .. } => {
                unreachable!("handled above")
            }
            Command::Run(a) => embedded::run(a).await,
            Command::Submit(a) => batch::submit(a).await,
            Command::Status(a) => batch::status(a).await,
            Command::Watch(a) => batch::watch(a).await,
            Command::Cancel(a) => batch::cancel(a).await,
            Command::Retry(a) => batch::retry(a).await,
            Command::Fetch(a) => batch::fetch(a).await,
            Command::Doctor(a) => doctor::run(a).await,
        }
    })
}

/// The exit code for an error that reached `main`.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    exit::code(err)
}
