//! The observer's settings, resolved once at start-up: flags merged over the
//! optional TOML file, then validated, paths made absolute and durations
//! parsed.
//!
//! Everything a user can get wrong is refused here with a clear message, so
//! that the rest of the observer never meets an invalid repository, branch
//! pattern or name. Nothing here touches git or the network; whether a
//! repository can be read is a runtime question that scans answer (and retry).

mod file;
mod pattern;
mod schedule;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use protocol::{Name, RepoUrl};
use serde::Deserialize;

pub use self::file::FileConfig;
pub use self::pattern::BranchPattern;
pub use self::schedule::{parse_cron, Schedule};
use crate::cli::{Cli, LogFormat, ModeArg};

/// Everything `run` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the dispatcher, `host:port`.
    pub dispatcher: String,
    /// What makes the observer scan.
    pub trigger: Trigger,
    /// The repositories to observe, each with its own branches and mode.
    pub repos: Vec<RepoConfig>,
    /// The JSON file holding the cursors.
    pub state_file: PathBuf,
    /// On first sight of a branch, submit at most this many of its newest commits.
    pub initial: usize,
    /// Submit at most this many commits per branch and scan (the newest).
    pub max_new: usize,
    /// The shared secret's file, read at start-up by `run`.
    pub token_file: Option<PathBuf>,
    /// The CA of the dispatcher's TLS certificate; TLS is used when set.
    pub tls_ca: Option<PathBuf>,
    /// The name the dispatcher's certificate must carry, when not its host.
    pub tls_server_name: Option<String>,
    /// The name this observer gives in its hello.
    pub name: Name,
    /// Whether logs are JSON lines.
    pub log_json: bool,
    /// The webhook receiver, when `--webhook` is given.
    pub webhook: Option<WebhookConfig>,
    /// The `[[schedule]]` tables.
    pub schedules: Vec<Schedule>,
}

/// Where the webhook receiver listens and how it checks requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The address to listen on.
    pub addr: SocketAddr,
    /// The file holding the secret that forges sign with (required: an
    /// unsigned request is refused, on loopback too).
    pub secret_file: PathBuf,
}

/// What makes the observer scan its repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Scan (and fetch remote repositories) at this interval.
    Poll(Duration),
    /// Scan when a local repository's refs change, and at `safety_poll`.
    Watch {
        /// The slow poll that catches whatever notifications missed.
        safety_poll: Duration,
    },
}

/// How a log line shows it: `poll/5s`, `watch/60s` (the safety poll).
impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Poll(interval) => write!(f, "poll/{}", humantime::format_duration(*interval)),
            Trigger::Watch { safety_poll } => write!(f, "watch/{}", humantime::format_duration(*safety_poll)),
        }
    }
}

/// Which commits of a branch are submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every new commit, oldest first.
    Every,
    /// Only the newest commit.
    Latest,
}

/// One observed repository.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    /// Where the observer reads it.
    pub location: Location,
    /// The repository as sent to the dispatcher and keyed in the state file.
    pub id: RepoUrl,
    /// The branches to observe; empty means the repository's HEAD branch.
    pub branches: Vec<BranchPattern>,
    /// Which commits are submitted.
    pub mode: Mode,
    /// The name webhooks give this repository, when set in `[[repo]]`.
    pub webhook_name: Option<String>,
}

/// Where the observer reads a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A repository on this machine, opened directly (canonical path).
    Local(PathBuf),
    /// A repository fetched from `url` into the bare mirror `cache`.
    Remote {
        /// The URL fetched from.
        url: String,
        /// The bare mirror, `<cache-dir>/<hash of url>.git`.
        cache: PathBuf,
    },
}

impl Config {
    /// Merges the flags over the file (flags win), applies defaults and validates.
    ///
    /// # Errors
    /// Any invalid or contradictory setting, a repository that does not
    /// validate as a [`RepoUrl`], a local repository path that does not exist,
    /// a URL with `--watch`, or a repository listed twice.
    pub fn from_cli(cli: Cli, file: Option<FileConfig>) -> anyhow::Result<Config> {
        let file = file.unwrap_or_default();
        let duration = |flag: &str, value: Option<&String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => parse_duration(flag, text),
        };
        let trigger = if cli.poll.is_some() {
            Trigger::Poll(duration("--poll", cli.poll.as_ref(), Duration::ZERO)?)
        } else if cli.watch || (file.watch == Some(true) && file.poll.is_none()) {
            let safety = cli.safety_poll.as_ref().or(file.safety_poll.as_ref());
            Trigger::Watch { safety_poll: duration("--safety-poll", safety, Duration::from_secs(60))? }
        } else if file.watch == Some(true) {
            bail!("the config file sets both poll and watch: choose one");
        } else {
            Trigger::Poll(duration("--poll", file.poll.as_ref(), Duration::from_secs(5))?)
        };

