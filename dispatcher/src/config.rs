//! The dispatcher's resolved configuration: flags over the TOML file over
//! defaults, validated once. Nothing after `main` sees the raw [`Cli`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use protocol::message::DeployStep;
use protocol::{Branch, Label, Name, NotificationEvent, RepoUrl};

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
    /// The web report's address as users reach it (links in commit
    /// statuses), without a trailing `/`; `None`: `http://` and the address
    /// `--http` bound.
    pub public_url: Option<String>,
    /// What the background pruner removes (`retention`).
    pub retention: crate::retention::Retention,
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
/// The most retries of a failed task: more is a typo, not a policy.
const MAX_RETRY_FAILED: u32 = 100;

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
    retry_failed: Option<u32>,
    output_cap: Option<u64>,
    sync: Option<String>,
    log_format: Option<String>,
    http: Option<String>,
    public_url: Option<String>,
    keep_logs: Option<String>,
    keep_tasks: Option<u32>,
    prune_interval: Option<String>,
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
    /// The repository's path on the forge (`owner/name`, or GitLab's
    /// `group/.../project` or numeric id), for commit statuses; derived from
    /// `url` when it is a forge URL.
    forge_repo: Option<String>,
    /// `[[repo.environment]]` tables, in order (SPEC §12).
    #[serde(default)]
    environment: Vec<EnvironmentFile>,
}

/// A `[[repo.environment]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentFile {
    name: String,
    labels: Vec<String>,
    #[serde(default)]
    auto: bool,
    after: Option<String>,
    #[serde(default)]
    approval: ApprovalFile,
    canary: Option<CanaryFile>,
    #[serde(default)]
    needs: Vec<NeedFile>,
    /// Default: the repository's `auto_rollback`.
    auto_rollback: Option<bool>,
}

/// `approval = true | false | "other"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ApprovalFile {
    Flag(bool),
    Word(String),
}

impl Default for ApprovalFile {
    fn default() -> ApprovalFile {
        ApprovalFile::Flag(false)
    }
}

/// `canary = N` or `canary = "N%"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CanaryFile {
    Hosts(i64),
    Text(String),
}

/// `needs = [{ repo = "...", environment = "..." }]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NeedFile {
    repo: String,
    environment: String,
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
    /// A commit status notifier: `github`, `gitea` or `gitlab`.
    status: Option<String>,
    /// The forge's API base URL (`https://api.github.com`,
    /// `https://gitea.example/api/v1`, `https://gitlab.example/api/v4`).
    api: Option<String>,
    /// File holding the forge's API token.
    token_file: Option<PathBuf>,
    /// The status's name on the forge [default: baton].
    context: Option<String>,
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
    /// The repository's path on the forge, when given.
    pub forge_repo: Option<String>,
    /// Its environments, in the config's order; empty means today's single
    /// deploy task per release on any runner labelled `deploy`.
    pub environments: Vec<Environment>,
}

impl RepoSettings {
    /// One environment by name.
    pub fn environment(&self, name: &Name) -> Option<&Environment> {
        self.environments.iter().find(|env| &env.name == name)
    }
}

/// One environment of a repository (SPEC §12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment {
    pub name: Name,
    /// Each connected runner with all these labels is one host.
    pub labels: Vec<Label>,
    /// A new release is deployed here at once (after the waits below).
    pub auto: bool,
    /// Only releases deployed in this environment first.
    pub after: Option<Name>,
    pub approval: Approval,
    pub canary: Canary,
    /// Each of these repositories must have a release deployed in the
    /// named environment.
    pub needs: Vec<Need>,
    /// A failed deployment redeploys the environment's previous good
    /// release on the hosts it touched.
    pub auto_rollback: bool,
}

/// Who must approve a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    None,
    /// Anyone who may steer.
    Anyone,
    /// Anyone who may steer except the one who asked for the deployment.
    Other,
}

/// How many hosts get a release first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canary {
    None,
    Hosts(u32),
    /// A share of the hosts, rounded up: at least one.
    Percent(u32),
}

