use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let config = stylefarm_web::WebConfig::parse();
    stylefarm_core::telemetry::init(config.log_json, "info");
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            // The signal handlers need the runtime: install them inside it.
            rt.block_on(async {
                let shutdown = stylefarm_core::shutdown::signal();
                stylefarm_web::run(config, shutdown).await
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = %format!("{err:#}"), "web interface failed");
            eprintln!("stylefarm-web: {err:#}");
            ExitCode::FAILURE
        }
    }
}
