//! `orphans`: `kill -9` of a runner whose test forks (`sh -c` with two
//! background `sleep 60` and a foreground `python3` sleeping), then the
//! number of the test's processes still alive 2 s later (issue 12, item 5:
//! expected 0). One sample per trial.
//!
//! The test's processes are told from every other process on the machine by
//! a marker in their environment: the bench's pid, the task and the attempt.
//! Each trial uses a fresh runner; the dispatcher runs with
//! `--max-attempts 1`, so the killed runner's task ends instead of running
//! again on the next trial's runner. Whatever a trial finds left is killed
//! before the next one.

use std::time::Duration;

use harness::procs::{self, marked};
use protocol::{RepoUrl, TaskId};

use super::Ctx;
use crate::client::Client;
use crate::report::{Bound, Figure};
use crate::support::{self, Deadline, Dispatcher, Repo};

/// How long a trial's waits may take.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long after the `kill -9` the test's processes are counted.
const GRACE: Duration = Duration::from_secs(2);
/// The two background sleeps and the python at least (the shell may exec
/// its last command or keep waiting for it).
const EXPECTED_PROCESSES: usize = 3;

/// Runs the scenario.
///
/// # Errors
/// When the setup or a trial fails.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let trials = ctx.reps_or(5);
    let origin = Repo::init_bare(&ctx.dir.join("origin.git"))?;
    let work = Repo::init_work(&ctx.dir.join("work"), &origin)?;
    let commit = work.commit(&[(".baton.toml", &config())], "a test that forks")?;
    work.push()?;
    let repo = RepoUrl::new(origin.path.display().to_string()).map_err(anyhow::Error::msg)?;

    let dispatcher = Dispatcher::start(&ctx.bins, &ctx.dir, &ctx.dir.join("data"), &["--max-attempts", "1"])?;
    let mut client = Client::connect(&dispatcher.addr).await?;
    let mut left = Vec::with_capacity(trials);
    for trial in 0..trials {
        let name = format!("runner-{trial}");
        let mut runner = support::start_runner(&ctx.bins, &ctx.dir, &dispatcher.addr, &name)?;
        client.wait_idle_runners(1, PATIENCE).await?;
        let task_id = client.submit(&repo, &commit).await?;
        let marker = marker(task_id);
        let deadline = Deadline::after(PATIENCE, format!("trial {trial}: the test's processes to start"));
        while marked(&marker).len() < EXPECTED_PROCESSES {
            deadline.check()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        runner.kill();
        tokio::time::sleep(GRACE).await;
        let survivors = marked(&marker);
        left.push(survivors.len() as f64);
        for pid in survivors {
            // SAFETY: kill(2) on a pid whose environment carries this trial's marker.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // With one attempt allowed, the lost runner's task ends: the next
        // trial's runner gets only its own task.
        let deadline = Deadline::after(PATIENCE, format!("trial {trial}: task {task_id} to end"));
        while !client.show_id(task_id).await?.is_some_and(|task| task.state.is_final()) {
            deadline.check()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(vec![Figure::new("orphans", "processes", left).target(Bound::AtMost(0.0))])
}

/// The marker of a task's first attempt, as the test's shell spells it.
fn marker(task_id: TaskId) -> String {
    format!("{}-{task_id}-1", std::process::id())
}

/// The repository's `.baton.toml`: the marker exported, then the forking test.
fn config() -> String {
    format!(
        "[test]\ncommand = '''\nexport {}={}-$BATON_TASK_ID-$BATON_ATTEMPT\n\
         sh -c 'sleep 60 & sleep 60 & python3 -c \"import time; time.sleep(60)\"'\n'''\n",
        procs::MARK_VAR,
        std::process::id()
    )
}
