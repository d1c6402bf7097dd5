//! The manager's settings: flags, `BATON_*` variables and the `--config`
//! file merged, validated and defaulted once.
//!
//! Pool names become runner names (`POOL-N`), directory names under the work
//! root and, with the command driver, arguments of the operator's commands,
//! so they are held to a strict alphabet and hostile ones are refused here,
//! before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use protocol::{Label, Name};
use serde::Deserialize;

use super::cli::Cli;
use crate::config::{check_address, parse_duration, DEFAULT_DISPATCHER};

/// How long a runner sits idle before it is stopped, unless told otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The most runners one pool may have: each is a process (or a machine).
const MAX_POOL_SIZE: u32 = 1024;

/// The most pools (the dispatcher accepts reports of up to 64).
const MAX_POOLS: usize = 64;

/// The longest pool name: `NAME-NNNN` must stay a valid runner name.
const MAX_POOL_NAME: usize = 48;

/// A set of identical runners kept between `min` and `max`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: Name,
    pub labels: Vec<Label>,
    pub min: u32,
    pub max: u32,
}

/// How runners come and go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverConfig {
    /// `baton-runner` processes on this host.
    Local {
        runner_bin: PathBuf,
        /// Extra arguments given to every runner.
        runner_args: Vec<String>,
    },
    /// Operator commands; `{name}` and `{pool}` are replaced inside each
    /// argument, which stays one argument (no shell).
    Command { start: Vec<String>, stop: Vec<String> },
}

/// Everything the manager needs to know, checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub dispatcher: String,
    /// Root of the runners' work dirs, logs and pid files (absolute).
    pub work_root: PathBuf,
    pub pools: Vec<PoolConfig>,
    pub idle_timeout: Duration,
    pub driver: DriverConfig,
    /// The manager's own name towards the dispatcher.
    pub name: Name,
    pub token_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub log_json: bool,
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    dispatcher: Option<String>,
    work_root: Option<PathBuf>,
    #[serde(default)]
    pool: Vec<FilePool>,
    idle_timeout: Option<String>,
    driver: Option<String>,
    start: Option<Vec<String>>,
    stop: Option<Vec<String>>,
    runner_bin: Option<PathBuf>,
    runner_args: Option<Vec<String>>,
    name: Option<String>,
    token_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_server_name: Option<String>,
    log_format: Option<String>,
}

/// A `[[pool]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    name: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    min: u32,
    max: u32,
}

impl Config {
    /// Merges the command line with the file it names, applies defaults and
    /// validates everything. `--pool` flags replace the file's pools.
    ///
    /// # Errors
    /// An unreadable or invalid file, a missing work root, no pool, a
    /// hostile pool name or any other invalid value, naming the setting.
    pub fn from_cli(cli: Cli) -> anyhow::Result<Config> {
        let (file, file_dir): (FileConfig, PathBuf) = crate::config::read_file(cli.config.as_deref())?;
        let from_file = |path: PathBuf| file_dir.join(path);
        let dispatcher = cli.dispatcher.or(file.dispatcher).unwrap_or_else(|| DEFAULT_DISPATCHER.to_string());
        check_address(&dispatcher)?;
        let work_root = cli
            .work_root
            .or(file.work_root.map(from_file))
            .context("--work-root is required (or work_root in the config file)")?;
        let work_root = std::path::absolute(&work_root)
            .with_context(|| format!("resolving work root {}", work_root.display()))?;
        let pools: anyhow::Result<Vec<PoolConfig>> = if cli.pools.iter().any(|pool| !pool.is_empty()) {
            cli.pools.iter().filter(|pool| !pool.is_empty()).map(|text| parse_pool(text)).collect()
        } else {
            file.pool
                .into_iter()
                .map(|pool| check_pool(&pool.name, pool.labels, pool.min, pool.max))
                .collect()
        };
        let pools: Vec<PoolConfig> = pools?;
        if pools.is_empty() {
            anyhow::bail!("at least one --pool NAME:LABELS:MIN:MAX (or a [[pool]] table) is required");
        }
        if pools.len() > MAX_POOLS {
            anyhow::bail!("at most {MAX_POOLS} pools");
        }
        for (idx, pool) in pools.iter().enumerate() {
            if pools[..idx].iter().any(|other| other.name == pool.name) {
                anyhow::bail!("pool {} is named twice", pool.name);
            }
        }
        let idle_timeout = match cli.idle_timeout.or(file.idle_timeout) {
            Some(text) => parse_duration("--idle-timeout", &text)?,
            None => DEFAULT_IDLE_TIMEOUT,
        };
        let driver = match cli.driver.or(file.driver).as_deref() {
            None | Some("local") => {
                let runner_bin = match cli.runner_bin.or(file.runner_bin.map(from_file)) {
                    Some(path) => path,
                    None => default_runner_bin(),
                };
                let runner_args = if cli.runner_args.is_empty() {
                    file.runner_args.unwrap_or_default()
                } else {
                    cli.runner_args
                };
                DriverConfig::Local { runner_bin, runner_args }
            }
            Some("command") => {
                let argv = |flag: &str, cli: Option<String>, file: Option<Vec<String>>| {
                    let argv = match cli {
                        Some(text) => text.split_whitespace().map(str::to_string).collect(),
                        None => file.unwrap_or_default(),
                    };
                    if argv.is_empty() {
                        anyhow::bail!("the command driver needs {flag} ARGV");
                    }
                    Ok(argv)
                };
                let start = argv("--start", cli.start, file.start)?;
                let stop = argv("--stop", cli.stop, file.stop)?;
                DriverConfig::Command { start, stop }
            }
            Some(other) => anyhow::bail!("--driver must be local or command, got {other:?}"),
        };
        let name = match cli.name.or(file.name) {
            Some(name) => Name::new(name).map_err(|err| anyhow::anyhow!("--name: {err}"))?,
            None => Name::new("manager").expect("\"manager\" is a valid name"),
        };
        let log_json = match cli.log_format.or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => anyhow::bail!("--log-format must be text or json, got {other:?}"),
        };
        Ok(Config {
            dispatcher,
            work_root,
            pools,
            idle_timeout,
            driver,
            name,
            token_file: cli.token_file.or(file.token_file.map(from_file)),
            tls_ca: cli.tls_ca.or(file.tls_ca.map(from_file)),
            tls_server_name: cli.tls_server_name.or(file.tls_server_name),
            log_json,
        })
    }
}

