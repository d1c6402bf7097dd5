//! The manager's command line, as raw as clap gives it; `Config::from_cli`
//! merges it with the `--config` file and validates everything.

use std::path::PathBuf;

use clap::Parser;

/// `baton-runner-manager`: starts runners as work comes and stops them when
/// they sit idle.
#[derive(Debug, Clone, Parser)]
#[command(name = "baton-runner-manager", version, about)]
pub struct Cli {
    /// Address of the dispatcher, host:port [default: 127.0.0.1:8888]
    #[arg(long, env = "BATON_DISPATCHER", value_name = "ADDR")]
    pub dispatcher: Option<String>,

    /// Directory for the runners' work dirs, logs and pid files (required)
    #[arg(long, env = "BATON_WORK_ROOT", value_name = "DIR")]
    pub work_root: Option<PathBuf>,

    /// A pool, NAME:LABELS:MIN:MAX (labels comma-separated, may be empty);
    /// repeat for more (space-separated in BATON_POOL)
    #[arg(long = "pool", env = "BATON_POOL", value_name = "POOL", value_delimiter = ' ')]
    pub pools: Vec<String>,

    /// How long a runner sits idle before it is drained and stopped [default: 5m]
    #[arg(long, env = "BATON_IDLE_TIMEOUT", value_name = "DUR")]
    pub idle_timeout: Option<String>,

    /// How runners are started and stopped: local processes or commands [default: local]
    #[arg(long, env = "BATON_DRIVER", value_parser = ["local", "command"])]
    pub driver: Option<String>,

    /// Command driver: argv that starts runner {name} of pool {pool}
    /// (split on whitespace, run without a shell)
    #[arg(long, env = "BATON_START", value_name = "ARGV")]
    pub start: Option<String>,

    /// Command driver: argv that stops runner {name} of pool {pool}
    #[arg(long, env = "BATON_STOP", value_name = "ARGV")]
    pub stop: Option<String>,

    /// Local driver: the baton-runner binary [default: next to this one]
    #[arg(long, env = "BATON_RUNNER_BIN", value_name = "PATH")]
    pub runner_bin: Option<PathBuf>,

    /// Local driver: an extra argument for every runner (--runner-arg=--slots=2)
    #[arg(long = "runner-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub runner_args: Vec<String>,

    /// Name shown to the dispatcher [default: manager]
    #[arg(long, env = "BATON_NAME")]
    pub name: Option<String>,

    /// File holding the secret shared with the dispatcher (also given to local runners)
    #[arg(long, env = "BATON_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM file of the CA of the dispatcher's TLS certificate (also given to local runners)
    #[arg(long, env = "BATON_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Name to check the dispatcher's certificate against
    #[arg(long, env = "BATON_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Log format on stderr [default: text]
    #[arg(long, env = "BATON_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,

    /// TOML file with any of the settings above in snake_case, and [[pool]] tables
    #[arg(long, env = "BATON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}
