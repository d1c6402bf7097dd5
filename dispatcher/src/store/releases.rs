//! The SQL of release records and of the notification outbox.

use anyhow::Context;
use protocol::message::ReleaseInfo;
use protocol::{Branch, CommitId, Name, ReleaseKind, ReleaseState, RepoUrl, TaskId, TaskState};
use rusqlite::{params, OptionalExtension, Row};

use super::{invalid, parse, NewRelease, Outgoing, Reader, Release, Tx};

const RELEASE_COLUMNS: &str =
    "id, repo, version, tag, branch, commit_id, task_id, deploy_task_id, created_at, \
     previous, kind, rollback_to, state, trigger";

/// Most release records one query returns.
const MAX_RELEASES: u32 = 1000;

impl Tx<'_> {
    /// The final state of the newest test task of the same repository and
    /// branch before `before`, for "recovered" notifications.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn previous_test_state(
        &self,
        repo: &RepoUrl,
        branch: &Branch,
        before: TaskId,
    ) -> anyhow::Result<Option<TaskState>> {
        let state: Option<String> = self
            .tx
            .prepare_cached(
                "SELECT state FROM tasks WHERE repo = ?1 AND branch = ?2 AND id < ?3 AND kind = 'test'
                 AND state IN ('passed', 'failed', 'error') ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![repo.as_str(), branch.as_str(), before.get()], |row| row.get(0))
            .optional()?;
        state.map(|state| state.parse::<TaskState>().map_err(anyhow::Error::msg)).transpose()
    }

    /// Appends a release record with the next version of its repository.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn insert_release(&self, release: &NewRelease, now_ms: i64) -> anyhow::Result<Release> {
        let (version, previous): (u32, Option<u32>) = self
            .tx
            .prepare_cached(
                "SELECT COALESCE(MAX(version), 0) + 1, MAX(version) FROM releases WHERE repo = ?1",
            )?
            .query_row([release.repo.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?;
        self.tx
            .prepare_cached(
                "INSERT INTO releases (repo, version, tag, branch, commit_id, task_id, created_at, previous, kind,
                 rollback_to, state, trigger) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                release.repo.as_str(),
                version,
                release.tag.as_ref().map(Branch::as_str),
                release.branch.as_str(),
                release.commit.as_str(),
                release.task_id.map(TaskId::get),
                now_ms,
                previous,
                release.kind.as_str(),
                release.rollback_to,
                release.state.as_str(),
                release.trigger,
            ])?;
        let id = self.tx.last_insert_rowid();
        self.release(id)?.context("reading back a release just inserted")
    }

    /// One release by row id.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn release(&self, id: i64) -> anyhow::Result<Option<Release>> {
        let mut stmt =
            self.tx.prepare_cached(&format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE id = ?1"))?;
        stmt.query_row([id], release_row).optional().context("reading a release")
    }

    /// A repository's releases, newest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn releases_of(&self, repo: &RepoUrl) -> anyhow::Result<Vec<Release>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE repo = ?1 ORDER BY version DESC LIMIT {MAX_RELEASES}"
        ))?;
        let rows = stmt.query_map([repo.as_str()], release_row)?;
        rows.collect::<Result<_, _>>().context("listing releases")
    }

    /// Whether the commit is already a release of the repository (a rollback
    /// record does not count).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn is_released(&self, repo: &RepoUrl, commit: &CommitId) -> anyhow::Result<bool> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM releases WHERE repo = ?1 AND commit_id = ?2 AND kind = ?3)",
        )?;
        let released = stmt
            .query_row(params![repo.as_str(), commit.as_str(), ReleaseKind::Release.as_str()], |row| {
                row.get(0)
            })?;
        Ok(released)
    }

    /// Sets a release's state (records are otherwise never rewritten).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn set_release_state(&self, id: i64, state: ReleaseState) -> anyhow::Result<()> {
        self.tx
            .prepare_cached("UPDATE releases SET state = ?2 WHERE id = ?1")?
            .execute(params![id, state.as_str()])?;
        Ok(())
    }

    /// Links a release to the task deploying it.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn set_release_deploy_task(&self, id: i64, task_id: TaskId) -> anyhow::Result<()> {
        self.tx
            .prepare_cached("UPDATE releases SET deploy_task_id = ?2 WHERE id = ?1")?
            .execute(params![id, task_id.get()])?;
        Ok(())
    }

    /// Queues an event for a notifier.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn enqueue_notification(&self, notifier: &Name, event: &str, now_ms: i64) -> anyhow::Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO outbox (notifier, event, created_at, next_at) VALUES (?1, ?2, ?3, ?3)",
            )?
            .execute(params![notifier.as_str(), event, now_ms])?;
        Ok(())
    }

    /// Names the events a version 2 database queued by position (`#N`),
    /// with the notifiers of the configuration in their order, as that
    /// version would have delivered them. Events whose position has no
    /// notifier keep it (and are dropped as undeliverable).
    ///
    /// # Returns
    /// How many events were named.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn name_positional_notifications(&self, names: &[Name]) -> anyhow::Result<usize> {
        let mut named = 0;
        for (position, name) in names.iter().enumerate() {
            named += self
                .tx
                .prepare_cached("UPDATE outbox SET notifier = ?2 WHERE notifier = ?1")?
                .execute(params![format!("#{position}"), name.as_str()])?;
        }
        Ok(named)
    }

    /// Removes a delivered notification.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn delete_notification(&self, id: i64) -> anyhow::Result<()> {
        self.tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?.execute([id])?;
        Ok(())
    }

    /// Records a failed delivery and when to try again.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn retry_notification(&self, id: i64, error: &str, next_at_ms: i64) -> anyhow::Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id, error, next_at_ms])?;
        Ok(())
    }
}

