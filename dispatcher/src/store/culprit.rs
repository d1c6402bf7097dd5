//! The SQL of per-test outcomes, retried (flaky) tasks and the flaky-test
//! report (SPEC §14).

use anyhow::Context;
use protocol::message::{FlakyTest, TestCase, TestStatus};
use protocol::{Branch, CommitId, RepoUrl, TaskId, TaskState};
use rusqlite::{params, OptionalExtension, Row};

use super::{invalid, parse, Reader, Store, Tx};

impl Tx<'_> {
    /// Records the per-test outcomes of one attempt.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn record_tests(
        &self,
        task_id: TaskId,
        attempt: u32,
        repo: &RepoUrl,
        commit: &CommitId,
        tests: &[TestCase],
        at_ms: i64,
    ) -> anyhow::Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO test_outcomes (task_id, attempt, repo, commit_id, name, outcome, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for test in tests {
            stmt.execute(params![
                task_id.get(),
                attempt,
                repo.as_str(),
                commit.as_str(),
                test.name,
                test.status.as_str(),
                at_ms
            ])?;
        }
        Ok(())
    }

    /// Puts a failed task back in the queue for a retry (`--retry-failed`).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn retry(&self, task_id: TaskId, reason: &str) -> anyhow::Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE tasks SET state = 'pending', runner = NULL, retries = retries + 1, reason = ?2
                 WHERE id = ?1",
            )?
            .execute(params![task_id.get(), reason])?;
        Ok(())
    }

    /// The tests that failed in attempts of `task_id` before `attempt`, by
    /// name.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn failed_before(&self, task_id: TaskId, attempt: u32) -> anyhow::Result<Vec<String>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT DISTINCT name FROM test_outcomes WHERE task_id = ?1 AND attempt < ?2 AND outcome = 'failed'
             ORDER BY name",
        )?;
        let rows = stmt.query_map(params![task_id.get(), attempt], |row| row.get(0))?;
        rows.collect::<Result<_, _>>().context("reading failed tests")
    }

    /// Marks a task that passed on a retry as flaky, with the tests that
    /// failed before.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn mark_flaky(&self, task_id: TaskId, failed_before: &[String]) -> anyhow::Result<()> {
        self.tx
            .prepare_cached("UPDATE tasks SET flaky_tests = ?2 WHERE id = ?1")?
            .execute(params![task_id.get(), failed_before.join("\n")])?;
        Ok(())
    }
}

impl Reader {
    /// The per-test outcomes of a task's last attempt that has any, failures
    /// first; `None` when there is no such task.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn test_cases(&self, task_id: TaskId) -> anyhow::Result<Option<Vec<TestCase>>> {
        let exists = self
            .conn
            .prepare_cached("SELECT 1 FROM tasks WHERE id = ?1")?
            .query_row([task_id.get()], |_| Ok(()))
            .optional()?;
        if exists.is_none() {
            return Ok(None);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, outcome FROM test_outcomes WHERE task_id = ?1 AND attempt =
               (SELECT MAX(attempt) FROM test_outcomes WHERE task_id = ?1)
             ORDER BY outcome <> 'failed', name",
        )?;
        let rows = stmt.query_map([task_id.get()], |row| {
            Ok(TestCase {
                name: row.get(0)?,
                status: parse(row, 1, |s: String| {
                    TestStatus::parse(&s).ok_or(format!("unknown outcome {s:?}"))
                })?,
            })
        })?;
        rows.collect::<Result<_, _>>().map(Some).context("reading test outcomes")
    }

    /// Tests that failed at least once, by flip rate (commits on which the
    /// test both failed and passed, over its runs), highest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn flaky_tests(&self, repo: Option<&RepoUrl>, limit: u32) -> anyhow::Result<Vec<FlakyTest>> {
        let mut stmt = self.conn.prepare_cached(
            "WITH per_commit AS (
                 SELECT repo, name, commit_id, COUNT(*) AS runs, SUM(outcome = 'failed') AS failures,
                        SUM(outcome = 'passed') AS passes, MAX(at) AS last_seen
                 FROM test_outcomes WHERE (?1 IS NULL OR repo = ?1)
                 GROUP BY repo, name, commit_id)
             SELECT repo, name, SUM(runs) AS runs, SUM(failures) AS failures,
                    SUM(failures > 0 AND passes > 0) AS flips, MAX(last_seen)
             FROM per_commit GROUP BY repo, name HAVING SUM(failures) > 0
             ORDER BY CAST(flips AS REAL) / runs DESC, failures DESC, repo, name LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![repo.map(RepoUrl::as_str), limit], |row| {
            Ok(FlakyTest {
                repo: parse(row, 0, |s: String| RepoUrl::new(s))?,
                name: row.get(1)?,
                runs: row.get::<_, i64>(2)?.max(0) as u64,
                failures: row.get::<_, i64>(3)?.max(0) as u64,
                flips: row.get::<_, i64>(4)?.max(0) as u64,
                last_seen_ms: row.get(5)?,
            })
        })?;
        rows.collect::<Result<_, _>>().context("reading flaky tests")
    }
}

/// A bisection as stored.
#[derive(Clone, Debug)]
pub struct BisectionRow {
    pub id: i64,
    pub repo: RepoUrl,
    pub branch: Branch,
    pub bad_task: TaskId,
    /// First-parent history after the last passing commit, oldest first;
    /// the last is the failed task's commit.
    pub commits: Vec<CommitId>,
    /// Bisect tasks made so far, oldest first.
    pub tasks: Vec<TaskId>,
}

