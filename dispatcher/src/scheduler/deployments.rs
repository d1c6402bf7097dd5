//! Deployments (SPEC §12): a release in one environment of its repository,
//! host by host. The part of the releases that decides when a deployment
//! waits (approval, `after`, `needs`, another deployment of the environment,
//! hosts), which hosts get it first (gray release), what a host's finished
//! deploy task means for the deployment, and when the environment's previous
//! good release comes back (auto-rollback, `baton rollback --env`).
//!
//! Every change is made in the scheduler's transaction and mirrored to
//! `releases/<repository>/deployments/d<N>.json` after the commit. A host's
//! steps are a deploy task pinned to that host's runner, so a dispatcher
//! restart resumes a deployment from its tasks: a running host task is
//! re-adopted by its runner, never started twice for one deployment.

use protocol::message::{
    Deploy, DeployHost, DeploymentHost, DeploymentInfo, DeploymentRequest, EnvRollbackRequest, Job,
    RejectRequest,
};
use protocol::{DeploymentState, HostState, Name, NotificationEvent, ReleaseKind, RepoUrl, TaskState};

use super::releases::{Deploys, Releases};
use super::runners::Runners;
use super::{now_ms, tasks, Change, Effects};
use crate::config::{Approval, Environment};
use crate::files::FileJob;
use crate::store::{Deployment, Finish, LiveTask, NewDeployment, NewTask, Release, TaskKind, Trigger, Tx};

/// A steering request about deployments (who asks travels beside it).
#[derive(Clone, Debug)]
pub enum Steer {
    Deploy(DeploymentRequest),
    Approve(DeploymentRequest),
    Reject(RejectRequest),
    Rollback(EnvRollbackRequest),
}

/// Bytes of a rejection's reason kept.
const MAX_REASON: usize = 1024;

impl Releases {
    /// A release was recorded: a deployment to each environment with `auto`.
    pub(super) fn deploy_new_release(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        release: &Release,
    ) -> anyhow::Result<()> {
        let Some(settings) = self.settings.repo(&release.info.repo) else { return Ok(()) };
        for env in settings.environments.iter().filter(|env| env.auto) {
            let new = NewDeployment {
                repo: release.info.repo.clone(),
                release_id: release.id,
                version: release.info.version,
                commit: release.info.commit.clone(),
                environment: env.name.clone(),
                kind: ReleaseKind::Release,
                requested_by: format!("release r{}", release.info.version),
                reason: None,
            };
            let mut deployment = tx.insert_deployment(&new, now_ms())?;
            self.advance(tx, effects, runners, deploys, &mut deployment)?;
        }
        Ok(())
    }

    /// A client's deploy, approve, reject or rollback.
    ///
    /// # Returns
    /// The deployment as it is now and the deploy tasks to queue, or why
    /// the request is refused.
    pub(crate) fn steer(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        steer: Steer,
        by: &str,
    ) -> anyhow::Result<Result<(DeploymentInfo, Deploys), String>> {
        let mut deploys = Vec::new();
        let result = match steer {
            Steer::Deploy(request) => self.request(tx, effects, runners, &mut deploys, request, by)?,
            Steer::Approve(request) => self.approve(tx, effects, runners, &mut deploys, request, by)?,
            Steer::Reject(request) => self.reject(tx, effects, runners, &mut deploys, request, by)?,
            Steer::Rollback(request) => self.rollback_env(tx, effects, runners, &mut deploys, request, by)?,
        };
        Ok(result.map(|info| (info, deploys)))
    }

    /// The environment of a request, or why there is none.
    fn environment_of(&self, repo: &RepoUrl, env: &Name) -> Result<&Environment, String> {
        let settings =
            self.settings.repo(repo).ok_or_else(|| format!("{repo} is not a configured [[repo]]"))?;
        settings.environment(env).ok_or_else(|| {
            let names: Vec<&str> = settings.environments.iter().map(|env| env.name.as_str()).collect();
            if names.is_empty() {
                format!("{repo} has no environments")
            } else {
                format!("{repo} has no environment {env} (it has: {})", names.join(", "))
            }
        })
    }

