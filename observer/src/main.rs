//! `baton-observer`: parse the flags, set up logging and signals, run.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use observer::cli::Cli;
use observer::config::FileConfig;
use observer::Config;

fn main() -> ExitCode {
    let config = match load(Cli::parse()) {
        Ok(config) => config,
        Err(err) => {
            protocol::peer::print_fatal("baton-observer", &format!("{err:#}"));
            return ExitCode::from(2);
        }
    };
    protocol::peer::init_logging(config.log_json);
    // One thread is plenty: git work runs on blocking threads, and the rest
    // is one connection and a few timers.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            protocol::peer::print_fatal("baton-observer", &format!("starting the runtime: {err}"));
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(serve(config));
    // A fetch stuck on the network must not hold the exit: its thread is left behind.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

fn load(cli: Cli) -> anyhow::Result<Config> {
    let file = cli.config.as_deref().map(FileConfig::load).transpose()?;
    Config::from_cli(cli, file)
}

async fn serve(config: Config) -> ExitCode {
    let token = match protocol::peer::stop_token() {
        Ok(token) => token,
        Err(err) => {
            tracing::error!(error = %err, "installing signal handlers");
            return ExitCode::FAILURE;
        }
    };
    // The webhook's bound address is the one line on stdout (logs go to
    // stderr), as the dispatcher prints its own: `--webhook 127.0.0.1:0` works.
    let webhook = match observer::bind_webhook(&config).await {
        Ok(webhook) => webhook,
        Err(err) => {
            protocol::peer::print_fatal("baton-observer", &format!("{err:#}"));
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = webhook.as_ref().and_then(|listener| listener.local_addr().ok()) {
        println!("webhook: {addr}");
    }
    match observer::run(config, webhook, token).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "baton-observer failed");
            ExitCode::FAILURE
        }
    }
}
