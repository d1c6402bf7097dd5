//! The runner's settings, merged from flags, environment and the config file,
//! validated and defaulted once.
//!
//! Precedence: a flag (or its `BATON_*` variable, which clap folds into the
//! flag) wins over the TOML file, which wins over the default. Relative paths
//! in the file are taken relative to the file's directory; relative paths on
//! the command line relative to the working directory. The token file is
//! only located here; `run` reads it, so that its warnings reach the log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use protocol::{Label, Name};
use serde::Deserialize;

use crate::cli::Cli;

/// Where the dispatcher listens unless told otherwise.
pub const DEFAULT_DISPATCHER: &str = "127.0.0.1:8888";

/// A test's time limit unless the repository or the flag says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Bytes of output kept per attempt unless told otherwise (64 MiB).
pub const DEFAULT_OUTPUT_CAP: u64 = 64 * 1024 * 1024;

/// The most slots a runner may offer; more is a typo, not a machine.
const MAX_SLOTS: u32 = 1024;

/// Everything the runner needs to know, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// The dispatcher's `host:port`.
    pub dispatcher: String,
    /// Root of the cache, spool and task trees (absolute).
    pub work_dir: PathBuf,
    /// The name this runner registers under.
    pub name: Name,
    /// Labels offered to the dispatcher's scheduling.
    pub labels: Vec<Label>,
    /// Tests run at once (at least 1).
    pub slots: u32,
    /// The shared secret's file, if the dispatcher wants one.
    pub token_file: Option<PathBuf>,
    /// The CA of the dispatcher's TLS certificate; TLS is on when set.
    pub tls_ca: Option<PathBuf>,
    /// Overrides the name checked against the dispatcher's certificate.
    pub tls_server_name: Option<String>,
    /// The runner's test command, for repositories without `.baton.toml`.
    pub test_command: Option<String>,
    /// A test's time limit, unless the repository sets one.
    pub timeout: Duration,
    /// After SIGTERM, how long running tests may go on before they are
    /// abandoned; `None` waits for them.
    pub drain_timeout: Option<Duration>,
    /// Bytes of output kept per attempt.
    pub output_cap: u64,
    /// Names of passed and skipped tests reported per task.
    pub max_test_names: usize,
    /// Log JSON lines instead of text.
    pub log_json: bool,
}

/// The `--config` file: the long flags' names in snake_case, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    dispatcher: Option<String>,
    work_dir: Option<PathBuf>,
    name: Option<String>,
    labels: Option<Vec<String>>,
    slots: Option<u32>,
    token_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_server_name: Option<String>,
    test_command: Option<String>,
    timeout: Option<String>,
    drain_timeout: Option<String>,
    output_cap: Option<u64>,
    max_test_names: Option<usize>,
    log_format: Option<String>,
}

