//! The SQL of per-test outcomes, retried (flaky) tasks and the flaky-test
//! report (SPEC §14).

use anyhow::Context;
use protocol::message::{FlakyTest, TestCase, TestStatus};
use protocol::{CommitId, RepoUrl, TaskId};
use rusqlite::{params, OptionalExtension};

use super::{parse, Reader, Tx};

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
                status: parse(row, 1, |s: String| TestStatus::parse(&s).ok_or(format!("unknown outcome {s:?}")))?,
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