    /// `baton deploy REPO VERSION --env E`.
    fn request(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        request: DeploymentRequest,
        by: &str,
    ) -> anyhow::Result<Result<DeploymentInfo, String>> {
        let (repo, version, env_name) = (&request.repo, request.version, &request.env);
        if let Err(why) = self.environment_of(repo, env_name) {
            return Ok(Err(why));
        }
        let releases = tx.releases_of(repo)?;
        let Some(release) = releases.iter().find(|r| r.info.version == version) else {
            return Ok(Err(format!("{repo} has no release r{version}")));
        };
        let existing = tx.deployments_in(repo, env_name)?;
        if let Some(live) = existing.iter().find(|d| d.info.version == version && !d.info.state.is_final()) {
            return Ok(Err(format!(
                "r{version} is already being deployed in {env_name} (deployment {}, {})",
                live.info.id, live.info.state
            )));
        }
        if let Some(current) = current(&existing) {
            if current.info.version > version {
                return Ok(Err(older_refusal(repo, env_name, version, current.info.version)));
            }
        }
        let new = NewDeployment {
            repo: repo.clone(),
            release_id: release.id,
            version,
            commit: release.info.commit.clone(),
            environment: env_name.clone(),
            kind: ReleaseKind::Release,
            requested_by: by.to_string(),
            reason: None,
        };
        let mut deployment = tx.insert_deployment(&new, now_ms())?;
        tracing::info!(repo = %repo, release = version, environment = %env_name, by, "deployment asked for");
        self.advance(tx, effects, runners, deploys, &mut deployment)?;
        Ok(Ok(deployment.info))
    }

    /// The newest waiting deployment of a release in an environment.
    fn waiting(
        &self,
        tx: &Tx<'_>,
        repo: &RepoUrl,
        version: u32,
        env: &Name,
    ) -> anyhow::Result<Result<Deployment, String>> {
        if let Err(why) = self.environment_of(repo, env) {
            return Ok(Err(why));
        }
        let deployments = tx.deployments_in(repo, env)?;
        let Some(newest) = deployments.into_iter().find(|d| d.info.version == version) else {
            return Ok(Err(format!("r{version} of {repo} has no deployment in {env}")));
        };
        if newest.info.state != DeploymentState::Waiting {
            return Ok(Err(format!(
                "the deployment of r{version} in {env} is {}, not waiting",
                newest.info.state
            )));
        }
        Ok(Ok(newest))
    }

    /// `baton approve REPO VERSION --env E`: recorded with who and when.
    fn approve(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        request: DeploymentRequest,
        by: &str,
    ) -> anyhow::Result<Result<DeploymentInfo, String>> {
        let mut deployment = match self.waiting(tx, &request.repo, request.version, &request.env)? {
            Ok(deployment) => deployment,
            Err(why) => return Ok(Err(why)),
        };
        let approval = self.environment_of(&request.repo, &request.env).map(|env| env.approval);
        match approval {
            Ok(Approval::None) => return Ok(Err(format!("{} needs no approval", request.env))),
            Ok(Approval::Other) if deployment.info.requested_by == by => {
                return Ok(Err(format!(
                "{} asked for this deployment and may not approve it: {} needs the approval of someone else",
                by, request.env
            )))
            }
            _ => {}
        }
        if let Some(approved_by) = &deployment.info.approved_by {
            return Ok(Err(format!("already approved by {approved_by}")));
        }
        deployment.info.approved_by = Some(by.to_string());
        deployment.info.approved_at_ms = Some(now_ms());
        tracing::info!(repo = %request.repo, release = request.version, environment = %request.env, by, "deployment approved");
        self.save(tx, effects, &deployment)?;
        self.advance(tx, effects, runners, deploys, &mut deployment)?;
        Ok(Ok(deployment.info))
    }

