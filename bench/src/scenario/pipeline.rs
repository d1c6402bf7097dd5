//! The whole chain on loopback, shared by `watch_latency` and `e2e_passed`: a
//! bare repository watched by a real `baton-observer --watch`, a real
//! dispatcher, one real runner, a working clone that pushes, and an
//! in-process client to follow tasks.
//!
//! Starting it runs the repository's first commit through the chain once,
//! so the runner's fetch cache and every connection are warm before the
//! first measured push.

use std::path::Path;
use std::time::Duration;

use protocol::message::TaskInfo;
use protocol::{CommitId, TaskState};

use super::Ctx;
use crate::client::Client;
use crate::support::{self, Daemon, Dispatcher, Repo};

/// How long one commit may take through the chain before the scenario fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The running chain; dropping it kills every daemon.
pub struct Pipeline {
    pub work: Repo,
    pub client: Client,
    /// Kept for their guards, and checked when something times out.
    pub dispatcher: Dispatcher,
    pub runner: Daemon,
    pub observer: Daemon,
}

impl Pipeline {
    /// Starts everything with a first commit of `files`, and waits for that
    /// commit's task to pass.
    ///
    /// # Errors
    /// When a daemon cannot start or the first task does not pass.
    pub async fn start(ctx: &Ctx, files: &[(&str, &str)]) -> anyhow::Result<Pipeline> {
        let origin = Repo::init_bare(&ctx.dir.join("origin.git"))?;
        let work = Repo::init_work(&ctx.dir.join("work"), &origin)?;
        let first = work.commit(files, "first")?;
        work.push()?;
        let dispatcher = Dispatcher::start(&ctx.bins, &ctx.dir, &ctx.dir.join("data"), &[])?;
        let runner = support::start_runner(&ctx.bins, &ctx.dir, &dispatcher.addr, "runner-1")?;
        let observer = support::start_observer(&ctx.bins, &ctx.dir, &dispatcher.addr, &origin.path)?;
        let client = Client::connect(&dispatcher.addr).await?;
        let mut pipeline = Pipeline { work, client, dispatcher, runner, observer };
        // The observer submits the newest commit of a branch it sees first.
        let task = pipeline.wait_final(&first).await?;
        anyhow::ensure!(
            task.state == TaskState::Passed,
            "the first commit's task ended {} ({:?}); see runner-1's log",
            task.state,
            task.reason
        );
        Ok(pipeline)
    }

    /// Commits `files` in the clone and pushes; returns the commit once the
    /// push has returned.
    ///
    /// # Errors
    /// When git fails.
    pub fn commit_and_push(&self, files: &[(&str, &str)], message: &str) -> anyhow::Result<CommitId> {
        let commit = self.work.commit(files, message)?;
        self.work.push()?;
        Ok(commit)
    }

    /// Waits for the task of `commit` to end; on a timeout, says which daemon
    /// died, if one did.
    ///
    /// # Errors
    /// Timeouts and connection failures.
    pub async fn wait_final(&mut self, commit: &CommitId) -> anyhow::Result<TaskInfo> {
        match self.client.wait_final(commit, PATIENCE).await {
            Ok(task) => Ok(task),
            Err(err) => {
                self.ensure_running()?;
                Err(err)
            }
        }
    }

    /// Fails with the log of the first daemon that has exited.
    ///
    /// # Errors
    /// When one has.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.dispatcher.daemon.ensure_running()?;
        self.runner.ensure_running()?;
        self.observer.ensure_running()
    }
}

/// Checks that a path can go inside a single-quoted TOML string and a shell
/// command unquoted: temp dirs normally can.
///
/// # Errors
/// When it holds a quote, a space or another shell metacharacter.
pub fn plain_path(path: &Path) -> anyhow::Result<String> {
    let text = path.display().to_string();
    let plain = text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
    anyhow::ensure!(plain, "the temp dir {text:?} needs quoting; set TMPDIR to a plain path");
    Ok(text)
}
