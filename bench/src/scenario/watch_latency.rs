//! `watch_latency`: from `git push` returning to the runner starting the
//! test, with the observer in `--watch` mode, on loopback (SPEC §8: p50 at
//! most 50 ms).
//!
//! The repository's `.baton.toml` makes the test's first action write
//! `date +%s%N` to a file named after `$BATON_COMMIT` (then rename it, so it
//! is never read half written). The bench takes CLOCK_REALTIME when the push
//! returns, the same clock `date` reads. One push at a time: the next is made
//! only after the previous task has passed.

use std::time::Duration;

use protocol::TaskState;

use super::pipeline::{self, Pipeline};
use super::Ctx;
use crate::report::{Bound, Figure};
use crate::support::{self, Deadline};

/// How often the stamp file is looked for; it does not bound the figure,
/// which the test writes itself.
const STAMP_POLL: Duration = Duration::from_millis(2);

/// Runs the scenario.
///
/// # Errors
/// When the chain cannot start or a push is not tested in time.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let pushes = ctx.reps_or(30);
    let stamps = ctx.dir.join("stamps");
    std::fs::create_dir_all(&stamps)?;
    let dir = pipeline::plain_path(&stamps)?;
    let config = format!(
        "[test]\ncommand = 'date +%s%N > {dir}/$BATON_COMMIT.tmp && mv {dir}/$BATON_COMMIT.tmp {dir}/$BATON_COMMIT'\n"
    );
    let mut chain = Pipeline::start(ctx, &[(".baton.toml", &config), ("counter", "0")]).await?;
    let mut latencies = Vec::with_capacity(pushes);
    for push in 1..=pushes {
        let counter = push.to_string();
        let commit = chain.commit_and_push(&[("counter", &counter)], &format!("push {push}"))?;
        let pushed_ns = support::realtime_ns();
        let stamp_path = stamps.join(commit.as_str());
        let deadline = Deadline::after(pipeline::PATIENCE, format!("the test of commit {commit} to start"));
        let started_ns = loop {
            if let Some(stamp) = support::read_stamp(&stamp_path)? {
                break stamp;
            }
            if deadline.check().is_err() {
                chain.ensure_running()?;
                deadline.check()?;
            }
            tokio::time::sleep(STAMP_POLL).await;
        };
        latencies.push((started_ns - pushed_ns) as f64 / 1e6);
        let task = chain.wait_final(&commit).await?;
        anyhow::ensure!(task.state == TaskState::Passed, "push {push}: the task ended {}", task.state);
    }
    Ok(vec![Figure::new("watch_latency", "ms", latencies).p95().target(Bound::AtMost(50.0))])
}
