//! The SQL of retention (`--keep-tasks`, `--keep-logs`): finding what may
//! go, on a reader, and removing it, in the scheduler's transaction, with
//! the same rules checked again there.
//!
//! What may go: a task in a final state that is no release's task, no
//! release's deploy task, and no deploy task at all.

use anyhow::Context;
use protocol::{CommitId, TaskId, TaskState};
use rusqlite::{params, OptionalExtension};

use super::{Reader, Tx};

/// The condition, on a row of `tasks` named `t`, for a task retention may
/// remove (or whose log it may remove).
const PRUNABLE: &str = "t.state IN ('passed', 'failed', 'error', 'aborted') AND t.kind != 'deploy'
     AND NOT EXISTS (SELECT 1 FROM releases r WHERE r.task_id = t.id)
     AND NOT EXISTS (SELECT 1 FROM releases r WHERE r.deploy_task_id = t.id)";

/// A task retention removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunedTask {
    pub id: TaskId,
    pub state: TaskState,
    pub commit: CommitId,
}

impl Reader {
    /// Up to `limit` tasks, oldest first, that fall outside the newest
    /// `keep` tasks of their repository and may go.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn tasks_beyond(&self, keep: u32, limit: u32) -> anyhow::Result<Vec<TaskId>> {
        let repos: Vec<String> = self
            .conn
            .prepare_cached("SELECT DISTINCT repo FROM tasks")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()
            .context("listing repositories")?;
        let mut found = Vec::new();
        for repo in repos {
            let room = limit.saturating_sub(found.len() as u32);
            if room == 0 {
                break;
            }
            // The newest task beyond the kept ones, through the (repo, id) index.
            let first_beyond: Option<i64> = self
                .conn
                .prepare_cached("SELECT id FROM tasks WHERE repo = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2")?
                .query_row(params![repo, keep], |row| row.get(0))
                .optional()?;
            let Some(first_beyond) = first_beyond else { continue };
            let sql = format!(
                "SELECT t.id FROM tasks t WHERE t.repo = ?1 AND t.id <= ?2 AND {PRUNABLE} ORDER BY t.id LIMIT ?3"
            );
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let ids = stmt.query_map(params![repo, first_beyond, room], |row| row.get::<_, i64>(0))?;
            for id in ids {
                found.push(TaskId::new(id?).map_err(anyhow::Error::msg)?);
            }
        }
        Ok(found)
    }

    /// Up to `limit` tasks, oldest first, that ended before `before_ms`, may
    /// go, and still have their log.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn logs_before(&self, before_ms: i64, limit: u32) -> anyhow::Result<Vec<TaskId>> {
        let sql = format!(
            "SELECT t.id FROM tasks t WHERE t.finished_at < ?1 AND t.log_pruned_at IS NULL AND {PRUNABLE}
             ORDER BY t.finished_at LIMIT ?2"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let ids = stmt.query_map(params![before_ms, limit], |row| row.get::<_, i64>(0))?;
        ids.map(|id| TaskId::new(id?).map_err(anyhow::Error::msg)).collect()
    }

    /// Whether retention removed the task's log.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn log_pruned(&self, id: TaskId) -> anyhow::Result<bool> {
        let at: Option<Option<i64>> = self
            .conn
            .prepare_cached("SELECT log_pruned_at FROM tasks WHERE id = ?1")?
            .query_row([id.get()], |row| row.get(0))
            .optional()?;
        Ok(at.flatten().is_some())
    }

    /// Whether any task of `commit` is left (in any repository).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn commit_has_tasks(&self, commit: &CommitId) -> anyhow::Result<bool> {
        let found: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM tasks WHERE commit_id = ?1 LIMIT 1")?
            .query_row([commit.as_str()], |row| row.get(0))
            .optional()?;
        Ok(found.is_some())
    }
}

