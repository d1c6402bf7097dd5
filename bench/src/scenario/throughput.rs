//! `throughput`: how many no-op tasks a real dispatcher with default, durable
//! settings (`--sync full`) completes per second with 50 simulated runners
//! (SPEC §8: at least 5,000 tasks/s).
//!
//! Each sample starts a fresh dispatcher and data dir, connects the runners,
//! then submits 20,000 distinct fake commits through 4 pipelined observer
//! connections at once. Figures: tasks completed per second, from the first
//! submission to the last `ResultAck`; and submissions acknowledged per
//! second, from the first submission to the last `Accepted`. Each sample is
//! made twice: on a feature branch, and on `main`, a release branch by
//! default, where every passed task also records a release.
//!
//! `web_polled` (issue 14) makes the same feature-branch samples in pairs,
//! with the web service off and then with 200 HTTP clients each polling
//! `GET /api/v1/tasks?limit=50` once a second (a team's dashboards left
//! open), and reports the ratio: polling must keep at least 90 % of the
//! throughput.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::{Branch, RepoUrl, TaskState};
use tokio::task::JoinSet;

use super::Ctx;
use crate::client::Client;
use crate::report::{Bound, Figure};
use crate::sim::{self, Fleet};
use crate::support::{Deadline, Dispatcher, START_PATIENCE};

/// Simulated runners, one slot each.
const RUNNERS: usize = 50;
/// Tasks per sample.
const TASKS: usize = 20_000;
/// Observer connections the submissions are spread over.
const OBSERVERS: usize = 4;
/// Longest a sample may take; a slower one reports its rate over this
/// window, which keeps the whole benchmark within its time budget.
const PATIENCE: Duration = Duration::from_secs(30);
/// Where most commits are tested: no release record when a task passes.
const FEATURE_BRANCH: &str = "feature";
/// A release branch by default (SPEC §3): every passed task also appends a
/// release record, to SQLite and as a file.
const RELEASE_BRANCH: &str = "main";

/// Runs the scenario.
///
/// # Errors
/// When a sample cannot be completed.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let mut tasks_per_second = Vec::new();
    let mut submits_per_second = Vec::new();
    let mut release_branch = Vec::new();
    for sample in 0..ctx.reps_or(3) {
        let (tasks, submits) = sample_once(ctx, sample as u64, FEATURE_BRANCH, 0)
            .await
            .with_context(|| format!("sample {sample} on {FEATURE_BRANCH}"))?;
        eprintln!("#   sample {sample}: {tasks:.0} tasks/s, {:.0} submits/s", submits.unwrap_or(f64::NAN));
        tasks_per_second.push(tasks);
        submits_per_second.extend(submits);
        let (tasks, _) = sample_once(ctx, sample as u64, RELEASE_BRANCH, 0)
            .await
            .with_context(|| format!("sample {sample} on {RELEASE_BRANCH}"))?;
        eprintln!("#   sample {sample}: {tasks:.0} tasks/s on {RELEASE_BRANCH}");
        release_branch.push(tasks);
    }
    let target = Bound::AtLeast(5000.0);
    Ok(vec![
        Figure::new("throughput_tasks", "tasks/s", tasks_per_second).target(target),
        Figure::new("throughput_tasks_release_branch", "tasks/s", release_branch).target(target),
        Figure::new("throughput_submits", "submits/s", submits_per_second),
    ])
}

