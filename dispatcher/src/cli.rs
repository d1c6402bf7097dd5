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
    #[arg(long, env = "BATON_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory for the database, logs, results and release records
    /// [default: ./baton-data].
    #[arg(long, env = "BATON_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the shared secret peers must prove; without it only
    /// loopback peers are accepted.
    #[arg(long, env = "BATON_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain to present: with `--tls-key`, every peer must
    /// connect over TLS.
    #[arg(long, env = "BATON_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "BATON_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Time between heartbeats to each runner [default: 1s].
    #[arg(long, env = "BATON_HEARTBEAT_INTERVAL", value_name = "DUR")]
    pub heartbeat_interval: Option<String>,
    /// Heartbeats a runner may miss before it is declared dead [default: 3].
    #[arg(long, env = "BATON_HEARTBEAT_MISSES", value_name = "N")]
    pub heartbeat_misses: Option<u32>,
    /// Runs of a task before a lost runner makes it `error` [default: 3].
    #[arg(long, env = "BATON_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Times a failed test task is run again, on another runner when one is
    /// free; a retry that passes ends it `passed` and flaky [default: 0].
    #[arg(long, env = "BATON_RETRY_FAILED", value_name = "N")]
    pub retry_failed: Option<u32>,
    /// Bytes of console output kept per task [default: 64 MiB].
    #[arg(long, env = "BATON_OUTPUT_CAP", value_name = "BYTES")]
    pub output_cap: Option<u64>,
    /// SQLite durability: `full` (fsync each commit) or `normal` (survives a
    /// process crash, not a power cut) [default: full].
    #[arg(long, env = "BATON_SYNC", value_name = "MODE", value_parser = ["full", "normal"])]
    pub sync: Option<String>,
    /// Address of the web report service (pages, `/api/v1/`, `/metrics`), or
    /// `off` [default: 127.0.0.1:8080]; its bound address is printed as the
    /// second line of standard output, `http: ADDR`.
    #[arg(long, env = "BATON_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// The web report's address as users reach it, for links in commit
    /// statuses (e.g. https://ci.example.com) [default: http:// and the
    /// address `--http` bound].
    #[arg(long, env = "BATON_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Remove the logs of tasks that ended longer ago than this (e.g. 30d);
    /// the tasks stay [default: keep every log].
    #[arg(long, env = "BATON_KEEP_LOGS", value_name = "DUR")]
    pub keep_logs: Option<String>,
    /// Keep this many of each repository's newest tasks and remove older
    /// ended ones, never a release's [default: keep every task].
    #[arg(long, env = "BATON_KEEP_TASKS", value_name = "N")]
    pub keep_tasks: Option<u32>,
    /// How often the pruner looks for what `--keep-logs` and `--keep-tasks`
    /// remove [default: 1m].
    #[arg(long, env = "BATON_PRUNE_INTERVAL", value_name = "DUR")]
    pub prune_interval: Option<String>,
    /// Log format on stderr [default: text].
    #[arg(long, env = "BATON_LOG_FORMAT", value_name = "FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// TOML file with any of the settings above (snake_case keys), plus
    /// `release_branches`, `[[repo]]` tables (per-repository release branches
    /// and deploy steps) and `[[notifier]]` tables (commands or URLs told of
    /// failures and releases); see scripts/config/dispatcher.toml.
    #[arg(long, env = "BATON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent_and_its_placeholders_are_words() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for placeholder in ["<ADDR>", "<DIR>", "<FILE>", "<DUR>", "<BYTES>", "[possible values: text, json]"]
        {
            assert!(help.contains(placeholder), "{placeholder} missing from:\n{help}");
        }
        for raw in ["<LISTEN>", "<DATA_DIR>"] {
            assert!(!help.contains(raw), "{raw} in:\n{help}");
        }
    }
}
