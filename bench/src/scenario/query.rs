//! `query`: how long the real `baton` client takes against a dispatcher
//! holding 1,000,000 tasks (SPEC §8: `baton tasks --limit 50` within 50 ms).
//!
//! The database is seeded through the dispatcher's store API (`seed`), then
//! a real dispatcher is started on a copy of it. Each figure is the wall time
//! of a whole `baton` process, from spawn to exit, printing to a pipe; one
//! untimed run of each command warms the dispatcher's reader pool and the
//! page cache first. The same query over an in-process connection is also
//! timed, to separate the query from the process's start-up.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::{TaskId, TaskState};

use super::{seed, Ctx};
use crate::client::Client;
use crate::report::{Bound, Figure};
use crate::support::{Bins, Dispatcher};

/// Tasks in the database.
const TASKS: usize = 1_000_000;

/// Runs the scenario.
///
/// # Errors
/// When seeding, the dispatcher or a client command fails.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let reps = ctx.reps_or(20);
    // Seeding blocks the runtime, which has nothing else to do yet.
    let cached = seed::cached(TASKS)?;
    let data_dir = ctx.dir.join("data");
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    seed::copy_database(&cached, &data_dir.join("baton.db"))?;
    let dispatcher = Dispatcher::start(&ctx.bins, &ctx.dir, &data_dir, &[])?;
    let mut client = Client::connect(&dispatcher.addr).await?;

    // Check once, as JSON, that the answers are what the figures claim.
    let newest = client.tasks(None, 50).await?;
    anyhow::ensure!(newest.len() == 50, "tasks --limit 50 returned {} tasks", newest.len());
    let failed = client.tasks(Some(TaskState::Failed), 50).await?;
    anyhow::ensure!(
        failed.len() == 50 && failed.iter().all(|task| task.state == TaskState::Failed),
        "tasks --state failed --limit 50 returned something else"
    );
    // `baton show` reads at most 6 digits as an id, so pick one below a million.
    let shown = TaskId::new(999_000).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(client.show_id(shown).await?.is_some(), "task {shown} is missing");

    let mut in_process = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        client.tasks(None, 50).await?;
        in_process.push(millis(started.elapsed()));
    }
    let addr = dispatcher.addr.as_str();
    let shown = shown.to_string();
    let tasks = time_baton(&ctx.bins, addr, &["tasks", "--limit", "50"], reps)?;
    let failed = time_baton(&ctx.bins, addr, &["tasks", "--state", "failed", "--limit", "50"], reps)?;
    let show = time_baton(&ctx.bins, addr, &["show", &shown], reps)?;
    Ok(vec![
        Figure::new("query_tasks_limit50", "ms", tasks).target(Bound::AtMost(50.0)),
        Figure::new("query_tasks_failed_limit50", "ms", failed),
        Figure::new("query_show_id", "ms", show),
        Figure::new("query_tasks_limit50_in_process", "ms", in_process),
    ])
}

/// Wall times of `reps` runs of `baton --dispatcher ADDR ARGS`, after one
/// untimed run.
fn time_baton(bins: &Bins, addr: &str, args: &[&str], reps: usize) -> anyhow::Result<Vec<f64>> {
    let program = bins.path("baton")?;
    let mut times = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let started = Instant::now();
        let output = baton(&program, addr, args)?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            output.status.success() && !output.stdout.is_empty(),
            "baton {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        if rep > 0 {
            times.push(millis(elapsed));
        }
    }
    Ok(times)
}

fn baton(program: &Path, addr: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(program)
        .arg("--dispatcher")
        .arg(addr)
        .args(args)
        .env_remove("BATON_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