    /// `baton reject REPO VERSION --env E --reason TEXT`: a waiting
    /// deployment ends `rejected`.
    fn reject(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        request: RejectRequest,
        by: &str,
    ) -> anyhow::Result<Result<DeploymentInfo, String>> {
        let mut deployment = match self.waiting(tx, &request.repo, request.version, &request.env)? {
            Ok(deployment) => deployment,
            Err(why) => return Ok(Err(why)),
        };
        let reason = super::printable_line(&request.reason, MAX_REASON);
        deployment.info.state = DeploymentState::Rejected;
        deployment.info.waiting_for = None;
        deployment.info.reason = Some(format!("rejected by {by}: {reason}"));
        deployment.info.finished_at_ms = Some(now_ms());
        tracing::info!(repo = %request.repo, release = request.version, environment = %request.env, by, "deployment rejected");
        self.save(tx, effects, &deployment)?;
        self.retry_waiting(tx, effects, runners, deploys)?;
        Ok(Ok(deployment.info))
    }

    /// `baton rollback REPO --env E [--to VERSION]`: the environment's
    /// current deployment becomes `rolled_back` and an earlier release is
    /// deployed on its hosts, recorded as a rollback.
    fn rollback_env(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        request: EnvRollbackRequest,
        by: &str,
    ) -> anyhow::Result<Result<DeploymentInfo, String>> {
        let (repo, env_name) = (&request.repo, &request.env);
        if let Err(why) = self.environment_of(repo, env_name) {
            return Ok(Err(why));
        }
        let existing = tx.deployments_in(repo, env_name)?;
        let Some(current) = current(&existing) else {
            return Ok(Err(format!("{repo} has no release deployed in {env_name} to roll back from")));
        };
        let target_version = match request.to {
            Some(version) if version >= current.info.version => {
                return Ok(Err(format!(
                    "r{version} is not older than r{}, the release deployed in {env_name}: use baton deploy",
                    current.info.version
                )))
            }
            Some(version) => version,
            None => {
                let earlier = existing.iter().find(|d| {
                    d.info.version < current.info.version
                        && matches!(d.info.state, DeploymentState::Deployed | DeploymentState::RolledBack)
                });
                match earlier {
                    Some(earlier) => earlier.info.version,
                    None => {
                        return Ok(Err(format!("{env_name} had no release before r{}", current.info.version)))
                    }
                }
            }
        };
        let releases = tx.releases_of(repo)?;
        let Some(target) = releases.iter().find(|r| r.info.version == target_version) else {
            return Ok(Err(format!("{repo} has no release r{target_version}")));
        };
        if let Some(live) = existing.iter().find(|d| !d.info.state.is_final()) {
            return Ok(Err(format!(
                "r{} is {} in {env_name}; reject it or wait for it to end first",
                live.info.version, live.info.state
            )));
        }
        let mut replaced = current.clone();
        replaced.info.state = DeploymentState::RolledBack;
        self.save(tx, effects, &replaced)?;
        let new = NewDeployment {
            repo: repo.clone(),
            release_id: target.id,
            version: target_version,
            commit: target.info.commit.clone(),
            environment: env_name.clone(),
            kind: ReleaseKind::Rollback,
            requested_by: by.to_string(),
            reason: Some(format!("rollback from r{}", current.info.version)),
        };
        let mut deployment = tx.insert_deployment(&new, now_ms())?;
        tracing::info!(repo = %repo, release = target_version, environment = %env_name, by, "rollback asked for");
        self.notify(
            tx,
            effects,
            NotificationEvent::Rollback,
            serde_json::json!({ "deployment": protocol::view::deployment(&deployment.info) }),
        )?;
        self.advance(tx, effects, runners, deploys, &mut deployment)?;
        Ok(Ok(deployment.info))
    }