impl Tx<'_> {
    /// Removes the task if it may still go (see the module docs).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn prune_task(&self, id: TaskId) -> anyhow::Result<Option<PrunedTask>> {
        let sql = format!("DELETE FROM tasks AS t WHERE t.id = ?1 AND {PRUNABLE} RETURNING state, commit_id");
        let row: Option<(String, String)> = self
            .tx
            .prepare_cached(&sql)?
            .query_row([id.get()], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
            .context("pruning a task")?;
        let Some((state, commit)) = row else { return Ok(None) };
        // Its tests' outcomes go with it: they are most of the database
        // (up to a thousand rows a task), and `baton flaky` reports on the
        // tasks retention keeps.
        self.tx
            .prepare_cached("DELETE FROM test_outcomes WHERE task_id = ?1")?
            .execute([id.get()])
            .context("pruning a task's test outcomes")?;
        Ok(Some(PrunedTask {
            id,
            state: state.parse().map_err(anyhow::Error::msg)?,
            commit: CommitId::new(commit).map_err(anyhow::Error::msg)?,
        }))
    }

    /// Notes that the task's log is removed, if it may go; returns whether
    /// it was noted (the log may then be removed).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn prune_log(&self, id: TaskId, now_ms: i64) -> anyhow::Result<bool> {
        let sql = format!(
            "UPDATE tasks AS t SET log_pruned_at = ?2 WHERE t.id = ?1 AND t.log_pruned_at IS NULL AND {PRUNABLE}"
        );
        let changed =
            self.tx.prepare_cached(&sql)?.execute(params![id.get(), now_ms]).context("pruning a log")?;
        Ok(changed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Finish, NewTask, Store, TaskKind, Trigger};
    use super::*;
    use protocol::message::{TestCase, TestStatus};
    use protocol::{Branch, Name, RepoUrl};

    fn task(store: &mut Store, repo: &str, commit: char, state: TaskState) -> TaskId {
        let tx = store.begin().unwrap();
        let new = NewTask {
            repo: RepoUrl::new(repo).unwrap(),
            branch: Branch::new("main").unwrap(),
            commit: CommitId::new(commit.to_string().repeat(40)).unwrap(),
            trigger: Trigger::Manual,
            labels: vec![],
            kind: TaskKind::Test,
            release_id: None,
            host: None,
            deployment_id: None,
            requested_by: None,
        };
        let (id, _) = tx.insert_task(&new, 1).unwrap();
        if state != TaskState::Pending {
            tx.start_attempt(id, 1, &Name::new("r").unwrap(), 2).unwrap();
        }
        if state.is_final() {
            tx.finish(id, &Finish { at_ms: 3, ..Finish::ended(state) }).unwrap();
        }
        tx.commit().unwrap();
        id
    }

    #[test]
    fn only_ended_tasks_beyond_the_newest_of_their_repository_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.db");
        let mut store = Store::open(&path, super::super::Sync::Normal).unwrap();
        let a1 = task(&mut store, "/a", 'a', TaskState::Passed);
        let a2 = task(&mut store, "/a", 'b', TaskState::Running);
        let a3 = task(&mut store, "/a", 'c', TaskState::Failed);
        let _b1 = task(&mut store, "/b", 'd', TaskState::Passed);
        let _a4 = task(&mut store, "/a", 'e', TaskState::Passed);
        let reader = Reader::open(&path).unwrap();
        // Keep 1 of /a: a1 and a3 go, a2 is running; /b has only one.
        assert_eq!(reader.tasks_beyond(1, 10).unwrap(), vec![a1, a3]);
        assert_eq!(reader.tasks_beyond(1, 1).unwrap(), vec![a1]);
        assert_eq!(reader.tasks_beyond(5, 10).unwrap(), vec![]);
        let tests = [TestCase { name: "t.T.test_a".into(), status: TestStatus::Failed }];
        let tx = store.begin().unwrap();
        for (id, commit) in [(a1, 'a'), (a3, 'c')] {
            let commit = CommitId::new(commit.to_string().repeat(40)).unwrap();
            tx.record_tests(id, 1, &RepoUrl::new("/a").unwrap(), &commit, &tests, 3).unwrap();
        }
        tx.commit().unwrap();
        let tx = store.begin().unwrap();
        assert_eq!(tx.prune_task(a2).unwrap(), None, "a running task never goes");
        let pruned = tx.prune_task(a1).unwrap().unwrap();
        assert_eq!((pruned.id, pruned.state), (a1, TaskState::Passed));
        assert!(tx.prune_log(a3, 9).unwrap());
        assert!(!tx.prune_log(a3, 9).unwrap(), "pruned once");
        tx.commit().unwrap();
        assert!(reader.log_pruned(a3).unwrap());
        assert!(!reader.commit_has_tasks(&pruned.commit).unwrap());
        // The pruned task's test outcomes went with it; a kept task's stay.
        let outcomes = |id: TaskId| -> i64 {
            reader
                .conn
                .query_row("SELECT COUNT(*) FROM test_outcomes WHERE task_id = ?1", [id.get()], |row| {
                    row.get(0)
                })
                .unwrap()
        };
        assert_eq!((outcomes(a1), outcomes(a3)), (0, 1));
    }
}
