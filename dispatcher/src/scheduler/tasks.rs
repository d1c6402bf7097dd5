//! The life of a task: queued, handed out, streamed, finished, aborted,
//! rerun.

use protocol::message::{
    Abort, Accepted, Assign, DispatcherToRunner, Job, Outcome, Output, ResultAck, TaskInfo, TaskResult,
};
use protocol::{Name, TaskId, TaskState};
use tokio::sync::watch;

use super::{now_ms, printable, ConnId, Effects, LogProgress, Running, State};

/// Bytes of a runner's reason kept.
const MAX_REASON: usize = 4096;
use crate::files::FileJob;
use crate::store::{Finish, LiveTask, NewTask, TaskKind, Trigger, Tx};

/// How many queued tasks one scheduling pass looks at, so that a queue of
/// tasks waiting for a label nobody has cannot stall a batch.
const MAX_SCAN: usize = 10_000;

impl State {
    pub(super) fn submit(&mut self, tx: &Tx<'_>, task: NewTask) -> anyhow::Result<Accepted> {
        let (task_id, inserted) = tx.insert_task(&task, now_ms())?;
        if inserted {
            tracing::info!(task_id = %task_id, repo = %task.repo, branch = %task.branch, commit = %task.commit,
                trigger = ?task.trigger, "task queued");
            self.move_count(task_id, None, TaskState::Pending);
            self.pending.insert(
                task_id,
                LiveTask {
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
                },
            );
        } else {
            tracing::debug!(task_id = %task_id, commit = %task.commit, "duplicate submission acknowledged");
        }
        Ok(Accepted { task_id, duplicate: !inserted })
    }

    /// Hands queued tasks, oldest first, to runners with a free slot and the
    /// labels the task needs.
    pub(super) fn schedule(&mut self, tx: &Tx<'_>, effects: &mut Effects) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut free: Vec<(Name, usize)> = self
            .runners
            .values()
            .filter(|runner| runner.conn.is_some() && !runner.draining)
            .filter_map(|runner| {
                let free_slots = (runner.slots as usize).saturating_sub(runner.tasks.len());
                (free_slots > 0).then(|| (runner.name.clone(), free_slots))
            })
            .collect();
        if free.is_empty() {
            return Ok(());
        }
        // Least-loaded first spreads work over the runners.
        free.sort_by_key(|(_, free_slots)| std::cmp::Reverse(*free_slots));
        let mut chosen = Vec::new();
        for task in self.pending.values().take(MAX_SCAN) {
            let fits = free.iter().position(|(name, _)| {
                let labels = &self.runners[name].labels;
                task.labels.iter().all(|needed| labels.contains(needed))
            });
            if let Some(idx) = fits {
                chosen.push((task.id, free[idx].0.clone()));
                free[idx].1 -= 1;
                if free[idx].1 == 0 {
                    free.remove(idx);
                    if free.is_empty() {
                        break;
                    }
                }
            }
        }
        for (task_id, runner) in chosen {
            self.assign(tx, effects, task_id, runner)?;
        }
        Ok(())
    }

    fn assign(
        &mut self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        task_id: TaskId,
        name: Name,
    ) -> anyhow::Result<()> {
        let Some(task) = self.pending.get(&task_id) else { return Ok(()) };
        let job = match task.kind {
            TaskKind::Test => Job::Test,
            TaskKind::Deploy => match self.deploy_job(tx, task)? {
                Some(job) => job,
                None => {
                    let finish = Finish {
                        reason: Some("the release or the repository's deploy steps are gone".into()),
                        ..Finish::ended(TaskState::Error)
                    };
                    return self.finish(tx, task_id, &finish);
                }
            },
        };
        let Some(mut task) = self.pending.remove(&task_id) else { return Ok(()) };
        let runner = self.runners.get_mut(&name).expect("schedule only picks known runners");
        let conn = runner.conn.expect("schedule only picks connected runners");
        task.attempts += 1;
        task.state = TaskState::Running;
        task.runner = Some(name.clone());
        tx.start_attempt(task_id, task.attempts, &name, now_ms())?;
        runner.tasks.push(task_id);
        self.files.start_attempt(task_id, task.attempts);
        tracing::info!(task_id = %task_id, attempt = task.attempts, runner = %name, commit = %task.commit, "task assigned");
        effects.send_runner(
            conn,
            DispatcherToRunner::Assign(Assign {
                task_id,
                attempt: task.attempts,
                repo: task.repo.clone(),
                branch: task.branch.clone(),
                commit: task.commit.clone(),
                job,
            }),
        );
        if self.follows.contains_key(&task_id) {
            let progress = LogProgress { attempt: task.attempts, len: 0, ended: false };
            self.progress_after_commit.push((task_id, progress));
        }
        self.move_count(task_id, Some(TaskState::Pending), TaskState::Running);
        self.running.insert(
            task_id,
            Running { task, log: None, log_len: 0, truncated: false, orphaned_at: None, aborting: false },
        );
        Ok(())
    }

