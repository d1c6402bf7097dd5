//! The live tasks as data: the queue (oldest first), the running attempts,
//! and the counts by state. Every move between states goes through a method
//! here, so the counts always equal the rows; what a move means (messages,
//! records, releases) is decided in `life`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use protocol::message::Accepted;
use protocol::{Name, TaskId, TaskState};

use crate::store::{LiveTask, NewTask, TaskKind, Tx};

/// Queued and running tasks, and how many tasks are in each state.
pub(crate) struct Tasks {
    /// Queued tasks; task ids increase in submission order, so the map's
    /// order is oldest first.
    pending: BTreeMap<TaskId, LiveTask>,
    /// The queued tasks of kind `bisect`, oldest first: they wait behind
    /// all ordinary work, and a scheduling pass finds them here without
    /// walking a queue of thousands of ordinary tasks.
    pending_bisect: BTreeSet<TaskId>,
    running: HashMap<TaskId, Running>,
    /// Tasks by state, final states included (the store's counts at start,
    /// kept up to date since).
    counts: HashMap<TaskState, u64>,
}

/// A task handed to a runner (or, after a restart, waiting for its runner to
/// come back).
pub(crate) struct Running {
    pub(crate) task: LiveTask,
    /// The open `logs/<id>.log` of this attempt, once it has output.
    pub(crate) log: Option<std::fs::File>,
    /// Bytes of this attempt's output the runner sent and we took (stored,
    /// or dropped past the cap): the offset a resumed runner continues at.
    pub(crate) log_len: u64,
    /// Bytes in `logs/<id>.log` for this attempt (the cap's marker
    /// included): how far followers may read.
    pub(crate) stored_len: u64,
    /// Set when the output cap was reached and the marker written.
    pub(crate) truncated: bool,
    /// Since when the runner is absent (dispatcher restart); `None` while
    /// its runner is connected.
    pub(crate) orphaned_at: Option<Instant>,
    /// A client asked to abort it; if its runner is lost before it reports,
    /// the task ends `aborted` instead of running again.
    pub(crate) aborting: bool,
    /// Output was sent that is not stored (a failed write, a hole): the
    /// runner must send it again from `log_len` before the result counts.
    pub(crate) needs_resend: bool,
    /// A `Resend` is on its way; chunks past `log_len` are from the old
    /// stream and are dropped without asking again.
    pub(crate) resend_pending: bool,
}

impl Running {
    /// A task recorded `running` before a restart, whose runner has not
    /// reconnected yet; `log_len` is what its log file holds.
    pub(crate) fn orphaned(task: LiveTask, log_len: u64, since: Instant) -> Running {
        Running {
            task,
            log: None,
            log_len,
            stored_len: log_len,
            truncated: false,
            orphaned_at: Some(since),
            aborting: false,
            needs_resend: false,
            resend_pending: false,
        }
    }
}

/// Inserts a new task into the store, or finds the duplicate it is.
///
/// # Returns
/// The answer for the submitter, and the task to queue if it is new.
///
/// # Errors
/// Storage errors.
pub(crate) fn insert(
    tx: &Tx<'_>,
    task: NewTask,
    now_ms: i64,
) -> anyhow::Result<(Accepted, Option<LiveTask>)> {
    let (task_id, inserted) = tx.insert_task(&task, now_ms)?;
    if !inserted {
        tracing::debug!(task_id = %task_id, commit = %task.commit, "duplicate submission acknowledged");
        return Ok((Accepted { task_id, duplicate: true }, None));
    }
    tracing::info!(task_id = %task_id, repo = %task.repo, branch = %task.branch, commit = %task.commit,
        trigger = ?task.trigger, "task queued");
    let live = LiveTask {
        id: task_id,
        repo: task.repo,
        branch: task.branch,
        commit: task.commit,
        labels: task.labels,
        state: TaskState::Pending,
        attempts: 0,
        runner: None,
        kind: task.kind,
        release_id: task.release_id,
        host: task.host,
        deployment_id: task.deployment_id,
        retries: 0,
        avoid: None,
    };
    Ok((Accepted { task_id, duplicate: false }, Some(live)))
}

impl Tasks {
    /// No live tasks yet; `counts` are the store's rows by state.
    pub(crate) fn new(counts: Vec<(TaskState, u64)>) -> Tasks {
        Tasks {
            pending: BTreeMap::new(),
            pending_bisect: BTreeSet::new(),
            running: HashMap::new(),
            counts: counts.into_iter().collect(),
        }
    }

