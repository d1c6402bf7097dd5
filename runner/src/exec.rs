//! Running the test process under its supervisor, output copied into the
//! spool as it is produced, a timeout, and stops on request.
//!
//! Every test runs under `baton-runner --supervise` (see `supervise`), which
//! leads the test's process group, is a child subreaper and carries a
//! parent-death signal: a runner killed with `kill -9` leaves no test behind,
//! not even a grandchild that called `setsid`. This module stops a test by
//! signalling the supervisor, which kills the whole tree; a supervisor that
//! does not end in time gets `SIGKILL` on the whole group as a last resort.
//! This module decides no outcome (see `task`) and knows nothing of git or
//! the dispatcher.

use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use crate::attempts::{Control, Progress};
use crate::command::{Program, TestCommand};
use crate::spool::{AttemptKey, OutputLog};
use crate::supervise;

/// The runner binary's name, which `--supervise` is run with.
const RUNNER_BINARY: &str = "baton-runner";

/// How long after a stop request the runner waits for the supervisor (which
/// itself gives the test [`supervise::KILL_GRACE`]) before it kills the
/// group itself.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// How long output pipes are still read after the test exited and its group
/// was killed; only a process that left the group can hold them longer.
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// Size of one read from a test's stdout or stderr.
const READ_CHUNK: usize = 64 * 1024;

/// Why the runner stopped a test before it ended by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// It ran longer than its timeout.
    Timeout,
    /// The dispatcher aborted it.
    Abort,
    /// The dispatcher forgot it, or the runner abandoned it while stopping.
    Discard,
    /// Its output could not be written to the spool.
    OutputFailed(String),
}

/// How the test process ended.
#[derive(Debug)]
pub struct Supervised {
    /// The leader's exit status.
    pub status: ExitStatus,
    /// Set when the runner stopped the test.
    pub cause: Option<StopCause>,
}

/// A running test.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// The test's process group, whose id is the supervisor's pid.
    pub pgid: i32,
}

/// Starts `command` in `dir` under its supervisor, the leader of a new
/// process group.
///
/// Must be called from an async task on a runtime worker thread, never from
/// `spawn_blocking`: the parent-death signal fires when the *thread* that
/// forked exits, and blocking-pool threads exit after a while idle, which
/// would kill a healthy test. Worker threads live as long as the runtime.
///
/// # Errors
/// The supervisor cannot be found or started.
pub fn spawn(command: &TestCommand, dir: &Path, env: &[(&str, String)]) -> io::Result<Process> {
    let mut cmd = Command::new(supervisor_program()?);
    cmd.arg(supervise::FLAG).arg("--");
    match &command.program {
        Program::Shell(line) => {
            cmd.arg("sh").arg("-c").arg(line);
        }
        Program::Argv(argv) => {
            if argv.is_empty() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
            }
            cmd.args(argv);
        }
    }
    // The runner's own settings (BATON_TOKEN_FILE, ...) are none of the test's business.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| name.starts_with("BATON_")) {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().map(|(name, value)| (name, value)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            // SIGTERM, not SIGKILL: the supervisor must live to kill the
            // processes that left its group.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The runner may have died between fork and prctl; then no
            // signal would ever come.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id().ok_or_else(|| io::Error::other("the test exited before it was seen"))?;
    Ok(Process { child, pgid: pid as i32 })
}

/// The `baton-runner` executable: this process when it is the runner, or the
/// one next to it (the runner as a library in a test or a benchmark binary,
/// which cargo puts one directory below).
fn supervisor_program() -> io::Result<std::path::PathBuf> {
    let current = std::env::current_exe()?;
    if current.file_name().is_some_and(|name| name == RUNNER_BINARY) {
        return Ok(current);
    }
    current
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(RUNNER_BINARY))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {RUNNER_BINARY} next to {}", current.display()),
            )
        })
}

