//! The dispatcher's resolved configuration: flags over the TOML file over
//! defaults, validated once. Nothing after `main` sees the raw [`Cli`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use protocol::message::DeployStep;
use protocol::{Branch, Name, NotificationEvent, RepoUrl};

use crate::cli::Cli;
use crate::scheduler::Settings;
use crate::store::Sync;
use crate::users::{UserFile, Users};

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub token_file: Option<PathBuf>,
    /// Certificate chain and key for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub settings: Settings,
    pub sync: Sync,
    pub log_json: bool,
    /// Where the web report service listens; `None` when it is off.
    pub http: Option<Http>,
    /// The `[[user]]` tables: people and their roles (empty: none).
    pub users: std::sync::Arc<Users>,
}

/// The web report service's address.
#[derive(Clone, Debug)]
pub struct Http {
    pub addr: String,
    /// Given by the user (flag, variable or file): failing to bind it stops
    /// the dispatcher. The default address, when taken, only disables the
    /// web service with a warning.
    pub explicit: bool,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    heartbeat_interval: Option<String>,
    heartbeat_misses: Option<u32>,
    max_attempts: Option<u32>,
    output_cap: Option<u64>,
    sync: Option<String>,
    log_format: Option<String>,
    http: Option<String>,
    /// Branches whose passed commits become releases, unless a `[[repo]]`
    /// says otherwise (default: main and master).
    release_branches: Option<Vec<String>>,
    #[serde(default)]
    repo: Vec<RepoFile>,
    #[serde(default)]
    notifier: Vec<NotifierFile>,
    #[serde(default)]
    user: Vec<UserFile>,
}

/// A `[[repo]]` table: release and deploy settings of one repository.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoFile {
    url: String,
    release_branches: Option<Vec<String>>,
    pre_deploy: Option<String>,
    deploy: Option<String>,
    post_deploy: Option<String>,
    #[serde(default)]
    auto_rollback: bool,
}

/// A `[[notifier]]` table: a command (argument vector, the event as JSON on
/// stdin) or a URL (HTTP POST of the event), and the events it wants.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifierFile {
    /// Required when there are several: queued events point at it, so
    /// reordering the notifiers sends nothing to the wrong one.
    name: Option<String>,
    command: Option<Vec<String>>,
    url: Option<String>,
    events: Option<Vec<String>>,
}

/// Release and deploy settings.
#[derive(Clone, Debug)]
pub struct Releases {
    pub default_branches: Vec<Branch>,
    pub repos: Vec<RepoSettings>,
}

impl Default for Releases {
    fn default() -> Releases {
        let branches =
            ["main", "master"].iter().map(|b| Branch::new(*b).expect("valid branch names")).collect();
        Releases { default_branches: branches, repos: Vec::new() }
    }
}

impl Releases {
    /// The settings of one repository, if it has a `[[repo]]` table.
    pub fn repo(&self, repo: &RepoUrl) -> Option<&RepoSettings> {
        self.repos.iter().find(|settings| &settings.url == repo)
    }

    /// Whether a passed commit of this branch becomes a release.
    pub fn is_release_branch(&self, repo: &RepoUrl, branch: &Branch) -> bool {
        let branches =
            self.repo(repo).and_then(|s| s.release_branches.as_ref()).unwrap_or(&self.default_branches);
        branches.contains(branch)
    }
}

/// One repository's release settings.
#[derive(Clone, Debug)]
pub struct RepoSettings {
    pub url: RepoUrl,
    pub release_branches: Option<Vec<Branch>>,
    /// `pre_deploy`, `deploy`, `post_deploy`, those configured, in order.
    pub steps: Vec<DeployStep>,
    pub auto_rollback: bool,
}

/// Where a notifier sends events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifierTarget {
    /// Run this program with these arguments, the event on stdin.
    Command(Vec<String>),
    /// POST the event as JSON.
    Url(String),
}

/// A notifier and the events it wants (all when `None`).
#[derive(Clone, Debug)]
pub struct Notifier {
    /// Its stable name; outbox rows point at it.
    pub name: Name,
    pub target: NotifierTarget,
    pub events: Option<Vec<NotificationEvent>>,
}

/// The name of a notifier that is alone in the config file and unnamed.
pub const DEFAULT_NOTIFIER: &str = "default";

impl Notifier {
    /// Whether this notifier wants `event`.
    pub fn wants(&self, event: NotificationEvent) -> bool {
        self.events.as_ref().is_none_or(|events| events.contains(&event))
    }
}

