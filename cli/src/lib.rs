//! The `stylefarm` command line.
//!
//! - [`render`]: `stylefarm render`, one image on this machine through the engine.
//!
//! `main.rs` parses [`Cli`], starts tracing and calls [`run`]; errors reach `main` as
//! `anyhow` and leave through [`exit_code`].

pub mod manifest;
pub mod render;

use clap::{Parser, Subcommand};

/// Exit code for a failed command (bad input, failed render).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for a usage error (clap uses it too).
pub const EXIT_USAGE: u8 = 2;

/// stylefarm: neural style transfer, from one image to a render farm.
#[derive(Debug, Parser)]
#[command(name = "stylefarm", version, about, propagate_version = true)]
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
    match cli.command {
        Command::Render(args) => render::run(args),
    }
}

/// The exit code for an error that reached `main`.
pub fn exit_code(_err: &anyhow::Error) -> u8 {
    EXIT_FAILURE
}