/// Copies the test's output into `log` until it ends, enforcing `timeout`
/// and obeying `control`. The leader is always reaped before this returns.
///
/// # Errors
/// Only when waiting for the child fails.
pub async fn supervise(
    process: &mut Process,
    timeout: Duration,
    log: &mut OutputLog,
    progress: &watch::Sender<Progress>,
    control: &mut mpsc::Receiver<Control>,
) -> io::Result<Supervised> {
    let pgid = process.pgid;
    let mut stdout = process.child.stdout.take();
    let mut stderr = process.child.stderr.take();
    let mut stdout_buf = vec![0u8; READ_CHUNK];
    let mut stderr_buf = vec![0u8; READ_CHUNK];
    let far_future = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    // A timeout too long for the clock (a `.baton.toml` may ask for
    // "500000000000years") must not panic the attempt: it never fires.
    let timeout_at = tokio::time::Instant::now().checked_add(timeout).unwrap_or(far_future);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut cause: Option<StopCause> = None;
    let mut status: Option<ExitStatus> = None;
    let stop = |why: StopCause, cause: &mut Option<StopCause>, kill_at: &mut Option<tokio::time::Instant>| {
        // A forget or an abandon overrides an earlier reason: there will be no result.
        if cause.is_none() || why == StopCause::Discard {
            *cause = Some(why);
        }
        if kill_at.is_none() {
            signal_process(pgid, libc::SIGTERM);
            *kill_at = Some(tokio::time::Instant::now() + KILL_GRACE);
        }
    };
    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            read = read_some(&mut stdout, &mut stdout_buf), if stdout.is_some() => {
                if let Some(err) = copy(read, &mut stdout, &stdout_buf, log, progress) {
                    kill_now(pgid, &mut kill_at);
                    cause = Some(StopCause::OutputFailed(err));
                }
            }
            read = read_some(&mut stderr, &mut stderr_buf), if stderr.is_some() => {
                if let Some(err) = copy(read, &mut stderr, &stderr_buf, log, progress) {
                    kill_now(pgid, &mut kill_at);
                    cause = Some(StopCause::OutputFailed(err));
                }
            }
            exited = process.child.wait(), if status.is_none() => {
                status = Some(exited?);
                // The supervisor killed everything before it exited; this
                // only matters if it was itself killed. The group id cannot
                // have been reused: pids are not recycled for microseconds'
                // worth of wrap-around.
                signal_group(pgid, libc::SIGKILL);
                drain_until = Some(tokio::time::Instant::now() + PIPE_DRAIN);
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or(far_future)), if drain_until.is_some() => {
                tracing::warn!("a process outside the test's group holds its output open; stopped reading");
                break;
            }
            _ = tokio::time::sleep_until(timeout_at), if status.is_none() && cause.is_none() => {
                tracing::info!(timeout = %humantime::format_duration(timeout), "test timed out, killing it");
                stop(StopCause::Timeout, &mut cause, &mut kill_at);
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or(far_future)), if status.is_none() && kill_at.is_some() => {
                tracing::warn!("the test's supervisor did not stop it in time, killing its group");
                signal_group(pgid, libc::SIGKILL);
                kill_at = Some(far_future);
            }
            Some(message) = control.recv(), if status.is_none() => match message {
                Control::Abort => {
                    tracing::info!("aborting the test");
                    stop(StopCause::Abort, &mut cause, &mut kill_at);
                }
                Control::Forget { reason } => {
                    tracing::info!(%reason, "attempt forgotten while running, killing the test");
                    stop(StopCause::Discard, &mut cause, &mut kill_at);
                }
                Control::Abandon => {
                    cause = Some(StopCause::Discard);
                    kill_now(pgid, &mut kill_at);
                }
                Control::Ack { .. } => tracing::warn!("acknowledgement for a running attempt ignored"),
            },
        }
    }
    // The loop ends only after the leader was reaped.
    let status = status.expect("the supervise loop exits only once the leader has exited");
    Ok(Supervised { status, cause })
}

