//! The scheduler's live state as plain data: the tasks, the runners, the
//! followers of task logs, and the release settings. Each part owns its
//! indexes and keeps its own invariants; what must hold across parts is
//! checked by [`Core::check_invariants`] after every step of the tests.

use std::time::Instant;

use super::disk::Disk;

use protocol::message::StatusReport;
use protocol::{Name, TaskState};

use super::bisect::Bisections;
use super::follows::Follows;
use super::releases::Releases;
use super::runners::Runners;
use super::tasks::{Running, Tasks};
use super::Settings;
use crate::files::DataDir;
use crate::store::Store;

/// Everything the scheduler knows, rebuilt from the store at start-up.
pub(crate) struct Core {
    pub(super) settings: Settings,
    pub(super) files: DataDir,
    /// When the dispatcher started, for `status`.
    pub(super) started: Instant,
    pub(super) tasks: Tasks,
    pub(super) runners: Runners,
    pub(super) follows: Follows,
    pub(super) releases: Releases,
    /// Bisections under way (`bisect`).
    pub(super) bisections: Bisections,
    /// Whether the data dir is full (see `disk`).
    pub(super) disk: Disk,
    /// When the last heartbeat tick was handled; a batch that starts much
    /// later means the dispatcher was not running (see `liveness`).
    pub(super) last_tick: Instant,
    /// Until then (one window after a stall), a closed runner connection
    /// is treated like a dispatcher restart: its tasks wait for it.
    pub(super) closes_wait_until: Option<Instant>,
}

