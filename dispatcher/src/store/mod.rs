//! The dispatcher's SQLite store: every SQL string of the dispatcher lives in
//! this module.
//!
//! One writing [`Store`] belongs to the scheduler thread, which groups the
//! state changes of a batch of events into one [`Tx`] and acknowledges
//! nothing before it commits. Queries from clients go through [`Reader`]s,
//! separate connections that WAL lets read while the writer writes.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use protocol::message::{ReleaseInfo, Summary, TaskInfo};
use protocol::{
    Branch, CommitId, CommitPrefix, Label, Name, ReleaseKind, ReleaseState, RepoUrl, TaskId, TaskState,
};
use rusqlite::{params, OptionalExtension, Row};

mod culprit;
mod deployments;

pub use self::culprit::{BisectStep, BisectionRow};
mod prune;
pub use prune::PrunedTask;
mod releases;
mod web;

pub use self::deployments::{Deployment, NewDeployment};

const SCHEMA_V1: &str = include_str!("schema.sql");
const SCHEMA_V2: &str = include_str!("v2.sql");
const SCHEMA_V3: &str = include_str!("v3.sql");
const SCHEMA_V4: &str = include_str!("v4.sql");
const SCHEMA_DEPLOYMENTS: &str = include_str!("deployments.sql");
const SCHEMA_CULPRIT: &str = include_str!("culprit.sql");
const SCHEMA_LOGS: &str = include_str!("logs.sql");
const SCHEMA_USERS: &str = include_str!("users.sql");

/// Migrations in order; entry `i` takes the database from version `i` to
/// `i + 1`.
const MIGRATIONS: &[&str] = &[
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    SCHEMA_DEPLOYMENTS,
    SCHEMA_CULPRIT,
    SCHEMA_LOGS,
    SCHEMA_USERS,
];

/// How hard SQLite syncs on commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// fsync on every commit: nothing committed is lost even on power loss.
    Full,
    /// WAL's NORMAL: nothing committed is lost when the process dies; the last
    /// commits may be lost on power loss.
    Normal,
}

/// What started a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Observer,
    Manual,
    Rerun,
    /// A deploy task made for a release.
    Deploy,
    /// A branch tip submitted by one of an observer's schedules: never
    /// deduplicated (only `observer` tasks are).
    Schedule,
    /// A step of a bisection (`scheduler/bisect.rs`).
    Bisect,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Observer => "observer",
            Trigger::Manual => "manual",
            Trigger::Rerun => "rerun",
            Trigger::Deploy => "deploy",
            Trigger::Schedule => "schedule",
            Trigger::Bisect => "bisect",
        }
    }
}

/// What a task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// The repository's tests.
    Test,
    /// A release's deploy steps.
    Deploy,
    /// The tests, run on a commit to find the first failing one: lowest
    /// priority, on idle runners only.
    Bisect,
}

impl TaskKind {
    fn as_str(self) -> &'static str {
        match self {
            TaskKind::Test => "test",
            TaskKind::Deploy => "deploy",
            TaskKind::Bisect => "bisect",
        }
    }

    fn parse(text: &str) -> Result<TaskKind, String> {
        match text {
            "test" => Ok(TaskKind::Test),
            "deploy" => Ok(TaskKind::Deploy),
            "bisect" => Ok(TaskKind::Bisect),
            other => Err(format!("unknown task kind {other:?}")),
        }
    }
}

/// A task to insert.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub repo: RepoUrl,
    pub branch: Branch,
    pub commit: CommitId,
    pub labels: Vec<Label>,
    pub trigger: Trigger,
    pub kind: TaskKind,
    /// The release a deploy task deploys.
    pub release_id: Option<i64>,
    /// Who asked for it (a client's submit or rerun): the proven user, or
    /// the client's name.
    pub requested_by: Option<String>,
    /// The only runner that may run it (a host of a deployment).
    pub host: Option<Name>,
    /// The deployment a host's deploy task belongs to.
    pub deployment_id: Option<i64>,
}