    /// Looks again at every waiting deployment: something it waited for
    /// may have happened (a deployment ended, a host connected).
    pub(super) fn retry_waiting(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
    ) -> anyhow::Result<()> {
        if !self.settings.repos.iter().any(|repo| !repo.environments.is_empty()) {
            return Ok(());
        }
        for waiting in tx.waiting_deployments()? {
            // Read it again with its hosts: an earlier one may have changed
            // what this one sees.
            if let Some(mut deployment) = tx.deployment(waiting.info.id)? {
                if deployment.info.state == DeploymentState::Waiting {
                    self.advance(tx, effects, runners, deploys, &mut deployment)?;
                }
            }
        }
        Ok(())
    }

    /// What a waiting deployment waits for, if anything.
    fn wait_reason(
        &self,
        tx: &Tx<'_>,
        runners: &Runners,
        deployment: &Deployment,
        env: &Environment,
    ) -> anyhow::Result<Option<String>> {
        let info = &deployment.info;
        if info.kind == ReleaseKind::Release {
            if let Some(after) = &env.after {
                let deployed = tx
                    .deployments_in(&info.repo, after)?
                    .iter()
                    .any(|d| d.info.version == info.version && d.info.state == DeploymentState::Deployed);
                if !deployed {
                    return Ok(Some(format!("after: r{} deployed in {after}", info.version)));
                }
            }
            for need in &env.needs {
                let deployed = tx
                    .deployments_in(&need.repo, &need.environment)?
                    .iter()
                    .any(|d| d.info.state == DeploymentState::Deployed);
                if !deployed {
                    return Ok(Some(format!(
                        "needs: a release of {} deployed in {}",
                        need.repo, need.environment
                    )));
                }
            }
            if env.approval != Approval::None && info.approved_by.is_none() {
                return Ok(Some("approval".into()));
            }
        }
        let others = tx.deployments_in(&info.repo, &info.environment)?;
        if let Some(busy) = others.iter().find(|d| {
            d.info.id != info.id
                && matches!(d.info.state, DeploymentState::Canary | DeploymentState::Deploying)
        }) {
            return Ok(Some(format!("r{} to finish deploying in {}", busy.info.version, info.environment)));
        }
        if hosts_of(runners, env).is_empty() {
            let labels: Vec<&str> = env.labels.iter().map(|label| label.as_str()).collect();
            return Ok(Some(format!("hosts: a runner with labels {}", labels.join(", "))));
        }
        Ok(None)
    }

    /// Moves a waiting deployment on: it starts, or it records (and tells)
    /// what it waits for.
    fn advance(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        deployment: &mut Deployment,
    ) -> anyhow::Result<()> {
        let env = match self.environment_of(&deployment.info.repo, &deployment.info.environment) {
            Ok(env) => env.clone(),
            Err(why) => {
                deployment.info.state = DeploymentState::Failed;
                deployment.info.reason = Some(why);
                deployment.info.finished_at_ms = Some(now_ms());
                return self.save(tx, effects, deployment);
            }
        };
        if let Some(reason) = self.wait_reason(tx, runners, deployment, &env)? {
            if deployment.info.waiting_for.as_deref() != Some(reason.as_str()) {
                tracing::info!(repo = %deployment.info.repo, release = deployment.info.version,
                    environment = %env.name, waiting_for = %reason, "deployment waiting");
                deployment.info.waiting_for = Some(reason);
                self.save(tx, effects, deployment)?;
                self.notify_deployment(tx, effects, NotificationEvent::DeploymentWaiting, deployment)?;
            }
            return Ok(());
        }
        // The version check again: a newer release may have been deployed
        // while this one waited.
        if deployment.info.kind == ReleaseKind::Release {
            let existing = tx.deployments_in(&deployment.info.repo, &env.name)?;
            if let Some(current) = current(&existing) {
                if current.info.version > deployment.info.version {
                    deployment.info.state = DeploymentState::Rejected;
                    deployment.info.waiting_for = None;
                    deployment.info.reason = Some(older_refusal(
                        &deployment.info.repo,
                        &env.name,
                        deployment.info.version,
                        current.info.version,
                    ));
                    deployment.info.finished_at_ms = Some(now_ms());
                    return self.save(tx, effects, deployment);
                }
            }
        }
        let hosts = hosts_of(runners, &env);
        self.start(tx, effects, deploys, deployment, &env, hosts)
    }

