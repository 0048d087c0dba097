use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = stylefarm_worker::node::WorkerConfig::parse();
    stylefarm_core::telemetry::init(config.log_json, "info");
    match stylefarm_worker::node::run(config, stylefarm_core::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = format!("{err:#}"), "worker failed");
            ExitCode::FAILURE
        }
    }
}