        let state_file = match (cli.state_file, &file.state_file) {
            (Some(path), _) => path,
            (None, Some(path)) => file.path(path),
            (None, None) => PathBuf::from("baton-observer.state.json"),
        };
        let state_file = std::path::absolute(&state_file).context("resolving --state-file")?;
        let cache_dir = match (cli.cache_dir, &file.cache_dir) {
            (Some(path), _) => std::path::absolute(path).context("resolving --cache-dir")?,
            (None, Some(path)) => file.path(path),
            // `absolute` always yields a path with a parent.
            (None, None) => state_file.parent().unwrap_or(Path::new("/")).join("baton-observer-cache"),
        };

        let branches =
            if cli.branches.is_empty() { file.branch.clone().unwrap_or_default() } else { cli.branches };
        let branches = parse_patterns(&branches)?;
        let mode = cli.mode.map(Mode::from).or(file.mode).unwrap_or(Mode::Every);
        let clone_url = cli.clone_url.or(file.clone_url.clone());
        if clone_url.is_some() && cli.repos.len() != 1 {
            bail!("--clone-url names one repository: give exactly one REPO, or use [[repo]] entries in --config");
        }

        let watch = matches!(trigger, Trigger::Watch { .. });
        let mut repos = Vec::new();
        let cwd = std::env::current_dir().context("reading the working directory")?;
        for arg in &cli.repos {
            repos.push(repo(arg, &cwd, clone_url.as_deref(), branches.clone(), mode, &cache_dir, watch)?);
        }
        for entry in &file.repo {
            let entry_branches = match &entry.branches {
                Some(list) => parse_patterns(list)?,
                None => branches.clone(),
            };
            let entry_mode = entry.mode.unwrap_or(mode);
            let clone = entry.clone_url.as_deref();
            let mut resolved =
                repo(&entry.path, &file.base_dir, clone, entry_branches, entry_mode, &cache_dir, watch)?;
            if let Some(name) = &entry.webhook_name {
                if name.trim().is_empty() {
                    bail!("repository {}: webhook_name is empty", resolved.id);
                }
                resolved.webhook_name = Some(name.clone());
            }
            repos.push(resolved);
        }
        if repos.is_empty() {
            bail!("no repository to observe: give REPO arguments or [[repo]] entries in --config");
        }
        let mut seen = HashSet::new();
        for repo in &repos {
            if !seen.insert(repo.id.clone()) {
                bail!("repository {} is listed twice", repo.id);
            }
        }

        let name = cli.name.or(file.name.clone()).unwrap_or_else(|| "observer".into());
        let name = Name::new(name).map_err(anyhow::Error::msg).context("invalid --name")?;
        let max_new = cli.max_new.or(file.max_new).unwrap_or(1000);
        if max_new == 0 {
            bail!("--max-new must be at least 1");
        }
        let token_file = cli.token_file.or_else(|| file.token_file.as_ref().map(|path| file.path(path)));
        let tls_ca = cli.tls_ca.or_else(|| file.tls_ca.as_ref().map(|path| file.path(path)));
        let tls_server_name = cli.tls_server_name.or(file.tls_server_name.clone());
        let dispatcher =
            cli.dispatcher.or(file.dispatcher.clone()).unwrap_or_else(|| "127.0.0.1:8888".into());
        if protocol::peer::host_port(&dispatcher).is_none_or(|(_, port)| port == 0) {
            bail!("--dispatcher {dispatcher:?}: host:port is needed, e.g. 127.0.0.1:8888");
        }
        let schedules = schedule::resolve(&file.schedule, &file.base_dir, &repos)?;
        let webhook_secret_file =
            cli.webhook_secret_file.or_else(|| file.webhook_secret_file.as_ref().map(|path| file.path(path)));
        let webhook = match cli.webhook.or(file.webhook.clone()) {
            None if webhook_secret_file.is_some() => bail!("--webhook-secret-file needs --webhook ADDR"),
            None => None,
            Some(text) => Some(webhook_config(&text, webhook_secret_file)?),
        };
        Ok(Config {
            dispatcher,
            trigger,
            repos,
            state_file,
            initial: cli.initial.or(file.initial).unwrap_or(1),
            max_new,
            token_file,
            tls_ca,
            tls_server_name,
            name,
            log_json: cli.log_format.or(file.log_format) == Some(LogFormat::Json),
            webhook,
            schedules,
        })
    }
}

impl Mode {
    /// The lowercase name, as written in flags and files.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Every => "every",
            Mode::Latest => "latest",
        }
    }
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Mode {
        match mode {
            ModeArg::Every => Mode::Every,
            ModeArg::Latest => Mode::Latest,
        }
    }
}

