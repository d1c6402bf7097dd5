//! `baton-runner`: parses the command line, starts logging and the stop
//! signal, and hands over to [`runner::run`].

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use runner::cli::Cli;
use runner::Config;

/// How long blocking work (a fetch that was abandoned) may delay the exit.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    // The test supervisor mode, before clap, threads or logging exist.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|first| first == runner::supervise::FLAG) {
        runner::supervise::main(args.collect());
    }
    let cli = Cli::parse();
    // The work directory is made here so that an unusable one (a file, no
    // permission) ends the runner at once, not after it registered.
    let config = Config::from_cli(cli).and_then(|config| {
        std::fs::create_dir_all(&config.work_dir)
            .with_context(|| format!("creating work directory {}", config.work_dir.display()))?;
        Ok(config)
    });
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            protocol::peer::print_fatal("baton-runner", &format!("{err:#}"));
            return ExitCode::from(2);
        }
    };
    protocol::peer::init_logging(config.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            protocol::peer::print_fatal("baton-runner", &format!("cannot start the async runtime: {err}"));
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = protocol::peer::stop_token().context("installing signal handlers")?;
        runner::run(config, shutdown).await
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "runner failed");
            ExitCode::FAILURE
        }
    }
}