impl Config {
    /// Merges flags (and environment) over the config file over defaults.
    ///
    /// # Errors
    /// An unreadable or invalid config file, or an invalid value.
    pub fn from_cli(cli: Cli) -> anyhow::Result<Config> {
        let file = match &cli.config {
            Some(path) => {
                // Relative paths in the file are taken from the file's folder,
                // as the runner and observer do (under systemd the working
                // directory is `/`).
                let mut file = read_file(path)?;
                let base = path.parent().unwrap_or(Path::new("."));
                for relative in
                    [&mut file.data_dir, &mut file.token_file, &mut file.tls_cert, &mut file.tls_key]
                {
                    if let Some(value) = relative.as_mut().filter(|value| value.is_relative()) {
                        *value = base.join(&*value);
                    }
                }
                file
            }
            None => FileConfig::default(),
        };
        let interval_text = cli.heartbeat_interval.or(file.heartbeat_interval).unwrap_or_else(|| "1s".into());
        let heartbeat_interval = parse_duration(&interval_text, "heartbeat-interval")?;
        let heartbeat_misses = cli.heartbeat_misses.or(file.heartbeat_misses).unwrap_or(3);
        let max_attempts = cli.max_attempts.or(file.max_attempts).unwrap_or(3);
        anyhow::ensure!(heartbeat_misses >= 1, "--heartbeat-misses must be at least 1");
        anyhow::ensure!(max_attempts >= 1, "--max-attempts must be at least 1");
        let sync = match cli.sync.or(file.sync).as_deref().unwrap_or("full") {
            "full" => Sync::Full,
            "normal" => Sync::Normal,
            other => anyhow::bail!("invalid --sync {other:?}: expected full or normal"),
        };
        let tls = match (cli.tls_cert.or(file.tls_cert), cli.tls_key.or(file.tls_key)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let releases = releases(file.release_branches, file.repo)?;
        let notifiers = notifiers(file.notifier)?;
        let users = Users::from_files(file.user)?;
        let listen = cli.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8888".into());
        anyhow::ensure!(
            protocol::peer::host_port(&listen).is_some(),
            "--listen {listen:?}: host:port is needed, e.g. 127.0.0.1:8888 (port 0 picks a free port)"
        );
        let http = match cli.http.or(file.http) {
            Some(addr) if addr == "off" => None,
            Some(addr) => {
                anyhow::ensure!(
                    protocol::peer::host_port(&addr).is_some(),
                    "--http {addr:?}: host:port or off is needed, e.g. 127.0.0.1:8080"
                );
                Some(Http { addr, explicit: true })
            }
            None => Some(Http { addr: "127.0.0.1:8080".into(), explicit: false }),
        };
        Ok(Config {
            users: std::sync::Arc::new(users),
            http,
            tls,
            listen,
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("baton-data")),
            token_file: cli.token_file.or(file.token_file),
            settings: Settings {
                heartbeat_interval,
                heartbeat_misses,
                max_attempts,
                output_cap: cli.output_cap.or(file.output_cap).unwrap_or(64 * 1024 * 1024),
                releases,
                notifiers: std::sync::Arc::new(notifiers),
            },
            sync,
            log_json: parse_log_format(cli.log_format.or(file.log_format).as_deref())?,
        })
    }
}

fn branches(names: Vec<String>) -> anyhow::Result<Vec<Branch>> {
    names.into_iter().map(|name| Branch::new(name).map_err(anyhow::Error::msg)).collect()
}

fn releases(default: Option<Vec<String>>, repos: Vec<RepoFile>) -> anyhow::Result<Releases> {
    let mut releases = Releases::default();
    if let Some(names) = default {
        releases.default_branches = branches(names).context("release_branches")?;
    }
    for repo in repos {
        let url = RepoUrl::new(repo.url).map_err(anyhow::Error::msg).context("[[repo]] url")?;
        let mut steps = Vec::new();
        for (name, command) in
            [("pre_deploy", repo.pre_deploy), ("deploy", repo.deploy), ("post_deploy", repo.post_deploy)]
        {
            if let Some(command) = command {
                anyhow::ensure!(!command.trim().is_empty(), "[[repo]] {url}: {name} is empty");
                steps.push(DeployStep { name: name.to_string(), command });
            }
        }
        anyhow::ensure!(
            !repo.auto_rollback || steps.iter().any(|step| step.name == "post_deploy"),
            "[[repo]] {url}: auto_rollback needs a post_deploy step to decide when to roll back"
        );
        let release_branches = repo.release_branches.map(branches).transpose().context("release_branches")?;
        releases.repos.push(RepoSettings { url, release_branches, steps, auto_rollback: repo.auto_rollback });
    }
    Ok(releases)
}

/// The `[[notifier]]` tables: each named (a single one may go unnamed), no
/// name twice.
fn notifiers(files: Vec<NotifierFile>) -> anyhow::Result<Vec<Notifier>> {
    let alone = files.len() == 1;
    let mut notifiers: Vec<Notifier> = Vec::with_capacity(files.len());
    for file in files {
        let name = match (&file.name, alone) {
            (Some(name), _) => Name::new(name.as_str()).map_err(|err| anyhow::anyhow!("notifier {err}"))?,
            (None, true) => Name::new(DEFAULT_NOTIFIER).expect("the default notifier name is valid"),
            (None, false) => anyhow::bail!("with several [[notifier]] tables, each needs a name = \"...\""),
        };
        anyhow::ensure!(notifiers.iter().all(|other| other.name != name), "two notifiers are named {name}");
        notifiers.push(notifier(name, file)?);
    }
    Ok(notifiers)
}