fn parse_duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    let value = humantime::parse_duration(text).with_context(|| format!("invalid {flag} {text:?}"))?;
    if value.is_zero() {
        bail!("{flag} must be longer than zero");
    }
    Ok(value)
}

fn webhook_config(text: &str, secret_file: Option<PathBuf>) -> anyhow::Result<WebhookConfig> {
    let addr: SocketAddr = text.parse().with_context(|| {
        format!("--webhook {text:?}: an IP address and port is needed, e.g. 127.0.0.1:8090")
    })?;
    // Loopback is no exception: any local process, or a browser page
    // posting to localhost, could otherwise make the observer fetch at will.
    let Some(secret_file) = secret_file else {
        bail!(
            "--webhook {addr} needs --webhook-secret-file F: every webhook is checked against the \
             secret your forge signs with (unsigned requests get 401)"
        );
    };
    let secret_file = std::path::absolute(secret_file).context("resolving --webhook-secret-file")?;
    Ok(WebhookConfig { addr, secret_file })
}

fn parse_patterns(patterns: &[String]) -> anyhow::Result<Vec<BranchPattern>> {
    patterns.iter().map(|pattern| BranchPattern::new(pattern).map_err(anyhow::Error::msg)).collect()
}

/// Resolves one REPO argument (relative paths against `base`).
fn repo(
    arg: &str,
    base: &Path,
    clone_url: Option<&str>,
    branches: Vec<BranchPattern>,
    mode: Mode,
    cache_dir: &Path,
    watch: bool,
) -> anyhow::Result<RepoConfig> {
    let location = if is_url(arg) {
        if watch {
            bail!("--watch needs local repositories, and {arg:?} is a URL: use --poll for it");
        }
        RepoUrl::new(arg).map_err(anyhow::Error::msg)?;
        Location::Remote { url: arg.to_string(), cache: cache_dir.join(format!("{:016x}.git", fnv1a(arg))) }
    } else {
        let path = base.join(arg);
        let canonical = std::fs::canonicalize(&path)
            .with_context(|| format!("repository {} cannot be resolved", path.display()))?;
        // A directory that is no repository will not become one: refuse it
        // now rather than warn at every scan.
        if gix::open(&canonical).is_err() {
            bail!("repository {} is not a git repository", canonical.display());
        }
        Location::Local(canonical)
    };
    let id = match (clone_url, &location) {
        (Some(url), _) => url.to_string(),
        (None, Location::Remote { url, .. }) => url.clone(),
        (None, Location::Local(path)) => match path.to_str() {
            Some(text) => text.to_string(),
            None => bail!("repository path {} is not UTF-8", path.display()),
        },
    };
    let id = RepoUrl::new(id).map_err(anyhow::Error::msg)?;
    Ok(RepoConfig { location, id, branches, mode, webhook_name: None })
}

/// A URL with a scheme, or git's scp-like `host:path` (a colon before any slash).
pub(crate) fn is_url(arg: &str) -> bool {
    if arg.contains("://") {
        return true;
    }
    match arg.split_once(':') {
        Some((host, _)) => !host.is_empty() && !host.contains('/'),
        None => false,
    }
}

