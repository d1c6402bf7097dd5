//! `baton-dispatcher`'s raw command line. Every flag is also read from a
//! `BATON_*` environment variable; values left unset come from the config
//! file, then from the defaults in `config`.

use std::path::PathBuf;

use clap::Parser;

/// The Baton dispatcher: queues commits, hands them to runners, records
/// results.
#[derive(Debug, Parser)]
#[command(name = "baton-dispatcher", version)]
pub struct Cli {
    /// Address to listen on [default: 127.0.0.1:8888]; port 0 picks a free
    /// port, printed as the first line of standard output.
    #[arg(long, env = "BATON_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the database, logs, results and release records
    /// [default: ./baton-data].
    #[arg(long, env = "BATON_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the shared secret peers must prove; without it only
    /// loopback peers are accepted.
    #[arg(long, env = "BATON_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain to present: with `--tls-key`, every peer must
    /// connect over TLS.
    #[arg(long, env = "BATON_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "BATON_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Time between heartbeats to each runner [default: 1s].
    #[arg(long, env = "BATON_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Heartbeats a runner may miss before it is declared dead [default: 3].
    #[arg(long, env = "BATON_HEARTBEAT_MISSES")]
    pub heartbeat_misses: Option<u32>,
    /// Runs of a task before a lost runner makes it `error` [default: 3].
    #[arg(long, env = "BATON_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Bytes of console output kept per task [default: 64 MiB].
    #[arg(long, env = "BATON_OUTPUT_CAP")]
    pub output_cap: Option<u64>,
    /// SQLite durability: `full` (fsync each commit) or `normal` (survives a
    /// process crash, not a power cut) [default: full].
    #[arg(long, env = "BATON_SYNC")]
    pub sync: Option<String>,
    /// Address of the web report service (pages, `/api/v1/`, `/metrics`), or
    /// `off` [default: 127.0.0.1:8080]; its bound address is printed as the
    /// second line of standard output, `http: ADDR`.
    #[arg(long, env = "BATON_HTTP")]
    pub http: Option<String>,
    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "BATON_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// TOML file with any of the settings above (snake_case keys).
    #[arg(long, env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
}
