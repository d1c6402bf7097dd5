//! `web`: the dispatcher's web report service (`--http 127.0.0.1:0`) with
//! the 1,000,000-task database the `query` scenario seeds (`seed`, cached).
//!
//! `web_overview` and `web_api_tasks_limit50` are the wall time of one
//! HTTP/1.1 request (`Connection: close`) from writing it to reading the
//! whole answer, over loopback, after one untimed request each: the server's
//! time plus one connection set-up. `web_log_follow` is from a running test
//! printing a line (it prints CLOCK_REALTIME with it, `date +%s%N`) to the
//! bench reading that line from `GET /api/v1/tasks/ID/log?follow=1`.

use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::message::RunnerState;
use protocol::{RepoUrl, TaskState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{seed, Ctx};
use crate::client::Client;
use crate::report::{Bound, Figure};
use crate::support::{self, Deadline, Dispatcher, Repo};

/// Tasks in the database.
const TASKS: usize = 1_000_000;
/// Lines the followed test prints, 200 ms apart.
const LINES: usize = 20;
/// How long a wait or a request may take.
const PATIENCE: Duration = Duration::from_secs(60);
/// The largest answer read.
const MAX_ANSWER: usize = 16 << 20;

/// Runs the scenario.
///
/// # Errors
/// When seeding, the dispatcher, the runner or a request fails.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let reps = ctx.reps_or(20);
    // Seeding blocks the runtime, which has nothing else to do yet.
    let cached = seed::cached(TASKS)?;
    let data_dir = ctx.dir.join("data");
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    seed::copy_database(&cached, &data_dir.join("baton.db"))?;
    let (Dispatcher { daemon: mut dispatcher, addr }, http) =
        Dispatcher::start_with_http(&ctx.bins, &ctx.dir, &data_dir, &[])?;

    let overview = time_get(&http, "/", reps).await?;
    let tasks = time_get(&http, "/api/v1/tasks?limit=50", reps).await?;

    let origin = Repo::init_bare(&ctx.dir.join("origin.git"))?;
    let work = Repo::init_work(&ctx.dir.join("work"), &origin)?;
    let command = format!(
        "[test]\ncommand = \"sleep 1; for i in $(seq {LINES}); do echo LINE $(date +%s%N); sleep 0.2; done; \
         echo '1 passed, 0 failed'\"\n"
    );
    let commit = work.commit(&[(".baton.toml", &command)], "printing test")?;
    work.push()?;
    let repo = RepoUrl::new(origin.path.display().to_string()).map_err(anyhow::Error::msg)?;
    let _runner = support::start_runner(&ctx.bins, &ctx.dir, &addr, "web")?;
    let mut client = Client::connect(&addr).await?;
    client.wait_idle_runners(1, PATIENCE).await?;
    let task_id = client.submit(&repo, &commit).await?;
    let deadline = Deadline::after(PATIENCE, format!("task {task_id} running"));
    loop {
        let task = client.show_id(task_id).await?.context("the submitted task vanished")?;
        if task.state == TaskState::Running {
            break;
        }
        anyhow::ensure!(!task.state.is_final(), "task {task_id} ended {} ({:?})", task.state, task.reason);
        if deadline.check().is_err() {
            dispatcher.ensure_running()?;
            deadline.check()?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let follow = follow_latencies(&http, &format!("/api/v1/tasks/{task_id}/log?follow=1")).await?;
    anyhow::ensure!(
        follow.len() >= LINES / 2,
        "only {} of {LINES} lines were read whole from the followed log",
        follow.len()
    );
    let runners = client.runners().await?;
    anyhow::ensure!(runners.iter().any(|runner| runner.state != RunnerState::Dead), "the runner died");
    Ok(vec![
        Figure::new("web_overview", "ms", overview).target(Bound::AtMost(20.0)),
        Figure::new("web_api_tasks_limit50", "ms", tasks).target(Bound::AtMost(20.0)),
        Figure::new("web_log_follow", "ms", follow).target(Bound::AtMost(50.0)),
    ])
}

/// Wall times in ms of `reps` GETs of `path`, after one untimed one.
async fn time_get(http: &str, path: &str, reps: usize) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let started = Instant::now();
        let answer = tokio::time::timeout(PATIENCE, get(http, path))
            .await
            .with_context(|| format!("GET {path} took over {PATIENCE:?}"))??;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            answer.starts_with(b"HTTP/1.1 200"),
            "GET {path} answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
        if rep > 0 {
            times.push(elapsed.as_secs_f64() * 1000.0);
        }
    }
    Ok(times)
}

/// One GET with `Connection: close`, the whole answer (head and body).
pub(super) async fn get(http: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(http).await.with_context(|| format!("connecting to {http}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.context("sending a request")?;
    let mut answer = Vec::new();
    (&mut stream).take(MAX_ANSWER as u64).read_to_end(&mut answer).await.context("reading an answer")?;
    Ok(answer)
}

/// Follows the log until the task ends and returns, for each `LINE NS` read
/// whole, the ms from NS (the test's CLOCK_REALTIME) to reading it.
async fn follow_latencies(http: &str, path: &str) -> anyhow::Result<Vec<f64>> {
    let mut stream = TcpStream::connect(http).await.with_context(|| format!("connecting to {http}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.context("sending a request")?;
    let deadline = Deadline::after(PATIENCE, format!("the followed log of {path} to end"));
    let (mut buffer, mut scanned, mut latencies) = (Vec::new(), 0, Vec::new());
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        deadline.check()?;
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .context("the followed log went silent")?
            .context("reading the followed log")?;
        let now = support::realtime_ns();
        if read == 0 {
            return Ok(latencies);
        }
        anyhow::ensure!(buffer.len() + read <= MAX_ANSWER, "the followed log is too long");
        buffer.extend_from_slice(&chunk[..read]);
        // Only whole lines; chunked framing may split one, which is skipped.
        while let Some(newline) = buffer[scanned..].iter().position(|byte| *byte == b'\n') {
            let line = String::from_utf8_lossy(&buffer[scanned..scanned + newline]).into_owned();
            scanned += newline + 1;
            if let Some(stamp) = line.trim().strip_prefix("LINE ").and_then(|ns| ns.parse::<i128>().ok()) {
                latencies.push((now - stamp) as f64 / 1e6);
            }
        }
    }
}