impl Canary {
    /// How many of `n_hosts` hosts are canaries; 0 when there is no gray
    /// stage (no canary, or the canaries would be every host).
    pub fn of(self, n_hosts: usize) -> usize {
        let n = match self {
            Canary::None => 0,
            Canary::Hosts(n) => n as usize,
            Canary::Percent(percent) => (n_hosts * percent as usize).div_ceil(100),
        };
        if n >= n_hosts {
            0
        } else {
            n
        }
    }
}

/// A repository that must have a release deployed in an environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub repo: RepoUrl,
    pub environment: Name,
}

/// Where a notifier sends events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifierTarget {
    /// Run this program with these arguments, the event on stdin.
    Command(Vec<String>),
    /// POST the event as JSON.
    Url(String),
    /// Post commit statuses to a forge.
    Status(StatusTarget),
}

/// A forge whose commit status API a notifier posts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    Github,
    Gitea,
    Gitlab,
}

/// Where and how a status notifier posts.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusTarget {
    pub forge: Forge,
    /// The API's base URL, without a trailing `/`.
    pub api: String,
    /// The API token (read from `token_file` at start-up).
    pub token: String,
    /// The status's name on the forge.
    pub context: String,
}

impl std::fmt::Debug for StatusTarget {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusTarget")
            .field("forge", &self.forge)
            .field("api", &self.api)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
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
    /// Whether this notifier wants `event`: a status notifier the starts
    /// and ends of tests, any other the events it lists, or, listing none,
    /// every event but those two (one per task would drown a chat).
    pub fn wants(&self, event: NotificationEvent) -> bool {
        let per_task = matches!(event, NotificationEvent::TaskStarted | NotificationEvent::TaskFinished);
        match (&self.target, &self.events) {
            (NotifierTarget::Status(_), _) => per_task,
            (_, Some(events)) => events.contains(&event),
            (_, None) => !per_task,
        }
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
        let base = cli.config.as_deref().and_then(Path::parent).unwrap_or(Path::new(".")).to_path_buf();
        let notifiers = notifiers(file.notifier, &base)?;
        let users = Users::from_files(file.user)?;
        let public_url = match cli.public_url.or(file.public_url) {
            Some(url) => {
                anyhow::ensure!(is_http_url(&url), "--public-url {url:?}: an http(s):// URL is needed");
                Some(url.trim_end_matches('/').to_string())
            }
            None => None,
        };
        let retention = crate::retention::Retention {
            keep_logs: cli
                .keep_logs
                .or(file.keep_logs)
                .map(|text| parse_duration(&text, "keep-logs"))
                .transpose()?,
            keep_tasks: cli.keep_tasks.or(file.keep_tasks),
            interval: parse_duration(
                &cli.prune_interval.or(file.prune_interval).unwrap_or_else(|| "1m".into()),
                "prune-interval",
            )?,
        };
        anyhow::ensure!(retention.keep_tasks != Some(0), "--keep-tasks must be at least 1");
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
            public_url,
            retention,
            tls,
            listen,
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("baton-data")),
            token_file: cli.token_file.or(file.token_file),
            settings: Settings {
                heartbeat_interval,
                heartbeat_misses,
                max_attempts,
                retry_failed: cli.retry_failed.or(file.retry_failed).unwrap_or(0).min(MAX_RETRY_FAILED),
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
        if let Some(path) = &repo.forge_repo {
            anyhow::ensure!(
                crate::notify::status::valid_forge_repo(path),
                "[[repo]] {url}: forge_repo {path:?} is not a path like owner/name"
            );
        }
        let environments = repo
            .environment
            .into_iter()
            .map(|env| environment(&url, env, repo.auto_rollback))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            environments.is_empty() || steps.iter().any(|step| step.name == "deploy"),
            "[[repo]] {url}: environments need a deploy step"
        );
        anyhow::ensure!(
            releases.repos.iter().all(|other| other.url != url),
            "[[repo]] {url} is configured twice"
        );
        releases.repos.push(RepoSettings {
            url,
            release_branches,
            steps,
            auto_rollback: repo.auto_rollback,
            forge_repo: repo.forge_repo,
            environments,
        });
    }
    check_environments(&releases.repos)?;
    Ok(releases)
}

