//! `baton-dispatcher`: parse the flags, set up logging and signals, check
//! that the data directory, the database and the listening address are
//! usable, print the bound address as the first line of standard output
//! (then `http: ADDR` when the web report service runs), and run.
//!
//! Whatever can never work (a bad flag, an unusable data directory, a port
//! taken) ends the process at once with exit code 2 and one line on stderr,
//! before any address is printed: a script reading that line knows the
//! dispatcher really started.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use dispatcher::cli::Cli;
use dispatcher::Config;
use tokio::net::TcpListener;

const PROGRAM: &str = "baton-dispatcher";

fn main() -> ExitCode {
    let config = match Config::from_cli(Cli::parse()) {
        Ok(config) => config,
        Err(err) => return fatal(&err),
    };
    protocol::peer::init_logging(config.log_json);
    let runtime = match tokio::runtime::Runtime::new().context("starting the async runtime") {
        Ok(runtime) => runtime,
        Err(err) => return fatal(&err),
    };
    runtime.block_on(async {
        let (listener, web) = match prepare(&config).await {
            Ok(bound) => bound,
            Err(err) => return fatal(&err),
        };
        let shutdown = match protocol::peer::stop_token().context("installing signal handlers") {
            Ok(shutdown) => shutdown,
            Err(err) => return fatal(&err),
        };
        // Tests and scripts read the real ports from here when listening on
        // :0: the protocol address, then `http: ADDR` when the web service
        // runs. One write, so a reader of the first line gets both; nobody
        // reading it is no reason to stop.
        if let Ok(addr) = listener.local_addr() {
            let mut lines = format!("{addr}\n");
            if let Some(Ok(web)) = web.as_ref().map(TcpListener::local_addr) {
                lines.push_str(&format!("http: {web}\n"));
            }
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(lines.as_bytes()).and_then(|()| stdout.flush());
        }
        match dispatcher::run_with_web(config, listener, web, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "dispatcher failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Everything `run` needs that can be checked before saying "started": the
/// data directory and the database open (then close again; `run` reopens
/// them), the token and TLS files read, and the addresses bound. The web
/// service's default address, when taken, only disables the web (with a
/// warning); an address given by the operator must bind.
async fn prepare(config: &Config) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    let files = dispatcher::files::DataDir::create(&config.data_dir)
        .with_context(|| format!("data directory {}", config.data_dir.display()))?;
    drop(dispatcher::store::Store::open(&files.database(), config.sync)?);
    if let Some(path) = &config.token_file {
        protocol::Secret::from_file(path)
            .with_context(|| format!("reading token file {}", path.display()))?;
    }
    if let Some((cert, key)) = &config.tls {
        protocol::tls::ServerTls::from_pem_files(cert, key).context("loading the TLS certificate")?;
    }
    let listener =
        TcpListener::bind(&config.listen).await.with_context(|| format!("listening on {}", config.listen))?;
    let web = match &config.http {
        None => None,
        Some(http) => match TcpListener::bind(&http.addr).await {
            Ok(web) => Some(web),
            Err(err) if !http.explicit => {
                tracing::warn!(addr = %http.addr, error = %err, "web report service disabled: cannot bind its default address");
                None
            }
            Err(err) => return Err(err).with_context(|| format!("listening for http on {}", http.addr)),
        },
    };
    Ok((listener, web))
}

/// One line on stderr and exit code 2: a start-up failure.
fn fatal(err: &anyhow::Error) -> ExitCode {
    protocol::peer::print_fatal(PROGRAM, &format!("{err:#}"));
    ExitCode::from(2)
}
