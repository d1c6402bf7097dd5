//! The test's supervisor: `baton-runner --supervise -- PROGRAM ARGS...`, the
//! runner binary in a hidden helper mode, started by `exec` for every test.
//!
//! It is the leader of the test's process group and a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`), so every process the test leaves behind
//! (a forking `sh -c`, a background `sleep`, a daemon that double-forked and
//! called `setsid`) is reparented to it instead of to init.
//! It runs the test as its only child, forwards its exit status (a code, or
//! the same signal raised on itself), and before it exits kills and reaps
//! every descendant, so nothing of the test outlives it.
//!
//! Signals drive it, read synchronously with `sigtimedwait` in one thread:
//! - the runner's death arrives as `SIGTERM` through `PR_SET_PDEATHSIG` (set
//!   by `exec` before the exec); a changed parent pid tells it apart from a
//!   stop request, and everything is killed at once;
//! - `SIGTERM`/`SIGINT` from the runner (a timeout or an abort) is passed on
//!   to every descendant, which then get [`KILL_GRACE`] before `SIGKILL`;
//! - `SIGUSR1` or `SIGHUP` from the runner kills everything at once;
//! - the test's own exit kills what it left behind at once.
//!
//! It runs before any thread, runtime or logging exists, and writes nothing
//! to the test's output except one line when it cannot start the test.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::time::{Duration, Instant};

/// The flag that selects this mode; it must be the first argument.
pub const FLAG: &str = "--supervise";

/// Time between `SIGTERM` and `SIGKILL` when a test is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How often descendants are looked for again while killing: a process may
/// fork between the scan and the kill; its child shows up in the next scan.
const RESCAN: Duration = Duration::from_millis(20);

/// How long the supervisor waits when nothing is happening: only a signal can
/// change anything then, and the wait wakes up for it.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// Exit code when the test cannot be started at all (as a shell's).
const CANNOT_START: i32 = 127;

/// Runs the supervisor on `args` (everything after [`FLAG`]) and exits with
/// the test's status. Call it first thing in `main`, before any thread.
pub fn main(args: Vec<OsString>) -> ! {
    let mut args = args.into_iter().peekable();
    if args.peek().is_some_and(|arg| arg == "--") {
        args.next();
    }
    let Some(program) = args.next() else {
        eprintln!("baton-runner --supervise: no command given");
        std::process::exit(2);
    };
    // SAFETY: getppid, prctl and sigprocmask have no memory-safety
    // preconditions; the signal set is initialised by sigemptyset first.
    let (runner, signals) = unsafe {
        let runner = libc::getppid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
        let mut signals: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut signals);
        for signal in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut signals, signal);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut());
        (runner, signals)
    };
    let mut command = Command::new(&program);
    command.args(args);
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (sigemptyset, sigprocmask).
    unsafe {
        command.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child.id() as libc::pid_t,
        Err(err) => {
            eprintln!("baton: cannot start {}: {err}", program.to_string_lossy());
            std::process::exit(CANNOT_START);
        }
    };
    let mut supervisor = Supervisor { runner, child, status: None, stopping: None, killing: false };
    // The runner may have died before the signal mask was set; its
    // parent-death signal then killed nothing here, so look once.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != runner {
        supervisor.kill_everything();
    }
    supervisor.run(&signals)
}

/// The supervisor's state: the test, and how far stopping it has gone.
struct Supervisor {
    /// The runner that started this supervisor; a different parent pid
    /// means the runner died.
    runner: libc::pid_t,
    /// The test's process.
    child: libc::pid_t,
    /// The test's wait status, once it was reaped.
    status: Option<libc::c_int>,
    /// When `SIGKILL` follows a `SIGTERM` that was passed on.
    stopping: Option<Instant>,
    /// Set once everything is being killed; descendants are killed on every
    /// scan from then on.
    killing: bool,
}