fn environment(url: &RepoUrl, file: EnvironmentFile, auto_rollback: bool) -> anyhow::Result<Environment> {
    let what = format!("[[repo.environment]] {:?} of {url}", file.name);
    let name = Name::new(file.name.as_str()).map_err(|err| anyhow::anyhow!("{what}: name {err}"))?;
    anyhow::ensure!(!file.labels.is_empty(), "{what}: labels must name at least one runner label");
    let labels = file
        .labels
        .into_iter()
        .map(|label| Label::new(label).map_err(|err| anyhow::anyhow!("{what}: label {err}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let after = file
        .after
        .map(|after| Name::new(after).map_err(|err| anyhow::anyhow!("{what}: after {err}")))
        .transpose()?;
    let approval = match file.approval {
        ApprovalFile::Flag(false) => Approval::None,
        ApprovalFile::Flag(true) => Approval::Anyone,
        ApprovalFile::Word(word) if word == "other" => Approval::Other,
        ApprovalFile::Word(word) => {
            anyhow::bail!("{what}: approval {word:?}: expected true, false or \"other\"")
        }
    };
    let canary = match file.canary {
        None => Canary::None,
        Some(CanaryFile::Hosts(n)) => {
            anyhow::ensure!(
                (1..=10_000).contains(&n),
                "{what}: canary = {n}: expected a number of hosts from 1, or a share such as \"10%\""
            );
            Canary::Hosts(n as u32)
        }
        Some(CanaryFile::Text(text)) => {
            let percent = text.strip_suffix('%').and_then(|n| n.trim().parse::<u32>().ok());
            match percent {
                Some(percent) if (1..=99).contains(&percent) => Canary::Percent(percent),
                _ => anyhow::bail!(
                    "{what}: canary = {text:?}: expected a share of the hosts from \"1%\" to \"99%\", or a number"
                ),
            }
        }
    };
    let needs = file
        .needs
        .into_iter()
        .map(|need| {
            Ok(Need {
                repo: RepoUrl::new(need.repo).map_err(|err| anyhow::anyhow!("{what}: needs repo {err}"))?,
                environment: Name::new(need.environment)
                    .map_err(|err| anyhow::anyhow!("{what}: needs environment {err}"))?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Environment {
        name,
        labels,
        auto: file.auto,
        after,
        approval,
        canary,
        needs,
        auto_rollback: file.auto_rollback.unwrap_or(auto_rollback),
    })
}

/// What holds across environments: unique names, `after` naming another
/// environment of the same repository without a cycle, `needs` naming a
/// configured repository and one of its environments.
fn check_environments(repos: &[RepoSettings]) -> anyhow::Result<()> {
    for repo in repos {
        for (idx, env) in repo.environments.iter().enumerate() {
            let what = format!("[[repo.environment]] {} of {}", env.name, repo.url);
            anyhow::ensure!(
                repo.environments[..idx].iter().all(|other| other.name != env.name),
                "{what}: two environments are named {}",
                env.name
            );
            if let Some(after) = &env.after {
                anyhow::ensure!(
                    repo.environment(after).is_some(),
                    "{what}: after = \"{after}\" names no environment of {}",
                    repo.url
                );
                // Follow the chain of `after`s: reaching this environment
                // again is a cycle.
                let mut chain = vec![env.name.as_str()];
                let mut next = Some(after);
                while let Some(name) = next {
                    chain.push(name.as_str());
                    anyhow::ensure!(name != &env.name, "{what}: after makes a cycle: {}", chain.join(" -> "));
                    next = repo.environment(name).and_then(|other| other.after.as_ref());
                    if chain.len() > repo.environments.len() + 1 {
                        break;
                    }
                }
            }
            for need in &env.needs {
                let Some(needed) = repos.iter().find(|other| other.url == need.repo) else {
                    anyhow::bail!("{what}: needs {} which is not a configured [[repo]]", need.repo);
                };
                anyhow::ensure!(
                    needed.environment(&need.environment).is_some(),
                    "{what}: needs {} in {}, which has no such environment",
                    need.repo,
                    need.environment
                );
            }
        }
    }
    Ok(())
}

/// The `[[notifier]]` tables: each named (a single one may go unnamed), no
/// name twice.
fn notifiers(files: Vec<NotifierFile>, base: &Path) -> anyhow::Result<Vec<Notifier>> {
    let alone = files.len() == 1;
    let mut notifiers: Vec<Notifier> = Vec::with_capacity(files.len());
    for file in files {
        let name = match (&file.name, alone) {
            (Some(name), _) => Name::new(name.as_str()).map_err(|err| anyhow::anyhow!("notifier {err}"))?,
            (None, true) => Name::new(DEFAULT_NOTIFIER).expect("the default notifier name is valid"),
            (None, false) => anyhow::bail!("with several [[notifier]] tables, each needs a name = \"...\""),
        };
        anyhow::ensure!(notifiers.iter().all(|other| other.name != name), "two notifiers are named {name}");
        notifiers.push(notifier(name, file, base)?);
    }
    Ok(notifiers)
}

fn notifier(name: Name, file: NotifierFile, base: &Path) -> anyhow::Result<Notifier> {
    if let Some(forge) = file.status {
        anyhow::ensure!(
            file.command.is_none() && file.url.is_none() && file.events.is_none(),
            "notifier {name}: a status notifier takes api, token_file and context, not command, url or events"
        );
        let target = status_target(&name, &forge, file.api, file.token_file, file.context, base)?;
        return Ok(Notifier { name, target: NotifierTarget::Status(target), events: None });
    }
    anyhow::ensure!(
        file.api.is_none() && file.token_file.is_none() && file.context.is_none(),
        "notifier {name}: api, token_file and context go with status = \"github\" | \"gitea\" | \"gitlab\""
    );
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

/// An `http://` or `https://` URL without blanks or control characters.
fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn status_target(
    name: &Name,
    forge: &str,
    api: Option<String>,
    token_file: Option<PathBuf>,
    context: Option<String>,
    base: &Path,
) -> anyhow::Result<StatusTarget> {
    let forge = match forge {
        "github" => Forge::Github,
        "gitea" => Forge::Gitea,
        "gitlab" => Forge::Gitlab,
        other => anyhow::bail!("notifier {name}: status {other:?}: expected github, gitea or gitlab"),
    };
    let api =
        api.with_context(|| format!("notifier {name}: a status notifier needs api = \"https://...\""))?;
    anyhow::ensure!(is_http_url(&api), "notifier {name}: api {api:?}: an http(s):// URL is needed");
    let token_file =
        token_file.with_context(|| format!("notifier {name}: a status notifier needs token_file"))?;
    let token_file = if token_file.is_relative() { base.join(token_file) } else { token_file };
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("notifier {name}: reading token_file {}", token_file.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
        "notifier {name}: token_file {} holds no usable token",
        token_file.display()
    );
    let context = context.unwrap_or_else(|| "baton".into());
    anyhow::ensure!(
        !context.is_empty() && context.len() <= 100 && !context.chars().any(char::is_control),
        "notifier {name}: context must be 1 to 100 characters"
    );
    Ok(StatusTarget { forge, api: api.trim_end_matches('/').to_string(), token, context })
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

    #[test]
    fn status_notifiers_read_their_token_and_want_task_starts_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gh.token"), "secret-token\n").unwrap();
        let path = dir.path().join("d.toml");
        // token_file is relative to the config file's folder.
        std::fs::write(
            &path,
            "[[notifier]]\nstatus = \"github\"\napi = \"https://api.github.com/\"\ntoken_file = \"gh.token\"\n",
        )
        .unwrap();
        let config = Config::from_cli(cli(&["--config", path.to_str().unwrap()])).unwrap();
        let notifier = &config.settings.notifiers[0];
        let NotifierTarget::Status(target) = &notifier.target else { panic!("{notifier:?}") };
        assert_eq!((target.forge, target.api.as_str()), (Forge::Github, "https://api.github.com"));
        assert_eq!((target.token.as_str(), target.context.as_str()), ("secret-token", "baton"));
        assert!(!format!("{notifier:?}").contains("secret-token"), "Debug shows the token");
        assert!(
            notifier.wants(NotificationEvent::TaskStarted) && notifier.wants(NotificationEvent::TaskFinished)
        );
        assert!(!notifier.wants(NotificationEvent::TaskFailed));
        // Other notifiers get the per-task events only when they list them.
        let plain = notifiers_of("[[notifier]]\nurl = \"http://h/\"\n").unwrap();
        assert!(
            !plain[0].wants(NotificationEvent::TaskStarted) && plain[0].wants(NotificationEvent::TaskFailed)
        );
        for (text, error) in [
            (
                "status = \"bitbucket\"\napi = \"http://a\"\ntoken_file = \"t\"",
                "expected github, gitea or gitlab",
            ),
            ("status = \"gitea\"\ntoken_file = \"t\"", "needs api"),
            ("status = \"gitea\"\napi = \"http://a\"\ntoken_file = \"missing\"", "reading token_file"),
            ("url = \"http://a\"\ncontext = \"x\"", "go with status"),
        ] {
            let err = notifiers_of(&format!("[[notifier]]\n{text}\n")).unwrap_err();
            assert!(format!("{err:#}").contains(error), "{text}: {err:#}");
        }
    }

    #[test]
    fn retention_and_the_public_url_are_checked() {
        let config = Config::from_cli(cli(&[
            "--keep-logs",
            "30d",
            "--keep-tasks",
            "5",
            "--public-url",
            "https://ci.example/",
        ]))
        .unwrap();
        assert_eq!(config.retention.keep_logs, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(config.retention.keep_tasks, Some(5));
        assert_eq!(config.public_url.as_deref(), Some("https://ci.example"));
        let defaults = Config::from_cli(cli(&[])).unwrap();
        assert_eq!((defaults.retention.keep_logs, defaults.retention.keep_tasks), (None, None));
        assert!(Config::from_cli(cli(&["--keep-tasks", "0"])).is_err());
        assert!(Config::from_cli(cli(&["--public-url", "ci.example"])).is_err());
    }

    /// The environments of the first `[[repo]]` of a config file's text.
    fn environments_of(text: &str) -> anyhow::Result<Vec<Environment>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::from_cli(cli(&["--config", path.to_str().unwrap()]))?;
        Ok(config.settings.releases.repos[0].environments.clone())
    }

    #[test]
    fn environments_are_read_with_their_defaults() {
        let envs = environments_of(
            "[[repo]]\nurl = \"/srv/app\"\ndeploy = \"d\"\nauto_rollback = true\npost_deploy = \"h\"\n\
             [[repo.environment]]\nname = \"staging\"\nlabels = [\"deploy\"]\nauto = true\n\
             [[repo.environment]]\nname = \"production\"\nlabels = [\"deploy\", \"prod\"]\nafter = \"staging\"\n\
             approval = \"other\"\ncanary = \"25%\"\nauto_rollback = false\n",
        )
        .unwrap();
        assert_eq!(envs.len(), 2);
        assert_eq!(
            (envs[0].auto, envs[0].approval, envs[0].canary, envs[0].auto_rollback),
            (true, Approval::None, Canary::None, true)
        );
        assert_eq!(envs[1].after.as_ref().map(Name::as_str), Some("staging"));
        assert_eq!(
            (envs[1].approval, envs[1].canary, envs[1].auto_rollback),
            (Approval::Other, Canary::Percent(25), false)
        );
        // A share rounds up to at least one host; all hosts is no gray stage.
        assert_eq!([Canary::Percent(25).of(2), Canary::Percent(25).of(8), Canary::Hosts(2).of(2)], [1, 2, 0]);
        let err = environments_of(
            "[[repo]]\nurl = \"/srv/app\"\n[[repo.environment]]\nname = \"s\"\nlabels = [\"x\"]\n",
        );
        assert!(format!("{:#}", err.unwrap_err()).contains("environments need a deploy step"));
        let err = environments_of(
            "[[repo]]\nurl = \"/srv/app\"\ndeploy = \"d\"\n[[repo.environment]]\nname = \"s\"\nlabels = []\n",
        );
        assert!(format!("{:#}", err.unwrap_err()).contains("labels must name at least one"));
    }
}
