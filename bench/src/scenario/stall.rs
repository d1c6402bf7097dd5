//! `stall`: the dispatcher itself stopped (SIGSTOP) for twice its heartbeat
//! window while 4 runners each run a test, then resumed (SIGCONT) (issue
//! 12, item 3). Figures, one sample per trial: runners declared lost
//! (`runner lost` lines in the dispatcher's log; expected 0) and extra
//! attempts of the 4 tasks (attempts beyond the first; expected 0).
//!
//! The dispatcher runs with a 200 ms heartbeat and 3 misses (a 600 ms
//! window) to keep a trial short. Each test writes a start stamp and waits
//! for a gate file, opened twice the window after the resume, so a wrong
//! judgement has time to happen while the tests still run.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use protocol::{RepoUrl, TaskId};

use super::pipeline::plain_path;
use super::Ctx;
use crate::client::Client;
use crate::report::{Bound, Figure};
use crate::support::{self, Daemon, Deadline, Dispatcher, Repo};

/// How long a trial's waits may take.
const PATIENCE: Duration = Duration::from_secs(30);
const INTERVAL: &str = "200ms";
const MISSES: &str = "3";
/// The heartbeat window: [`INTERVAL`] times [`MISSES`].
const WINDOW: Duration = Duration::from_millis(600);
const RUNNERS: usize = 4;

/// Runs the scenario.
///
/// # Errors
/// When the setup or a trial fails.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let trials = ctx.reps_or(5);
    let stamps = ctx.dir.join("stamps");
    std::fs::create_dir_all(&stamps).with_context(|| format!("creating {}", stamps.display()))?;
    let origin = Repo::init_bare(&ctx.dir.join("origin.git"))?;
    let work = Repo::init_work(&ctx.dir.join("work"), &origin)?;
    let commit = work.commit(&[(".baton.toml", &config(&stamps)?)], "a test held by a gate")?;
    work.push()?;
    let repo = RepoUrl::new(origin.path.display().to_string()).map_err(anyhow::Error::msg)?;

    let args = ["--heartbeat-interval", INTERVAL, "--heartbeat-misses", MISSES];
    let dispatcher = Dispatcher::start(&ctx.bins, &ctx.dir, &ctx.dir.join("data"), &args)?;
    let mut runners: Vec<Daemon> = Vec::with_capacity(RUNNERS);
    for n in 0..RUNNERS {
        runners.push(support::start_runner(&ctx.bins, &ctx.dir, &dispatcher.addr, &format!("runner-{n}"))?);
    }
    let mut client = Client::connect(&dispatcher.addr).await?;
    let gate = stamps.join("go");
    let (mut lost, mut extra) = (Vec::with_capacity(trials), Vec::with_capacity(trials));
    for trial in 0..trials {
        client.wait_idle_runners(RUNNERS, PATIENCE).await?;
        let lost_before = lost_lines(&dispatcher.daemon);
        match std::fs::remove_file(&gate) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).context("removing the gate");
            }
            _ => {}
        }
        let mut tasks: Vec<TaskId> = Vec::with_capacity(RUNNERS);
        for _ in 0..RUNNERS {
            tasks.push(client.submit(&repo, &commit).await?);
        }
        for task_id in &tasks {
            wait_file(
                &stamps.join(format!("{task_id}.1")),
                &format!("trial {trial}: task {task_id} to start"),
            )
            .await?;
        }

        dispatcher.daemon.signal(libc::SIGSTOP)?;
        tokio::time::sleep(WINDOW * 2).await;
        dispatcher.daemon.signal(libc::SIGCONT)?;
        tokio::time::sleep(WINDOW * 2).await;
        std::fs::write(&gate, "").context("opening the gate")?;

        let mut attempts = 0;
        for task_id in &tasks {
            let deadline = Deadline::after(PATIENCE, format!("trial {trial}: task {task_id} to end"));
            let task = loop {
                if let Some(task) = client.show_id(*task_id).await? {
                    if task.state.is_final() {
                        break task;
                    }
                }
                deadline.check()?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            attempts += task.attempts.saturating_sub(1);
        }
        extra.push(f64::from(attempts));
        lost.push((lost_lines(&dispatcher.daemon) - lost_before) as f64);
    }
    drop(runners);
    Ok(vec![
        Figure::new("stall_runners_lost", "runners", lost).target(Bound::AtMost(0.0)),
        Figure::new("stall_extra_attempts", "attempts", extra).target(Bound::AtMost(0.0)),
    ])
}

/// The repository's `.baton.toml`: a start stamp per attempt, then a wait
/// for the gate (bounded, so a lost gate cannot hold a runner forever).
fn config(stamps: &Path) -> anyhow::Result<String> {
    let dir = plain_path(stamps)?;
    Ok(format!(
        "[test]\ncommand = 'touch {dir}/$BATON_TASK_ID.$BATON_ATTEMPT; \
         i=0; while [ ! -e {dir}/go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done'\n"
    ))
}

/// `runner lost` lines in the daemon's log so far.
fn lost_lines(daemon: &Daemon) -> usize {
    daemon.log().matches("runner lost").count()
}

async fn wait_file(path: &Path, what: &str) -> anyhow::Result<()> {
    let deadline = Deadline::after(PATIENCE, what);
    while !path.exists() {
        deadline.check()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