    /// Records the hosts (canaries first) and gives the first of them their
    /// deploy tasks.
    fn start(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        deploys: &mut Deploys,
        deployment: &mut Deployment,
        env: &Environment,
        hosts: Vec<Name>,
    ) -> anyhow::Result<()> {
        let n_canaries = env.canary.of(hosts.len());
        deployment.info.hosts = hosts
            .into_iter()
            .enumerate()
            .map(|(idx, name)| DeploymentHost {
                name,
                canary: idx < n_canaries,
                state: HostState::Waiting,
                task_id: None,
            })
            .collect();
        deployment.info.state =
            if n_canaries > 0 { DeploymentState::Canary } else { DeploymentState::Deploying };
        deployment.info.waiting_for = None;
        deployment.info.started_at_ms = Some(now_ms());
        let first: Vec<usize> = (0..deployment.info.hosts.len())
            .filter(|idx| n_canaries == 0 || deployment.info.hosts[*idx].canary)
            .collect();
        self.start_hosts(tx, deploys, deployment, env, &first)?;
        let names: Vec<&str> = deployment.info.hosts.iter().map(|host| host.name.as_str()).collect();
        tracing::info!(repo = %deployment.info.repo, release = deployment.info.version, environment = %env.name,
            hosts = %names.join(","), canaries = n_canaries, kind = %deployment.info.kind, "deployment started");
        self.save(tx, effects, deployment)?;
        self.notify_deployment(tx, effects, NotificationEvent::DeploymentStarted, deployment)
    }

    /// Inserts the deploy tasks of the hosts at `indexes`.
    fn start_hosts(
        &self,
        tx: &Tx<'_>,
        deploys: &mut Deploys,
        deployment: &mut Deployment,
        env: &Environment,
        indexes: &[usize],
    ) -> anyhow::Result<()> {
        let Some(release) = tx.release(deployment.release_id)? else {
            anyhow::bail!("deployment {} points at a missing release", deployment.info.id);
        };
        for idx in indexes {
            let host = &mut deployment.info.hosts[*idx];
            let task = NewTask {
                repo: deployment.info.repo.clone(),
                branch: release.info.branch.clone(),
                commit: deployment.info.commit.clone(),
                labels: env.labels.clone(),
                trigger: Trigger::Deploy,
                kind: TaskKind::Deploy,
                release_id: Some(deployment.release_id),
                host: Some(host.name.clone()),
                deployment_id: Some(deployment.info.id),
                requested_by: None,
            };
            let (accepted, queued) = tasks::insert(tx, task, now_ms())?;
            deploys.extend(queued);
            host.task_id = Some(accepted.task_id);
            host.state = HostState::Deploying;
        }
        Ok(())
    }

