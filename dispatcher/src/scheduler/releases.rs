//! Releases and notifications, the part of the scheduler that gives a
//! finished task its meaning beyond its own state: a passed test of a
//! release branch appends a release record (and, when deploy steps are
//! configured, a deploy task); a failed deploy may roll back; events go to
//! the outbox in the same transaction as the change they report, so none is
//! lost across a restart.
//!
//! The task life calls in through one entry, [`Releases::task_finished`], and
//! gets back the deploy tasks to queue: nothing here calls back into the
//! life of a task.

use std::sync::Arc;

use protocol::message::{Deploy, Job, ReleaseInfo};
use protocol::{Label, NotificationEvent, ReleaseKind, ReleaseState, RepoUrl, TaskState};

use super::runners::Runners;
use super::{now_ms, tasks, Change, Effects, ReleaseChange};
use crate::config::{Notifier, NotifierTarget};
use crate::files::{release_json, task_event_json, FileJob};
use crate::store::{Finish, LiveTask, NewRelease, NewTask, Release, TaskKind, Trigger, Tx};

/// The release settings and the notifiers.
pub(crate) struct Releases {
    pub(super) settings: crate::config::Releases,
    notifiers: Arc<Vec<Notifier>>,
}

/// Deploy tasks a release step inserted, for the life of a task to queue.
pub(crate) type Deploys = Vec<LiveTask>;

impl Releases {
    pub(crate) fn new(settings: crate::config::Releases, notifiers: Arc<Vec<Notifier>>) -> Releases {
        Releases { settings, notifiers }
    }

    /// What a finished task means beyond its own state: notifications,
    /// release records, deploy state, rollbacks.
    ///
    /// # Returns
    /// The deploy tasks inserted, to queue.
    pub(crate) fn task_finished(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        task: &LiveTask,
        finish: &Finish,
    ) -> anyhow::Result<Deploys> {
        let mut deploys = Vec::new();
        match task.kind {
            TaskKind::Test => self.after_test(tx, effects, runners, &mut deploys, task, finish)?,
            TaskKind::Deploy if task.deployment_id.is_some() => {
                self.host_finished(tx, effects, runners, &mut deploys, task, finish)?
            }
            TaskKind::Deploy => self.after_deploy(tx, effects, runners, &mut deploys, task, finish)?,
            // A bisection's step is neither news nor a release (`bisect`).
            TaskKind::Bisect => {}
        }
        Ok(deploys)
    }

    fn after_test(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        task: &LiveTask,
        finish: &Finish,
    ) -> anyhow::Result<()> {
        let event = match finish.state {
            TaskState::Failed => Some(NotificationEvent::TaskFailed),
            TaskState::Error => Some(NotificationEvent::TaskError),
            // A pass is news only after a failure, which takes a query:
            // asked only when a notifier wants to hear of recoveries.
            TaskState::Passed if self.wanted(NotificationEvent::TaskRecovered) => {
                let before = tx.previous_test_state(&task.repo, &task.branch, task.id)?;
                matches!(before, Some(TaskState::Failed | TaskState::Error))
                    .then_some(NotificationEvent::TaskRecovered)
            }
            _ => None,
        };
        if event.is_some_and(|event| self.wanted(event)) || self.wanted(NotificationEvent::TaskFinished) {
            let body = serde_json::json!({ "task": task_event_json(task, finish) });
            if let Some(event) = event {
                self.notify_task(tx, effects, event, body.clone(), Some(task))?;
            }
            self.notify_task(tx, effects, NotificationEvent::TaskFinished, body, Some(task))?;
        }
        // A rerun of a commit that is already a release records no second one.
        if finish.state == TaskState::Passed
            && self.settings.is_release_branch(&task.repo, &task.branch)
            && !tx.is_released(&task.repo, &task.commit)?
        {
            let release = NewRelease {
                repo: task.repo.clone(),
                tag: finish.tag.clone(),
                branch: task.branch.clone(),
                commit: task.commit.clone(),
                task_id: Some(task.id),
                kind: ReleaseKind::Release,
                rollback_to: None,
                state: ReleaseState::Recorded,
                trigger: format!("task {}", task.id),
            };
            self.record_release(tx, effects, runners, deploys, release)?;
        }
        Ok(())
    }