    /// Appends output of the current attempt; anything else is dropped.
    pub(super) fn output(&mut self, runner: &Name, output: Output) {
        let Some(running) = self.running.get_mut(&output.task_id) else { return };
        if running.task.attempts != output.attempt || running.task.runner.as_ref() != Some(runner) {
            tracing::debug!(task_id = %output.task_id, attempt = output.attempt, runner = %runner, "output of a stale attempt dropped");
            return;
        }
        // An end past u64::MAX is no real output: a peer's arithmetic must
        // not panic the scheduler (issue 6).
        let Some(end) = output.offset.checked_add(output.data.len() as u64) else {
            tracing::warn!(task_id = %output.task_id, offset = output.offset, "output at an impossible offset dropped");
            return;
        };
        // After a reconnect the runner resends from the offset we gave it;
        // skip anything we already have.
        if end <= running.log_len {
            return;
        }
        if output.offset > running.log_len {
            tracing::warn!(task_id = %output.task_id, expected = running.log_len, got = output.offset, "gap in task output");
        }
        let skip = running.log_len.saturating_sub(output.offset) as usize;
        let data = &output.data[skip..];
        let room = self.settings.output_cap.saturating_sub(running.log_len) as usize;
        let result = if data.len() <= room {
            self.files.append_log(&mut running.log, output.task_id, data).map(|()| data.len())
        } else if !running.truncated {
            running.truncated = true;
            let marker = format!("\n[baton: output truncated at {} bytes]\n", self.settings.output_cap);
            let mut kept = data[..room].to_vec();
            kept.extend_from_slice(marker.as_bytes());
            self.files.append_log(&mut running.log, output.task_id, &kept).map(|()| data.len())
        } else {
            Ok(data.len())
        };
        match result {
            // The log length counts the runner's bytes, so resumed offsets
            // stay right even after truncation.
            Ok(accepted) => running.log_len += accepted as u64,
            Err(err) => {
                tracing::error!(task_id = %output.task_id, error = %format!("{err:#}"), "cannot write task output");
            }
        }
        if let Some(progress) = self.follows.get(&output.task_id) {
            let len = self.files.log_len(output.task_id);
            progress.send_modify(|progress| progress.len = len);
        }
    }

    pub(super) fn result(
        &mut self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        conn: ConnId,
        runner: &Name,
        result: TaskResult,
    ) -> anyhow::Result<()> {
        let (task_id, attempt) = (result.task_id, result.attempt);
        let ack = |accepted: bool, reason: Option<String>| {
            DispatcherToRunner::ResultAck(ResultAck { task_id, attempt, accepted, reason })
        };
        let current = self.running.get(&task_id).is_some_and(|running| {
            running.task.attempts == attempt && running.task.runner.as_ref() == Some(runner)
        });
        if !current {
            // Either a resend of a result we recorded before a reconnect
            // (acknowledge it again, record nothing), or a late result from a
            // runner the task was taken from (refuse it).
            let recorded = tx.task(task_id)?.is_some_and(|task| {
                task.state.is_final() && task.attempts == attempt && task.runner.as_ref() == Some(runner)
            });
            if recorded {
                effects.send_runner(conn, ack(true, Some("already recorded".into())));
            } else {
                tracing::warn!(task_id = %task_id, attempt, runner = %runner, "refused a result for an attempt that is not current");
                effects.send_runner(
                    conn,
                    ack(false, Some("the attempt is not current (reassigned or finished)".into())),
                );
            }
            return Ok(());
        }
        if let Some(running) = self.running.get(&task_id) {
            if result.output_len > running.log_len {
                tracing::warn!(task_id = %task_id, have = running.log_len, runner_has = result.output_len,
                    "result arrived before all output");
            }
        }
        let state = match result.outcome {
            Outcome::Passed => TaskState::Passed,
            Outcome::Failed => TaskState::Failed,
            Outcome::Error => TaskState::Error,
            Outcome::Aborted => TaskState::Aborted,
            Outcome::Refused => {
                // The runner never started it (it is stopping, or was sent
                // more than its slots): give the task to another runner.
                let reason = printable(result.reason.as_deref().unwrap_or("refused"), MAX_REASON);
                self.requeue_or_fail(tx, task_id, &format!("runner {runner} refused it: {reason}"))?;
                effects.send_runner(conn, ack(true, None));
                return Ok(());
            }
        };
        let finish = Finish {
            state,
            exit_code: result.exit_code,
            duration_ms: Some(result.duration_ms),
            summary: result.summary,
            reason: result.reason.map(|reason| printable(&reason, MAX_REASON)),
            at_ms: now_ms(),
            tag: result.tag,
            failed_step: result.failed_step.map(|step| printable(&step, 64)),
        };
        self.finish(tx, task_id, &finish)?;
        effects.send_runner(conn, ack(true, None));
        Ok(())
    }

