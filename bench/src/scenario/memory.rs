//! `memory`: resident memory of the daemons (SPEC §8: the dispatcher at most
//! 64 MiB with 1,000 connected runners and heartbeats on; an idle runner and
//! an idle observer at most 8 MiB each).
//!
//! First 1,000 simulated runners connect to a fresh dispatcher and answer
//! its heartbeats for 10 s; the dispatcher's VmRSS and VmHWM (peak) are read
//! from `/proc/PID/status`. Then, on another fresh dispatcher, a real runner
//! is measured idle before any task, and again idle after running one; a
//! real observer watching a one-commit repository is measured idle after
//! that commit was submitted.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use protocol::TaskState;

use super::Ctx;
use crate::client::Client;
use crate::report::{Bound, Figure};
use crate::sim::Fleet;
use crate::support::{self, Deadline, Dispatcher, Repo};

/// Simulated runners connected to the dispatcher.
const RUNNERS: usize = 1000;
/// How long they stay connected before the dispatcher is measured.
const CONNECTED_FOR: Duration = Duration::from_secs(10);
/// How long a real daemon idles before it is measured.
const SETTLE: Duration = Duration::from_secs(3);
const PATIENCE: Duration = Duration::from_secs(60);
const KIB_PER_MIB: f64 = 1024.0;

/// Runs the scenario.
///
/// # Errors
/// When a daemon cannot start or the runners cannot connect.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let reps = ctx.reps_or(1);
    let (mut rss, mut hwm) = (Vec::new(), Vec::new());
    let (mut runner_fresh, mut runner_after, mut observer) = (Vec::new(), Vec::new(), Vec::new());
    for sample in 0..reps {
        let dir = ctx.dir.join(format!("sample-{sample}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dispatcher =
            dispatcher_with_runners(ctx, &dir).await.context("the dispatcher with 1,000 runners")?;
        eprintln!(
            "#   sample {sample}: dispatcher VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            dispatcher.0, dispatcher.1
        );
        rss.push(dispatcher.0);
        hwm.push(dispatcher.1);
        let idle = idle_daemons(ctx, &dir).await.context("the idle runner and observer")?;
        runner_fresh.push(idle[0]);
        runner_after.push(idle[1]);
        observer.push(idle[2]);
    }
    let eight = Bound::AtMost(8.0);
    Ok(vec![
        Figure::new("memory_dispatcher_1000_runners_rss", "MiB", rss).target(Bound::AtMost(64.0)),
        Figure::new("memory_dispatcher_1000_runners_hwm", "MiB", hwm),
        Figure::new("memory_runner_idle_rss", "MiB", runner_fresh).target(eight),
        Figure::new("memory_runner_idle_after_task_rss", "MiB", runner_after).target(eight),
        Figure::new("memory_observer_idle_rss", "MiB", observer).target(eight),
    ])
}

/// Returns the dispatcher's (VmRSS, VmHWM) in MiB after [`CONNECTED_FOR`].
async fn dispatcher_with_runners(ctx: &Ctx, dir: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    let mut dispatcher = Dispatcher::start(&ctx.bins, dir, &dir.join("data-1000"), &[])?;
    let mut fleet = Fleet::connect(&dispatcher.addr, "idle", RUNNERS, 0).await?;
    let deadline = Deadline::after(PATIENCE, "1,000 simulated runners to register");
    while fleet.counters.registered.load(Ordering::SeqCst) < RUNNERS as u64 {
        if deadline.check().is_err() {
            dispatcher.daemon.ensure_running()?;
            deadline.check()?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pongs_before = fleet.counters.pongs.load(Ordering::SeqCst);
    tokio::time::sleep(CONNECTED_FOR).await;
    dispatcher.daemon.ensure_running()?;
    if let Some(err) = fleet.failure() {
        return Err(err.context("a simulated runner failed while idle"));
    }
    let pongs = fleet.counters.pongs.load(Ordering::SeqCst) - pongs_before;
    let expected = (RUNNERS as u64) * (CONNECTED_FOR.as_secs() - 2);
    anyhow::ensure!(
        pongs >= expected,
        "only {pongs} heartbeats answered in {CONNECTED_FOR:?}; expected {expected}"
    );
    let status = Client::connect(&dispatcher.addr).await?.status().await?;
    anyhow::ensure!(
        status.runners_idle as usize == RUNNERS,
        "the dispatcher sees {} idle runners, expected {RUNNERS}",
        status.runners_idle
    );
    let memory = support::memory(&dispatcher.daemon)?;
    Ok((memory.rss_kib as f64 / KIB_PER_MIB, memory.hwm_kib as f64 / KIB_PER_MIB))
}

/// Returns the VmRSS in MiB of [a fresh idle runner, the runner idle after
/// one task, the observer idle after one submission].
async fn idle_daemons(ctx: &Ctx, dir: &std::path::Path) -> anyhow::Result<[f64; 3]> {
    let origin = Repo::init_bare(&dir.join("origin.git"))?;
    let work = Repo::init_work(&dir.join("work"), &origin)?;
    let commit = work.commit(&[(".baton.toml", "[test]\ncommand = 'true'\n")], "first")?;
    work.push()?;
    let dispatcher = Dispatcher::start(&ctx.bins, dir, &dir.join("data-idle"), &[])?;
    let mut client = Client::connect(&dispatcher.addr).await?;
    let mut runner = support::start_runner(&ctx.bins, dir, &dispatcher.addr, "idle-runner")?;
    client.wait_idle_runners(1, PATIENCE).await?;
    tokio::time::sleep(SETTLE).await;
    runner.ensure_running()?;
    let fresh = support::memory(&runner)?;

    let mut observer = support::start_observer(&ctx.bins, dir, &dispatcher.addr, &origin.path)?;
    let task = client.wait_final(&commit, PATIENCE).await?;
    anyhow::ensure!(task.state == TaskState::Passed, "the task ended {} ({:?})", task.state, task.reason);
    tokio::time::sleep(SETTLE).await;
    runner.ensure_running()?;
    observer.ensure_running()?;
    let after = support::memory(&runner)?;
    let watching = support::memory(&observer)?;
    Ok([fresh, after, watching].map(|memory| memory.rss_kib as f64 / KIB_PER_MIB))
}
