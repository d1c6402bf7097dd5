//! What every scenario needs around the real binaries: finding them, starting
//! them as [`Daemon`]s that are killed on drop, git repositories made with the
//! git CLI, deadlines for every wait, clocks, and memory figures from procfs.
//!
//! Deliberately not here: the wire protocol (`client`, `sim`) and statistics
//! (`report`).

mod git;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

pub use self::git::Repo;

/// How long a daemon may take to print its address or register.
pub const START_PATIENCE: Duration = Duration::from_secs(20);

/// Where the Baton binaries are: next to `baton-bench` itself.
#[derive(Clone, Debug)]
pub struct Bins {
    dir: PathBuf,
}

impl Bins {
    /// The directory of the running executable.
    ///
    /// # Errors
    /// When the executable's path cannot be read.
    pub fn locate() -> anyhow::Result<Bins> {
        let exe = std::env::current_exe().context("finding baton-bench's own path")?;
        let dir = exe.parent().context("baton-bench has no parent directory")?.to_path_buf();
        Ok(Bins { dir })
    }

    /// The directory the binaries are taken from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of binary `name`.
    ///
    /// # Errors
    /// When it is missing (not built yet).
    pub fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: build the workspace's binaries first (scripts/bench.sh does)",
            path.display()
        );
        Ok(path)
    }
}

/// A started process, killed (SIGKILL) and reaped when dropped.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program ARGS` with stdin closed, stderr (its tracing log) to
    /// `log`, and no inherited `BATON_*` or `RUST_LOG` variables, so the
    /// caller's environment cannot change what is measured.
    ///
    /// The child gets a parent-death signal: should the bench die without
    /// running its destructors (`kill -9`), its daemons die with it. The bench
    /// spawns only from its main thread, which lives as long as the process.
    ///
    /// # Errors
    /// When the binary is missing or cannot be started.
    pub fn spawn(
        bins: &Bins,
        program: &str,
        args: &[String],
        log: &Path,
        stdout: Stdio,
    ) -> anyhow::Result<Daemon> {
        let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(bins.path(program)?);
        command.args(args).stdin(Stdio::null()).stdout(stdout).stderr(log_file);
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|key| key.starts_with("BATON_") || key == "RUST_LOG") {
                command.env_remove(key);
            }
        }
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the async-signal-safe prctl(2) call.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("starting {program}"))?;
        Ok(Daemon { name: program.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    /// The process id (0 once it was killed).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|child| child.id() as i32).unwrap_or(0)
    }

    /// Sends `signal` (`libc::SIGSTOP`, ...).
    ///
    /// # Errors
    /// When the process is gone.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = self.pid();
        anyhow::ensure!(pid > 0, "{} is not running", self.name);
        // SAFETY: kill(2) on a child we have not reaped yet; no memory involved.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("signalling {}", self.name));
        }
        Ok(())
    }

    /// `kill -9` and reap; a no-op when already done.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Fails, with the end of its log, when the process has exited.
    ///
    /// # Errors
    /// When it exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let exited = match self.child.as_mut() {
            Some(child) => child.try_wait().context("checking a child process")?,
            None => anyhow::bail!("{} was already stopped", self.name),
        };
        match exited {
            None => Ok(()),
            Some(status) => {
                anyhow::bail!("{} exited ({status}); its log ends:\n{}", self.name, tail(&self.log, 20))
            }
        }
    }

    fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|child| child.stdout.take())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
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
        let log = dir.join("dispatcher.log");
        let mut daemon = Daemon::spawn(bins, "baton-dispatcher", &all, &log, Stdio::piped())?;
        let stdout = daemon.take_stdout().context("the dispatcher's stdout is not piped")?;
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        // A thread, so that a dispatcher that never prints cannot hang us.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = line_tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
        });
        let line = match line_rx.recv_timeout(START_PATIENCE) {
            Ok(Ok(line)) => line,
            Ok(Err(err)) => return Err(err).context("reading the dispatcher's address"),
            Err(_) => anyhow::bail!("the dispatcher printed no address within {START_PATIENCE:?}"),
        };
        let addr = line.trim().to_string();
        if addr.is_empty() {
            daemon.ensure_running()?;
            anyhow::bail!("the dispatcher printed an empty first line");
        }
        Ok(Dispatcher { daemon, addr })
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
    // Appending keeps the log of a runner restarted under the same name.
    let log = dir.join(format!("runner-{name}-{}.log", unique()));
    Daemon::spawn(bins, "baton-runner", &args, &log, Stdio::null())
}

/// Starts `baton-observer --watch` on `repo`, its state file and log in `dir`.
///
/// # Errors
/// When it cannot start.
pub fn start_observer(bins: &Bins, dir: &Path, addr: &str, repo: &Path) -> anyhow::Result<Daemon> {
    let mut args = strings(&["--dispatcher", addr, "--watch", "--state-file"]);
    args.push(dir.join("observer.state.json").display().to_string());
    args.push(repo.display().to_string());
    Daemon::spawn(bins, "baton-observer", &args, &dir.join("observer.log"), Stdio::null())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A point in time after which a wait fails, saying what it waited for.
pub struct Deadline {
    at: Instant,
    patience: Duration,
    what: String,
}

impl Deadline {
    /// Fails `patience` from now.
    pub fn after(patience: Duration, what: impl Into<String>) -> Deadline {
        Deadline { at: Instant::now() + patience, patience, what: what.into() }
    }

    /// Fails once the deadline has passed.
    ///
    /// # Errors
    /// After the deadline.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            Instant::now() < self.at,
            "timed out after {:?} waiting for {}",
            self.patience,
            self.what
        );
        Ok(())
    }
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

/// Reads VmRSS and VmHWM of `pid`.
///
/// # Errors
/// When the process is gone or the file lacks the fields.
pub fn memory(pid: i32) -> anyhow::Result<Memory> {
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

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
        eprintln!("----- end of {} -----\n{}", log.display(), tail(&log, 15));
    }
}
