//! `e2e_passed`: from `git push` returning until a client sees the commit's
//! task `passed`, for a one-test Python unittest suite run by the runner's
//! default command (`python3 -m unittest discover -s tests -v`), with the
//! observer in `--watch` mode (SPEC §8: at most 500 ms).
//!
//! The bench asks the dispatcher for the commit's newest task every 2 ms over
//! one in-process client connection (what `baton show COMMIT --json` sends),
//! so the figure has a resolution of about 2 ms and the polling costs the
//! machine next to nothing. Both ends are in the bench: a monotonic clock.

use std::time::{Duration, Instant};

use protocol::TaskState;

use super::pipeline::{self, Pipeline};
use super::Ctx;
use crate::client::POLL;
use crate::report::{Bound, Figure};
use crate::support::Deadline;

/// The suite: one passing test, discovered in `tests/`.
const TEST_FILE: &str = "import unittest


class One(unittest.TestCase):
    def test_one(self):
        self.assertEqual(1 + 1, 2)
";

/// Runs the scenario.
///
/// # Errors
/// When the chain cannot start or a push does not pass in time.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let pushes = ctx.reps_or(20);
    let mut chain = Pipeline::start(ctx, &[("tests/test_one.py", TEST_FILE), ("counter", "0")]).await?;
    let mut latencies = Vec::with_capacity(pushes);
    for push in 1..=pushes {
        let counter = push.to_string();
        let commit = chain.commit_and_push(&[("counter", &counter)], &format!("push {push}"))?;
        let pushed = Instant::now();
        let deadline = Deadline::after(pipeline::PATIENCE, format!("commit {commit} to pass"));
        let elapsed = loop {
            if let Some(task) = chain.client.show_commit(&commit).await? {
                if task.state == TaskState::Passed {
                    break pushed.elapsed();
                }
                anyhow::ensure!(
                    !task.state.is_final(),
                    "push {push}: the task ended {} ({:?}); see the runner's log",
                    task.state,
                    task.reason
                );
            }
            if deadline.check().is_err() {
                chain.ensure_running()?;
                deadline.check()?;
            }
            tokio::time::sleep(POLL).await;
        };
        latencies.push(millis(elapsed));
    }
    Ok(vec![Figure::new("e2e_passed", "ms", latencies).target(Bound::AtMost(500.0))])
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