    fn after_deploy(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        task: &LiveTask,
        finish: &Finish,
    ) -> anyhow::Result<()> {
        let Some(release) = task.release_id.map(|id| tx.release(id)).transpose()?.flatten() else {
            return Ok(());
        };
        let version = release.info.version;
        if finish.state == TaskState::Passed {
            set_state(tx, effects, &release, ReleaseState::Deployed)?;
            tracing::info!(repo = %task.repo, release = version, task_id = %task.id, "release deployed");
            return Ok(());
        }
        set_state(tx, effects, &release, ReleaseState::Failed)?;
        tracing::warn!(repo = %task.repo, release = version, step = ?finish.failed_step, "deploy failed");
        let event = serde_json::json!({
            "release": release_json(&release.info),
            "task": task_event_json(task, finish),
            "failed_step": finish.failed_step,
        });
        self.notify(tx, effects, NotificationEvent::DeployFailed, event)?;
        let auto = self.settings.repo(&task.repo).is_some_and(|settings| settings.auto_rollback);
        if auto && finish.failed_step.as_deref() == Some("post_deploy") {
            let releases = tx.releases_of(&task.repo)?;
            let target = releases.iter().find(|r| r.info.version < version && r.info.state.was_good());
            match target {
                Some(target) => {
                    let trigger = format!("auto-rollback of r{version}");
                    self.record_rollback(tx, effects, runners, deploys, None, target, trigger)?;
                }
                None => {
                    tracing::warn!(repo = %task.repo, release = version, "no earlier good release to roll back to")
                }
            }
        }
        Ok(())
    }

    /// `baton rollback REPO [--to VERSION]`: by default, the release before
    /// the current one.
    ///
    /// # Returns
    /// The rollback's release record and its deploy tasks to queue, or why
    /// there is nothing to roll back to.
    pub(crate) fn rollback(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        repo: &RepoUrl,
        to: Option<u32>,
        by: Option<&str>,
    ) -> anyhow::Result<Result<(ReleaseInfo, Deploys), String>> {
        if self.settings.repo(repo).is_some_and(|settings| !settings.environments.is_empty()) {
            return Ok(Err(format!(
                "{repo} deploys to environments: name one, baton rollback {repo} --env ENVIRONMENT"
            )));
        }
        let releases = tx.releases_of(repo)?;
        let current = releases.iter().find(|r| r.info.state.is_current());
        let target = match to {
            Some(version) => match releases.iter().find(|r| r.info.version == version) {
                Some(target) => target,
                None => return Ok(Err(format!("{repo} has no release r{version}"))),
            },
            None => {
                let Some(current) = current else {
                    return Ok(Err(format!("{repo} has no current release to roll back from")));
                };
                let older = releases.iter().find(|r| {
                    r.info.version < current.info.version
                        && r.info.state.was_good()
                        && r.info.commit != current.info.commit
                });
                match older {
                    Some(target) => target,
                    None => {
                        return Ok(Err(format!("{repo} has no release before r{}", current.info.version)))
                    }
                }
            }
        };
        let mut deploys = Vec::new();
        let trigger = match by {
            Some(user) => format!("baton rollback by {user}"),
            None => "baton rollback".to_string(),
        };
        let release = self.record_rollback(tx, effects, runners, &mut deploys, current, target, trigger)?;
        Ok(Ok((release.info, deploys)))
    }

    #[allow(clippy::too_many_arguments)]
    fn record_rollback(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        current: Option<&Release>,
        target: &Release,
        trigger: String,
    ) -> anyhow::Result<Release> {
        if let Some(current) = current {
            set_state(tx, effects, current, ReleaseState::RolledBack)?;
        }
        let release = NewRelease {
            repo: target.info.repo.clone(),
            tag: target.info.tag.clone(),
            branch: target.info.branch.clone(),
            commit: target.info.commit.clone(),
            task_id: target.info.task_id,
            kind: ReleaseKind::Rollback,
            rollback_to: Some(target.info.version),
            state: ReleaseState::Recorded,
            trigger,
        };
        self.record_release(tx, effects, runners, deploys, release)
    }

    /// Appends a release record, its JSON file, its deploy task if deploy
    /// steps are configured, and its notification.
    fn record_release(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        mut release: NewRelease,
    ) -> anyhow::Result<Release> {
        // A repository with environments deploys through deployments, one
        // per environment; without, one deploy task per release, as before.
        let environments =
            self.settings.repo(&release.repo).is_some_and(|settings| !settings.environments.is_empty());
        let deployed = !environments
            && self.settings.repo(&release.repo).is_some_and(|settings| !settings.steps.is_empty());
        if deployed {
            release.state = ReleaseState::Deploying;
        }
        let mut record = tx.insert_release(&release, now_ms())?;
        if deployed {
            let deploy = NewTask {
                repo: release.repo.clone(),
                branch: release.branch.clone(),
                commit: release.commit.clone(),
                labels: vec![Label::new("deploy").expect("a valid label")],
                trigger: Trigger::Deploy,
                kind: TaskKind::Deploy,
                release_id: Some(record.id),
                requested_by: None,
                host: None,
                deployment_id: None,
            };
            let (accepted, queued) = tasks::insert(tx, deploy, now_ms())?;
            deploys.extend(queued);
            tx.set_release_deploy_task(record.id, accepted.task_id)?;
            record.info.deploy_task_id = Some(accepted.task_id);
        }
        tracing::info!(repo = %record.info.repo, release = record.info.version, commit = %record.info.commit,
            kind = %record.info.kind, trigger = %record.info.trigger, "release recorded");
        effects.file(FileJob::Release(Box::new(record.info.clone())));
        effects.changed(Change::Release(ReleaseChange {
            repo: record.info.repo.clone(),
            version: record.info.version,
            state: record.info.state,
        }));
        let event = match record.info.kind {
            ReleaseKind::Rollback => NotificationEvent::Rollback,
            ReleaseKind::Release => NotificationEvent::ReleaseRecorded,
        };
        self.notify(tx, effects, event, serde_json::json!({ "release": release_json(&record.info) }))?;
        if environments && record.info.kind == ReleaseKind::Release {
            self.deploy_new_release(tx, effects, runners, deploys, &record)?;
        }
        Ok(record)
    }