/// A task that is queued or running, as the scheduler keeps it in memory.
#[derive(Clone, Debug)]
pub struct LiveTask {
    pub id: TaskId,
    pub repo: RepoUrl,
    pub branch: Branch,
    pub commit: CommitId,
    pub labels: Vec<Label>,
    pub state: TaskState,
    pub attempts: u32,
    pub runner: Option<Name>,
    pub kind: TaskKind,
    pub release_id: Option<i64>,
    /// The only runner that may run it (a host of a deployment).
    pub host: Option<Name>,
    pub deployment_id: Option<i64>,
    /// Failed runs retried so far (`--retry-failed`).
    pub retries: u32,
    /// The runner of the failed run being retried: another one is preferred.
    pub avoid: Option<Name>,
}

/// The end of an attempt, to record.
#[derive(Clone, Debug)]
pub struct Finish {
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub summary: Option<Summary>,
    pub reason: Option<String>,
    pub at_ms: i64,
    /// A tag on the commit, reported by the runner.
    pub tag: Option<Branch>,
    /// The deploy step that failed.
    pub failed_step: Option<String>,
}

impl Finish {
    /// A task ended without running to completion: no exit code, duration
    /// or summary.
    pub fn ended(state: TaskState) -> Finish {
        Finish {
            state,
            exit_code: None,
            duration_ms: None,
            summary: None,
            reason: None,
            at_ms: now_ms(),
            tag: None,
            failed_step: None,
        }
    }
}

pub(crate) use crate::time::now_ms;

/// A release record to append; the version and previous release are
/// decided by the store.
#[derive(Clone, Debug)]
pub struct NewRelease {
    pub repo: RepoUrl,
    pub tag: Option<Branch>,
    pub branch: Branch,
    pub commit: CommitId,
    pub task_id: Option<TaskId>,
    pub kind: ReleaseKind,
    pub rollback_to: Option<u32>,
    pub state: ReleaseState,
    pub trigger: String,
}

/// A release record and its row id.
#[derive(Clone, Debug)]
pub struct Release {
    pub id: i64,
    pub info: ReleaseInfo,
}

/// A notification waiting for delivery.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub id: i64,
    /// The notifier's name (`#N`, a position, for an event queued by a
    /// version 2 database and not named since).
    pub notifier: String,
    pub event: String,
    pub attempts: u32,
}

/// The writing connection.
pub struct Store {
    conn: rusqlite::Connection,
}

/// One write transaction; dropped without [`Tx::commit`] it rolls back.
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
}

/// A read-only connection for client queries.
pub struct Reader {
    conn: rusqlite::Connection,
}

/// Prepared statements a reader keeps: more than the kinds of queries the
/// client and the web make, with the task list's filter combinations.
const READER_STATEMENTS: usize = 64;

fn configure(conn: &rusqlite::Connection) -> anyhow::Result<()> {
    // A reader waiting on a checkpoint should wait, not fail.
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(())
}

impl Store {
    /// Opens (creating and migrating) the database at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened, is not a Baton database, or is newer
    /// than this binary.
    pub fn open(path: &Path, sync: Sync) -> anyhow::Result<Store> {
        let conn = rusqlite::Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        Store::init(conn, sync)
    }

    /// An in-memory store, for tests.
    ///
    /// # Errors
    /// Only if SQLite itself fails.
    pub fn open_in_memory() -> anyhow::Result<Store> {
        Store::init(rusqlite::Connection::open_in_memory()?, Sync::Normal)
    }

