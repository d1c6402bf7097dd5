//! Starting and stopping runners: `local` runs `baton-runner` processes on
//! this host, `command` runs the operator's argv (for example
//! `systemctl start baton-runner@{name}`) to do it elsewhere.
//!
//! Local runners are recorded in `WORK_ROOT/NAME/manager.pid` as their pid
//! and their start time from `/proc/PID/stat`, so a restarted manager adopts
//! exactly the processes it started: a pid reused by another process has
//! another start time and is not touched. Runners are started in their own
//! process group and outlive the manager on purpose (a restart adopts them).
//! The command driver keeps the names it started in
//! `WORK_ROOT/command-runners.json`.
//!
//! Nothing from the network reaches an argv: names are `POOL-N`, built from
//! validated pool names, and substituted inside single arguments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use protocol::Name;
use tokio::sync::mpsc;

use super::config::{Config, DriverConfig, PoolConfig};

/// How long a start or stop command may run before it is killed and
/// counted as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The pid file in a local runner's work dir.
const PID_FILE: &str = "manager.pid";

/// The command driver's record of the runners it started.
const COMMAND_STATE: &str = "command-runners.json";

/// What a driver reports back to the manager's loop.
#[derive(Debug)]
pub enum DriverEvent {
    /// A runner's process ended (local), or a start command failed.
    Gone { name: Name, reason: String },
    /// A stop finished: the runner is gone.
    Stopped { name: Name },
    /// A stop command failed; the runner is still there.
    StopFailed { name: Name, reason: String },
}

/// A driver of either kind.
pub enum Driver {
    Local(Local),
    Command(Commands),
}

impl Driver {
    /// The driver `config` names; `events` receives what happens later.
    pub fn new(config: &Config, events: mpsc::Sender<DriverEvent>) -> Driver {
        match &config.driver {
            DriverConfig::Local { runner_bin, runner_args } => Driver::Local(Local {
                root: config.work_root.clone(),
                runner_bin: runner_bin.clone(),
                runner_args: runner_args.clone(),
                dispatcher: config.dispatcher.clone(),
                credentials: credential_args(config),
                processes: BTreeMap::new(),
            }),
            DriverConfig::Command { start, stop } => Driver::Command(Commands {
                root: config.work_root.clone(),
                start: start.clone(),
                stop: stop.clone(),
                started: Vec::new(),
                events,
            }),
        }
    }

    /// Runners started by an earlier life of this manager that are still
    /// there, as names; `pool_of` maps a name to its pool.
    pub fn adopt(&mut self, pool_of: impl Fn(&str) -> Option<usize>) -> Vec<(Name, usize)> {
        match self {
            Driver::Local(local) => local.adopt(pool_of),
            Driver::Command(commands) => commands.adopt(pool_of),
        }
    }

    /// Starts runner `name` of `pool`.
    ///
    /// # Errors
    /// The local process cannot be spawned or recorded. (A start command
    /// fails later, as a [`DriverEvent::Gone`].)
    pub fn start(&mut self, pool: &PoolConfig, name: &Name) -> anyhow::Result<()> {
        match self {
            Driver::Local(local) => local.start(pool, name),
            Driver::Command(commands) => {
                commands.start(pool, name);
                Ok(())
            }
        }
    }

    /// Stops runner `name` (SIGTERM: the runner drains and exits).
    pub fn stop(&mut self, pool: &PoolConfig, name: &Name) {
        match self {
            Driver::Local(local) => local.stop(name),
            Driver::Command(commands) => commands.stop(pool, name),
        }
    }

    /// Local runners whose process has ended since the last call.
    pub fn exited(&mut self) -> Vec<(Name, String)> {
        match self {
            Driver::Local(local) => local.exited(),
            Driver::Command(_) => Vec::new(),
        }
    }

    /// The pid of a local runner.
    pub fn pid(&self, name: &Name) -> Option<u32> {
        match self {
            Driver::Local(local) => local.processes.get(name).map(|process| process.pid),
            Driver::Command(_) => None,
        }
    }
}

fn credential_args(config: &Config) -> Vec<String> {
    let mut args = Vec::new();
    let mut push = |flag: &str, value: Option<String>| {
        if let Some(value) = value {
            args.push(flag.to_string());
            args.push(value);
        }
    };
    push("--token-file", config.token_file.as_ref().map(|path| path.display().to_string()));
    push("--tls-ca", config.tls_ca.as_ref().map(|path| path.display().to_string()));
    push("--tls-server-name", config.tls_server_name.clone());
    args
}

