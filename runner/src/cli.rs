//! The command line, as raw as clap gives it.
//!
//! Every flag can also come from a `BATON_<FLAG>` environment variable and
//! from the TOML file named by `--config` (same names in snake_case); a flag
//! wins over the file. Nothing here is validated or defaulted beyond what
//! clap does: that is `Config::from_cli`'s job, so that the file and the
//! flags get the same checks. Nothing after `main` sees this type.

use std::path::PathBuf;

use clap::Parser;

/// `baton-runner`: runs the tests the Baton dispatcher assigns.
#[derive(Debug, Clone, Parser)]
#[command(name = "baton-runner", version, about)]
pub struct Cli {
    /// Address of the dispatcher, host:port [default: 127.0.0.1:8888].
    #[arg(long, env = "BATON_DISPATCHER", value_name = "ADDR")]
    pub dispatcher: Option<String>,

    /// Directory for the repository cache, the spool and the task trees (required).
    #[arg(long, env = "BATON_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// Name reported to the dispatcher [default: the host name].
    #[arg(long, env = "BATON_NAME")]
    pub name: Option<String>,

    /// Labels this runner offers, comma-separated.
    #[arg(long, env = "BATON_LABELS", value_delimiter = ',')]
    pub labels: Option<Vec<String>>,

    /// Number of tests run at once [default: 1].
    #[arg(long, env = "BATON_SLOTS", value_name = "N")]
    pub slots: Option<u32>,

    /// File holding the secret shared with the dispatcher.
    #[arg(long, env = "BATON_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM file of the CA that signed the dispatcher's TLS certificate;
    /// makes the runner connect over TLS.
    #[arg(long, env = "BATON_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Name to check the dispatcher's certificate against [default: the
    /// host of --dispatcher].
    #[arg(long, env = "BATON_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Test command (run with `sh -c`) for repositories without a .baton.toml
    /// [default: python3 -m unittest discover -s tests -v].
    #[arg(long, env = "BATON_TEST_COMMAND", value_name = "CMD")]
    pub test_command: Option<String>,

    /// Time a test may run before it is killed, e.g. 10m or 90s [default: 10m].
    #[arg(long, env = "BATON_TIMEOUT", value_name = "DUR")]
    pub timeout: Option<String>,

    /// On SIGTERM, time running tests get to finish before they are abandoned
    /// [default: wait for them].
    #[arg(long, env = "BATON_DRAIN_TIMEOUT", value_name = "DUR")]
    pub drain_timeout: Option<String>,

    /// Bytes of a test's output kept; the rest is replaced by a marker line
    /// [default: 64 MiB].
    #[arg(long, env = "BATON_OUTPUT_CAP", value_name = "BYTES")]
    pub output_cap: Option<u64>,

    /// Names of passed and skipped tests reported per task; failed tests
    /// are always reported [default: 1000].
    #[arg(long, env = "BATON_MAX_TEST_NAMES", value_name = "N")]
    pub max_test_names: Option<usize>,

    /// Log format on stderr [default: text].
    #[arg(long, env = "BATON_LOG_FORMAT", value_name = "FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,

    /// TOML file with any of the settings above, in snake_case (see
    /// scripts/config/runner.toml).
    #[arg(long, env = "BATON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}
