use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = stylefarm_web::WebConfig::parse();
    stylefarm_core::telemetry::init(config.log_json, "info");
    match stylefarm_web::run(config, stylefarm_core::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = %format!("{err:#}"), "web interface failed");
            eprintln!("stylefarm-web: {err:#}");
            ExitCode::FAILURE
        }
    }
}
