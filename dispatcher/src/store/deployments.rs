//! The SQL of deployments (SPEC §12): a release in one environment, and
//! its hosts.

use anyhow::Context;
use protocol::message::{DeploymentHost, DeploymentInfo};
use protocol::{CommitId, DeploymentState, HostState, Name, ReleaseKind, RepoUrl, TaskId};
use rusqlite::{params, OptionalExtension, Row};

use super::{invalid, parse, Reader, Tx};

const DEPLOYMENT_COLUMNS: &str = "id, repo, release_id, version, commit_id, environment, state, kind, \
     waiting_for, requested_by, approved_by, approved_at, reason, created_at, started_at, finished_at";

/// Most deployments one query returns.
const MAX_DEPLOYMENTS: u32 = 1000;

/// A deployment and the row id of the release record it deploys.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub release_id: i64,
    pub info: DeploymentInfo,
}

/// A deployment to insert, without hosts (they are recorded when it
/// starts).
#[derive(Clone, Debug)]
pub struct NewDeployment {
    pub repo: RepoUrl,
    pub release_id: i64,
    pub version: u32,
    pub commit: CommitId,
    pub environment: Name,
    pub kind: ReleaseKind,
    pub requested_by: String,
    pub reason: Option<String>,
}

impl Tx<'_> {
    /// Appends a deployment in state `waiting` (it is then started or told
    /// what it waits for, in the same transaction).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn insert_deployment(&self, new: &NewDeployment, now_ms: i64) -> anyhow::Result<Deployment> {
        self.tx
            .prepare_cached(
                "INSERT INTO deployments (repo, release_id, version, commit_id, environment, state, kind,
                 requested_by, reason, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
            )?
            .execute(params![
                new.repo.as_str(),
                new.release_id,
                new.version,
                new.commit.as_str(),
                new.environment.as_str(),
                DeploymentState::Waiting.as_str(),
                new.kind.as_str(),
                new.requested_by,
                new.reason,
                now_ms,
            ])?;
        let id = self.tx.last_insert_rowid();
        self.deployment(id)?.context("reading back a deployment just inserted")
    }

    /// One deployment by id, with its hosts.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn deployment(&self, id: i64) -> anyhow::Result<Option<Deployment>> {
        deployment_by_id(&self.tx, id)
    }

    /// The deployments of a repository in one environment, newest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn deployments_in(&self, repo: &RepoUrl, environment: &Name) -> anyhow::Result<Vec<Deployment>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE repo = ?1 AND environment = ?2
             ORDER BY id DESC LIMIT {MAX_DEPLOYMENTS}"
        ))?;
        let rows = stmt.query_map(params![repo.as_str(), environment.as_str()], deployment_row)?;
        let mut deployments: Vec<Deployment> = rows.collect::<Result<_, _>>()?;
        for deployment in &mut deployments {
            deployment.info.hosts = hosts(&self.tx, deployment.info.id)?;
        }
        Ok(deployments)
    }

    /// Every waiting deployment, oldest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn waiting_deployments(&self) -> anyhow::Result<Vec<Deployment>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE state = 'waiting' ORDER BY id"
        ))?;
        let rows = stmt.query_map([], deployment_row)?;
        rows.collect::<Result<_, _>>().context("listing waiting deployments")
    }

    /// Writes a deployment's changing fields back (state, what it waits
    /// for, approval, reason, times); its hosts are written by
    /// [`Tx::set_deployment_host`].
    ///
    /// # Errors
    /// SQLite errors.
    pub fn update_deployment(&self, info: &DeploymentInfo, now_ms: i64) -> anyhow::Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE deployments SET state = ?2, waiting_for = ?3, approved_by = ?4, approved_at = ?5,
                 reason = ?6, started_at = ?7, finished_at = ?8, updated_at = ?9 WHERE id = ?1",
            )?
            .execute(params![
                info.id,
                info.state.as_str(),
                info.waiting_for,
                info.approved_by,
                info.approved_at_ms,
                info.reason,
                info.started_at_ms,
                info.finished_at_ms,
                now_ms,
            ])?;
        Ok(())
    }

    /// Records a host of a deployment, or its new state and task.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn set_deployment_host(
        &self,
        deployment_id: i64,
        position: usize,
        host: &DeploymentHost,
    ) -> anyhow::Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO deployment_hosts (deployment_id, host, position, canary, state, task_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (deployment_id, host) DO UPDATE SET state = ?5, task_id = ?6",
            )?
            .execute(params![
                deployment_id,
                host.name.as_str(),
                position as i64,
                host.canary,
                host.state.as_str(),
                host.task_id.map(TaskId::get),
            ])?;
        Ok(())
    }
}

