//! `baton-runner-manager`: parses the command line, starts logging and the
//! stop signal, and hands over to [`runner::manager::run`].

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use runner::manager::cli::Cli;
use runner::manager::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_cli(cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("baton-runner-manager: {err:#}");
            return ExitCode::from(2);
        }
    };
    protocol::peer::init_logging(config.log_json);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = protocol::peer::stop_token().context("installing signal handlers")?;
        runner::manager::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "runner manager failed");
            ExitCode::FAILURE
        }
    }
}