    /// Records a final state for a queued or running task.
    fn finish(&mut self, tx: &Tx<'_>, task_id: TaskId, finish: &Finish) -> anyhow::Result<()> {
        let (task, from) = if let Some(running) = self.running.remove(&task_id) {
            (running.task, TaskState::Running)
        } else if let Some(task) = self.pending.remove(&task_id) {
            (task, TaskState::Pending)
        } else {
            return Ok(());
        };
        if let Some(runner) = task.runner.as_ref().and_then(|name| self.runners.get_mut(name)) {
            runner.tasks.retain(|id| *id != task_id);
        }
        tx.finish(task_id, finish)?;
        self.move_count(task_id, Some(from), finish.state);
        tracing::info!(task_id = %task_id, commit = %task.commit, state = %finish.state, exit_code = ?finish.exit_code,
            reason = ?finish.reason, attempts = task.attempts, "task finished");
        if let Some(info) = tx.task(task_id)? {
            self.file_jobs.push(FileJob::Result(Box::new(info)));
        }
        if let Some(sender) = self.follows.get(&task_id) {
            let progress = LogProgress { ended: true, ..*sender.borrow() };
            self.progress_after_commit.push((task_id, progress));
        }
        self.after_finish(tx, &task, finish)
    }

    /// A lost runner's task goes back to the queue, or to `error` once its
    /// attempts are spent.
    pub(super) fn requeue_or_fail(
        &mut self,
        tx: &Tx<'_>,
        task_id: TaskId,
        reason: &str,
    ) -> anyhow::Result<()> {
        let Some(running) = self.running.get(&task_id) else { return Ok(()) };
        let attempts = running.task.attempts;
        if running.aborting {
            let finish = Finish {
                reason: Some(format!(
                    "aborted by a client; its runner was lost before stopping it: {reason}"
                )),
                ..Finish::ended(TaskState::Aborted)
            };
            return self.finish(tx, task_id, &finish);
        }
        if attempts >= self.settings.max_attempts {
            let finish = Finish {
                reason: Some(format!("gave up after {attempts} attempts; last: {reason}")),
                ..Finish::ended(TaskState::Error)
            };
            return self.finish(tx, task_id, &finish);
        }
        let Some(mut running) = self.running.remove(&task_id) else { return Ok(()) };
        if let Some(runner) = running.task.runner.as_ref().and_then(|name| self.runners.get_mut(name)) {
            runner.tasks.retain(|id| *id != task_id);
        }
        tx.requeue(task_id, reason)?;
        tracing::warn!(task_id = %task_id, attempts, reason, "task requeued");
        running.task.state = TaskState::Pending;
        running.task.runner = None;
        self.move_count(task_id, Some(TaskState::Running), TaskState::Pending);
        self.pending.insert(task_id, running.task);
        Ok(())
    }

    pub(super) fn abort(
        &mut self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        task_id: TaskId,
    ) -> anyhow::Result<Result<TaskInfo, String>> {
        let aborted =
            Finish { reason: Some("aborted by a client".into()), ..Finish::ended(TaskState::Aborted) };
        if self.pending.contains_key(&task_id) {
            self.finish(tx, task_id, &aborted)?;
        } else if let Some(running) = self.running.get_mut(&task_id) {
            running.aborting = true;
            let running = &*running;
            let conn =
                running.task.runner.as_ref().and_then(|name| self.runners.get(name)).and_then(|r| r.conn);
            match conn.filter(|_| running.orphaned_at.is_none()) {
                Some(conn) => {
                    tracing::info!(task_id = %task_id, "asking the runner to abort the task");
                    let attempt = running.task.attempts;
                    effects.send_runner(conn, DispatcherToRunner::Abort(Abort { task_id, attempt }));
                }
                None => self.finish(tx, task_id, &aborted)?,
            }
        } else {
            return Ok(match tx.task(task_id)? {
                Some(task) => Err(format!("task {task_id} already ended: {}", task.state)),
                None => Err(format!("no task {task_id}")),
            });
        }
        Ok(tx.task(task_id)?.ok_or_else(|| format!("no task {task_id}")))
    }

    pub(super) fn rerun(&mut self, tx: &Tx<'_>, task_id: TaskId) -> anyhow::Result<Result<Accepted, String>> {
        let Some(task) = tx.task(task_id)? else { return Ok(Err(format!("no task {task_id}"))) };
        let new = NewTask {
            repo: task.repo,
            branch: task.branch,
            commit: task.commit,
            labels: task.labels,
            trigger: Trigger::Rerun,
            kind: TaskKind::Test,
            release_id: None,
        };
        self.submit(tx, new).map(Ok)
    }

    pub(super) fn follow(&mut self, task_id: TaskId) -> Option<watch::Receiver<LogProgress>> {
        let progress = if let Some(running) = self.running.get(&task_id) {
            LogProgress { attempt: running.task.attempts, len: self.files.log_len(task_id), ended: false }
        } else if let Some(task) = self.pending.get(&task_id) {
            LogProgress { attempt: task.attempts, len: 0, ended: false }
        } else {
            return None;
        };
        let sender = self.follows.entry(task_id).or_insert_with(|| watch::channel(progress).0);
        Some(sender.subscribe())
    }
}
