//! Which command tests a checkout, and for how long it may run.
//!
//! First found wins: the tree's `.baton.toml` (`[test] command`, `timeout`),
//! then the runner's `--test-command`, then the original's default, unittest
//! discovery in `tests/`. A command string is configuration written by the
//! repository's or the runner's owner and runs through `sh -c`; the default
//! is an argument vector. Nothing received from the network is part of
//! either: the attempt's identity reaches the test only through environment
//! variables (see `exec`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// The repository's own configuration file, at the root of its tree.
pub const REPO_CONFIG: &str = ".baton.toml";

/// The original's test command: unittest discovery in `tests/`.
pub const DEFAULT_COMMAND: [&str; 6] = ["python3", "-m", "unittest", "discover", "-s", "tests"];

/// The largest `.baton.toml` read; anything bigger is a mistake.
const MAX_REPO_CONFIG: u64 = 64 * 1024;

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// A command line for `sh -c`.
    Shell(String),
    /// A program and its arguments, run directly.
    Argv(Vec<String>),
}

/// Where the command came from, for the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The tree's `.baton.toml`.
    Repository,
    /// The runner's `--test-command`.
    Runner,
    /// The built-in default.
    Default,
    /// A deploy step from the dispatcher's configuration.
    Dispatcher,
}

/// A resolved test command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCommand {
    /// What to run.
    pub program: Program,
    /// How long it may run before it is killed.
    pub timeout: Duration,
    /// Where it came from.
    pub source: Source,
}

/// Resolves the test command for the checkout in `tree`.
///
/// # Errors
/// An unreadable or invalid `.baton.toml`: the repository asked for something
/// the runner cannot honour, so running a fallback would be wrong.
pub fn resolve(
    tree: &Path,
    runner_command: Option<&str>,
    default_timeout: Duration,
) -> anyhow::Result<TestCommand> {
    let repo_test = read_repo_config(tree)?;
    let timeout = match repo_test.as_ref().and_then(|test| test.timeout.as_deref()) {
        Some(text) => {
            let timeout = humantime::parse_duration(text)
                .with_context(|| format!("invalid [test] timeout {text:?} in {REPO_CONFIG}"))?;
            if timeout.is_zero() {
                anyhow::bail!("invalid [test] timeout {text:?} in {REPO_CONFIG}: must be longer than zero");
            }
            timeout
        }
        None => default_timeout,
    };
    if let Some(command) = repo_test.and_then(|test| test.command) {
        if command.trim().is_empty() {
            anyhow::bail!("empty [test] command in {REPO_CONFIG}");
        }
        return Ok(TestCommand { program: Program::Shell(command), timeout, source: Source::Repository });
    }
    if let Some(command) = runner_command {
        return Ok(TestCommand {
            program: Program::Shell(command.to_string()),
            timeout,
            source: Source::Runner,
        });
    }
    let argv = DEFAULT_COMMAND.iter().map(|arg| arg.to_string()).chain(["-v".to_string()]).collect();
    Ok(TestCommand { program: Program::Argv(argv), timeout, source: Source::Default })
}

#[derive(Deserialize)]
struct RepoConfig {
    test: Option<RepoTest>,
}

/// The `[test]` table. `labels` is for the dispatcher's scheduling and is
/// accepted here without being used.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoTest {
    command: Option<String>,
    timeout: Option<String>,
    #[serde(rename = "labels")]
    _labels: Option<Vec<String>>,
}

fn read_repo_config(tree: &Path) -> anyhow::Result<Option<RepoTest>> {
    let path = tree.join(REPO_CONFIG);
    let bytes = match crate::bounded::read_at_most(&path, MAX_REPO_CONFIG) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => anyhow::bail!("{REPO_CONFIG} is larger than {MAX_REPO_CONFIG} bytes"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {REPO_CONFIG}")),
    };
    let text = String::from_utf8(bytes).with_context(|| format!("reading {REPO_CONFIG}: not UTF-8"))?;
    let config: RepoConfig = toml::from_str(&text).with_context(|| format!("invalid {REPO_CONFIG}"))?;
    Ok(config.test)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_MINUTES: Duration = Duration::from_secs(600);

    fn check(repo_config: Option<&str>, runner_command: Option<&str>) -> anyhow::Result<TestCommand> {
        let tree = tempfile::tempdir().unwrap();
        if let Some(text) = repo_config {
            std::fs::write(tree.path().join(REPO_CONFIG), text).unwrap();
        }
        resolve(tree.path(), runner_command, TEN_MINUTES)
    }

    #[test]
    fn a_config_linked_to_an_endless_file_is_refused() {
        let tree = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", tree.path().join(REPO_CONFIG)).unwrap();
        let err = resolve(tree.path(), None, TEN_MINUTES).unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
    }

    #[test]
    fn the_repository_wins() {
        let text = "[test]\ncommand = \"make test\"\ntimeout = \"90s\"\nlabels = [\"linux\"]\n";
        let command = check(Some(text), Some("cargo test")).unwrap();
        assert_eq!(
            command,
            TestCommand {
                program: Program::Shell("make test".into()),
                timeout: Duration::from_secs(90),
                source: Source::Repository
            }
        );
    }

    #[test]
    fn the_runner_command_comes_next_and_keeps_a_repository_timeout() {
        let command = check(Some("[test]\ntimeout = \"2m\"\n"), Some("cargo test")).unwrap();
        assert_eq!(command.program, Program::Shell("cargo test".into()));
        assert_eq!(command.timeout, Duration::from_secs(120));
        assert_eq!(command.source, Source::Runner);
        let command = check(Some("[deploy]\ncommand = \"x\"\n"), Some("cargo test")).unwrap();
        assert_eq!((command.source, command.timeout), (Source::Runner, TEN_MINUTES));
    }

    #[test]
    fn the_default_is_unittest_discovery() {
        let command = check(None, None).unwrap();
        let expected = ["python3", "-m", "unittest", "discover", "-s", "tests", "-v"];
        assert_eq!(command.program, Program::Argv(expected.iter().map(|arg| arg.to_string()).collect()));
        assert_eq!((command.source, command.timeout), (Source::Default, TEN_MINUTES));
    }

    #[test]
    fn bad_repository_configuration_is_an_error() {
        for bad in [
            "[test\ncommand = 1",
            "[test]\ncommand = 5\n",
            "[test]\ncommand = \"  \"\n",
            "[test]\ntimeout = \"soon\"\n",
            "[test]\ntimeout = \"0s\"\n",
            "[test]\ncomand = \"typo\"\n",
        ] {
            assert!(check(Some(bad), None).is_err(), "{bad:?} accepted");
        }
    }
}
