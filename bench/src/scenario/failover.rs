//! What `failover_kill` and `failover_freeze` share: a real dispatcher with
//! default heartbeats, two real runners, and a task whose first attempt
//! writes a start stamp and then sleeps, while its second attempt writes its
//! start stamp and passes. The busy runner is hit ([`Fault`]) right after
//! the first stamp appears; the figure is from the fault (CLOCK_REALTIME,
//! taken just before the signal) to the second attempt's stamp.
//!
//! After each trial the hit runner is killed if still alive, the test it was
//! running is checked for (SPEC §4: a runner killed outright leaves no test
//! running; one left behind is killed and reported), and the runner is
//! restarted under the same name and work dir, as systemd would.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use harness::procs;
use protocol::{RepoUrl, TaskId, TaskState};

use super::pipeline::plain_path;
use super::Ctx;
use crate::client::Client;
use crate::support::{self, Daemon, Deadline, Dispatcher, Repo};

/// How the busy runner is hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9`: the kernel closes its connection at once.
    Kill,
    /// SIGSTOP: connected but silent until it misses its heartbeats.
    Freeze,
}

/// How long a trial's waits may take.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a killed runner's test may outlive it before it counts as left behind.
const ORPHAN_GRACE: Duration = Duration::from_secs(1);
const RUNNERS: [&str; 2] = ["runner-a", "runner-b"];

/// Runs `trials` trials; returns the fault-to-second-attempt times in ms.
///
/// # Errors
/// When the setup or a trial fails.
pub async fn measure(ctx: &Ctx, fault: Fault, trials: usize) -> anyhow::Result<Vec<f64>> {
    let stamps = ctx.dir.join("stamps");
    std::fs::create_dir_all(&stamps).with_context(|| format!("creating {}", stamps.display()))?;
    let origin = Repo::init_bare(&ctx.dir.join("origin.git"))?;
    let work = Repo::init_work(&ctx.dir.join("work"), &origin)?;
    let commit = work.commit(&[(".baton.toml", &config(&stamps)?)], "failover")?;
    work.push()?;
    let repo = RepoUrl::new(origin.path.display().to_string()).map_err(anyhow::Error::msg)?;

    let dispatcher = Dispatcher::start(&ctx.bins, &ctx.dir, &ctx.dir.join("data"), &[])?;
    let mut runners: Vec<Daemon> = Vec::new();
    for name in RUNNERS {
        runners.push(support::start_runner(&ctx.bins, &ctx.dir, &dispatcher.addr, name)?);
    }
    let mut client = Client::connect(&dispatcher.addr).await?;
    client.wait_idle_runners(RUNNERS.len(), PATIENCE).await?;

    // Warm both runners' fetch caches: two short tasks at once go to both.
    std::fs::write(stamps.join("warm"), "").context("writing the warm-up flag")?;
    let warm = [client.submit(&repo, &commit).await?, client.submit(&repo, &commit).await?];
    for task_id in warm {
        wait_state(&mut client, task_id, TaskState::Passed).await?;
    }
    std::fs::remove_file(stamps.join("warm")).context("removing the warm-up flag")?;

    let mut times = Vec::with_capacity(trials);
    for trial in 0..trials {
        let task_id = client.submit(&repo, &commit).await?;
        let first = stamps.join(format!("{task_id}.1"));
        wait_stamp(&first, &format!("trial {trial}: attempt 1 to start")).await?;
        let task = client.show_id(task_id).await?.context("the submitted task vanished")?;
        let name = task.runner.context("a running task without a runner")?;
        let idx = RUNNERS.iter().position(|known| *known == name.as_str()).context("an unknown runner")?;
        let fault_ns = support::realtime_ns();
        match fault {
            Fault::Kill => runners[idx].kill(),
            Fault::Freeze => runners[idx].signal(libc::SIGSTOP)?,
        }
        let second = stamps.join(format!("{task_id}.2"));
        let second_ns = wait_stamp(&second, &format!("trial {trial}: attempt 2 to start")).await?;
        times.push((second_ns - fault_ns) as f64 / 1e6);
        let done = wait_state(&mut client, task_id, TaskState::Passed).await?;
        anyhow::ensure!(
            done.attempts == 2,
            "trial {trial}: passed after {} attempts, expected 2",
            done.attempts
        );

        if fault == Fault::Freeze {
            runners[idx].signal(libc::SIGCONT)?;
        }
        runners[idx].kill();
        reap_left_behind(&stamps.join(format!("{task_id}.pid")))?;
        runners[idx] = support::start_runner(&ctx.bins, &ctx.dir, &dispatcher.addr, RUNNERS[idx])?;
        client.wait_idle_runners(RUNNERS.len(), PATIENCE).await?;
    }
    Ok(times)
}

/// The repository's `.baton.toml`. The warm-up flag makes a task sleep
/// briefly and pass; otherwise attempt 1 writes its stamp and its shell's pid
/// and sleeps (exec, so the sleep is the test's process leader), and attempt
/// 2 writes its stamp and passes. A stamp is renamed into place, so it is
/// never read half written, and only after the pid file exists.
fn config(stamps: &Path) -> anyhow::Result<String> {
    let dir = plain_path(stamps)?;
    let stamp = |attempt: u32| {
        format!(
            "date +%s%N > {dir}/$BATON_TASK_ID.{attempt}.tmp && mv {dir}/$BATON_TASK_ID.{attempt}.tmp {dir}/$BATON_TASK_ID.{attempt}"
        )
    };
    let (first, second) = (stamp(1), stamp(2));
    let first = first.replacen(" && mv", &format!(" && echo $$ > {dir}/$BATON_TASK_ID.pid && mv"), 1);
    Ok(format!(
        "[test]\ncommand = 'if [ -e {dir}/warm ]; then exec sleep 0.3; fi; \
         if [ \"$BATON_ATTEMPT\" = 1 ]; then {first}; exec sleep 30; else {second}; fi'\n"
    ))
}

async fn wait_stamp(path: &Path, what: &str) -> anyhow::Result<i128> {
    let deadline = Deadline::after(PATIENCE, what);
    loop {
        if let Some(stamp) = support::read_stamp(path)? {
            return Ok(stamp);
        }
        deadline.check()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn wait_state(
    client: &mut Client,
    task_id: TaskId,
    state: TaskState,
) -> anyhow::Result<protocol::message::TaskInfo> {
    let deadline = Deadline::after(PATIENCE, format!("task {task_id} to be {state}"));
    loop {
        if let Some(task) = client.show_id(task_id).await? {
            if task.state == state {
                return Ok(task);
            }
            anyhow::ensure!(!task.state.is_final(), "task {task_id} ended {}: {:?}", task.state, task.reason);
        }
        deadline.check()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Kills the first attempt's test if it outlived its killed runner, and
/// says so: the SPEC wants no test left behind.
fn reap_left_behind(pid_file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(pid_file).with_context(|| format!("reading {}", pid_file.display()))?;
    let pid: i32 = text.trim().parse().with_context(|| format!("{} holds {text:?}", pid_file.display()))?;
    let deadline = std::time::Instant::now() + ORPHAN_GRACE;
    while procs::alive(pid) {
        if std::time::Instant::now() >= deadline {
            eprintln!("#   warning: the test (pid {pid}) outlived its killed runner; killing it");
            // SAFETY: kill(2) on the test the bench caused; no memory involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