/// HTTP clients of `web_polled`.
const WEB_CLIENTS: usize = 200;
/// How often each of them polls.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Runs `web_polled`.
///
/// # Errors
/// When a sample cannot be completed.
pub async fn run_polled(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let (mut quiet, mut polled, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for sample in 0..ctx.reps_or(3) {
        let (without, _) = sample_once(ctx, sample as u64, FEATURE_BRANCH, 0)
            .await
            .with_context(|| format!("sample {sample} without HTTP clients"))?;
        let (with, _) = sample_once(ctx, sample as u64, FEATURE_BRANCH, WEB_CLIENTS)
            .await
            .with_context(|| format!("sample {sample} with {WEB_CLIENTS} HTTP clients"))?;
        eprintln!("#   sample {sample}: {without:.0} tasks/s quiet, {with:.0} tasks/s polled");
        quiet.push(without);
        polled.push(with);
        ratios.push(100.0 * with / without);
    }
    Ok(vec![
        Figure::new("throughput_tasks_web_quiet", "tasks/s", quiet),
        Figure::new("throughput_tasks_web_polled", "tasks/s", polled),
        Figure::new("throughput_web_polled_ratio", "%", ratios).target(Bound::AtLeast(90.0)),
    ])
}

/// One fresh dispatcher, one burst of submissions on `branch`, with
/// `web_clients` HTTP clients polling it (none: `--http off`); returns
/// tasks/s and, when every task was done in time, submits/s.
async fn sample_once(
    ctx: &Ctx,
    sample: u64,
    branch: &str,
    web_clients: usize,
) -> anyhow::Result<(f64, Option<f64>)> {
    let dir = ctx.dir.join(format!("sample-{sample}-{branch}-{web_clients}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (mut dispatcher, http) = if web_clients == 0 {
        (Dispatcher::start(&ctx.bins, &dir, &dir.join("data"), &["--http", "off"])?, None)
    } else {
        let (dispatcher, http) = Dispatcher::start_with_http(&ctx.bins, &dir, &dir.join("data"), &[])?;
        (dispatcher, Some(http))
    };
    let mut fleet = Fleet::connect(&dispatcher.addr, "sim", RUNNERS, TASKS as u64).await?;
    let deadline = Deadline::after(START_PATIENCE, "the simulated runners to register");
    while fleet.counters.registered.load(Ordering::SeqCst) < RUNNERS as u64 {
        deadline.check()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let polls = Arc::new(AtomicU64::new(0));
    let mut pollers = JoinSet::new();
    if let Some(http) = &http {
        for client in 0..web_clients {
            let (http, polls) = (http.clone(), Arc::clone(&polls));
            // Spread the clients over the second, as dashboards opened at
            // different moments would be.
            let phase = POLL_EVERY.mul_f64(client as f64 / web_clients as f64);
            pollers.spawn(async move { poll(&http, phase, &polls).await });
        }
    }

    let repo = RepoUrl::new("/srv/bench/throughput.git").map_err(anyhow::Error::msg)?;
    let branch = Branch::new(branch).map_err(anyhow::Error::msg)?;
    let commits = sim::fake_commits(TASKS, 0x5eed_0000 + sample);
    let mut submitters = JoinSet::new();
    let started = Instant::now();
    for (idx, chunk) in commits.chunks(TASKS.div_ceil(OBSERVERS)).enumerate() {
        let (addr, repo, branch, chunk) =
            (dispatcher.addr.clone(), repo.clone(), branch.clone(), chunk.to_vec());
        submitters.spawn(async move {
            sim::submit_all(&addr, &format!("observer-{idx}"), &repo, &branch, &chunk).await
        });
    }
    let finished = tokio::time::timeout(PATIENCE, fleet.counters.target_reached.notified()).await;
    let ended = Instant::now();
    pollers.abort_all();
    while let Some(joined) = pollers.join_next().await {
        if let Ok(Err(err)) = joined {
            return Err(err.context("an HTTP client's poll failed"));
        }
    }
    if http.is_some() {
        let polls = polls.load(Ordering::SeqCst);
        let rate = polls as f64 / ended.duration_since(started).as_secs_f64();
        eprintln!("#   {web_clients} HTTP clients answered {polls} polls ({rate:.0}/s)");
    }
    dispatcher.daemon.ensure_running()?;
    if let Some(err) = fleet.failure() {
        return Err(err.context("a simulated runner failed"));
    }
    if finished.is_err() {
        // Far below the target: report the rate over the window rather than
        // blow the time budget of the whole benchmark.
        let acked = fleet.counters.acked.load(Ordering::SeqCst);
        eprintln!(
            "#   warning: only {acked} of {TASKS} tasks were done after {PATIENCE:?}; rate over that window"
        );
        let rate = acked as f64 / ended.duration_since(started).as_secs_f64();
        return Ok((rate, None));
    }

    let mut last_accepted = started;
    let (mut accepted, mut duplicates) = (0, 0);
    while let Some(joined) = submitters.join_next().await {
        let submitted = joined.context("a simulated observer panicked")??;
        accepted += submitted.accepted;
        duplicates += submitted.duplicates;
        last_accepted = last_accepted.max(submitted.last_answer);
    }
    anyhow::ensure!(accepted == TASKS as u64, "{accepted} of {TASKS} submissions accepted");
    anyhow::ensure!(duplicates == 0, "{duplicates} submissions were taken for duplicates");
    let refused = fleet.counters.refused.load(Ordering::SeqCst);
    anyhow::ensure!(refused == 0, "{refused} results were refused");
    let mut client = Client::connect(&dispatcher.addr).await?;
    let status = client.status().await?;
    let passed = status.tasks.iter().find(|(state, _)| *state == TaskState::Passed).map_or(0, |(_, n)| *n);
    anyhow::ensure!(passed == TASKS as u64, "the dispatcher counts {passed} passed tasks, expected {TASKS}");

    let tasks_per_second = TASKS as f64 / ended.duration_since(started).as_secs_f64();
    let submits_per_second = TASKS as f64 / last_accepted.duration_since(started).as_secs_f64();
    Ok((tasks_per_second, Some(submits_per_second)))
}

/// Polls `GET /api/v1/tasks?limit=50` every [`POLL_EVERY`] after `phase`,
/// counting the answers, until aborted; a failed poll ends it with the error.
async fn poll(http: &str, phase: Duration, polls: &AtomicU64) -> anyhow::Result<()> {
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + phase, POLL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let answer = super::web::get(http, "/api/v1/tasks?limit=50").await?;
        anyhow::ensure!(
            answer.starts_with(b"HTTP/1.1 200"),
            "GET /api/v1/tasks?limit=50 answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
        polls.fetch_add(1, Ordering::Relaxed);
    }
}
