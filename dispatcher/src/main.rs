//! `baton-dispatcher`: parse the flags, set up logging and signals, bind,
//! print the bound address as the first line of standard output, and run.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use dispatcher::cli::Cli;
use dispatcher::Config;

fn main() -> ExitCode {
    let config = match Config::from_cli(Cli::parse()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("baton-dispatcher: {err:#}");
            return ExitCode::from(2);
        }
    };
    protocol::peer::init_logging(config.log_json);
    let runtime = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    match runtime.block_on(start(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "dispatcher failed");
            eprintln!("baton-dispatcher: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start(config: Config) -> anyhow::Result<()> {
    let shutdown = protocol::peer::stop_token().context("installing signal handlers")?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    // Tests and scripts read the real port from here when listening on :0.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?)?;
    stdout.flush()?;
    dispatcher::run(config, listener, shutdown).await
}