    fn init(mut conn: rusqlite::Connection, sync: Sync) -> anyhow::Result<Store> {
        configure(&conn)?;
        conn.pragma_update(None, "journal_mode", "wal").context("enabling WAL")?;
        let sync_value = match sync {
            Sync::Full => "full",
            Sync::Normal => "normal",
        };
        conn.pragma_update(None, "synchronous", sync_value)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > MIGRATIONS.len() as i64 {
            anyhow::bail!(
                "database schema version {version} is newer than this dispatcher ({})",
                MIGRATIONS.len()
            );
        }
        for (idx, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(migration).with_context(|| format!("migrating database to v{}", idx + 1))?;
            tx.pragma_update(None, "user_version", (idx + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store { conn })
    }

    /// Starts a write transaction.
    ///
    /// # Errors
    /// When SQLite cannot begin (locked, I/O).
    pub fn begin(&mut self) -> anyhow::Result<Tx<'_>> {
        Ok(Tx { tx: self.conn.transaction().context("beginning a transaction")? })
    }

    /// Every task that is pending or running, oldest first: what the
    /// scheduler rebuilds its memory from at start-up.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn live_tasks(&self) -> anyhow::Result<Vec<LiveTask>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, repo, branch, commit_id, labels, state, attempts, runner, kind, release_id, host,
             deployment_id, retries FROM tasks WHERE state IN ('pending', 'running') ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(LiveTask {
                id: parse(row, 0, TaskId::new)?,
                repo: parse(row, 1, |s: String| RepoUrl::new(s))?,
                branch: parse(row, 2, |s: String| Branch::new(s))?,
                commit: parse(row, 3, |s: String| CommitId::new(s))?,
                labels: parse_labels(row, 4)?,
                state: parse(row, 5, |s: String| s.parse::<TaskState>())?,
                attempts: row.get(6)?,
                runner: row.get::<_, Option<String>>(7)?.map(Name::new).transpose().map_err(invalid(7))?,
                kind: parse(row, 8, |s: String| TaskKind::parse(&s))?,
                release_id: row.get(9)?,
                host: row.get::<_, Option<String>>(10)?.map(Name::new).transpose().map_err(invalid(10))?,
                deployment_id: row.get(11)?,
                retries: row.get(12)?,
                avoid: None,
            })
        })?;
        rows.collect::<Result<_, _>>().context("reading live tasks")
    }

    /// Number of tasks in each state.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn count_by_state(&self) -> anyhow::Result<Vec<(TaskState, u64)>> {
        count_by_state(&self.conn)
    }

    /// Runs `PRAGMA integrity_check`.
    ///
    /// # Errors
    /// SQLite errors; a damaged database is reported as `Ok(false)`.
    pub fn integrity_ok(&self) -> anyhow::Result<bool> {
        let result: String = self.conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
        Ok(result == "ok")
    }
}

