//! What every scenario needs around the real binaries: finding them, starting
//! them as [`Daemon`]s that are killed on drop, git repositories made with the
//! git CLI, deadlines for every wait, clocks, and memory figures from procfs.
//!
//! The binaries, guards, repositories and deadlines themselves are the
//! `harness` crate's, shared with the integration tests; this module adds
//! how the bench starts each daemon and what only measuring needs.
//! Deliberately not here: the wire protocol (`client`, `sim`) and statistics
//! (`report`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use harness::Launch;
pub use harness::{Bins, Daemon, Deadline, Repo};

/// How long a daemon may take to print its address or register.
pub const START_PATIENCE: Duration = Duration::from_secs(20);

/// Starts `program ARGS` with its log at `log`; the daemon dies with the
/// bench even if the bench is killed (it spawns only from its main thread,
/// which lives as long as the process).
fn spawn(bins: &Bins, program: &str, args: Vec<String>, log: &Path, stdout: bool) -> anyhow::Result<Daemon> {
    let mut launch = Launch::new(program, &args, log);
    launch.stdout = stdout;
    launch.die_with_parent = true;
    Daemon::spawn(bins, launch)
}

/// A dispatcher on a free loopback port.
pub struct Dispatcher {
    pub daemon: Daemon,
    /// `127.0.0.1:PORT`, as it printed.
    pub addr: String,
}

impl Dispatcher {
    /// Starts `baton-dispatcher --listen 127.0.0.1:0 --data-dir DATA ARGS`, its
    /// log in `dir`, and reads the bound address from its first stdout line.
    ///
    /// # Errors
    /// When it cannot start or prints no address in time.
    pub fn start(bins: &Bins, dir: &Path, data_dir: &Path, args: &[&str]) -> anyhow::Result<Dispatcher> {
        let mut all = strings(&["--listen", "127.0.0.1:0", "--data-dir"]);
        all.push(data_dir.display().to_string());
        all.extend(strings(args));
        let mut daemon = spawn(bins, "baton-dispatcher", all, &dir.join("dispatcher.log"), true)?;
        let addr = daemon.first_line(START_PATIENCE).context("reading the dispatcher's address")?;
        Ok(Dispatcher { daemon, addr })
    }

    /// Starts `baton-dispatcher` with its web service on `--http
    /// 127.0.0.1:0`; returns it with the HTTP address (its second stdout line,
    /// `http: ADDR`).
    ///
    /// # Errors
    /// When it cannot start or prints no `http:` line.
    pub fn start_with_http(
        bins: &Bins,
        dir: &Path,
        data_dir: &Path,
        args: &[&str],
    ) -> anyhow::Result<(Dispatcher, String)> {
        let mut all = strings(&["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"]);
        all.push(data_dir.display().to_string());
        all.extend(strings(args));
        let mut launch = harness::Launch::new("baton-dispatcher", &all, &dir.join("dispatcher.log"));
        launch.stdout = true;
        launch.die_with_parent = true;
        let mut daemon = Daemon::spawn(bins, launch)?;
        let web_line = |line: &String| line.strip_prefix("http: ").map(str::to_string);
        let lines = daemon
            .stdout_lines(START_PATIENCE, |lines| lines.iter().any(|line| web_line(line).is_some()))
            .context("reading the dispatcher's addresses")?;
        let http = lines.iter().find_map(web_line).context("the `http: ADDR` line")?;
        Ok((Dispatcher { daemon, addr: lines[0].clone() }, http))
    }
}

/// Starts `baton-runner` named `name`, its work dir and log under `dir`.
///
/// # Errors
/// When it cannot start.
pub fn start_runner(bins: &Bins, dir: &Path, addr: &str, name: &str) -> anyhow::Result<Daemon> {
    let work_dir = dir.join(format!("runner-{name}"));
    std::fs::create_dir_all(&work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let mut args = strings(&["--dispatcher", addr, "--name", name, "--work-dir"]);
    args.push(work_dir.display().to_string());
    // A new log per start keeps the log of a runner restarted under the same name.
    let log = dir.join(format!("runner-{name}-{}.log", unique()));
    spawn(bins, "baton-runner", args, &log, false)
}

/// Starts `baton-observer --watch` on `repo`, its state file and log in `dir`.
///
/// # Errors
/// When it cannot start.
pub fn start_observer(bins: &Bins, dir: &Path, addr: &str, repo: &Path) -> anyhow::Result<Daemon> {
    let mut args = strings(&["--dispatcher", addr, "--watch", "--state-file"]);
    args.push(dir.join("observer.state.json").display().to_string());
    args.push(repo.display().to_string());
    spawn(bins, "baton-observer", args, &dir.join("observer.log"), false)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME), the clock `date +%s%N`
/// reads in test scripts: only for intervals that cross processes.
pub fn realtime_ns() -> i128 {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

/// Reads a `date +%s%N` stamp file; `None` while it does not exist (scripts
/// write it under another name and rename it, so it is never half written).
///
/// # Errors
/// When it exists but is not a number.
pub fn read_stamp(path: &Path) -> anyhow::Result<Option<i128>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let stamp =
                text.trim().parse().with_context(|| format!("stamp {} is {text:?}", path.display()))?;
            Ok(Some(stamp))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS), KiB.
    pub hwm_kib: u64,
}

/// Reads VmRSS and VmHWM of the daemon's process.
///
/// # Errors
/// When the process is gone or the file lacks the fields.
pub fn memory(daemon: &Daemon) -> anyhow::Result<Memory> {
    let pid = daemon.pid().with_context(|| format!("{} is not running", daemon.name))?;
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("{path} has no {name}"))?;
        let kib = line.split_whitespace().nth(1).with_context(|| format!("{path}: {line:?}"))?;
        kib.parse().with_context(|| format!("{path}: {line:?}"))
    };
    Ok(Memory { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")? })
}

/// Raises this process's soft open-file limit to the hard one; the daemons
/// inherit it (1,000 simulated runners need more than the usual 1,024).
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_fd_limit() -> anyhow::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit");
        }
    }
    Ok(())
}

/// Prints the end of every daemon log in a failed scenario's dir.
pub fn print_log_tails(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension() == Some(OsStr::new("log")))
        .collect();
    logs.sort();
    for log in logs {
        eprintln!("----- end of {} -----\n{}", log.display(), harness::daemon::tail(&log, 15));
    }
}
