//! `checkout`: from a manual submission being accepted to the runner starting
//! the test, on a repository the size of Python-Markdown (2,000 commits, 300
//! files, a tag every 200 commits), with one idle runner (issue 13, item 1).
//!
//! The repository is made in one `git fast-import` run, so building it takes
//! a second rather than 2,000 `git commit`s. Its `.baton.toml` makes the
//! test's first action write `date +%s%N` to a file named after the task, as
//! `watch_latency` does. The first submission finds the runner's cache empty
//! and fetches the whole repository (`checkout_cold`); the others are older
//! commits already in the cache, so they measure preparing the tree alone
//! (`checkout_warm`). An idle runner is assigned at once, so submission to
//! test started is assignment to test started plus one loopback round trip.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use protocol::{CommitId, RepoUrl, TaskState};

use super::pipeline::{self, plain_path};
use super::Ctx;
use crate::client::Client;
use crate::report::Figure;
use crate::support::{self, Deadline, Dispatcher, Repo};

/// The repository's shape: Python-Markdown has about this many of each.
const N_COMMITS: usize = 2_000;
const N_FILES: usize = 300;
/// One tag every this many commits.
const TAG_EVERY: usize = 200;
/// How often the stamp file is looked for.
const STAMP_POLL: Duration = Duration::from_millis(2);

/// Runs the scenario.
///
/// # Errors
/// When the repository cannot be made, a daemon cannot start, or a task does
/// not start or pass in time.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let reps = ctx.reps_or(10);
    let stamps = ctx.dir.join("stamps");
    std::fs::create_dir_all(&stamps)?;
    let stamp_dir = plain_path(&stamps)?;
    let origin = Repo::init_bare(&ctx.dir.join("origin.git"))?;
    let config = format!(
        "[test]\ncommand = 'date +%s%N > {stamp_dir}/$BATON_TASK_ID.tmp && mv {stamp_dir}/$BATON_TASK_ID.tmp {stamp_dir}/$BATON_TASK_ID'\n"
    );
    let commits = make_history(&origin.path, &config)?;
    let dispatcher = Dispatcher::start(&ctx.bins, &ctx.dir, &ctx.dir.join("data"), &[])?;
    let mut runner = support::start_runner(&ctx.bins, &ctx.dir, &dispatcher.addr, "runner-1")?;
    let mut client = Client::connect(&dispatcher.addr).await?;
    client.wait_idle_runners(1, support::START_PATIENCE).await?;
    let repo = RepoUrl::new(origin.path.display().to_string()).map_err(anyhow::Error::msg)?;

    let mut cold = Vec::new();
    let mut warm = Vec::with_capacity(reps);
    // The newest commit first (cold cache), then older ones spread over the
    // history.
    let step = (N_COMMITS / (reps + 1)).max(1);
    let picks = std::iter::once(N_COMMITS - 1).chain((1..=reps).map(|rep| N_COMMITS - 1 - rep * step));
    for (idx, pick) in picks.enumerate() {
        let commit = &commits[pick];
        let submitted_ns = support::realtime_ns();
        let task_id = client.submit(&repo, commit).await?;
        let stamp_path = stamps.join(task_id.to_string());
        let deadline = Deadline::after(pipeline::PATIENCE, format!("the test of commit {commit} to start"));
        let started_ns = loop {
            if let Some(stamp) = support::read_stamp(&stamp_path)? {
                break stamp;
            }
            if deadline.check().is_err() {
                runner.ensure_running()?;
                deadline.check()?;
            }
            tokio::time::sleep(STAMP_POLL).await;
        };
        let millis = (started_ns - submitted_ns) as f64 / 1e6;
        if idx == 0 {
            cold.push(millis);
        } else {
            warm.push(millis);
        }
        let task = client.wait_final(commit, pipeline::PATIENCE).await?;
        anyhow::ensure!(
            task.state == TaskState::Passed,
            "task {task_id} ended {} ({:?})",
            task.state,
            task.reason
        );
    }
    Ok(vec![Figure::new("checkout_cold", "ms", cold), Figure::new("checkout_warm", "ms", warm).p95()])
}

/// Writes `N_COMMITS` commits on `main` of the bare repository `origin` with
/// `git fast-import`; returns their ids, oldest first.
fn make_history(origin: &Path, config: &str) -> anyhow::Result<Vec<CommitId>> {
    let mut stream = Vec::with_capacity(8 << 20);
    let paragraph =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n".repeat(30);
    for idx in 0..N_COMMITS {
        let mark = idx + 1;
        writeln!(stream, "commit refs/heads/main\nmark :{mark}")?;
        writeln!(stream, "committer bench <bench@baton.invalid> {} +0000", 1_600_000_000 + idx * 60)?;
        let message = format!("change {idx}\n");
        write!(stream, "data {}\n{message}", message.len())?;
        if idx > 0 {
            writeln!(stream, "from :{}", mark - 1)?;
        }
        let mut files = Vec::new();
        if idx == 0 {
            files.push((".baton.toml".to_string(), config.to_string()));
            for file_idx in 0..N_FILES {
                files.push((file_name(file_idx), format!("{file_idx}\n{paragraph}")));
            }
        } else {
            let file_idx = idx % N_FILES;
            files.push((file_name(file_idx), format!("{file_idx} revision {idx}\n{paragraph}")));
        }
        for (name, content) in files {
            write!(stream, "M 100644 inline {name}\ndata {}\n{content}\n", content.len())?;
        }
        if mark % TAG_EVERY == 0 {
            writeln!(stream, "reset refs/tags/v{}.0\nfrom :{mark}", mark / TAG_EVERY)?;
        }
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(origin)
        .args(["fast-import", "--quiet"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running git fast-import")?;
    child.stdin.take().context("fast-import's stdin")?.write_all(&stream)?;
    anyhow::ensure!(child.wait()?.success(), "git fast-import failed");
    let output = Command::new("git")
        .arg("-C")
        .arg(origin)
        .args(["rev-list", "--reverse", "main"])
        .output()
        .context("running git rev-list")?;
    anyhow::ensure!(output.status.success(), "git rev-list failed");
    let commits = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| CommitId::new(line.trim()).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(commits.len() == N_COMMITS, "made {} commits, not {N_COMMITS}", commits.len());
    Ok(commits)
}

/// Spreads the files over a few directories, as a real project does.
fn file_name(file_idx: usize) -> String {
    format!("src/pkg{}/module_{file_idx}.py", file_idx % 12)
}