/// `NAME:LABELS:MIN:MAX`, labels comma-separated.
fn parse_pool(text: &str) -> anyhow::Result<PoolConfig> {
    let parts: Vec<&str> = text.split(':').collect();
    let [name, labels, min, max] = parts[..] else {
        anyhow::bail!("--pool must be NAME:LABELS:MIN:MAX, got {text:?}");
    };
    let number = |what: &str, value: &str| {
        value.parse::<u32>().map_err(|_| anyhow::anyhow!("--pool {text:?}: {what} must be a number"))
    };
    let labels = labels.split(',').filter(|label| !label.is_empty()).map(str::to_string).collect();
    check_pool(name, labels, number("MIN", min)?, number("MAX", max)?)
}

fn check_pool(name: &str, labels: Vec<String>, min: u32, max: u32) -> anyhow::Result<PoolConfig> {
    let valid_name = !name.is_empty()
        && name.len() <= MAX_POOL_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !valid_name {
        anyhow::bail!(
            "pool name {name:?} refused: use 1 to {MAX_POOL_NAME} of A-Z a-z 0-9 _ -, starting with a letter or digit"
        );
    }
    let name = Name::new(name).map_err(|err| anyhow::anyhow!("pool {name:?}: {err}"))?;
    let labels = labels
        .into_iter()
        .map(|label| Label::new(label).map_err(|err| anyhow::anyhow!("pool {name} labels: {err}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if max == 0 || max > MAX_POOL_SIZE || min > max {
        anyhow::bail!("pool {name}: need 0 <= MIN <= MAX, 1 <= MAX <= {MAX_POOL_SIZE}; got {min}..{max}");
    }
    Ok(PoolConfig { name, labels, min, max })
}

/// `baton-runner` next to this binary, else from `PATH`.
fn default_runner_bin() -> PathBuf {
    let sibling =
        std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("baton-runner")));
    sibling.filter(|path| path.exists()).unwrap_or_else(|| PathBuf::from("baton-runner"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(std::iter::once("baton-runner-manager").chain(args.iter().copied()))?;
        Config::from_cli(cli)
    }

    #[test]
    fn pools_from_flags() {
        let config =
            parse(&["--work-root", "/w", "--pool", "ci:linux,x86:1:4", "--pool", "any::0:2"]).unwrap();
        assert_eq!(config.pools.len(), 2);
        assert_eq!(config.pools[0].name.as_str(), "ci");
        let labels: Vec<&str> = config.pools[0].labels.iter().map(Label::as_str).collect();
        assert_eq!(labels, ["linux", "x86"]);
        assert_eq!((config.pools[0].min, config.pools[0].max), (1, 4));
        assert!(config.pools[1].labels.is_empty());
        assert_eq!(config.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert!(matches!(config.driver, DriverConfig::Local { .. }));
    }

    #[test]
    fn pools_and_commands_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manager.toml");
        std::fs::write(
            &path,
            "work_root = \"runners\"\ndriver = \"command\"\nidle_timeout = \"30s\"\n\
             start = [\"systemctl\", \"start\", \"baton-runner@{name}\"]\n\
             stop = [\"systemctl\", \"stop\", \"baton-runner@{name}\"]\n\
             [[pool]]\nname = \"gpu\"\nlabels = [\"gpu\"]\nmax = 2\n",
        )
        .unwrap();
        let config = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(config.work_root, dir.path().join("runners"));
        assert_eq!(config.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.pools[0].name.as_str(), "gpu");
        let DriverConfig::Command { start, stop } = config.driver else { panic!("not the command driver") };
        assert_eq!(start, ["systemctl", "start", "baton-runner@{name}"]);
        assert_eq!(stop[1], "stop");
    }

    #[test]
    fn the_example_config_file_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/config/runner-manager.toml");
        let config = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(config.work_root, PathBuf::from("/var/lib/baton-runner-manager"));
        assert_eq!(config.pools.len(), 2);
        assert_eq!(config.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    }

    #[test]
    fn hostile_and_invalid_pools_are_refused() {
        for pool in [
            "../x:a:0:1",
            ";rm -rf /:a:0:1",
            "{name}:a:0:1",
            "a/b:a:0:1",
            "-a:a:0:1",
            "ok:a;b:0:1",
            "ok:a:2:1",
            "ok:a:0:0",
            "ok:a:0",
            "ok:a:x:1",
        ] {
            assert!(parse(&["--work-root", "/w", "--pool", pool]).is_err(), "{pool:?} accepted");
        }
        assert!(parse(&["--work-root", "/w"]).is_err(), "no pool accepted");
        assert!(parse(&["--work-root", "/w", "--pool", "a::0:1", "--pool", "a::0:1"]).is_err());
        assert!(parse(&["--work-root", "/w", "--pool", "a::0:1", "--driver", "command"]).is_err());
    }
}
