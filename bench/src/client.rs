//! An in-process `baton` client over the real protocol (`Role::Client`), for
//! the bench's own polling: looking a task up every 2 ms costs a few
//! microseconds this way, where starting the `baton` binary would compete for
//! the CPU with what is being measured. The `baton` binary itself is timed
//! only where it is the figure (`query`).

use std::time::Duration;

use anyhow::Context;
use protocol::handshake::Role;
use protocol::message::{
    ClientToDispatcher, DispatcherToClient, ManualSubmit, RunnerInfo, Selector, StatusReport, TaskInfo,
    TaskQuery,
};
use protocol::{Branch, CommitId, CommitPrefix, Connection, Name, RepoUrl, TaskId, TaskState};

use crate::support::Deadline;

/// How often [`Client::wait_final`] looks.
pub const POLL: Duration = Duration::from_millis(2);

/// One client connection; requests are answered in order.
pub struct Client {
    conn: Connection<DispatcherToClient, ClientToDispatcher>,
}

impl Client {
    /// Dials the dispatcher at `addr` as client `baton-bench`.
    ///
    /// # Errors
    /// Connection or handshake failures.
    pub async fn connect(addr: &str) -> anyhow::Result<Client> {
        let name = Name::new("baton-bench").map_err(anyhow::Error::msg)?;
        let (conn, _welcome) = protocol::peer::dial(addr, Role::Client, &name, None, protocol::MAX_FRAME)
            .await
            .with_context(|| format!("connecting to the dispatcher at {addr} as a client"))?;
        Ok(Client { conn })
    }

    async fn ask(&mut self, request: &ClientToDispatcher) -> anyhow::Result<DispatcherToClient> {
        self.conn.send(request).await.context("sending a client request")?;
        match self.conn.recv().await.context("reading a client answer")? {
            Some(DispatcherToClient::Error(reason)) => anyhow::bail!("the dispatcher answered: {reason}"),
            Some(answer) => Ok(answer),
            None => anyhow::bail!("the dispatcher closed the client connection"),
        }
    }

    /// The task with this id.
    ///
    /// # Errors
    /// Connection failures or an unexpected answer.
    pub async fn show_id(&mut self, task_id: TaskId) -> anyhow::Result<Option<TaskInfo>> {
        self.show(Selector::Id(task_id)).await
    }

    /// The newest task of this commit.
    ///
    /// # Errors
    /// As [`Client::show_id`].
    pub async fn show_commit(&mut self, commit: &CommitId) -> anyhow::Result<Option<TaskInfo>> {
        let prefix = CommitPrefix::new(commit.as_str()).map_err(anyhow::Error::msg)?;
        self.show(Selector::Commit(prefix)).await
    }

    async fn show(&mut self, selector: Selector) -> anyhow::Result<Option<TaskInfo>> {
        match self.ask(&ClientToDispatcher::Show(selector)).await? {
            DispatcherToClient::Task(task) => Ok(task.map(|task| *task)),
            other => anyhow::bail!("unexpected answer to show: {other:?}"),
        }
    }

    /// The newest `limit` tasks.
    ///
    /// # Errors
    /// As [`Client::show_id`].
    pub async fn tasks(&mut self, state: Option<TaskState>, limit: u32) -> anyhow::Result<Vec<TaskInfo>> {
        match self.ask(&ClientToDispatcher::Tasks(TaskQuery { repo: None, state, limit })).await? {
            DispatcherToClient::Tasks(tasks) => Ok(tasks),
            other => anyhow::bail!("unexpected answer to tasks: {other:?}"),
        }
    }

    /// Every runner the dispatcher knows.
    ///
    /// # Errors
    /// As [`Client::show_id`].
    pub async fn runners(&mut self) -> anyhow::Result<Vec<RunnerInfo>> {
        match self.ask(&ClientToDispatcher::Runners).await? {
            DispatcherToClient::Runners(runners) => Ok(runners),
            other => anyhow::bail!("unexpected answer to runners: {other:?}"),
        }
    }

    /// Runner and task counts.
    ///
    /// # Errors
    /// As [`Client::show_id`].
    pub async fn status(&mut self) -> anyhow::Result<StatusReport> {
        match self.ask(&ClientToDispatcher::Status).await? {
            DispatcherToClient::Status(status) => Ok(status),
            other => anyhow::bail!("unexpected answer to status: {other:?}"),
        }
    }

    /// Queues a manual task of `commit` on branch `main`.
    ///
    /// # Errors
    /// As [`Client::show_id`], or a refused submission.
    pub async fn submit(&mut self, repo: &RepoUrl, commit: &CommitId) -> anyhow::Result<TaskId> {
        let submit = ManualSubmit {
            repo: repo.clone(),
            branch: Branch::new("main").map_err(anyhow::Error::msg)?,
            commit: commit.clone(),
            labels: Vec::new(),
        };
        match self.ask(&ClientToDispatcher::Submit(submit)).await? {
            DispatcherToClient::Accepted(accepted) => Ok(accepted.task_id),
            other => anyhow::bail!("unexpected answer to submit: {other:?}"),
        }
    }

    /// Polls every [`POLL`] until the newest task of `commit` has ended.
    ///
    /// # Errors
    /// Connection failures, or nothing final within `patience`.
    pub async fn wait_final(&mut self, commit: &CommitId, patience: Duration) -> anyhow::Result<TaskInfo> {
        let deadline = Deadline::after(patience, format!("the task of commit {commit} to end"));
        loop {
            if let Some(task) = self.show_commit(commit).await? {
                if task.state.is_final() {
                    return Ok(task);
                }
            }
            deadline.check()?;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until `n` runners are connected and idle.
    ///
    /// # Errors
    /// Connection failures, or not so within `patience`.
    pub async fn wait_idle_runners(
        &mut self,
        n: usize,
        patience: Duration,
    ) -> anyhow::Result<Vec<RunnerInfo>> {
        use protocol::message::RunnerState;
        let deadline = Deadline::after(patience, format!("{n} idle runners"));
        loop {
            let runners = self.runners().await?;
            let idle = runners.iter().filter(|runner| runner.state == RunnerState::Idle).count();
            if idle >= n {
                return Ok(runners);
            }
            deadline.check()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