async fn read_some<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Appends what was read; closes the pipe on end or error. Returns the
/// reason when the spool could not be written.
fn copy<R>(
    read: io::Result<usize>,
    pipe: &mut Option<R>,
    buf: &[u8],
    log: &mut OutputLog,
    progress: &watch::Sender<Progress>,
) -> Option<String> {
    match read {
        Ok(0) | Err(_) => {
            *pipe = None;
            None
        }
        Ok(n_read) => match log.append(&buf[..n_read]) {
            Ok(()) => {
                let written = log.written();
                progress.send_modify(|progress| progress.written = written);
                None
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot write the test's output, killing it");
                *pipe = None;
                Some(format!("writing the test's output: {err}"))
            }
        },
    }
}

/// Tells the supervisor to kill the whole test now, and arms the last-resort
/// kill of the group in case it does not.
fn kill_now(supervisor: i32, kill_at: &mut Option<tokio::time::Instant>) {
    signal_process(supervisor, libc::SIGUSR1);
    if kill_at.is_none() {
        *kill_at = Some(tokio::time::Instant::now() + KILL_GRACE);
    }
}

/// Sends `signal` to every process of the group; a group already gone is
/// not an error.
fn signal_group(pgid: i32, signal: libc::c_int) {
    signal_process(-pgid, signal);
}

/// Sends `signal` to `pid` (a group when negative); one already gone is not
/// an error.
fn signal_process(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pid, signal, error = %err, "cannot signal the test");
        }
    }
}