impl super::Store {
    /// Tasks that ended and releases made at or after `at_ms`, in that
    /// order: what the file writer may not have written before a crash.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn finished_since(
        &self,
        at_ms: i64,
    ) -> anyhow::Result<(Vec<protocol::message::TaskInfo>, Vec<ReleaseInfo>)> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM tasks WHERE finished_at >= ?1 ORDER BY finished_at, id",
            super::TASK_COLUMNS
        ))?;
        let tasks = stmt.query_map([at_ms], super::task_info)?.collect::<Result<Vec<_>, _>>()?;
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE created_at >= ?1 ORDER BY created_at, id"
        ))?;
        let releases = stmt.query_map([at_ms], release_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok((tasks, releases.into_iter().map(|release| release.info).collect()))
    }
}

impl Reader {
    /// Release records, newest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn releases(&self, repo: Option<&RepoUrl>) -> anyhow::Result<Vec<ReleaseInfo>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE (?1 IS NULL OR repo = ?1)
             ORDER BY created_at DESC, id DESC LIMIT {MAX_RELEASES}"
        ))?;
        let rows = stmt.query_map([repo.map(RepoUrl::as_str)], release_row)?;
        let releases: Vec<Release> = rows.collect::<Result<_, _>>().context("listing releases")?;
        Ok(releases.into_iter().map(|release| release.info).collect())
    }

    /// For each notifier, its oldest undelivered event if it is due: events
    /// reach a notifier in order, so a later one waits for an earlier one.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn due_notifications(&self, now_ms: i64) -> anyhow::Result<Vec<Outgoing>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT o.id, o.notifier, o.event, o.attempts FROM outbox o
             WHERE o.id = (SELECT MIN(id) FROM outbox WHERE notifier = o.notifier) AND o.next_at <= ?1",
        )?;
        let rows = stmt.query_map([now_ms], |row| {
            Ok(Outgoing { id: row.get(0)?, notifier: row.get(1)?, event: row.get(2)?, attempts: row.get(3)? })
        })?;
        rows.collect::<Result<_, _>>().context("reading the outbox")
    }
}

fn release_row(row: &Row<'_>) -> rusqlite::Result<Release> {
    let task_id = |idx: usize| -> rusqlite::Result<Option<TaskId>> {
        row.get::<_, Option<i64>>(idx)?.map(TaskId::new).transpose().map_err(invalid(idx))
    };
    Ok(Release {
        id: row.get(0)?,
        info: ReleaseInfo {
            repo: parse(row, 1, |s: String| RepoUrl::new(s))?,
            version: row.get(2)?,
            tag: row.get::<_, Option<String>>(3)?.map(Branch::new).transpose().map_err(invalid(3))?,
            branch: parse(row, 4, |s: String| Branch::new(s))?,
            commit: parse(row, 5, |s: String| CommitId::new(s))?,
            task_id: task_id(6)?,
            deploy_task_id: task_id(7)?,
            created_at_ms: row.get(8)?,
            previous: row.get(9)?,
            kind: parse(row, 10, |s: String| s.parse::<ReleaseKind>())?,
            rollback_to: row.get(11)?,
            state: parse(row, 12, |s: String| s.parse::<ReleaseState>())?,
            trigger: row.get(13)?,
        },
    })
}