/// One bisect task's commit and state.
#[derive(Clone, Debug)]
pub struct BisectStep {
    pub task_id: TaskId,
    pub commit: CommitId,
    pub state: TaskState,
}

fn bisection_row(row: &Row<'_>) -> rusqlite::Result<BisectionRow> {
    let commits: String = row.get(4)?;
    let tasks: String = row.get(5)?;
    Ok(BisectionRow {
        id: row.get(0)?,
        repo: parse(row, 1, |s: String| RepoUrl::new(s))?,
        branch: parse(row, 2, |s: String| Branch::new(s))?,
        bad_task: parse(row, 3, TaskId::new)?,
        commits: commits
            .lines()
            .map(|line| CommitId::new(line).map_err(|err| invalid(4)(err.to_string())))
            .collect::<Result<_, _>>()?,
        tasks: super::task_ids(&tasks),
    })
}

fn bisect_step(row: &Row<'_>) -> rusqlite::Result<BisectStep> {
    Ok(BisectStep {
        task_id: parse(row, 0, TaskId::new)?,
        commit: parse(row, 1, |s: String| CommitId::new(s))?,
        state: parse(row, 2, |s: String| s.parse::<TaskState>())?,
    })
}

const BISECTION_COLUMNS: &str = "id, repo, branch, bad_task_id, commits, tasks";

impl Store {
    /// The bisections still running, for the scheduler's start-up.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn running_bisections(&self) -> anyhow::Result<Vec<(BisectionRow, Vec<BisectStep>)>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {BISECTION_COLUMNS} FROM bisections WHERE state = 'running' ORDER BY id"
        ))?;
        let rows: Vec<BisectionRow> =
            stmt.query_map([], bisection_row)?.collect::<Result<_, _>>().context("reading bisections")?;
        let mut steps = self.conn.prepare(
            "SELECT id, commit_id, state FROM tasks WHERE bisection_id = ?1 AND kind = 'bisect' ORDER BY id",
        )?;
        let mut out = Vec::new();
        for row in rows {
            let found = steps.query_map([row.id], bisect_step)?.collect::<Result<_, _>>()?;
            out.push((row, found));
        }
        Ok(out)
    }
}

impl Tx<'_> {
    /// The newest test task of `repo`'s `branch` before `before` that passed
    /// or failed, with its commit.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn previous_tested(
        &self,
        repo: &RepoUrl,
        branch: &Branch,
        before: TaskId,
    ) -> anyhow::Result<Option<(CommitId, TaskState)>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT commit_id, state FROM tasks WHERE repo = ?1 AND branch = ?2 AND id < ?3 AND kind = 'test'
             AND state IN ('passed', 'failed') ORDER BY id DESC LIMIT 1",
        )?;
        stmt.query_row(params![repo.as_str(), branch.as_str(), before.get()], |row| {
            Ok((
                parse(row, 0, |s: String| CommitId::new(s))?,
                parse(row, 1, |s: String| s.parse::<TaskState>())?,
            ))
        })
        .optional()
        .context("reading the previous tested commit")
    }

    /// The state of the newest test or bisect task of a commit that is live
    /// or ended passed, failed or error (an aborted one says nothing).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn tested_state(&self, repo: &RepoUrl, commit: &CommitId) -> anyhow::Result<Option<TaskState>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT state FROM tasks WHERE commit_id = ?1 AND repo = ?2 AND kind IN ('test', 'bisect')
             AND state <> 'aborted' ORDER BY id DESC LIMIT 1",
        )?;
        stmt.query_row(params![commit.as_str(), repo.as_str()], |row| {
            parse(row, 0, |s: String| s.parse::<TaskState>())
        })
        .optional()
        .context("reading a commit's state")
    }

    /// Records a new running bisection.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn insert_bisection(
        &self,
        repo: &RepoUrl,
        branch: &Branch,
        good: &CommitId,
        bad_task: TaskId,
        commits: &[CommitId],
        now_ms: i64,
    ) -> anyhow::Result<i64> {
        let commits: Vec<&str> = commits.iter().map(CommitId::as_str).collect();
        self.tx
            .prepare_cached(
                "INSERT INTO bisections (repo, branch, good_commit, bad_task_id, commits, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6)",
            )?
            .execute(params![
                repo.as_str(),
                branch.as_str(),
                good.as_str(),
                bad_task.get(),
                commits.join("\n"),
                now_ms
            ])?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Notes a bisect task of a bisection.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn add_bisect_task(&self, bisection: i64, task_id: TaskId) -> anyhow::Result<()> {
        self.tx
            .prepare_cached("UPDATE tasks SET bisection_id = ?2 WHERE id = ?1")?
            .execute(params![task_id.get(), bisection])?;
        self.tx
            .prepare_cached("UPDATE bisections SET tasks = trim(tasks || ' ' || ?2) WHERE id = ?1")?
            .execute(params![bisection, task_id.get().to_string()])?;
        Ok(())
    }

    /// Ends a bisection: `found` with its culprit, or `cancelled`.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn end_bisection(
        &self,
        bisection: i64,
        culprit: Option<&CommitId>,
        steps: u32,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        let state = if culprit.is_some() { "found" } else { "cancelled" };
        self.tx
            .prepare_cached(
                "UPDATE bisections SET state = ?2, culprit = ?3, steps = ?4, finished_at = ?5 WHERE id = ?1",
            )?
            .execute(params![bisection, state, culprit.map(CommitId::as_str), steps, now_ms])?;
        Ok(())
    }
}