fn notifier(name: Name, file: NotifierFile) -> anyhow::Result<Notifier> {
    let target = match (file.command, file.url) {
        (Some(command), None) if !command.is_empty() => NotifierTarget::Command(command),
        (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
            NotifierTarget::Url(url)
        }
        _ => anyhow::bail!(
            "a [[notifier]] needs either command = [\"program\", ...] or url = \"http(s)://...\""
        ),
    };
    let events = file
        .events
        .map(|events| {
            events.iter().map(|event| event.parse::<NotificationEvent>()).collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|err| anyhow::anyhow!("notifier {name}: {err}"))?;
    Ok(Notifier { name, target, events })
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

/// Parses a humantime duration ("1s", "250ms", "10m"), which must be > 0.
///
/// # Errors
/// Unparsable or zero durations.
pub fn parse_duration(text: &str, flag: &str) -> anyhow::Result<Duration> {
    let duration = humantime::parse_duration(text).with_context(|| format!("invalid --{flag} {text:?}"))?;
    anyhow::ensure!(!duration.is_zero(), "--{flag} must be longer than zero");
    Ok(duration)
}

fn parse_log_format(value: Option<&str>) -> anyhow::Result<bool> {
    match value.unwrap_or("text") {
        "text" => Ok(false),
        "json" => Ok(true),
        other => anyhow::bail!("invalid --log-format {other:?}: expected text or json"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("baton-dispatcher").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_match_the_spec() {
        let config = Config::from_cli(cli(&[])).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8888");
        assert_eq!(config.settings.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(config.settings.heartbeat_misses, 3);
        assert_eq!(config.settings.max_attempts, 3);
        assert_eq!(config.sync, Sync::Full);
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(&path, "heartbeat_interval = \"2s\"\nmax_attempts = 5\nlisten = \"0.0.0.0:1\"\n")
            .unwrap();
        let path_text = path.to_str().unwrap();
        let config = Config::from_cli(cli(&["--config", path_text, "--max-attempts", "7"])).unwrap();
        assert_eq!(config.settings.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(config.settings.max_attempts, 7);
        assert_eq!(config.listen, "0.0.0.0:1");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = Config::from_cli(cli(&["--heartbeat-interval", "soon"])).unwrap_err();
        assert!(format!("{err:#}").contains("invalid --heartbeat-interval"), "{err:#}");
        // clap lists the values of the flag; the file's value is checked here.
        assert!(Cli::try_parse_from(["baton-dispatcher", "--sync", "maybe"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatcher.toml");
        std::fs::write(&path, "sync = \"maybe\"\n").unwrap();
        let err = Config::from_cli(cli(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(format!("{err:#}").contains("expected full or normal"), "{err:#}");
        let err = Config::from_cli(cli(&["--listen", "localhost"])).unwrap_err();
        assert!(format!("{err:#}").contains("host:port is needed"), "{err:#}");
    }

    /// Notifiers from a config file's text.
    fn notifiers_of(text: &str) -> anyhow::Result<Vec<Notifier>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(&path, text).unwrap();
        Config::from_cli(cli(&["--config", path.to_str().unwrap()])).map(|c| c.settings.notifiers.to_vec())
    }

    #[test]
    fn notifiers_have_stable_names() {
        let alone = notifiers_of("[[notifier]]\nurl = \"http://h/\"\n").unwrap();
        assert_eq!(alone[0].name.as_str(), DEFAULT_NOTIFIER);
        let named = notifiers_of(
            "[[notifier]]\nname = \"chat\"\ncommand = [\"c\"]\nevents = [\"task_failed\"]\n\n\
             [[notifier]]\nname = \"hook\"\nurl = \"http://h/\"\n",
        )
        .unwrap();
        let names: Vec<&str> = named.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["chat", "hook"]);
        assert!(
            named[0].wants(NotificationEvent::TaskFailed) && !named[0].wants(NotificationEvent::Rollback)
        );
        let err = notifiers_of("[[notifier]]\nurl = \"http://a/\"\n[[notifier]]\nurl = \"http://b/\"\n");
        assert!(format!("{:#}", err.unwrap_err()).contains("each needs a name"));
        let err = notifiers_of(
            "[[notifier]]\nname = \"x\"\nurl = \"http://a/\"\n[[notifier]]\nname = \"x\"\nurl = \"http://b/\"\n",
        );
        assert!(format!("{:#}", err.unwrap_err()).contains("two notifiers are named x"));
        let err = notifiers_of("[[notifier]]\nurl = \"http://a/\"\nevents = [\"roll_back\"]\n");
        assert!(format!("{:#}", err.unwrap_err()).contains("unknown notification event \"roll_back\""));
    }
}
