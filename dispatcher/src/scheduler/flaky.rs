//! Per-test outcomes and retries of failed runs (SPEC §14): a runner's
//! result is recorded test by test; with `--retry-failed N` a failed test
//! task goes back to the queue up to N times, to another runner when one is
//! free, and a retry that passes ends the task `passed` and flaky, naming
//! the tests that failed before.
//!
//! The flaky-test report itself is a query (`store/culprit.rs`); this module
//! only decides, inside the result's transaction, what a result means.

use protocol::message::{TestCase, TestStatus};
use protocol::{Name, TaskId, TaskState};

use super::{now_ms, printable_line, Core, Effects};
use crate::store::{TaskKind, Tx};

/// Most per-test outcomes stored for one attempt: the runner's own bound
/// (failures, up to 10,000, and `--max-test-names` others) with room to
/// spare; anything past it is a peer that ignores its bound.
pub(super) const MAX_TESTS: usize = 20_000;

/// Longest test name stored, in bytes.
const MAX_NAME: usize = 512;

/// Records the per-test outcomes of the current attempt of `task_id` and, for
/// a failed run that may be retried, requeues it.
///
/// # Returns
/// `true` when the task was requeued for a retry (the result is then
/// acknowledged without ending the task).
pub(super) fn result(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    task_id: TaskId,
    runner: &Name,
    state: TaskState,
    tests: Vec<TestCase>,
) -> anyhow::Result<bool> {
    let Some(running) = core.tasks.running(task_id) else { return Ok(false) };
    let task = &running.task;
    let tests = checked(tests);
    if !tests.is_empty() {
        tx.record_tests(task_id, task.attempts, &task.repo, &task.commit, &tests, now_ms())?;
    }
    let may_retry =
        task.kind == TaskKind::Test && task.retries < core.settings.retry_failed && !running.aborting;
    match state {
        TaskState::Failed if may_retry => {
            let retries = task.retries + 1;
            let failed = tests.iter().filter(|test| test.status == TestStatus::Failed).count();
            let reason = format!("failed on {runner}; retry {retries} of {}", core.settings.retry_failed);
            super::life::free_slot(core, task_id);
            let Some(task) = core.tasks.retry(task_id, runner.clone()) else { return Ok(false) };
            let attempts = task.attempts;
            tx.retry(task_id, &reason)?;
            tracing::info!(task_id = %task_id, attempt = attempts, runner = %runner, retries, failed_tests = failed,
                "failed run retried");
            super::life::pending_again(effects, task_id, attempts);
            Ok(true)
        }
        TaskState::Passed if task.retries > 0 => {
            let failed_before = tx.failed_before(task_id, task.attempts)?;
            tx.mark_flaky(task_id, &failed_before)?;
            tracing::info!(task_id = %task_id, attempt = task.attempts, runner = %runner, commit = %task.commit,
                tests = ?failed_before, "passed on a retry: flaky");
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// The outcomes as stored: at most [`MAX_TESTS`], failures first, names
/// printable and bounded, each name once.
fn checked(mut tests: Vec<TestCase>) -> Vec<TestCase> {
    // Failures first, so a bound never drops one before a pass.
    tests.sort_by_key(|test| test.status != TestStatus::Failed);
    let mut seen = std::collections::HashSet::new();
    tests
        .into_iter()
        .map(|test| TestCase { name: printable_line(test.name.trim(), MAX_NAME), status: test.status })
        .filter(|test| !test.name.is_empty() && seen.insert(test.name.clone()))
        .take(MAX_TESTS)
        .collect()
}