    /// A queued task read back at start-up (already counted).
    pub(crate) fn recover_pending(&mut self, task: LiveTask) {
        self.enqueue(task);
    }

    /// A running task read back at start-up (already counted).
    pub(crate) fn recover_running(&mut self, running: Running) {
        self.running.insert(running.task.id, running);
    }

    /// Queues a task just inserted into the store.
    pub(crate) fn queue(&mut self, task: LiveTask) {
        self.move_count(None, TaskState::Pending);
        self.enqueue(task);
    }

    pub(crate) fn count(&self, state: TaskState) -> u64 {
        self.counts.get(&state).copied().unwrap_or(0)
    }

    pub(crate) fn n_pending(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn n_running(&self) -> usize {
        self.running.len()
    }

    /// Queued tasks, oldest first.
    pub(crate) fn pending_in_order(&self) -> impl Iterator<Item = &LiveTask> {
        self.pending.values()
    }

    /// Queued tasks of kind `bisect`, oldest first.
    pub(crate) fn pending_bisect(&self) -> impl Iterator<Item = &LiveTask> {
        self.pending_bisect.iter().filter_map(|task_id| self.pending.get(task_id))
    }

    pub(crate) fn pending(&self, task_id: TaskId) -> Option<&LiveTask> {
        self.pending.get(&task_id)
    }

    pub(crate) fn running(&self, task_id: TaskId) -> Option<&Running> {
        self.running.get(&task_id)
    }

    pub(crate) fn running_mut(&mut self, task_id: TaskId) -> Option<&mut Running> {
        self.running.get_mut(&task_id)
    }

    #[cfg(test)]
    pub(crate) fn running_tasks(&self) -> impl Iterator<Item = &Running> {
        self.running.values()
    }

    /// Whether the task is queued or running.
    pub(crate) fn is_live(&self, task_id: TaskId) -> bool {
        self.pending.contains_key(&task_id) || self.running.contains_key(&task_id)
    }

    /// The running tasks the dispatcher believes `runner` has.
    pub(crate) fn running_on(&self, runner: &Name) -> Vec<TaskId> {
        let mut ids: Vec<TaskId> = self
            .running
            .values()
            .filter(|running| running.task.runner.as_ref() == Some(runner))
            .map(|running| running.task.id)
            .collect();
        ids.sort();
        ids
    }

    /// Running tasks still waiting, since before `deadline`, for their runner
    /// to come back after a restart.
    pub(crate) fn orphaned_before(&self, deadline: Instant) -> Vec<TaskId> {
        let mut ids: Vec<TaskId> = self
            .running
            .values()
            .filter(|running| running.orphaned_at.is_some_and(|at| at < deadline))
            .map(|running| running.task.id)
            .collect();
        ids.sort();
        ids
    }

    /// Moves a queued task to running as its next attempt on `runner`.
    pub(crate) fn start(&mut self, task_id: TaskId, runner: &Name) -> Option<&Running> {
        let mut task = self.dequeue(task_id)?;
        task.attempts += 1;
        task.state = TaskState::Running;
        task.runner = Some(runner.clone());
        self.move_count(Some(TaskState::Pending), TaskState::Running);
        let running = Running {
            task,
            log: None,
            log_len: 0,
            stored_len: 0,
            truncated: false,
            orphaned_at: None,
            aborting: false,
            needs_resend: false,
            resend_pending: false,
        };
        Some(&*self.running.entry(task_id).or_insert(running))
    }

    /// Moves a running task back to the queue.
    pub(crate) fn requeue(&mut self, task_id: TaskId) -> Option<&LiveTask> {
        self.back_to_queue(task_id).map(|task| &*task)
    }

    /// Moves a running task whose run failed back to the queue for a retry,
    /// preferring a runner other than `avoid`.
    pub(crate) fn retry(&mut self, task_id: TaskId, avoid: Name) -> Option<&LiveTask> {
        let task = self.back_to_queue(task_id)?;
        task.retries += 1;
        task.avoid = Some(avoid);
        Some(&*task)
    }

    /// Running tasks whose output must be asked for again.
    pub(crate) fn needing_resend(&self) -> Vec<TaskId> {
        self.running.values().filter(|running| running.needs_resend).map(|running| running.task.id).collect()
    }

    /// After a stall of the dispatcher, tasks waiting for their runner wait
    /// a full window from now.
    pub(crate) fn restart_orphan_clocks(&mut self, now: Instant) {
        for running in self.running.values_mut() {
            if running.orphaned_at.is_some() {
                running.orphaned_at = Some(now);
            }
        }
    }

    /// Moves a running task back to the queue as if it had never started:
    /// its runner refused it, so the attempt is given back.
    pub(crate) fn unstart(&mut self, task_id: TaskId) -> Option<&LiveTask> {
        let task = self.back_to_queue(task_id)?;
        task.attempts = task.attempts.saturating_sub(1);
        Some(&*task)
    }

    /// Moves a running task to the queue, unassigned.
    fn back_to_queue(&mut self, task_id: TaskId) -> Option<&mut LiveTask> {
        let mut running = self.running.remove(&task_id)?;
        running.task.state = TaskState::Pending;
        running.task.runner = None;
        self.move_count(Some(TaskState::Running), TaskState::Pending);
        self.enqueue(running.task);
        self.pending.get_mut(&task_id)
    }

    /// Puts a task in the queue and its indexes.
    fn enqueue(&mut self, task: LiveTask) {
        if task.kind == TaskKind::Bisect {
            self.pending_bisect.insert(task.id);
        }
        self.pending.insert(task.id, task);
    }

    /// Takes a task out of the queue and its indexes.
    fn dequeue(&mut self, task_id: TaskId) -> Option<LiveTask> {
        let task = self.pending.remove(&task_id)?;
        self.pending_bisect.remove(&task_id);
        Some(task)
    }

    /// Takes a queued or running task out of the live tasks as it ends in
    /// `state`.
    ///
    /// # Returns
    /// The task as it was, and whether it was running; `None` if it is not
    /// live.
    pub(crate) fn end(&mut self, task_id: TaskId, state: TaskState) -> Option<(LiveTask, bool)> {
        let (task, was_running) = if let Some(running) = self.running.remove(&task_id) {
            (running.task, true)
        } else {
            (self.dequeue(task_id)?, false)
        };
        let from = if was_running { TaskState::Running } else { TaskState::Pending };
        self.move_count(Some(from), state);
        Some((task, was_running))
    }

    /// An ended task in `state` was removed by retention.
    pub(crate) fn forget(&mut self, state: TaskState) {
        debug_assert!(state.is_final(), "only ended tasks are removed");
        let slot = self.counts.entry(state).or_default();
        *slot = slot.saturating_sub(1);
    }

    fn move_count(&mut self, from: Option<TaskState>, to: TaskState) {
        if let Some(from) = from {
            let slot = self.counts.entry(from).or_default();
            *slot = slot.saturating_sub(1);
        }
        *self.counts.entry(to).or_default() += 1;
    }

    /// What holds within the tasks alone.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self, max_attempts: u32) {
        assert_eq!(self.count(TaskState::Pending), self.pending.len() as u64, "pending count");
        assert_eq!(self.count(TaskState::Running), self.running.len() as u64, "running count");
        let bisect: BTreeSet<TaskId> =
            self.pending.values().filter(|task| task.kind == TaskKind::Bisect).map(|task| task.id).collect();
        assert_eq!(self.pending_bisect, bisect, "the index of queued bisect tasks");
        for (task_id, task) in &self.pending {
            assert_eq!(*task_id, task.id);
            assert_eq!(task.state, TaskState::Pending, "queued task {task_id}");
            assert!(task.runner.is_none(), "queued task {task_id} has a runner");
            // Retries of failed runs are not lost runs: they do not count.
            let runs = task.attempts - task.retries;
            assert!(runs < max_attempts, "queued task {task_id} has spent its attempts");
            assert!(!self.running.contains_key(task_id), "task {task_id} is queued and running");
        }
        for (task_id, running) in &self.running {
            assert_eq!(*task_id, running.task.id);
            assert_eq!(running.task.state, TaskState::Running, "running task {task_id}");
            assert!(running.task.runner.is_some(), "running task {task_id} has no runner");
            assert!(
                (1..=max_attempts).contains(&(running.task.attempts - running.task.retries)),
                "task {task_id} runs attempt {} of {max_attempts} (+ {} retries)",
                running.task.attempts,
                running.task.retries
            );
        }
    }
}