impl Tx<'_> {
    /// Inserts a pending task.
    ///
    /// # Returns
    /// The task's id and `true`, or, for an observer submission of a known
    /// (repository, commit), the existing task's id and `false`.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn insert_task(&self, task: &NewTask, now_ms: i64) -> anyhow::Result<(TaskId, bool)> {
        let labels = join_labels(&task.labels);
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT INTO tasks (repo, branch, commit_id, trigger, state, created_at, labels, kind, release_id,
             host, deployment_id, requested_by)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (repo, commit_id) WHERE trigger = 'observer' DO NOTHING",
            )?
            .execute(params![
                task.repo.as_str(),
                task.branch.as_str(),
                task.commit.as_str(),
                task.trigger.as_str(),
                now_ms,
                labels,
                task.kind.as_str(),
                task.release_id,
                task.host.as_ref().map(Name::as_str),
                task.deployment_id,
                task.requested_by
            ])?;
        if inserted == 1 {
            return Ok((task_id(self.tx.last_insert_rowid())?, true));
        }
        let existing: i64 = self
            .tx
            .prepare_cached(
                "SELECT id FROM tasks WHERE repo = ?1 AND commit_id = ?2 AND trigger = 'observer'",
            )?
            .query_row(params![task.repo.as_str(), task.commit.as_str()], |row| row.get(0))?;
        Ok((task_id(existing)?, false))
    }

    /// Marks a task running on `runner` as attempt `attempt`.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn start_attempt(&self, id: TaskId, attempt: u32, runner: &Name, now_ms: i64) -> anyhow::Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE tasks SET state = 'running', attempts = ?2, runner = ?3, started_at = ?4,
                 finished_at = NULL, exit_code = NULL, reason = NULL WHERE id = ?1",
            )?
            .execute(params![id.get(), attempt, runner.as_str(), now_ms])?;
        Ok(())
    }

    /// Puts a task back in the queue after its runner was lost.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn requeue(&self, id: TaskId, reason: &str) -> anyhow::Result<()> {
        self.tx
            .prepare_cached("UPDATE tasks SET state = 'pending', runner = NULL, reason = ?2 WHERE id = ?1")?
            .execute(params![id.get(), reason])?;
        Ok(())
    }

    /// Puts a task back in the queue after a runner refused it, giving back
    /// the attempt its assignment counted.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn requeue_refused(&self, id: TaskId, attempts: u32, reason: &str) -> anyhow::Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE tasks SET state = 'pending', runner = NULL, attempts = ?3, reason = ?2 WHERE id = ?1",
            )?
            .execute(params![id.get(), reason, attempts])?;
        Ok(())
    }

    /// Records who asked to abort a task (its end is recorded when it ends).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn set_aborted_by(&self, id: TaskId, by: &str) -> anyhow::Result<()> {
        self.tx
            .prepare_cached("UPDATE tasks SET aborted_by = ?2 WHERE id = ?1")?
            .execute(params![id.get(), by])
            .context("recording who aborted a task")?;
        Ok(())
    }

    /// Records a task's final state.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn finish(&self, id: TaskId, finish: &Finish) -> anyhow::Result<()> {
        let summary = finish.summary;
        self.tx
            .prepare_cached(
                "UPDATE tasks SET state = ?2, exit_code = ?3, duration_ms = ?4, passed = ?5, failed = ?6,
                 skipped = ?7, reason = ?8, finished_at = ?9 WHERE id = ?1",
            )?
            .execute(params![
                id.get(),
                finish.state.as_str(),
                finish.exit_code,
                finish.duration_ms.map(|ms| ms as i64),
                summary.map(|s| s.passed),
                summary.map(|s| s.failed),
                summary.map(|s| s.skipped),
                finish.reason,
                finish.at_ms
            ])?;
        Ok(())
    }

    /// Reads one task inside the transaction (for rerun and late results).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn task(&self, id: TaskId) -> anyhow::Result<Option<TaskInfo>> {
        let mut stmt = self.tx.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
        stmt.query_row([id.get()], task_info).optional().context("reading a task")
    }

    /// Makes task ids continue after `last` (when moving tasks in from
    /// another database, say; tests use it to reach large ids quickly).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn bump_task_ids(&self, last: i64) -> anyhow::Result<()> {
        let updated =
            self.tx.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = 'tasks'", [last])?;
        if updated == 0 {
            self.tx.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('tasks', ?1)", [last])?;
        }
        Ok(())
    }

    /// Commits; only after this may anything be acknowledged.
    ///
    /// # Errors
    /// I/O errors (disk full): nothing of the transaction is stored.
    pub fn commit(self) -> anyhow::Result<()> {
        self.tx.commit().context("committing to the database")
    }
}