/// Reads a `--config` TOML file (the defaults when there is none) and the
/// folder its relative paths are relative to.
///
/// # Errors
/// An unreadable or invalid file, naming it.
pub(crate) fn read_file<T: serde::de::DeserializeOwned + Default>(
    path: Option<&Path>,
) -> anyhow::Result<(T, PathBuf)> {
    let Some(path) = path else { return Ok((T::default(), PathBuf::new())) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    let file = toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    Ok((file, path.parent().map(Path::to_path_buf).unwrap_or_default()))
}

impl Config {
    /// Merges the command line with the file it names, applies defaults and
    /// validates everything.
    ///
    /// # Errors
    /// An unreadable or invalid config file, a missing work directory, or any
    /// invalid value, with the setting's name in the message.
    pub fn from_cli(cli: Cli) -> anyhow::Result<Config> {
        let (file, file_dir): (FileConfig, PathBuf) = read_file(cli.config.as_deref())?;
        let from_file = |path: PathBuf| file_dir.join(path);

        let dispatcher = cli.dispatcher.or(file.dispatcher).unwrap_or_else(|| DEFAULT_DISPATCHER.to_string());
        check_address(&dispatcher)?;
        let work_dir = cli
            .work_dir
            .or(file.work_dir.map(from_file))
            .context("--work-dir is required (or work_dir in the config file)")?;
        let work_dir = std::path::absolute(&work_dir)
            .with_context(|| format!("resolving work directory {}", work_dir.display()))?;
        let name = match cli.name.or(file.name) {
            Some(name) => Name::new(name).map_err(|err| anyhow::anyhow!("--name: {err}"))?,
            None => default_name(),
        };
        let labels = cli
            .labels
            .or(file.labels)
            .unwrap_or_default()
            .into_iter()
            .filter(|label| !label.is_empty())
            .map(|label| Label::new(label).map_err(|err| anyhow::anyhow!("--labels: {err}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let slots = cli.slots.or(file.slots).unwrap_or(1);
        if !(1..=MAX_SLOTS).contains(&slots) {
            anyhow::bail!("--slots must be between 1 and {MAX_SLOTS}, got {slots}");
        }
        let token_file = cli.token_file.or(file.token_file.map(from_file));
        let tls_ca = cli.tls_ca.or(file.tls_ca.map(from_file));
        let tls_server_name = cli.tls_server_name.or(file.tls_server_name);
        let test_command =
            cli.test_command.or(file.test_command).filter(|command| !command.trim().is_empty());
        let timeout = match cli.timeout.or(file.timeout) {
            Some(text) => parse_duration("--timeout", &text)?,
            None => DEFAULT_TIMEOUT,
        };
        let drain_timeout = cli
            .drain_timeout
            .or(file.drain_timeout)
            .map(|text| parse_duration("--drain-timeout", &text))
            .transpose()?;
        let output_cap = cli.output_cap.or(file.output_cap).unwrap_or(DEFAULT_OUTPUT_CAP);
        let max_test_names =
            cli.max_test_names.or(file.max_test_names).unwrap_or(crate::outcomes::DEFAULT_MAX_NAMES);
        let log_json = match cli.log_format.or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => anyhow::bail!("--log-format must be text or json, got {other:?}"),
        };
        Ok(Config {
            dispatcher,
            work_dir,
            name,
            labels,
            slots,
            token_file,
            tls_ca,
            tls_server_name,
            test_command,
            timeout,
            drain_timeout,
            output_cap,
            max_test_names,
            log_json,
        })
    }
}

pub(crate) fn parse_duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    let duration =
        humantime::parse_duration(text).with_context(|| format!("{flag}: invalid duration {text:?}"))?;
    if duration.is_zero() {
        anyhow::bail!("{flag} must be longer than zero");
    }
    Ok(duration)
}

pub(crate) fn check_address(address: &str) -> anyhow::Result<()> {
    match protocol::peer::host_port(address) {
        Some((_, port)) if port != 0 => Ok(()),
        _ => anyhow::bail!("--dispatcher {address:?}: host:port is needed, e.g. 127.0.0.1:8888"),
    }
}

/// The host name, made into a valid [`Name`], or `runner`.
fn default_name() -> Name {
    let fallback = || Name::new("runner").expect("\"runner\" is a valid name");
    hostname().and_then(|host| sanitise_name(&host)).unwrap_or_else(fallback)
}

fn sanitise_name(text: &str) -> Option<Name> {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    let trimmed: String = cleaned.trim_start_matches(['-', '.']).chars().take(64).collect();
    Name::new(trimmed).ok()
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|byte| *byte == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..len].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(std::iter::once("baton-runner").chain(args.iter().copied()))?;
        Config::from_cli(cli)
    }

    #[test]
    fn defaults() {
        let config = parse(&["--work-dir", "/var/lib/baton"]).unwrap();
        assert_eq!(config.dispatcher, DEFAULT_DISPATCHER);
        assert_eq!(config.work_dir, PathBuf::from("/var/lib/baton"));
        assert_eq!(config.slots, 1);
        assert_eq!(config.timeout, DEFAULT_TIMEOUT);
        assert_eq!(config.drain_timeout, None);
        assert_eq!(config.output_cap, DEFAULT_OUTPUT_CAP);
        assert!(config.labels.is_empty() && config.test_command.is_none() && !config.log_json);
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner.toml");
        std::fs::write(
            &path,
            "dispatcher = \"ci.example.com:9000\"\nwork_dir = \"work\"\nname = \"from-file\"\n\
             labels = [\"linux\", \"x86\"]\nslots = 4\ntimeout = \"2m\"\ndrain_timeout = \"30s\"\n\
             token_file = \"token\"\nlog_format = \"json\"\noutput_cap = 1000\n",
        )
        .unwrap();
        let config =
            parse(&["--config", path.to_str().unwrap(), "--slots", "2", "--labels", "gpu,linux"]).unwrap();
        assert_eq!(config.dispatcher, "ci.example.com:9000");
        assert_eq!(config.work_dir, dir.path().join("work"));
        assert_eq!(config.name.as_str(), "from-file");
        let labels: Vec<&str> = config.labels.iter().map(Label::as_str).collect();
        assert_eq!(labels, ["gpu", "linux"]);
        assert_eq!(config.slots, 2);
        assert_eq!(config.timeout, Duration::from_secs(120));
        assert_eq!(config.drain_timeout, Some(Duration::from_secs(30)));
        assert_eq!(config.token_file, Some(dir.path().join("token")));
        assert_eq!(config.output_cap, 1000);
        assert!(config.log_json);
    }

    #[test]
    fn invalid_settings_are_refused() {
        for args in [
            &["--slots", "1"][..],
            &["--work-dir", "/w", "--slots", "0"],
            &["--work-dir", "/w", "--name", "a b"],
            &["--work-dir", "/w", "--labels", "ok,;rm"],
            &["--work-dir", "/w", "--timeout", "soon"],
            &["--work-dir", "/w", "--drain-timeout", "0s"],
            &["--work-dir", "/w", "--dispatcher", "nohost"],
            &["--work-dir", "/w", "--dispatcher", "localhost"],
            &["--work-dir", "/w", "--log-format", "xml"],
        ] {
            assert!(parse(args).is_err(), "{args:?} accepted");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "work_dir = \"/w\"\nslot = 3\n").unwrap();
        assert!(parse(&["--config", path.to_str().unwrap()]).is_err(), "unknown key accepted");
    }

    #[test]
    fn host_names_become_valid_names() {
        assert_eq!(sanitise_name("build-01.example.com").unwrap().as_str(), "build-01.example.com");
        assert_eq!(sanitise_name("my host!").unwrap().as_str(), "my-host-");
        assert_eq!(sanitise_name("-.x").unwrap().as_str(), "x");
        assert!(sanitise_name("").is_none());
        assert_eq!(sanitise_name(&"h".repeat(100)).unwrap().as_str().len(), 64);
        assert!(Name::new(default_name().as_str()).is_ok());
    }
}