    /// A host's deploy task ended: the host is deployed or failed, and the
    /// deployment moves on once every host of its stage has ended.
    pub(super) fn host_finished(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        task: &LiveTask,
        finish: &Finish,
    ) -> anyhow::Result<()> {
        let Some(mut deployment) = task.deployment_id.map(|id| tx.deployment(id)).transpose()?.flatten()
        else {
            return Ok(());
        };
        let Some(host) = deployment.info.hosts.iter_mut().find(|host| host.task_id == Some(task.id)) else {
            return Ok(());
        };
        host.state = if finish.state == TaskState::Passed { HostState::Deployed } else { HostState::Failed };
        let host_name = host.name.clone();
        tracing::info!(repo = %task.repo, deployment = deployment.info.id, host = %host_name, state = %host.state,
            step = ?finish.failed_step, task_id = %task.id, "host deploy ended");
        if host.state == HostState::Failed && deployment.info.reason.is_none() {
            let step = finish.failed_step.as_deref().unwrap_or("its deploy task");
            deployment.info.reason = Some(format!("{host_name} failed in {step} ({})", finish.state));
        }
        if deployment.info.state.is_final()
            || deployment.info.hosts.iter().any(|host| host.state == HostState::Deploying)
        {
            return self.save(tx, effects, &deployment);
        }
        let env = match self.environment_of(&deployment.info.repo, &deployment.info.environment) {
            Ok(env) => env.clone(),
            Err(why) => {
                deployment.info.state = DeploymentState::Failed;
                deployment.info.reason = Some(why);
                deployment.info.finished_at_ms = Some(now_ms());
                return self.save(tx, effects, &deployment);
            }
        };
        if deployment.info.hosts.iter().any(|host| host.state == HostState::Failed) {
            return self.fail(tx, effects, runners, deploys, &mut deployment, &env);
        }
        let rest: Vec<usize> = (0..deployment.info.hosts.len())
            .filter(|idx| deployment.info.hosts[*idx].state == HostState::Waiting)
            .collect();
        if !rest.is_empty() {
            // The canaries passed: the others get it, in parallel.
            deployment.info.state = DeploymentState::Deploying;
            self.start_hosts(tx, deploys, &mut deployment, &env, &rest)?;
            tracing::info!(repo = %deployment.info.repo, release = deployment.info.version,
                environment = %env.name, "canaries passed; deploying to the other hosts");
            return self.save(tx, effects, &deployment);
        }
        deployment.info.state = DeploymentState::Deployed;
        deployment.info.finished_at_ms = Some(now_ms());
        tracing::info!(repo = %deployment.info.repo, release = deployment.info.version, environment = %env.name,
            "deployment deployed");
        self.save(tx, effects, &deployment)?;
        self.notify_deployment(tx, effects, NotificationEvent::DeploymentDeployed, &deployment)?;
        self.retry_waiting(tx, effects, runners, deploys)
    }

    /// A host failed: the deployment ends `failed`, hosts not reached are
    /// skipped, and with `auto_rollback` the hosts it touched get the
    /// environment's previous good release back.
    fn fail(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        runners: &Runners,
        deploys: &mut Deploys,
        deployment: &mut Deployment,
        env: &Environment,
    ) -> anyhow::Result<()> {
        for host in &mut deployment.info.hosts {
            if host.state == HostState::Waiting {
                host.state = HostState::Skipped;
            }
        }
        deployment.info.state = DeploymentState::Failed;
        deployment.info.finished_at_ms = Some(now_ms());
        tracing::warn!(repo = %deployment.info.repo, release = deployment.info.version, environment = %env.name,
            reason = ?deployment.info.reason, "deployment failed");
        self.save(tx, effects, deployment)?;
        self.notify_deployment(tx, effects, NotificationEvent::DeploymentFailed, deployment)?;
        if env.auto_rollback && deployment.info.kind == ReleaseKind::Release {
            self.auto_rollback(tx, effects, deploys, deployment, env)?;
        }
        self.retry_waiting(tx, effects, runners, deploys)
    }

    fn auto_rollback(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        deploys: &mut Deploys,
        failed: &Deployment,
        env: &Environment,
    ) -> anyhow::Result<()> {
        let existing = tx.deployments_in(&failed.info.repo, &env.name)?;
        let Some(good) = current(&existing) else {
            tracing::warn!(repo = %failed.info.repo, environment = %env.name,
                "no earlier good release in the environment to roll back to");
            return Ok(());
        };
        let touched: Vec<Name> = failed
            .info
            .hosts
            .iter()
            .filter(|host| matches!(host.state, HostState::Deployed | HostState::Failed))
            .map(|host| host.name.clone())
            .collect();
        let new = NewDeployment {
            repo: failed.info.repo.clone(),
            release_id: good.release_id,
            version: good.info.version,
            commit: good.info.commit.clone(),
            environment: env.name.clone(),
            kind: ReleaseKind::Rollback,
            requested_by: format!("auto-rollback of r{}", failed.info.version),
            reason: Some(format!("deployment {} of r{} failed", failed.info.id, failed.info.version)),
        };
        let mut rollback = tx.insert_deployment(&new, now_ms())?;
        // The environment's good release is back on exactly the hosts the
        // failed one touched, at once: no approval, no gray stage.
        let plain = Environment { canary: crate::config::Canary::None, ..env.clone() };
        self.start(tx, effects, deploys, &mut rollback, &plain, touched)?;
        self.notify(
            tx,
            effects,
            NotificationEvent::Rollback,
            serde_json::json!({ "deployment": protocol::view::deployment(&rollback.info) }),
        )
    }