impl Reader {
    /// Opens a read-only connection to the database at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> anyhow::Result<Reader> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(path, flags)
            .with_context(|| format!("opening database {} for reading", path.display()))?;
        configure(&conn)?;
        // Every query a reader runs stays prepared (rusqlite keeps 16).
        conn.set_prepared_statement_cache_capacity(READER_STATEMENTS);
        Ok(Reader { conn })
    }

    /// Tasks, newest first, optionally filtered.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn tasks(
        &self,
        repo: Option<&RepoUrl>,
        state: Option<TaskState>,
        limit: u32,
    ) -> anyhow::Result<Vec<TaskInfo>> {
        self.tasks_page(repo, state, None, limit)
    }

    /// Tasks newest first with only the filters given, with ids below
    /// `before` (a web page's next page starts below the last id shown): one statement per combination of filters and limit, each
    /// prepared once. SQLite (built with STAT4) recompiles a statement at
    /// every run when its plan may depend on a bound value (`?1 IS NULL OR
    /// …`, `state = ?2`, `LIMIT ?4`): that was half of a web poll's cost
    /// (issue 14). Only a repository and a page's id are bound.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn tasks_page(
        &self,
        repo: Option<&RepoUrl>,
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: u32,
    ) -> anyhow::Result<Vec<TaskInfo>> {
        let mut conditions = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(repo) = repo {
            values.push(repo.as_str().to_string().into());
            conditions.push(format!("repo = ?{}", values.len()));
        }
        // A page's id (the rowid, which STAT4 does not sample) is bound, so
        // paging reuses one statement; a state (a fixed vocabulary of words)
        // and the limit (an integer) are part of the text.
        if let Some(before) = before {
            values.push(before.get().into());
            conditions.push(format!("id < ?{}", values.len()));
        }
        if let Some(state) = state {
            conditions.push(format!("state = '{}'", state.as_str()));
        }
        let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values), task_info)?;
        rows.collect::<Result<_, _>>().context("listing tasks")
    }

    /// One task by id.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn task(&self, id: TaskId) -> anyhow::Result<Option<TaskInfo>> {
        let mut stmt =
            self.conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
        stmt.query_row([id.get()], task_info).optional().context("reading a task")
    }

    /// The newest task of the commits starting with `prefix`.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn newest_for_commit(&self, prefix: &CommitPrefix) -> anyhow::Result<Option<TaskInfo>> {
        // Hex digits sort below 'g', so [prefix, prefix + "g") is exactly the
        // ids starting with the prefix, and the range uses the index.
        let upper = format!("{prefix}g");
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE commit_id >= ?1 AND commit_id < ?2 ORDER BY id DESC LIMIT 1"
        ))?;
        stmt.query_row(params![prefix.as_str(), upper], task_info).optional().context("reading a task")
    }

    /// Up to `limit` distinct commits of `repo`'s tasks that start with
    /// `prefix`, in commit order.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn commits_with_prefix(
        &self,
        repo: &RepoUrl,
        prefix: &CommitPrefix,
        limit: u32,
    ) -> anyhow::Result<Vec<CommitId>> {
        let upper = format!("{prefix}g");
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT commit_id FROM tasks WHERE commit_id >= ?1 AND commit_id < ?2 AND repo = ?3 \
             ORDER BY commit_id LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![prefix.as_str(), upper, repo.as_str(), limit], |row| {
            parse(row, 0, |s: String| CommitId::new(s))
        })?;
        rows.collect::<rusqlite::Result<_>>().context("reading commits")
    }
}

const TASK_COLUMNS: &str = "id, repo, branch, commit_id, state, attempts, runner, exit_code, created_at, \
     started_at, finished_at, duration_ms, passed, failed, skipped, reason, labels, trigger, kind, flaky_tests, \
     (SELECT culprit || ' ' || steps || ' ' || tasks FROM bisections WHERE bad_task_id = tasks.id AND state = 'found'), \
     requested_by, aborted_by";

