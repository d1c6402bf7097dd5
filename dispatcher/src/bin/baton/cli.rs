//! The command line as typed: clap's derive structs, raw flags only.
//!
//! Nothing here is validated beyond its shape (a number is a number). The
//! protocol's checked types are built from these strings in `request`, so the
//! error a user sees for a bad commit or branch is the protocol's own text, and
//! nothing after `main` sees `Cli` (ripgrep's low-level arguments).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// What the exit codes mean, printed under `--help`.
const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  the request failed: refused or not found by the dispatcher, an invalid
     argument, or (log --follow) a task that ended other than passed
  2  the dispatcher could not be reached or the connection was lost, or the
     command line itself was malformed";

/// The whole command line. Its `about` is set explicitly so that this
/// comment is not what `--help` prints.
#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version = protocol::BATON_VERSION,
    about = "Query and drive a Baton CI dispatcher",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Address of the dispatcher, as host:port.
    #[arg(
        long,
        global = true,
        env = "BATON_DISPATCHER",
        default_value = "127.0.0.1:8888",
        value_name = "ADDR"
    )]
    pub dispatcher: String,

    /// File holding the shared secret, for a dispatcher started with one.
    #[arg(long, global = true, env = "BATON_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Your OpenSSH ed25519 private key (unencrypted), to prove who you are
    /// to a dispatcher with users [default: ~/.ssh/id_ed25519 when it exists].
    #[arg(long, global = true, env = "BATON_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// The user to prove with the key [default: whoever the dispatcher finds
    /// for the key].
    #[arg(long, global = true, env = "BATON_USER", value_name = "NAME")]
    pub user: Option<String>,

    /// PEM file of the CA that signed the dispatcher's TLS certificate;
    /// makes `baton` connect over TLS.
    #[arg(long, global = true, env = "BATON_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Name to check the dispatcher's certificate against [default: the host
    /// of --dispatcher].
    #[arg(long, global = true, env = "BATON_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Print JSON for scripts instead of tables (no effect on `log`).
    #[arg(long, global = true)]
    pub json: bool,

    /// What to ask the dispatcher.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of SPEC §6.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dispatcher version and uptime, runners by state, tasks by state.
    Status,
    /// Every runner: address, labels, state, current tasks, last heartbeat, host.
    Runners,
    /// Recent tasks, newest first.
    Tasks(TasksArgs),
    /// One task, by id or by commit (a commit shows its newest task).
    ///
    /// An argument of 1 to 6 decimal digits is a task id. Anything else is a
    /// commit id or an abbreviation of one: 4 to 64 lowercase hex digits. To
    /// look up a commit whose abbreviation is all digits, give at least 7; a
    /// longer digit string that matches no commit is taken as a task id.
    Show(ShowArgs),
    /// A task's console output, byte for byte.
    Log(LogArgs),
    /// Queue a test of a commit by hand (a manual trigger); prints the task id.
    Submit(SubmitArgs),
    /// Queue a new task for the same repository and commit; prints its id.
    Rerun(TaskArg),
    /// Stop a pending or running task; prints the task as it is now.
    Abort(TaskArg),
    /// Release records, newest first.
    Releases(ReleasesArgs),
    /// Redeploy an earlier release (default: the one before the current
    /// release) and record a rollback; with --env, in that environment.
    Rollback(RollbackArgs),
    /// Ask for a release to be deployed to an environment.
    Deploy(crate::deploy::DeploymentArgs),
    /// Approve a waiting deployment (recorded with who and when).
    Approve(crate::deploy::DeploymentArgs),
    /// Reject a waiting deployment.
    Reject(crate::deploy::RejectArgs),
    /// Deployments, newest first: state, hosts, what each waits for.
    Deployments(crate::deploy::DeploymentsArgs),
    /// Tests that failed at least once, by flip rate: runs, failures, flips
    /// (commits on which the test both failed and passed), last seen.
    Flaky(FlakyArgs),
}

/// `baton flaky`.
#[derive(Debug, Args)]
pub struct FlakyArgs {
    /// Only tests of this repository (a URL, or a local path made absolute).
    #[arg(long, value_name = "REPO")]
    pub repo: Option<String>,

    /// At most this many tests.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

/// `baton releases`.
#[derive(Debug, Args)]
pub struct ReleasesArgs {
    /// Only releases of this repository (a URL, or a local path made absolute).
    #[arg(long, value_name = "REPO")]
    pub repo: Option<String>,
}

/// `baton rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The repository (a URL, or a local path made absolute).
    pub repo: String,

    /// The release to go back to: `r3` or `3`.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,

    /// The environment to roll back (for a repository with environments).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
}

/// `baton tasks`.
#[derive(Debug, Args)]
pub struct TasksArgs {
    /// Only tasks of this repository (a URL, or a local path made absolute).
    #[arg(long, value_name = "REPO")]
    pub repo: Option<String>,

    /// Only tasks in this state: pending, running, passed, failed, error or aborted.
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,

    /// At most this many tasks.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

/// `baton show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A task id (1 to 6 digits) or a commit (4 to 64 lowercase hex digits).
    #[arg(value_name = "ID|COMMIT")]
    pub target: String,

    /// Also list each test of the task's last run and its outcome, failures
    /// first (`tests` in `--json`).
    #[arg(long)]
    pub tests: bool,
}

/// `baton log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// The task's id.
    #[arg(value_name = "ID")]
    pub id: String,

    /// Keep streaming until the task ends; exit 0 only if it passed.
    #[arg(long, short)]
    pub follow: bool,
}

/// `baton submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The repository: a git URL, or a local path (a relative one is made absolute).
    #[arg(value_name = "REPO")]
    pub repo: String,

    /// The commit: its full id, or an unambiguous prefix of at least 4 hex
    /// digits (resolved by git in a local repository, else among the
    /// dispatcher's tasks of REPO).
    #[arg(value_name = "COMMIT")]
    pub commit: String,

    /// The branch the commit belongs to.
    #[arg(long, default_value = "main", value_name = "BRANCH")]
    pub branch: String,

    /// A label the runner must have; repeat for several.
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
}

/// `baton rerun` and `baton abort`.
#[derive(Debug, Args)]
pub struct TaskArg {
    /// The task's id.
    #[arg(value_name = "ID")]
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let before = Cli::try_parse_from(["baton", "--json", "--dispatcher", "h:1", "status"]).unwrap();
        let after = Cli::try_parse_from(["baton", "status", "--json", "--dispatcher", "h:1"]).unwrap();
        for cli in [before, after] {
            assert!(cli.json);
            assert_eq!(cli.dispatcher, "h:1");
        }
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["baton", "tasks"]).unwrap();
        let Command::Tasks(tasks) = cli.command else { panic!("not tasks: {cli:?}") };
        assert_eq!(tasks.limit, 20);
        let cli = Cli::try_parse_from(["baton", "submit", "r", "c", "--label", "a", "--label", "b"]).unwrap();
        let Command::Submit(submit) = cli.command else { panic!("not submit: {cli:?}") };
        assert_eq!(submit.branch, "main");
        assert_eq!(submit.labels, ["a", "b"]);
        assert!(Cli::try_parse_from(["baton", "tasks", "--limit", "0"]).is_err());
    }
}