impl Supervisor {
    fn run(mut self, signals: &libc::sigset_t) -> ! {
        loop {
            self.reap();
            if self.status.is_some() && !self.killing {
                // The test ended: whatever it left behind goes with it.
                self.kill_everything();
            }
            if self.killing {
                self.kill_descendants(libc::SIGKILL);
                if self.status.is_some() && descendants(own_pid()).is_empty() {
                    self.reap();
                    self.exit();
                }
            }
            let now = Instant::now();
            if self.stopping.is_some_and(|at| at <= now) {
                self.kill_everything();
                continue;
            }
            let wait = if self.killing {
                RESCAN
            } else {
                self.stopping.map_or(IDLE_WAIT, |at| at.saturating_duration_since(now))
            };
            match wait_signal(signals, wait) {
                Some(libc::SIGCHLD) | None => {}
                Some(libc::SIGTERM | libc::SIGINT) if self.runner_alive() => {
                    if self.stopping.is_none() {
                        self.kill_descendants(libc::SIGTERM);
                        self.stopping = Some(Instant::now() + KILL_GRACE);
                    }
                }
                Some(_) => self.kill_everything(),
            }
        }
    }

    fn runner_alive(&self) -> bool {
        // SAFETY: getppid has no preconditions.
        unsafe { libc::getppid() == self.runner }
    }

    fn kill_everything(&mut self) {
        self.killing = true;
        self.kill_descendants(libc::SIGKILL);
    }

    /// Sends `signal` to every living descendant: the test, the members of
    /// its group, and whatever left the group but not the tree (a subreaper
    /// keeps them in it).
    fn kill_descendants(&self, signal: libc::c_int) {
        for pid in descendants(own_pid()) {
            // SAFETY: kill has no memory-safety preconditions. A pid that
            // exited since the scan is still a zombie of this tree (nothing
            // reaps it but its parent, which is here too), so it cannot have
            // been reused by an unrelated process.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Reaps every child that has exited, remembering the test's status.
    fn reap(&mut self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: status points to a valid c_int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if pid == self.child {
                self.status = Some(status);
            }
        }
    }

    /// Exits as the test did: with its code, or killed by its signal.
    fn exit(&self) -> ! {
        let status = std::process::ExitStatus::from_raw(self.status.unwrap_or(0));
        if let Some(code) = status.code() {
            std::process::exit(code);
        }
        let signal = status.signal().unwrap_or(libc::SIGKILL);
        // SAFETY: resetting a disposition, unblocking and raising have no
        // memory-safety preconditions; no core is wanted from a re-raise.
        unsafe {
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(signal, libc::SIG_DFL);
            let mut just_this: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut just_this);
            libc::sigaddset(&mut just_this, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &just_this, std::ptr::null_mut());
            libc::raise(signal);
        }
        std::process::exit(128 + signal);
    }
}

fn own_pid() -> libc::pid_t {
    std::process::id() as libc::pid_t
}

/// Waits up to `timeout` for one of `signals`; `None` when none came.
fn wait_signal(signals: &libc::sigset_t, timeout: Duration) -> Option<libc::c_int> {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: all pointers are valid for the call; info may be null.
    let signal = unsafe { libc::sigtimedwait(signals, std::ptr::null_mut(), &timeout) };
    (signal > 0).then_some(signal)
}

/// Every living (not zombie) process below `root`, found by following parent
/// pids through `/proc`.
pub fn descendants(root: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let processes: Vec<(libc::pid_t, libc::pid_t, bool)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, ppid) = parse_stat(&stat)?;
            Some((pid, ppid, state == 'Z'))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, zombie) in &processes {
            if *ppid == parent && *pid != root && !found.contains(pid) && !frontier.contains(pid) {
                frontier.push(*pid);
                if !zombie {
                    found.push(*pid);
                }
            }
        }
    }
    found
}

/// State and parent pid from `/proc/PID/stat`, whose command name is in
/// parentheses and may contain anything.
fn parse_stat(stat: &str) -> Option<(char, libc::pid_t)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(parse_stat("12 (a) b) S 7 12 12 0"), Some(('S', 7)));
        assert_eq!(parse_stat("12 (sh) Z 1 1"), Some(('Z', 1)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_tests_own_children_are_descendants() {
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        assert!(descendants(own_pid()).contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!descendants(own_pid()).contains(&pid));
    }
}
