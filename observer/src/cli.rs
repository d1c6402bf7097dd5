//! The raw command line of `baton-observer`, as clap parses it.
//!
//! Every flag is optional here, even those with a default, so that
//! [`crate::Config::from_cli`] can tell a flag that was given (it wins over the
//! `--config` file) from one that was not (the file, then the default,
//! decides). Nothing here is validated beyond what clap checks; nothing after
//! `main` sees this type.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Watches git repositories and submits new commits to a Baton dispatcher.
#[derive(Debug, Clone, Parser)]
#[command(name = "baton-observer", version, about)]
pub struct Cli {
    /// Address of the dispatcher [default: 127.0.0.1:8888].
    #[arg(long, env = "BATON_DISPATCHER", value_name = "ADDR")]
    pub dispatcher: Option<String>,

    /// Poll (fetch and read) each repository at this interval, e.g. `5s` [default: 5s].
    #[arg(long, env = "BATON_POLL", value_name = "DUR", conflicts_with = "watch")]
    pub poll: Option<String>,

    /// React to filesystem notifications on local repositories' refs instead of polling.
    #[arg(long, env = "BATON_WATCH", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub watch: bool,

    /// With --watch, also scan at this interval as a safety net [default: 60s].
    #[arg(long, env = "BATON_SAFETY_POLL", value_name = "DUR")]
    pub safety_poll: Option<String>,

    /// Branch to observe; repeatable; may be a glob such as `release/*` [default: the HEAD branch].
    #[arg(long = "branch", env = "BATON_BRANCH", value_name = "BRANCH", value_delimiter = ',')]
    pub branches: Vec<String>,

    /// Submit every new commit, or only the newest one [default: every].
    #[arg(long, env = "BATON_MODE", value_enum)]
    pub mode: Option<ModeArg>,

    /// Where the cursors are kept [default: ./baton-observer.state.json].
    #[arg(long, env = "BATON_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,

    /// The repository location sent to the dispatcher, when runners must fetch
    /// from somewhere other than the path the observer reads.
    #[arg(long, env = "BATON_CLONE_URL", value_name = "URL")]
    pub clone_url: Option<String>,

    /// Where remote repositories are fetched to [default: next to the state file].
    #[arg(long, env = "BATON_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// On first sight of a branch, submit at most its newest N commits [default: 1].
    #[arg(long, env = "BATON_INITIAL", value_name = "N")]
    pub initial: Option<usize>,

    /// Submit at most N commits per branch and scan, the newest [default: 1000].
    #[arg(long, env = "BATON_MAX_NEW", value_name = "N")]
    pub max_new: Option<usize>,

    /// File holding the dispatcher's shared secret.
    #[arg(long, env = "BATON_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM file of the CA that signed the dispatcher's TLS certificate; makes
    /// the observer connect over TLS.
    #[arg(long, env = "BATON_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Name to check the dispatcher's certificate against [default: the host of --dispatcher].
    #[arg(long, env = "BATON_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// This observer's name, as the dispatcher logs it [default: observer].
    #[arg(long, env = "BATON_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// Log as human-readable text or as JSON lines [default: text].
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Receive forge push webhooks on this address (e.g. 127.0.0.1:8090); off by default.
    #[arg(long, env = "BATON_WEBHOOK", value_name = "ADDR")]
    pub webhook: Option<String>,

    /// File holding the secret webhooks are signed with (required with --webhook).
    #[arg(long, env = "BATON_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// A TOML file with the same keys as the long flags, plus `[[repo]]` and `[[schedule]]` tables.
    #[arg(long, env = "BATON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Repositories to observe: local paths or git URLs.
    #[arg(value_name = "REPO")]
    pub repos: Vec<String>,
}

/// `--mode` on the command line. Its variants have plain comments, not doc
/// comments: documented values would switch `--help` to clap's long layout,
/// unlike the other daemons' help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    // Every new commit, oldest first.
    Every,
    // Only the newest commit of each branch.
    Latest,
}

/// `--log-format` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    // Human-readable lines.
    Text,
    // One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn poll_and_watch_exclude_each_other() {
        let res = Cli::try_parse_from(["baton-observer", "--poll", "1s", "--watch", "/srv/a.git"]);
        assert!(res.is_err());
    }

    #[test]
    fn branches_repeat() {
        let cli =
            Cli::try_parse_from(["baton-observer", "--branch", "main", "--branch", "release/*", "/srv/a"])
                .unwrap();
        assert_eq!(cli.branches, ["main", "release/*"]);
        assert_eq!(cli.repos, ["/srv/a"]);
    }
}