    /// The job of a deploy task, or `None` when its release or the
    /// repository's deploy steps are gone.
    pub(crate) fn deploy_job(&self, tx: &Tx<'_>, task: &LiveTask) -> anyhow::Result<Option<Job>> {
        if task.deployment_id.is_some() {
            return self.host_job(tx, task);
        }
        let Some(release) = task.release_id.map(|id| tx.release(id)).transpose()?.flatten() else {
            return Ok(None);
        };
        let Some(settings) = self.settings.repo(&task.repo).filter(|s| !s.steps.is_empty()) else {
            return Ok(None);
        };
        let previous_commit = match release.info.previous {
            Some(version) => tx
                .releases_of(&task.repo)?
                .into_iter()
                .find(|r| r.info.version == version)
                .map(|r| r.info.commit),
            None => None,
        };
        Ok(Some(Job::Deploy(Deploy {
            release: format!("r{}", release.info.version),
            previous_commit,
            steps: settings.steps.clone(),
        })))
    }

    /// A test task started its first attempt: queues `task_started` (a
    /// commit's `pending` status).
    pub(crate) fn task_started(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        task: &LiveTask,
    ) -> anyhow::Result<()> {
        // Checked first: this runs for every assignment.
        if task.kind != TaskKind::Test || task.attempts != 1 || !self.wanted(NotificationEvent::TaskStarted) {
            return Ok(());
        }
        let body = serde_json::json!({ "task": {
            "id": task.id.get(),
            "repo": task.repo.as_str(),
            "branch": task.branch.as_str(),
            "commit": task.commit.as_str(),
            "state": "running",
            "attempts": task.attempts,
            "runner": task.runner.as_ref().map(|name| name.as_str()),
        }});
        self.notify_task(tx, effects, NotificationEvent::TaskStarted, body, Some(task))
    }

    /// Queues `event` for every notifier that wants it. A status notifier's
    /// entry also names the repository on the forge (`forge_repo`); a task
    /// of a repository that has none is not queued for it.
    pub(super) fn notify(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        event: NotificationEvent,
        body: serde_json::Value,
    ) -> anyhow::Result<()> {
        self.notify_task(tx, effects, event, body, None)
    }

    /// As [`Releases::notify`], for an event about `task` (which a commit
    /// status needs).
    fn notify_task(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        event: NotificationEvent,
        mut body: serde_json::Value,
        task: Option<&LiveTask>,
    ) -> anyhow::Result<()> {
        if !self.wanted(event) {
            return Ok(());
        }
        body["event"] = event.as_str().into();
        body["at"] = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string().into();
        let text = body.to_string();
        for notifier in self.notifiers.iter() {
            if !notifier.wants(event) {
                continue;
            }
            if let NotifierTarget::Status(_) = notifier.target {
                let Some(task) = task else { continue };
                let Some(forge_repo) = self.forge_repo(&task.repo) else {
                    tracing::debug!(repo = %task.repo, notifier = %notifier.name,
                        "no forge repository for a commit status (set forge_repo in its [[repo]])");
                    continue;
                };
                let mut body = body.clone();
                body["forge_repo"] = forge_repo.into();
                tx.enqueue_notification(&notifier.name, &body.to_string(), now_ms())?;
            } else {
                tx.enqueue_notification(&notifier.name, &text, now_ms())?;
            }
            effects.outbox_changed = true;
        }
        Ok(())
    }

    /// Whether any notifier wants `event`.
    fn wanted(&self, event: NotificationEvent) -> bool {
        self.notifiers.iter().any(|notifier| notifier.wants(event))
    }

    /// The repository's path on its forge: its `[[repo]]`'s `forge_repo`,
    /// or derived from its URL.
    fn forge_repo(&self, repo: &RepoUrl) -> Option<String> {
        self.settings
            .repo(repo)
            .and_then(|settings| settings.forge_repo.clone())
            .or_else(|| crate::notify::status::derive_forge_repo(repo.as_str()))
    }
}

/// Records a release's new state and tells subscribers once committed.
fn set_state(
    tx: &Tx<'_>,
    effects: &mut Effects,
    release: &Release,
    state: ReleaseState,
) -> anyhow::Result<()> {
    tx.set_release_state(release.id, state)?;
    effects.changed(Change::Release(ReleaseChange {
        repo: release.info.repo.clone(),
        version: release.info.version,
        state,
    }));
    Ok(())
}