    /// The job of a host's deploy task, or `None` when its deployment,
    /// release or environment is gone.
    pub(super) fn host_job(&self, tx: &Tx<'_>, task: &LiveTask) -> anyhow::Result<Option<Job>> {
        let (Some(deployment_id), Some(host)) = (task.deployment_id, task.host.clone()) else {
            return Ok(None);
        };
        let Some(deployment) = tx.deployment(deployment_id)? else { return Ok(None) };
        let Some(settings) = self.settings.repo(&task.repo).filter(|s| !s.steps.is_empty()) else {
            return Ok(None);
        };
        // The commit the host had: the environment's release before this
        // deployment.
        let earlier = tx.deployments_in(&task.repo, &deployment.info.environment)?;
        let previous_commit = earlier
            .iter()
            .filter(|d| d.info.id < deployment_id)
            .find(|d| matches!(d.info.state, DeploymentState::Deployed | DeploymentState::RolledBack))
            .map(|d| d.info.commit.clone());
        Ok(Some(Job::DeployHost(DeployHost {
            deploy: Deploy {
                release: format!("r{}", deployment.info.version),
                previous_commit,
                steps: settings.steps.clone(),
            },
            environment: deployment.info.environment,
            host,
        })))
    }

    /// Writes a deployment and its hosts, and queues its JSON file.
    fn save(&self, tx: &Tx<'_>, effects: &mut Effects, deployment: &Deployment) -> anyhow::Result<()> {
        let at_ms = now_ms();
        tx.update_deployment(&deployment.info, at_ms)?;
        for (position, host) in deployment.info.hosts.iter().enumerate() {
            tx.set_deployment_host(deployment.info.id, position, host)?;
        }
        effects.file(FileJob::Deployment { deployment: Box::new(deployment.info.clone()), at_ms });
        effects.changed(Change::Deployment(Box::new(deployment.info.clone())));
        Ok(())
    }

    fn notify_deployment(
        &self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        event: NotificationEvent,
        deployment: &Deployment,
    ) -> anyhow::Result<()> {
        self.notify(
            tx,
            effects,
            event,
            serde_json::json!({ "deployment": protocol::view::deployment(&deployment.info) }),
        )
    }
}

/// The deployment whose release is the environment's current one: the
/// newest `deployed` one.
fn current(deployments: &[Deployment]) -> Option<&Deployment> {
    deployments.iter().find(|d| d.info.state == DeploymentState::Deployed)
}

/// The hosts of an environment now: connected runners with all its labels,
/// by name.
fn hosts_of(runners: &Runners, env: &Environment) -> Vec<Name> {
    let mut hosts: Vec<Name> = runners
        .all()
        .filter(|runner| runner.conn.is_some() && !runner.draining)
        .filter(|runner| env.labels.iter().all(|label| runner.labels.contains(label)))
        .map(|runner| runner.name.clone())
        .collect();
    hosts.sort();
    hosts
}

fn older_refusal(repo: &RepoUrl, env: &Name, version: u32, current: u32) -> String {
    format!(
        "r{version} is older than r{current}, the release deployed in {env}; \
         going back is a rollback: baton rollback {repo} --env {env} --to r{version}"
    )
}