/// Kills the process group a test left behind when its runner died, if it
/// still exists and still belongs to that attempt: a member must carry the
/// attempt's `BATON_TASK_ID` and `BATON_ATTEMPT` in its environment, so an
/// unrelated group that reuses the id is never touched.
///
/// # Returns
/// Whether a group was killed.
pub fn kill_orphaned_group(pgid: i32, key: AttemptKey) -> bool {
    let task_var = format!("BATON_TASK_ID={}", key.task_id).into_bytes();
    let attempt_var = format!("BATON_ATTEMPT={}", key.attempt).into_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    let ours = entries.filter_map(Result::ok).any(|entry| {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        // Fields after the command name, which is in parentheses and may
        // contain anything: state, ppid, pgrp.
        let pgrp = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2));
        if pgrp.and_then(|pgrp| pgrp.parse::<i32>().ok()) != Some(pgid) {
            return false;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
        let vars: Vec<&[u8]> = environ.split(|byte| *byte == 0).collect();
        vars.contains(&task_var.as_slice()) && vars.contains(&attempt_var.as_slice())
    });
    if ours {
        signal_group(pgid, libc::SIGKILL);
    }
    ours
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;

    use protocol::message::Assign;
    use protocol::TaskId;

    use super::*;
    use crate::command::Source;
    use crate::spool::Spool;

    struct Fixture {
        _work: tempfile::TempDir,
        spool: Spool,
        key: AttemptKey,
        log: OutputLog,
    }

    fn fixture() -> Fixture {
        let work = tempfile::tempdir().unwrap();
        let spool = Spool::open(work.path()).unwrap();
        let assign = Assign {
            task_id: TaskId::new(1).unwrap(),
            attempt: 1,
            repo: protocol::RepoUrl::new("/r").unwrap(),
            branch: protocol::Branch::new("main").unwrap(),
            commit: protocol::CommitId::new("a".repeat(40)).unwrap(),
            job: protocol::message::Job::Test,
        };
        let log = spool.create(&assign, 1 << 20).unwrap();
        Fixture { _work: work, spool, key: AttemptKey::of(&assign), log }
    }

    fn shell(line: &str, timeout: Duration) -> TestCommand {
        TestCommand { program: Program::Shell(line.into()), timeout, source: Source::Runner }
    }

    fn group_exists(pgid: i32) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(-pgid, 0) == 0 }
    }

    #[tokio::test]
    async fn runs_a_command_and_keeps_both_streams() {
        let mut fixture = fixture();
        let (progress, _) = watch::channel(Progress::default());
        let (_control_tx, mut control) = mpsc::channel(1);
        let env = [("BATON_TASK_ID", "42".to_string())];
        let mut process = spawn(
            &shell("echo out; echo err >&2; echo $BATON_TASK_ID; exit 3", Duration::from_secs(30)),
            Path::new("/"),
            &env,
        )
        .unwrap();
        let supervised =
            supervise(&mut process, Duration::from_secs(30), &mut fixture.log, &progress, &mut control)
                .await
                .unwrap();
        assert_eq!(supervised.status.code(), Some(3));
        assert_eq!(supervised.cause, None);
        let mut lines: Vec<String> = std::fs::read_to_string(fixture.spool.output_path(fixture.key))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        assert_eq!(lines, ["42", "err", "out"]);
        assert_eq!(progress.borrow().written, 11);
    }

    #[tokio::test]
    async fn a_timeout_beyond_the_clock_never_fires() {
        let mut fixture = fixture();
        let (progress, _) = watch::channel(Progress::default());
        let (_control_tx, mut control) = mpsc::channel(1);
        let mut process = spawn(&shell("echo ok", Duration::MAX), Path::new("/"), &[]).unwrap();
        let supervised =
            supervise(&mut process, Duration::MAX, &mut fixture.log, &progress, &mut control).await.unwrap();
        assert_eq!((supervised.status.code(), supervised.cause), (Some(0), None));
    }

    #[tokio::test]
    async fn strays_die_with_the_leader() {
        let mut fixture = fixture();
        let (progress, _) = watch::channel(Progress::default());
        let (_control_tx, mut control) = mpsc::channel(1);
        // The background sleep keeps stdout open after the shell exits.
        let command = shell("sleep 600 & echo done", Duration::from_secs(600));
        let mut process = spawn(&command, Path::new("/"), &[]).unwrap();
        let started = Instant::now();
        let supervised = supervise(&mut process, command.timeout, &mut fixture.log, &progress, &mut control)
            .await
            .unwrap();
        assert!(started.elapsed() < PIPE_DRAIN, "the stray was not killed: {:?}", started.elapsed());
        assert_eq!((supervised.status.code(), supervised.cause), (Some(0), None));
        assert_eq!(std::fs::read(fixture.spool.output_path(fixture.key)).unwrap(), b"done\n");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let mut fixture = fixture();
        let (progress, _) = watch::channel(Progress::default());
        let (_control_tx, mut control) = mpsc::channel(1);
        // The shell waits for a background child; both must die.
        let command = shell("sleep 600 & echo started; wait", Duration::from_millis(300));
        let mut process = spawn(&command, Path::new("/"), &[]).unwrap();
        let pgid = process.pgid;
        let started = Instant::now();
        let supervised = supervise(&mut process, command.timeout, &mut fixture.log, &progress, &mut control)
            .await
            .unwrap();
        assert!(started.elapsed() < supervise::KILL_GRACE, "SIGTERM was enough");
        assert_eq!(supervised.cause, Some(StopCause::Timeout));
        assert_eq!(std::fs::read(fixture.spool.output_path(fixture.key)).unwrap(), b"started\n");
        // Killed members linger as zombies until init reaps them, which some
        // inits do only every second or two.
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_exists(pgid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // SAFETY: signal 0 only checks for existence.
        let rc = unsafe { libc::kill(-pgid, 0) };
        assert_eq!((rc, io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ESRCH)));
    }

    #[tokio::test]
    async fn an_abort_stops_the_test_and_a_signal_is_reported() {
        let mut fixture = fixture();
        let (progress, _) = watch::channel(Progress::default());
        let (control_tx, mut control) = mpsc::channel(1);
        let mut process = spawn(&shell("sleep 600", Duration::from_secs(600)), Path::new("/"), &[]).unwrap();
        control_tx.send(Control::Abort).await.unwrap();
        let supervised =
            supervise(&mut process, Duration::from_secs(600), &mut fixture.log, &progress, &mut control)
                .await
                .unwrap();
        assert_eq!(supervised.cause, Some(StopCause::Abort));
        assert_eq!(supervised.status.signal(), Some(libc::SIGTERM));

        let mut process = spawn(&shell("kill -9 $$", Duration::from_secs(60)), Path::new("/"), &[]).unwrap();
        let supervised =
            supervise(&mut process, Duration::from_secs(60), &mut fixture.log, &progress, &mut control)
                .await
                .unwrap();
        assert_eq!((supervised.status.signal(), supervised.cause), (Some(libc::SIGKILL), None));
    }

    /// Pids of living processes whose environment holds `marker`.
    fn marked(marker: &str) -> Vec<i32> {
        let needle = marker.as_bytes();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie =
                    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                !zombie && environ.split(|byte| *byte == 0).any(|var| var == needle)
            })
            .collect()
    }

    /// A daemon that double-forked and called `setsid` left the group; the
    /// supervisor still finds it, whether the test ends or is aborted.
    #[tokio::test]
    async fn an_escaped_daemon_dies_with_its_test() {
        let dir = tempfile::tempdir().unwrap();
        let started = dir.path().join("daemon-started");
        // The shell waits until the daemon is up, so that it cannot be
        // killed before it escaped.
        let escape = format!(
            "python3 -c 'import os,time\nif os.fork(): os._exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\n\
             open(\"{started}\",\"w\").close()\ntime.sleep(600)' </dev/null >/dev/null 2>&1; \
             while [ ! -e {started} ]; do sleep 0.01; done",
            started = started.display()
        );
        for (line, abort) in
            [(format!("{escape}; echo left"), false), (format!("{escape}; echo left; sleep 600"), true)]
        {
            let _ = std::fs::remove_file(&started);
            let marker = format!("BATON_EXEC_TEST_MARK={}-{abort}", std::process::id());
            let (name, value) = marker.split_once('=').unwrap();
            let mut fixture = fixture();
            let (progress, _) = watch::channel(Progress::default());
            let (control_tx, mut control) = mpsc::channel(1);
            let command = shell(&line, Duration::from_secs(600));
            let mut process = spawn(&command, Path::new("/"), &[(name, value.to_string())]).unwrap();
            if abort {
                let spool_path = fixture.spool.output_path(fixture.key);
                let deadline = Instant::now() + Duration::from_secs(30);
                let log = &mut fixture.log;
                let supervised = tokio::select! {
                    supervised = supervise(&mut process, command.timeout, log, &progress, &mut control) => supervised,
                    () = async {
                        while std::fs::read(&spool_path).unwrap_or_default().is_empty() {
                            assert!(Instant::now() < deadline, "the test never started");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        control_tx.send(Control::Abort).await.unwrap();
                        std::future::pending::<()>().await;
                    } => unreachable!(),
                };
                assert_eq!(supervised.unwrap().cause, Some(StopCause::Abort));
            } else {
                let supervised =
                    supervise(&mut process, command.timeout, &mut fixture.log, &progress, &mut control)
                        .await
                        .unwrap();
                assert_eq!((supervised.status.code(), supervised.cause), (Some(0), None));
            }
            assert!(started.exists(), "the daemon never started");
            assert_eq!(marked(&marker), Vec::<i32>::new(), "a process of the test survived (abort: {abort})");
        }
    }

    #[tokio::test]
    async fn an_orphaned_group_is_recognised_by_its_environment() {
        let key = AttemptKey { task_id: TaskId::new(987_654).unwrap(), attempt: 3 };
        let env = [("BATON_TASK_ID", "987654".to_string()), ("BATON_ATTEMPT", "3".to_string())];
        let mut process = spawn(&shell("sleep 600", Duration::from_secs(600)), Path::new("/"), &env).unwrap();
        let other = AttemptKey { task_id: TaskId::new(987_654).unwrap(), attempt: 4 };
        assert!(!kill_orphaned_group(process.pgid, other));
        assert!(kill_orphaned_group(process.pgid, key));
        let status = process.child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
