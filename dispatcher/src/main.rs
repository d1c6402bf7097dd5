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
    let web = match &config.http {
        None => None,
        Some(http) => match tokio::net::TcpListener::bind(&http.addr).await {
            Ok(web) => Some(web),
            Err(err) if !http.explicit => {
                tracing::warn!(addr = %http.addr, error = %err, "web report service disabled: cannot bind its default address");
                None
            }
            Err(err) => return Err(err).with_context(|| format!("listening for http on {}", http.addr)),
        },
    };
    // Tests and scripts read the real ports from here when listening on :0:
    // the protocol address, then `http: ADDR` when the web service runs.
    // One write, so a reader that reads only the first line still gets both.
    let mut lines = format!("{}\n", listener.local_addr()?);
    if let Some(web) = &web {
        lines.push_str(&format!("http: {}\n", web.local_addr()?));
    }
    let mut stdout = std::io::stdout();
    stdout.write_all(lines.as_bytes())?;
    stdout.flush()?;
    dispatcher::run_with_web(config, listener, web, shutdown).await
}