impl super::Store {
    /// Deployments changed at or after `at_ms`: what the file writer may not
    /// have written before a crash.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn deployments_changed_since(&self, at_ms: i64) -> anyhow::Result<Vec<DeploymentInfo>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE updated_at >= ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([at_ms], deployment_row)?;
        let mut deployments: Vec<Deployment> = rows.collect::<Result<_, _>>()?;
        for deployment in &mut deployments {
            deployment.info.hosts = hosts(&self.conn, deployment.info.id)?;
        }
        Ok(deployments.into_iter().map(|deployment| deployment.info).collect())
    }
}

impl Reader {
    /// Deployments, newest first, optionally of one repository and one
    /// environment.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn deployments(
        &self,
        repo: Option<&RepoUrl>,
        environment: Option<&Name>,
    ) -> anyhow::Result<Vec<DeploymentInfo>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE (?1 IS NULL OR repo = ?1)
             AND (?2 IS NULL OR environment = ?2) ORDER BY id DESC LIMIT {MAX_DEPLOYMENTS}"
        ))?;
        let rows = stmt
            .query_map(params![repo.map(RepoUrl::as_str), environment.map(Name::as_str)], deployment_row)?;
        let mut deployments: Vec<Deployment> =
            rows.collect::<Result<_, _>>().context("listing deployments")?;
        for deployment in &mut deployments {
            deployment.info.hosts = hosts(&self.conn, deployment.info.id)?;
        }
        Ok(deployments.into_iter().map(|deployment| deployment.info).collect())
    }

    /// One deployment by id, with its hosts.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn deployment(&self, id: i64) -> anyhow::Result<Option<DeploymentInfo>> {
        Ok(deployment_by_id(&self.conn, id)?.map(|deployment| deployment.info))
    }
}

fn deployment_by_id(conn: &rusqlite::Connection, id: i64) -> anyhow::Result<Option<Deployment>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"))?;
    let Some(mut deployment) = stmt.query_row([id], deployment_row).optional()? else {
        return Ok(None);
    };
    deployment.info.hosts = hosts(conn, id)?;
    Ok(Some(deployment))
}

fn hosts(conn: &rusqlite::Connection, deployment_id: i64) -> anyhow::Result<Vec<DeploymentHost>> {
    let mut stmt = conn.prepare_cached(
        "SELECT host, canary, state, task_id FROM deployment_hosts WHERE deployment_id = ?1 ORDER BY position",
    )?;
    let rows = stmt.query_map([deployment_id], |row| {
        Ok(DeploymentHost {
            name: parse(row, 0, |s: String| Name::new(s))?,
            canary: row.get(1)?,
            state: parse(row, 2, |s: String| s.parse::<HostState>())?,
            task_id: row.get::<_, Option<i64>>(3)?.map(TaskId::new).transpose().map_err(invalid(3))?,
        })
    })?;
    rows.collect::<Result<_, _>>().context("reading a deployment's hosts")
}

fn deployment_row(row: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        release_id: row.get(2)?,
        info: DeploymentInfo {
            id: row.get(0)?,
            repo: parse(row, 1, |s: String| RepoUrl::new(s))?,
            version: row.get(3)?,
            commit: parse(row, 4, |s: String| CommitId::new(s))?,
            environment: parse(row, 5, |s: String| Name::new(s))?,
            state: parse(row, 6, |s: String| s.parse::<DeploymentState>())?,
            kind: parse(row, 7, |s: String| s.parse::<ReleaseKind>())?,
            waiting_for: row.get(8)?,
            requested_by: row.get(9)?,
            approved_by: row.get(10)?,
            approved_at_ms: row.get(11)?,
            reason: row.get(12)?,
            hosts: Vec::new(),
            created_at_ms: row.get(13)?,
            started_at_ms: row.get(14)?,
            finished_at_ms: row.get(15)?,
        },
    })
}