// ------------------------------------------------------------------- local

/// `baton-runner` processes on this host.
pub struct Local {
    root: PathBuf,
    runner_bin: PathBuf,
    runner_args: Vec<String>,
    dispatcher: String,
    credentials: Vec<String>,
    processes: BTreeMap<Name, Process>,
}

/// A local runner process.
struct Process {
    pid: u32,
    start_time: u64,
    /// Our child (reaped with `try_wait`); `None` when adopted.
    child: Option<Child>,
    stopping: bool,
}

impl Local {
    fn adopt(&mut self, pool_of: impl Fn(&str) -> Option<usize>) -> Vec<(Name, usize)> {
        let mut adopted = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else { return adopted };
        for entry in entries.flatten() {
            let dir_name = entry.file_name().to_string_lossy().to_string();
            let Some(pool) = pool_of(&dir_name) else { continue };
            let Ok(name) = Name::new(dir_name) else { continue };
            let pid_file = entry.path().join(PID_FILE);
            let Ok(text) = std::fs::read_to_string(&pid_file) else { continue };
            let recorded = text.split_whitespace().map(str::parse::<u64>).collect::<Result<Vec<_>, _>>();
            match recorded.as_deref() {
                Ok([pid, start_time]) if start_time_of(*pid as u32) == Some(*start_time) => {
                    tracing::info!(runner = %name, pid, "adopting a runner started before this manager's restart");
                    let process =
                        Process { pid: *pid as u32, start_time: *start_time, child: None, stopping: false };
                    self.processes.insert(name.clone(), process);
                    adopted.push((name, pool));
                }
                _ => {
                    tracing::info!(runner = %name, "its recorded process is gone; forgetting it");
                    let _ = std::fs::remove_file(&pid_file);
                }
            }
        }
        adopted
    }

    fn start(&mut self, pool: &PoolConfig, name: &Name) -> anyhow::Result<()> {
        let work_dir = self.root.join(name.as_str());
        std::fs::create_dir_all(&work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
        let log_path = self.root.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = Command::new(&self.runner_bin);
        // The runner gets exactly these settings: none of the manager's own
        // BATON_* variables (BATON_CONFIG would name the manager's file).
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|key| key.starts_with("BATON_")) {
                command.env_remove(key);
            }
        }
        command
            .arg("--dispatcher")
            .arg(&self.dispatcher)
            .arg("--work-dir")
            .arg(&work_dir)
            .arg("--name")
            .arg(name.as_str())
            .args(&self.credentials);
        if !pool.labels.is_empty() {
            let labels: Vec<&str> = pool.labels.iter().map(|label| label.as_str()).collect();
            command.arg("--labels").arg(labels.join(","));
        }
        command
            .args(&self.runner_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log);
        // Its own process group: a Ctrl-C meant for the manager does not
        // stop the runners, and the runner's own group kill stays its own.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().with_context(|| format!("starting {}", self.runner_bin.display()))?;
        let pid = child.id();
        let start_time = start_time_of(pid).context("reading the new runner's start time")?;
        write_atomically(&work_dir.join(PID_FILE), format!("{pid} {start_time}\n").as_bytes())?;
        self.processes.insert(name.clone(), Process { pid, start_time, child: Some(child), stopping: false });
        Ok(())
    }

    fn stop(&mut self, name: &Name) {
        let Some(process) = self.processes.get_mut(name) else { return };
        process.stopping = true;
        if start_time_of(process.pid) != Some(process.start_time) {
            return;
        }
        // SAFETY: kill(2) on a pid whose start time we just checked is our
        // runner's; no memory is involved.
        unsafe { libc::kill(process.pid as i32, libc::SIGTERM) };
    }

    fn exited(&mut self) -> Vec<(Name, String)> {
        let mut gone = Vec::new();
        for (name, process) in self.processes.iter_mut() {
            let ended = match &mut process.child {
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => Some(status.to_string()),
                    Ok(None) => None,
                    Err(err) => Some(format!("cannot wait for it: {err}")),
                },
                None => {
                    (start_time_of(process.pid) != Some(process.start_time)).then(|| "process gone".into())
                }
            };
            if let Some(status) = ended {
                let reason =
                    if process.stopping { format!("stopped ({status})") } else { format!("died ({status})") };
                gone.push((name.clone(), reason));
            }
        }
        for (name, _) in &gone {
            self.processes.remove(name);
            let _ = std::fs::remove_file(self.root.join(name.as_str()).join(PID_FILE));
        }
        gone
    }
}

