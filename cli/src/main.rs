use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = stylefarm_cli::Cli::parse();
    stylefarm_cli::init_tracing(cli.log_json, cli.verbose);
    match stylefarm_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(stylefarm_cli::exit_code(&e))
        }
    }
}