impl Core {
    /// The live state a store holds: queued tasks, and tasks recorded
    /// `running` that wait for their runner to come back (`recover()` in the
    /// sense of STYLE's store rules).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub(crate) fn recover(store: &Store, files: DataDir, settings: Settings) -> anyhow::Result<Core> {
        let now = Instant::now();
        let mut tasks = Tasks::new(store.count_by_state()?);
        for task in store.live_tasks()? {
            match task.state {
                TaskState::Running => {
                    let log_len = files.log_len(task.id);
                    tracing::info!(task_id = %task.id, runner = ?task.runner.as_ref().map(Name::as_str),
                        attempt = task.attempts, "waiting for the runner of a running task to come back");
                    tasks.recover_running(Running::orphaned(task, log_len, now));
                }
                _ => tasks.recover_pending(task),
            }
        }
        tracing::info!(pending = tasks.n_pending(), running = tasks.n_running(), "recovered live tasks");
        let releases = Releases::new(settings.releases.clone(), std::sync::Arc::clone(&settings.notifiers));
        let disk = Disk::new(files.root());
        let bisections = Bisections::recover(store)?;
        Ok(Core {
            settings,
            files,
            started: now,
            tasks,
            runners: Runners::new(),
            follows: Follows::default(),
            releases,
            bisections,
            disk,
            last_tick: now,
            closes_wait_until: None,
        })
    }

    /// After a rolled-back batch: the live state as committed, in the
    /// full-disk mode. Runner connections are closed so that runners
    /// register again and re-adopt their attempts from the rebuilt state
    /// (they keep their spools, so nothing is lost).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub(crate) fn rebuild(&mut self, store: &Store) -> anyhow::Result<Core> {
        let mut rebuilt = Core::recover(store, self.files.clone(), self.settings.clone())?;
        rebuilt.started = self.started;
        rebuilt.disk.write_failed(&anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOSPC)));
        self.runners.kill_all();
        Ok(rebuilt)
    }

    /// Runner and task counts for `baton status`.
    pub(super) fn status(&self) -> StatusReport {
        let (idle, busy, dead) = self.runners.counts();
        StatusReport {
            version: protocol::BATON_VERSION.to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            runners_idle: idle,
            runners_busy: busy,
            runners_dead: dead,
            tasks: TaskState::ALL.iter().map(|state| (*state, self.tasks.count(*state))).collect(),
            data_dir_full: self.disk.full(),
            data_dir_bytes: self.files.size(),
        }
    }

    /// What holds for deployments: a deployment in progress has a live
    /// task on each host it is deploying to and nowhere else; one that
    /// ended has none; a deployed one is deployed on every host; at most
    /// one deployment of an environment is in progress.
    #[cfg(test)]
    fn check_deployments(&self, store: &Store) {
        use protocol::{DeploymentState, HostState};
        let deployments = store.deployments_changed_since(0).expect("reading deployments");
        for deployment in &deployments {
            let id = deployment.id;
            let in_progress =
                matches!(deployment.state, DeploymentState::Canary | DeploymentState::Deploying);
            for host in &deployment.hosts {
                let live = host.task_id.is_some_and(|task_id| self.tasks.is_live(task_id));
                assert_eq!(
                    live,
                    host.state == HostState::Deploying,
                    "deployment {id} host {} ({})",
                    host.name,
                    host.state
                );
                if !in_progress {
                    assert!(!live, "ended deployment {id} still deploys to {}", host.name);
                }
            }
            if in_progress {
                assert!(
                    deployment.hosts.iter().any(|host| host.state == HostState::Deploying),
                    "deployment {id} is stuck"
                );
                let others = deployments.iter().filter(|other| {
                    other.repo == deployment.repo
                        && other.environment == deployment.environment
                        && matches!(other.state, DeploymentState::Canary | DeploymentState::Deploying)
                });
                assert_eq!(others.count(), 1, "two deployments in progress in {}", deployment.environment);
            }
            if deployment.state == DeploymentState::Deployed {
                assert!(
                    deployment.hosts.iter().all(|host| host.state == HostState::Deployed),
                    "deployment {id}"
                );
            }
            assert_eq!(
                deployment.state == DeploymentState::Waiting,
                deployment.waiting_for.is_some(),
                "deployment {id} is {} and waits for {:?}",
                deployment.state,
                deployment.waiting_for
            );
        }
    }

    /// Checks what must hold across tasks and runners; panics with the
    /// broken invariant. Each part checks its own first.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self, store: &Store) {
        self.tasks.check_invariants(self.settings.max_attempts);
        self.runners.check_invariants();
        self.bisections.check_invariants(&self.tasks);
        // Counts by state equal the rows.
        for (state, rows) in store.count_by_state().expect("counting tasks") {
            assert_eq!(self.tasks.count(state), rows, "count of {state} tasks differs from the store");
        }
        for state in TaskState::ALL {
            if self.tasks.count(state) > 0 {
                let rows = store.count_by_state().expect("counting tasks");
                assert!(rows.iter().any(|(s, _)| *s == state), "{state} counted but has no rows");
            }
        }
        // A running task whose runner is connected is listed by exactly that
        // runner; an orphaned one (after a restart) by none.
        for running in self.tasks.running_tasks() {
            let name = running.task.runner.as_ref().expect("a running task has a runner");
            let listing: Vec<&Name> = self.runners.listing(running.task.id).collect();
            if running.orphaned_at.is_some() {
                assert!(listing.is_empty(), "orphaned task {} is listed by {listing:?}", running.task.id);
            } else {
                assert_eq!(listing, vec![name], "task {} is running on {name}", running.task.id);
                assert!(
                    self.runners.is_connected(name),
                    "task {} runs on disconnected {name}",
                    running.task.id
                );
            }
        }
        // A host's deploy task runs on that host alone.
        for running in self.tasks.running_tasks() {
            if let Some(host) = &running.task.host {
                assert_eq!(
                    running.task.runner.as_ref(),
                    Some(host),
                    "deploy task {} off its host",
                    running.task.id
                );
            }
        }
        self.check_deployments(store);
        // Every task a runner lists is running there.
        for (name, task_id) in self.runners.all_listed() {
            let running = self.tasks.running(task_id);
            assert!(
                running.is_some_and(|r| r.task.runner.as_ref() == Some(name) && r.orphaned_at.is_none()),
                "runner {name} lists task {task_id}, which is not running on it"
            );
        }
        // Followers follow live tasks only.
        for task_id in self.follows.followed() {
            assert!(self.tasks.is_live(task_id), "a follower of ended task {task_id} is still kept");
        }
    }
}
