use std::process::ExitCode;

use clap::Parser;

// Many small allocations freed on other threads (gRPC tasks, the database writer):
// glibc's arenas contend on them, mimalloc does not.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = stylefarm_coordinator::Config::parse();
    if let Some(command) = &config.command {
        return stylefarm_coordinator::config::run_command(command);
    }
    stylefarm_core::telemetry::init(config.log_json, "info");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        runtime.worker_threads(n.max(1));
    }
    let result = runtime
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            // The signal handlers need the runtime: install them inside it.
            rt.block_on(async {
                let shutdown = stylefarm_core::shutdown::signal();
                stylefarm_coordinator::run(config, shutdown).await
            })
            .map_err(anyhow::Error::from)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = %err, "coordinator failed");
            ExitCode::FAILURE
        }
    }
}
