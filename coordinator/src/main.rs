use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = stylefarm_coordinator::Config::parse();
    stylefarm_core::telemetry::init(config.log_json, "info");
    match stylefarm_coordinator::run(config, stylefarm_core::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = %err, "coordinator failed");
            ExitCode::FAILURE
        }
    }
}