/// FNV-1a: a stable hash for naming cache folders (std's hasher may change
/// between Rust releases, which would orphan every cache).
fn fnv1a(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(std::iter::once("baton-observer").chain(args.iter().copied()))?;
        Config::from_cli(cli, None)
    }
    #[test]
    fn defaults_and_local_paths() {
        let dir = tempfile::tempdir().unwrap();
        gix::init(dir.path()).unwrap();
        let config = parse(&[dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(config.dispatcher, "127.0.0.1:8888");
        assert_eq!(config.trigger, Trigger::Poll(Duration::from_secs(5)));
        assert_eq!((config.initial, config.max_new), (1, 1000));
        let canonical = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(config.repos[0].location, Location::Local(canonical.clone()));
        assert_eq!(config.repos[0].id.as_str(), canonical.to_str().unwrap());
        assert_eq!(config.repos[0].mode, Mode::Every);
        assert!(config.state_file.is_absolute());
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let err = parse(&[path]).unwrap_err();
        assert!(format!("{err:#}").contains("not a git repository"), "{err:#}");
        gix::init(dir.path()).unwrap();
        assert!(parse(&["--dispatcher", "localhost", path]).is_err());
        assert!(parse(&["--dispatcher", "nonsense", path]).is_err());
        assert!(parse(&[]).is_err(), "no repository");
        assert!(parse(&["/does/not/exist/anywhere"]).is_err());
        assert!(parse(&["--watch", "https://example.com/app.git"]).is_err());
        assert!(parse(&["ext::sh -c x"]).is_err());
        assert!(parse(&["--poll", "soon", path]).is_err());
        assert!(parse(&["--clone-url", ";rm -rf /", path]).is_err());
        assert!(parse(&["--max-new", "0", path]).is_err());
        assert!(parse(&[path, path]).is_err(), "listed twice");
        let config = parse(&["--clone-url", "https://example.com/app.git", "--watch", path]).unwrap();
        assert_eq!(config.repos[0].id.as_str(), "https://example.com/app.git");
    }

    #[test]
    fn file_settings_and_flags_that_win() {
        let dir = tempfile::tempdir().unwrap();
        gix::init(dir.path().join("a")).unwrap();
        let file_path = dir.path().join("observer.toml");
        let text = r#"
            watch = true
            safety_poll = "30s"
            branch = ["main"]
            initial = 3
            state_file = "state.json"
            [[repo]]
            path = "a"
            branches = ["release/*"]
            mode = "latest"
            clone_url = "ssh://git@example.com/a.git"
            [[repo]]
            path = "git@example.com:b.git"
        "#;
        std::fs::write(&file_path, text).unwrap();
        let file = FileConfig::load(&file_path).unwrap();
        let cli = Cli::try_parse_from(["baton-observer", "--initial", "7", "--poll", "2s"]).unwrap();
        let config = Config::from_cli(cli, Some(file)).unwrap();
        assert_eq!(config.trigger, Trigger::Poll(Duration::from_secs(2)));
        assert_eq!(config.initial, 7);
        assert_eq!(config.state_file, dir.path().join("state.json"));
        assert_eq!(config.repos[0].id.as_str(), "ssh://git@example.com/a.git");
        assert_eq!(config.repos[0].mode, Mode::Latest);
        assert_eq!(config.repos[0].branches, [BranchPattern::new("release/*").unwrap()]);
        assert_eq!(config.repos[1].branches, [BranchPattern::new("main").unwrap()]);
        assert!(matches!(config.repos[1].location, Location::Remote { .. }));

        std::fs::write(&file_path, "colour = \"blue\"").unwrap();
        assert!(FileConfig::load(&file_path).is_err(), "unknown keys are refused");
    }

    #[test]
    fn a_webhook_needs_a_secret_file_even_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        gix::init(dir.path()).unwrap();
        let path = dir.path().to_str().unwrap();
        for addr in ["127.0.0.1:0", "[::1]:8090", "0.0.0.0:8090"] {
            let err = parse(&["--webhook", addr, path]).unwrap_err();
            assert!(format!("{err:#}").contains("needs --webhook-secret-file"), "{addr}: {err:#}");
        }
        let config = parse(&["--webhook", "0.0.0.0:8090", "--webhook-secret-file", "s", path]).unwrap();
        assert!(config.webhook.unwrap().secret_file.is_absolute());
        assert!(parse(&["--webhook", "localhost", "--webhook-secret-file", "s", path]).is_err());
        assert!(parse(&["--webhook-secret-file", "s", path]).is_err());
        assert!(parse(&[path]).unwrap().webhook.is_none(), "off by default");
    }

    #[test]
    fn schedules_name_an_observed_repository_and_a_valid_cron() {
        let dir = tempfile::tempdir().unwrap();
        gix::init(dir.path().join("a")).unwrap();
        let file_path = dir.path().join("observer.toml");
        let load = |schedule: &str| {
            let text = format!("[[repo]]\npath = \"a\"\nwebhook_name = \"acme/a\"\n{schedule}");
            std::fs::write(&file_path, text).unwrap();
            let file = FileConfig::load(&file_path).unwrap();
            Config::from_cli(Cli::try_parse_from(["baton-observer"]).unwrap(), Some(file))
        };
        let config =
            load("[[schedule]]\nrepo = \"a\"\nbranch = \"main\"\ncron = \"0 3 * * *\"\nlabels = [\"gpu\"]")
                .unwrap();
        assert_eq!(config.repos[0].webhook_name.as_deref(), Some("acme/a"));
        let schedule = &config.schedules[0];
        assert_eq!((&schedule.repo, schedule.branch.as_str()), (&config.repos[0].id, "main"));
        assert_eq!(schedule.key, format!("{} main 0 3 * * *", config.repos[0].id));
        let err =
            load("[[schedule]]\nname = \"nightly\"\nrepo = \"a\"\nbranch = \"main\"\ncron = \"0 25 * * *\"")
                .unwrap_err();
        assert!(format!("{err:#}").contains("schedule \"nightly\": invalid cron expression"), "{err:#}");
        let err = load("[[schedule]]\nrepo = \"b\"\nbranch = \"main\"\ncron = \"0 3 * * *\"").unwrap_err();
        assert!(format!("{err:#}").contains("is not one of the observed repositories"), "{err:#}");
    }
}
