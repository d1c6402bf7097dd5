//! `bisect`: the first failing commit among 64 commits after the last pass
//! (63 untested and the failing tip), 4 runners, a test that takes 1 s:
//! the bisect steps taken (limit ⌈log₂ 64⌉ = 6) and the wall time from the
//! tip's failure to the culprit on its task. One sample per repetition, each
//! with its own repository and culprit.

use std::time::{Duration, Instant};

use protocol::{CommitId, RepoUrl};

use super::Ctx;
use crate::client::Client;
use crate::report::{Bound, Figure};
use crate::support::{self, Deadline, Dispatcher, Repo};

/// Commits after the last pass, the failing tip included.
const RANGE: usize = 64;
/// Runners, as the issue asks.
const RUNNERS: usize = 4;
/// How long one bisection may take: 6 steps of 1 s with checkouts, widely.
const PATIENCE: Duration = Duration::from_secs(120);

/// Runs the scenario.
///
/// # Errors
/// When the setup fails, or a bisection names the wrong commit.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let reps = ctx.reps_or(3);
    let dispatcher = Dispatcher::start(&ctx.bins, &ctx.dir, &ctx.dir.join("data"), &[])?;
    let _runners = (0..RUNNERS)
        .map(|idx| support::start_runner(&ctx.bins, &ctx.dir, &dispatcher.addr, &format!("bisect-{idx}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut client = Client::connect(&dispatcher.addr).await?;
    client.wait_idle_runners(RUNNERS, PATIENCE).await?;
    let (mut steps, mut wall) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for rep in 0..reps {
        // Culprits spread over the range: 1-based positions after the pass.
        let first_bad = 1 + (rep * 37 + 11) % RANGE;
        let (repo, commits) = regressing_repo(ctx, rep, first_bad)?;
        let good = client.submit(&repo, &commits[0]).await?;
        let passed = client.wait_final(&commits[0], PATIENCE).await?;
        anyhow::ensure!(
            passed.state == protocol::TaskState::Passed,
            "task {good} of the last pass: {}",
            passed.state
        );
        let tip = commits.last().expect("a range of commits");
        let bad = client.submit(&repo, tip).await?;
        client.wait_final(tip, PATIENCE).await?;
        let started = Instant::now();
        let deadline = Deadline::after(PATIENCE, format!("the culprit of task {bad}"));
        let culprit = loop {
            if let Some(culprit) = client.show_id(bad).await?.and_then(|task| task.culprit) {
                break culprit;
            }
            deadline.check()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        wall.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            culprit.commit == commits[first_bad],
            "rep {rep}: bisection named {} instead of {}",
            culprit.commit,
            commits[first_bad]
        );
        steps.push(f64::from(culprit.steps));
    }
    Ok(vec![
        Figure::new("bisect_steps", "steps", steps).target(Bound::AtMost(6.0)),
        Figure::new("bisect_wall", "s", wall),
    ])
}

/// A repository of the last pass and the [`RANGE`] commits after it, whose
/// 1 s test fails from `first_bad` (an index into the returned commits) on.
fn regressing_repo(ctx: &Ctx, rep: usize, first_bad: usize) -> anyhow::Result<(RepoUrl, Vec<CommitId>)> {
    let work = Repo::init(&ctx.dir.join(format!("repo-{rep}")))?;
    let config = format!("[test]\ncommand = \"sleep 1; test $(cat number.txt) -lt {first_bad}\"\n");
    let mut commits = Vec::with_capacity(RANGE + 1);
    for idx in 0..=RANGE {
        let number = idx.to_string();
        commits.push(
            work.commit(&[(".baton.toml", &config), ("number.txt", &number)], &format!("commit {idx}"))?,
        );
    }
    let repo = RepoUrl::new(work.path.display().to_string()).map_err(anyhow::Error::msg)?;
    Ok((repo, commits))
}
