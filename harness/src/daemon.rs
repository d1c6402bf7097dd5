//! A started binary as a guard: killed (SIGKILL) and reaped when dropped,
//! its stderr (the tracing log) in a file that is printed when the thread
//! that owns it is panicking (a failing test).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::Context;

use crate::bins::Bins;
use crate::wait::Deadline;

/// How to start one binary.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The binary, as named in `target/` (`baton-runner`).
    pub program: String,
    /// What messages call it (`runner r1`).
    pub name: String,
    pub args: Vec<String>,
    /// Set after every inherited `BATON_*` and `RUST_LOG` variable was
    /// removed, so the caller's environment cannot change what is tested.
    pub env: Vec<(String, String)>,
    /// Where stderr goes.
    pub log: PathBuf,
    /// Pipe stdout (the dispatcher prints its address there); otherwise
    /// it goes nowhere.
    pub stdout: bool,
    /// Give the child a parent-death signal, so it dies with the spawning
    /// *thread* even if destructors never run (`kill -9` of the bench).
    /// Only for a caller that spawns from a thread that outlives the child;
    /// test threads end with each test, so tests leave it off.
    pub die_with_parent: bool,
    /// Run inside this network namespace (`Netns::path`).
    pub netns: Option<PathBuf>,
}

impl Launch {
    /// `program ARGS`, named after the program, logging to `log`.
    pub fn new(program: &str, args: &[String], log: &Path) -> Launch {
        Launch {
            program: program.to_string(),
            name: program.to_string(),
            args: args.to_vec(),
            env: Vec::new(),
            log: log.to_path_buf(),
            stdout: false,
            die_with_parent: false,
            netns: None,
        }
    }
}

/// A running binary; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Daemon {
    /// What messages call it.
    pub name: String,
    /// `None` once killed or reaped.
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts the binary with stdin closed and stderr in its log.
    ///
    /// # Errors
    /// When the binary is missing, the log cannot be created or the process
    /// cannot start.
    pub fn spawn(bins: &Bins, launch: Launch) -> anyhow::Result<Daemon> {
        let log_file = std::fs::File::create(&launch.log)
            .with_context(|| format!("creating {}", launch.log.display()))?;
        let mut command = Command::new(bins.path(&launch.program)?);
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|key| key.starts_with("BATON_") || key == "RUST_LOG") {
                command.env_remove(key);
            }
        }
        let stdout = if launch.stdout { Stdio::piped() } else { Stdio::null() };
        command.args(&launch.args).envs(launch.env.iter().cloned()).stdin(Stdio::null()).stdout(stdout);
        command.stderr(log_file);
        if launch.die_with_parent {
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
        }
        if let Some(netns) = &launch.netns {
            crate::system::enter(&mut command, netns)?;
        }
        let child = command.spawn().with_context(|| format!("starting {}", launch.program))?;
        Ok(Daemon { name: launch.name, child: Some(child), log: launch.log })
    }

    /// The process id, or `None` once it was killed or reaped.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|child| child.id() as i32)
    }

    /// Sends `signal` (`libc::SIGSTOP`, ...).
    ///
    /// # Errors
    /// When the process was reaped or kill(2) fails.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = self.pid().with_context(|| format!("{} is not running", self.name))?;
        // SAFETY: kill(2) on a child we have not reaped yet; no memory involved.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("kill({pid}, {signal}) of {}", self.name));
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

    /// Waits up to `patience` for the process to exit by itself (after a
    /// signal) and reaps it.
    ///
    /// # Errors
    /// When it was already reaped or is still running at the deadline (it is
    /// then left running, and killed on drop).
    pub fn wait(&mut self, patience: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().with_context(|| format!("{} was already stopped", self.name))?;
        let status = crate::wait::exit(child, patience, &self.name)?;
        self.child = None;
        Ok(status)
    }

    /// SIGTERM, then [`Daemon::wait`].
    ///
    /// # Errors
    /// As [`Daemon::signal`] and [`Daemon::wait`].
    pub fn terminate(&mut self, patience: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.wait(patience)
    }

    /// Fails, with the end of its log, when the process has exited.
    ///
    /// # Errors
    /// When it exited or was stopped.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let exited = match self.child.as_mut() {
            Some(child) => child.try_wait().context("checking a child process")?,
            None => anyhow::bail!("{} was already stopped", self.name),
        };
        match exited {
            None => Ok(()),
            Some(status) => {
                anyhow::bail!("{} exited ({status}); its log ends:\n{}", self.name, self.log_tail(20))
            }
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// Reads the first line the process prints on stdout (the dispatcher's
    /// bound address), trimmed, within `patience`.
    ///
    /// # Errors
    /// As [`Daemon::stdout_lines`], and when the line is empty.
    pub fn first_line(&mut self, patience: Duration) -> anyhow::Result<String> {
        let mut lines = self.stdout_lines(patience, |lines| !lines.is_empty())?;
        let line = lines.swap_remove(0);
        anyhow::ensure!(!line.is_empty(), "{} printed an empty first line", self.name);
        Ok(line)
    }

    /// Reads the lines the process prints on stdout, each trimmed, until
    /// `complete` says that the ones the caller needs arrived (however the
    /// process's writes split them), within `patience`. A thread reads, so a
    /// process that never prints cannot hang the caller; it keeps reading
    /// (and dropping) what comes later, so the process never writes into a
    /// closed pipe.
    ///
    /// # Errors
    /// When stdout was not piped or already taken, the process closes it
    /// (exits) first, or `patience` runs out.
    pub fn stdout_lines(
        &mut self,
        patience: Duration,
        complete: impl Fn(&[String]) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        let stdout =
            self.take_stdout().with_context(|| format!("the stdout of {} is not piped", self.name))?;
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        // Nobody listens once the caller has its lines: keep draining.
                        let _ = line_tx.send(Ok(line));
                    }
                    Err(err) => {
                        let _ = line_tx.send(Err(err));
                        return;
                    }
                }
            }
        });
        let deadline = Deadline::after(patience, format!("the lines {} prints", self.name));
        let mut lines = Vec::new();
        while !complete(&lines) {
            match line_rx.recv_timeout(deadline.left()) {
                Ok(line) => {
                    let line = line.with_context(|| format!("reading the stdout of {}", self.name))?;
                    lines.push(line.trim().to_string());
                }
                Err(RecvTimeoutError::Timeout) => {
                    anyhow::bail!("{} printed {lines:?} and nothing more within {patience:?}", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.ensure_running()?;
                    anyhow::bail!("{} closed its stdout after printing {lines:?}", self.name)
                }
            }
        }
        Ok(lines)
    }

    fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut().and_then(|child| child.stdout.take())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log());
        }
        self.kill();
    }
}

/// The last `n` lines of a log file (empty when it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