fn task_info(row: &Row<'_>) -> rusqlite::Result<TaskInfo> {
    let flaky_tests: Option<String> = row.get(19)?;
    let passed: Option<u32> = row.get(12)?;
    let summary = passed.map(|passed| -> rusqlite::Result<Summary> {
        Ok(Summary {
            passed,
            failed: row.get::<_, Option<u32>>(13)?.unwrap_or(0),
            skipped: row.get::<_, Option<u32>>(14)?.unwrap_or(0),
        })
    });
    Ok(TaskInfo {
        id: parse(row, 0, TaskId::new)?,
        repo: parse(row, 1, |s: String| RepoUrl::new(s))?,
        branch: parse(row, 2, |s: String| Branch::new(s))?,
        commit: parse(row, 3, |s: String| CommitId::new(s))?,
        state: parse(row, 4, |s: String| s.parse::<TaskState>())?,
        attempts: row.get(5)?,
        runner: row.get::<_, Option<String>>(6)?.map(Name::new).transpose().map_err(invalid(6))?,
        exit_code: row.get(7)?,
        created_at_ms: row.get(8)?,
        started_at_ms: row.get(9)?,
        finished_at_ms: row.get(10)?,
        duration_ms: row.get::<_, Option<i64>>(11)?.map(|ms| ms.max(0) as u64),
        summary: summary.transpose()?,
        reason: row.get(15)?,
        labels: parse_labels(row, 16)?,
        trigger: row.get(17)?,
        kind: row.get(18)?,
        flaky: flaky_tests.is_some(),
        flaky_tests: flaky_tests
            .map(|names| names.lines().filter(|name| !name.is_empty()).map(str::to_string).collect())
            .unwrap_or_default(),
        culprit: row.get::<_, Option<String>>(20)?.and_then(|text| culprit(&text)),
        requested_by: row.get(21)?,
        aborted_by: row.get(22)?,
    })
}

/// `COMMIT STEPS TASK TASK...` as the bisections table keeps a found culprit.
fn culprit(text: &str) -> Option<protocol::message::Culprit> {
    let mut words = text.trim().splitn(3, ' ');
    let commit = CommitId::new(words.next()?).ok()?;
    let steps = words.next()?.parse().ok()?;
    let tasks = task_ids(words.next().unwrap_or_default());
    Some(protocol::message::Culprit { commit, steps, tasks })
}

/// Task ids as the bisections table keeps them, separated by blanks.
fn task_ids(text: &str) -> Vec<TaskId> {
    text.split_whitespace().filter_map(|id| id.parse().ok().and_then(|id| TaskId::new(id).ok())).collect()
}

fn count_by_state(conn: &rusqlite::Connection) -> anyhow::Result<Vec<(TaskState, u64)>> {
    let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")?;
    let mut counts: Vec<(TaskState, u64)> = TaskState::ALL.iter().map(|state| (*state, 0)).collect();
    let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
    for row in rows {
        let (state, count) = row?;
        let state: TaskState = state.parse().map_err(anyhow::Error::msg)?;
        if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = count as u64;
        }
    }
    Ok(counts)
}

fn task_id(id: i64) -> anyhow::Result<TaskId> {
    TaskId::new(id).map_err(anyhow::Error::msg)
}

fn invalid(idx: usize) -> impl Fn(String) -> rusqlite::Error {
    move |reason| rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, reason.into())
}

/// Reads column `idx` and checks it through the wire type's constructor, so a
/// tampered database cannot inject an invalid value.
fn parse<T, V, E>(row: &Row<'_>, idx: usize, check: impl FnOnce(V) -> Result<T, E>) -> rusqlite::Result<T>
where
    V: rusqlite::types::FromSql,
    E: ToString,
{
    check(row.get(idx)?).map_err(|err| invalid(idx)(err.to_string()))
}

fn join_labels(labels: &[Label]) -> String {
    labels.iter().map(Label::as_str).collect::<Vec<_>>().join(",")
}

fn parse_labels(row: &Row<'_>, idx: usize) -> rusqlite::Result<Vec<Label>> {
    let text: String = row.get(idx)?;
    text.split(',').filter(|s| !s.is_empty()).map(|s| Label::new(s).map_err(invalid(idx))).collect()
}

#[cfg(test)]
mod tests;