/// The start time of a live (not zombie) process, in clock ticks since boot
/// (field 22 of `/proc/PID/stat`).
fn start_time_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (the state); field 22 is fields[19].
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("renaming to {}", path.display()))
}

// ----------------------------------------------------------------- command

/// The operator's start and stop commands.
pub struct Commands {
    root: PathBuf,
    start: Vec<String>,
    stop: Vec<String>,
    /// Names started and not stopped, kept in [`COMMAND_STATE`].
    started: Vec<Name>,
    events: mpsc::Sender<DriverEvent>,
}

impl Commands {
    fn adopt(&mut self, pool_of: impl Fn(&str) -> Option<usize>) -> Vec<(Name, usize)> {
        let path = self.root.join(COMMAND_STATE);
        let names: Vec<String> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let mut adopted = Vec::new();
        for name in names {
            let Some(pool) = pool_of(&name) else { continue };
            let Ok(name) = Name::new(name) else { continue };
            tracing::info!(runner = %name, "adopting a runner started before this manager's restart");
            self.started.push(name.clone());
            adopted.push((name, pool));
        }
        adopted
    }

    fn save(&self) {
        let names: Vec<&str> = self.started.iter().map(Name::as_str).collect();
        let bytes = serde_json::to_vec(&names).expect("a list of strings serialises");
        if let Err(err) = write_atomically(&self.root.join(COMMAND_STATE), &bytes) {
            tracing::error!(error = %format!("{err:#}"), "cannot record the started runners");
        }
    }

    fn start(&mut self, pool: &PoolConfig, name: &Name) {
        self.started.push(name.clone());
        self.save();
        let argv = substitute(&self.start, pool, name);
        let events = self.events.clone();
        let (pool_name, name) = (pool.name.clone(), name.clone());
        tokio::spawn(async move {
            if let Err(reason) = run_command(&argv, &pool_name, &name).await {
                tracing::warn!(runner = %name, reason, "start command failed");
                let _ = events
                    .send(DriverEvent::Gone { name, reason: format!("start command failed: {reason}") })
                    .await;
            }
        });
    }

    fn stop(&mut self, pool: &PoolConfig, name: &Name) {
        let argv = substitute(&self.stop, pool, name);
        let events = self.events.clone();
        let (pool_name, name) = (pool.name.clone(), name.clone());
        tokio::spawn(async move {
            let event = match run_command(&argv, &pool_name, &name).await {
                Ok(()) => DriverEvent::Stopped { name },
                Err(reason) => DriverEvent::StopFailed { name, reason },
            };
            let _ = events.send(event).await;
        });
    }

    /// The runner is gone (stopped, or its start failed): forget it.
    pub fn forget(&mut self, name: &Name) {
        self.started.retain(|started| started != name);
        self.save();
    }
}

impl Driver {
    /// Forgets a runner that is gone (the command driver's record).
    pub fn forget(&mut self, name: &Name) {
        if let Driver::Command(commands) = self {
            commands.forget(name);
        }
    }
}

/// Replaces `{name}` and `{pool}` inside each argument; each stays one
/// argument.
fn substitute(template: &[String], pool: &PoolConfig, name: &Name) -> Vec<String> {
    template
        .iter()
        .map(|arg| arg.replace("{name}", name.as_str()).replace("{pool}", pool.name.as_str()))
        .collect()
}

async fn run_command(argv: &[String], pool: &Name, name: &Name) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("BATON_RUNNER_NAME", name.as_str())
        .env("BATON_POOL", pool.as_str())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("{program} took longer than {}s", COMMAND_TIMEOUT.as_secs()))?
        .map_err(|err| format!("running {program}: {err}"))?;
    if output.status.success() {
        tracing::info!(runner = %name, program, "command done");
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
        Err(format!("{program} exited with {}: {}", output.status, tail.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_substituted_inside_single_arguments() {
        let pool = PoolConfig { name: Name::new("ci").unwrap(), labels: vec![], min: 0, max: 1 };
        let template: Vec<String> =
            ["systemctl", "start", "baton-runner@{name}", "{pool}", "a b {name}"].map(String::from).into();
        let argv = substitute(&template, &pool, &Name::new("ci-3").unwrap());
        assert_eq!(argv, ["systemctl", "start", "baton-runner@ci-3", "ci", "a b ci-3"]);
    }

    #[test]
    fn start_times_identify_live_processes() {
        let own = std::process::id();
        let first = start_time_of(own).expect("our own start time");
        assert_eq!(start_time_of(own), Some(first));
        assert_eq!(start_time_of(u32::MAX), None);
    }
}
