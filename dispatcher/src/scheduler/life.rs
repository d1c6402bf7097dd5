//! The life of a task, as functions over `(&mut Core, &Tx, &mut Effects)`:
//! queued, handed out, streamed, finished, requeued, aborted, rerun.
//!
//! A task's end goes through [`finish`], which calls the releases part once
//! (`Releases::task_finished`) and queues the deploy tasks it returns.

use protocol::message::{
    Abort, Accepted, Assign, DispatcherToRunner, Job, Outcome, Output, ReleaseInfo, ResultAck, TaskInfo,
    TaskResult,
};
use protocol::{Name, RepoUrl, TaskId, TaskState};
use tokio::sync::watch;

use super::{now_ms, printable, printable_line, tasks, ConnId, Core, Effects, LogProgress, StateChange};
use crate::files::FileJob;
use crate::store::{Finish, LiveTask, NewTask, TaskKind, Trigger, Tx};

/// Bytes of a runner's reason kept.
const MAX_REASON: usize = 4096;

/// How many queued tasks one scheduling pass looks at, so that a queue of
/// tasks waiting for a label nobody has cannot stall a batch.
const MAX_SCAN: usize = 10_000;

/// An observer's or client's submission.
pub(super) fn submit(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    task: NewTask,
) -> anyhow::Result<Accepted> {
    let (accepted, queued) = tasks::insert(tx, task, now_ms())?;
    if let Some(task) = queued {
        queue(core, effects, task);
    }
    Ok(accepted)
}

/// Queues a task the store has just inserted.
pub(super) fn queue(core: &mut Core, effects: &mut Effects, task: LiveTask) {
    effects.state_changed(StateChange {
        task_id: task.id,
        state: TaskState::Pending,
        attempt: 0,
        runner: None,
    });
    core.tasks.queue(task);
}

/// Hands queued tasks, oldest first, to runners with a free slot and the
/// labels the task needs.
pub(super) fn schedule(core: &mut Core, tx: &Tx<'_>, effects: &mut Effects) -> anyhow::Result<()> {
    super::bisect::resume(core, tx, effects)?;
    if core.tasks.n_pending() == 0 {
        return Ok(());
    }
    let mut free = core.runners.with_free_slots();
    let mut chosen = Vec::new();
    // Ordinary tasks left waiting for a runner (a few are enough to decide
    // whether a bisect step should make room).
    let mut waiting = Vec::new();
    // Bisect tasks come after all ordinary work (`bisect::choose`).
    for task in core.tasks.pending_in_order().filter(|task| task.kind != TaskKind::Bisect).take(MAX_SCAN) {
        if free.is_empty() {
            if waiting.len() < 16 {
                waiting.push(task.id);
                continue;
            }
            break;
        }
        let suits = |name: &Name| {
            // A host's deploy task runs on that host alone.
            if task.host.as_ref().is_some_and(|host| host != name) {
                return false;
            }
            let labels = core.runners.get(name).map(|runner| runner.labels.as_slice()).unwrap_or_default();
            task.labels.iter().all(|needed| labels.contains(needed))
        };
        // A retry of a failed run goes to another runner when one is free.
        let fits = free
            .iter()
            .position(|(name, _)| task.avoid.as_ref() != Some(name) && suits(name))
            .or_else(|| free.iter().position(|(name, _)| suits(name)));
        if let Some(idx) = fits {
            chosen.push((task.id, free[idx].0.clone()));
            free[idx].1 -= 1;
            if free[idx].1 == 0 {
                free.remove(idx);
            }
        } else if waiting.len() < 16 {
            waiting.push(task.id);
        }
    }
    chosen.extend(super::bisect::choose(core, &free));
    for (task_id, runner) in chosen {
        assign(core, tx, effects, task_id, &runner)?;
    }
    super::bisect::preempt(core, tx, effects, &waiting)
}

fn assign(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    task_id: TaskId,
    name: &Name,
) -> anyhow::Result<()> {
    let Some(task) = core.tasks.pending(task_id) else { return Ok(()) };
    let job = match task.kind {
        TaskKind::Test | TaskKind::Bisect => Job::Test,
        TaskKind::Deploy => match core.releases.deploy_job(tx, task)? {
            Some(job) => job,
            None => {
                let finish = Finish {
                    reason: Some("the release or the repository's deploy steps are gone".into()),
                    ..Finish::ended(TaskState::Error)
                };
                return self::finish(core, tx, effects, task_id, &finish);
            }
        },
    };
    // Schedule picks only connected runners.
    let Some(conn) = core.runners.conn_of(name) else { return Ok(()) };
    let Some(running) = core.tasks.start(task_id, name) else { return Ok(()) };
    let task = &running.task;
    tx.start_attempt(task_id, task.attempts, name, now_ms())?;
    core.files.start_attempt(task_id, task.attempts);
    core.releases.task_started(tx, effects, task)?;
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
    if core.follows.is_followed(task_id) {
        effects.progress(task_id, LogProgress { attempt: task.attempts, len: 0, ended: false });
    }
    effects.state_changed(StateChange {
        task_id,
        state: TaskState::Running,
        attempt: task.attempts,
        runner: Some(name.clone()),
    });
    core.runners.add_task(name, task_id);
    Ok(())
}

/// Appends output of the current attempt; anything else is dropped.
pub(super) fn output(core: &mut Core, effects: &mut Effects, runner: &Name, output: Output) {
    let output_cap = core.settings.output_cap;
    let Some(running) = core.tasks.running_mut(output.task_id) else { return };
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
    // The stored log is always a prefix of the runner's output: a chunk
    // past its end (one sent while an earlier chunk could not be stored) is
    // dropped, and the runner is asked for the rest again (issue 12).
    if output.offset > running.log_len {
        if !running.resend_pending && !running.needs_resend {
            tracing::warn!(task_id = %output.task_id, expected = running.log_len, got = output.offset, "gap in task output; asking for it again");
            running.needs_resend = true;
        }
        return;
    }
    if core.disk.full().is_some() {
        running.needs_resend = true;
        running.resend_pending = false;
        return;
    }
    let skip = running.log_len.saturating_sub(output.offset) as usize;
    let data = &output.data[skip..];
    let room = output_cap.saturating_sub(running.log_len) as usize;
    let stored = if data.len() <= room {
        core.files.append_log(&mut running.log, output.task_id, data).map(|()| data.len())
    } else if !running.truncated {
        running.truncated = true;
        let marker = format!("\n[baton: output truncated at {output_cap} bytes]\n");
        let mut kept = data[..room].to_vec();
        kept.extend_from_slice(marker.as_bytes());
        core.files.append_log(&mut running.log, output.task_id, &kept).map(|()| kept.len())
    } else {
        Ok(0)
    };
    match stored {
        Ok(stored) => {
            // The log length counts the runner's bytes, so resumed offsets
            // stay right even after truncation.
            running.log_len += data.len() as u64;
            running.stored_len += stored as u64;
        }
        Err(err) => {
            tracing::error!(task_id = %output.task_id, error = %format!("{err:#}"), "cannot write task output; it will be asked for again");
            // Cut what part of the chunk was written, so the log stays a
            // prefix, and reopen the file on the next write.
            if let Some(file) = running.log.take() {
                if let Err(err) = file.set_len(running.stored_len) {
                    tracing::error!(task_id = %output.task_id, error = %err, "cannot cut a partly written chunk from the log");
                }
            }
            if running.truncated && running.stored_len <= output_cap {
                // The marker was in the failed write: write it again.
                running.truncated = false;
            }
            running.needs_resend = true;
            running.resend_pending = false;
            core.disk.write_failed(&err);
        }
    }
    if core.follows.is_followed(output.task_id) {
        let progress = LogProgress { attempt: running.task.attempts, len: running.stored_len, ended: false };
        effects.progress(output.task_id, progress);
    }
}

/// A runner's result for an attempt.
pub(super) fn result(
    core: &mut Core,
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
    let current = core
        .tasks
        .running(task_id)
        .filter(|running| running.task.attempts == attempt && running.task.runner.as_ref() == Some(runner));
    let Some(_) = current else {
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
    };
    if let Some(runner) = core.runners.get_mut(runner) {
        // Its test ended, so a slot is free.
        runner.awaiting_slot = false;
    }
    // Output is part of the result: it is acknowledged (and the runner's
    // spool freed) only once the output is stored (issue 12).
    if let Some(running) = core.tasks.running_mut(task_id) {
        if result.output_len > running.log_len || running.needs_resend {
            tracing::warn!(task_id = %task_id, attempt, have = running.log_len, runner_has = result.output_len,
                "result held until its output is stored");
            if !running.resend_pending {
                running.needs_resend = true;
            }
            return Ok(());
        }
    }
    let state = match result.outcome {
        Outcome::Passed => TaskState::Passed,
        Outcome::Failed => TaskState::Failed,
        Outcome::Error => TaskState::Error,
        Outcome::Aborted => TaskState::Aborted,
        Outcome::Refused => {
            // The runner never started it (it is stopping, or its old test
            // still holds the slot): no attempt was spent, and the runner is
            // asked nothing until it reports a free slot.
            let reason = printable(result.reason.as_deref().unwrap_or("refused"), MAX_REASON);
            requeue_refused(core, tx, effects, task_id, &format!("runner {runner} refused it: {reason}"))?;
            if let Some(runner) = core.runners.get_mut(runner) {
                runner.awaiting_slot = true;
            }
            effects.send_runner(conn, ack(true, None));
            return Ok(());
        }
    };
    let retried = super::flaky::result(core, tx, effects, task_id, runner, state, result.tests)?;
    if retried {
        effects.send_runner(conn, ack(true, None));
        return Ok(());
    }
    let finish = Finish {
        state,
        exit_code: result.exit_code,
        duration_ms: Some(result.duration_ms),
        summary: result.summary,
        reason: result.reason.map(|reason| printable(&reason, MAX_REASON)),
        at_ms: now_ms(),
        tag: result.tag,
        failed_step: result.failed_step.map(|step| printable_line(&step, 64)),
    };
    self::finish(core, tx, effects, task_id, &finish)?;
    effects.send_runner(conn, ack(true, None));
    Ok(())
}

/// Records a final state for a queued or running task, and what it means
/// beyond itself.
pub(super) fn finish(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    task_id: TaskId,
    finish: &Finish,
) -> anyhow::Result<()> {
    let stored_len = core.tasks.running(task_id).map(|running| running.stored_len);
    let Some((task, _)) = core.tasks.end(task_id, finish.state) else { return Ok(()) };
    if let Some(runner) = &task.runner {
        core.runners.remove_task(runner, task_id);
    }
    tx.finish(task_id, finish)?;
    tracing::info!(task_id = %task_id, commit = %task.commit, state = %finish.state, exit_code = ?finish.exit_code,
        reason = ?finish.reason, attempts = task.attempts, "task finished");
    if let Some(info) = tx.task(task_id)? {
        effects.file(FileJob::Result(Box::new(info)));
    }
    if core.follows.is_followed(task_id) {
        let len = stored_len.unwrap_or(0);
        effects.progress(task_id, LogProgress { attempt: task.attempts, len, ended: true });
    }
    effects.state_changed(StateChange {
        task_id,
        state: finish.state,
        attempt: task.attempts,
        runner: task.runner.clone(),
    });
    let deploys = core.releases.task_finished(tx, effects, &core.runners, &task, finish)?;
    for deploy in deploys {
        queue(core, effects, deploy);
    }
    super::bisect::task_finished(core, tx, effects, &task, finish.state)
}

/// A refused assignment goes back to the queue without spending an attempt
/// (an abort asked meanwhile ends it `aborted`).
fn requeue_refused(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    task_id: TaskId,
    reason: &str,
) -> anyhow::Result<()> {
    let Some(running) = core.tasks.running(task_id) else { return Ok(()) };
    if running.aborting {
        let why = format!("aborted by a client before it started: {reason}");
        return end(core, tx, effects, task_id, TaskState::Aborted, why);
    }
    free_slot(core, task_id);
    let Some(task) = core.tasks.unstart(task_id) else { return Ok(()) };
    let attempts = task.attempts;
    tx.requeue_refused(task_id, attempts, reason)?;
    tracing::info!(task_id = %task_id, attempts, reason, "assignment refused; requeued without spending an attempt");
    pending_again(effects, task_id, attempts);
    Ok(())
}

/// A running task whose runner was lost (or refused it) goes back to the
/// queue, or ends: `aborted` if a client asked, `error` once its attempts
/// are spent.
pub(super) fn requeue_or_fail(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    task_id: TaskId,
    reason: &str,
) -> anyhow::Result<()> {
    let Some(running) = core.tasks.running(task_id) else { return Ok(()) };
    let attempts = running.task.attempts;
    let lost_runs = attempts - running.task.retries;
    if running.aborting {
        let why = format!("aborted by a client; its runner was lost before stopping it: {reason}");
        return end(core, tx, effects, task_id, TaskState::Aborted, why);
    }
    if lost_runs >= core.settings.max_attempts {
        let why = format!("gave up after {attempts} attempts; last: {reason}");
        return end(core, tx, effects, task_id, TaskState::Error, why);
    }
    free_slot(core, task_id);
    core.tasks.requeue(task_id);
    tx.requeue(task_id, reason)?;
    tracing::warn!(task_id = %task_id, attempts, reason, "task requeued");
    pending_again(effects, task_id, attempts);
    Ok(())
}

/// Ends a running task with `state` and the reason why, the way a result
/// would.
fn end(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    task_id: TaskId,
    state: TaskState,
    reason: String,
) -> anyhow::Result<()> {
    let finish = Finish { reason: Some(reason), ..Finish::ended(state) };
    self::finish(core, tx, effects, task_id, &finish)
}

/// Takes a running task off its runner's list (its slot is free again).
pub(super) fn free_slot(core: &mut Core, task_id: TaskId) {
    let runner = core.tasks.running(task_id).and_then(|running| running.task.runner.clone());
    if let Some(runner) = runner {
        core.runners.remove_task(&runner, task_id);
    }
}

/// Tells subscribers a task waits in the queue again.
pub(super) fn pending_again(effects: &mut Effects, task_id: TaskId, attempts: u32) {
    effects.state_changed(StateChange {
        task_id,
        state: TaskState::Pending,
        attempt: attempts,
        runner: None,
    });
}

/// `baton abort`: a queued task ends at once; a running one is stopped by
/// its runner, which reports `aborted`.
pub(super) fn abort(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    task_id: TaskId,
    by: &str,
) -> anyhow::Result<Result<TaskInfo, String>> {
    let aborted = Finish { reason: Some("aborted by a client".into()), ..Finish::ended(TaskState::Aborted) };
    if core.tasks.pending(task_id).is_some() {
        tx.set_aborted_by(task_id, by)?;
        finish(core, tx, effects, task_id, &aborted)?;
    } else if let Some(running) = core.tasks.running_mut(task_id) {
        tx.set_aborted_by(task_id, by)?;
        running.aborting = true;
        let attempt = running.task.attempts;
        let orphaned = running.orphaned_at.is_some();
        let conn = running.task.runner.as_ref().and_then(|name| core.runners.conn_of(name));
        match conn.filter(|_| !orphaned) {
            Some(conn) => {
                tracing::info!(task_id = %task_id, "asking the runner to abort the task");
                effects.send_runner(conn, DispatcherToRunner::Abort(Abort { task_id, attempt }));
            }
            None => finish(core, tx, effects, task_id, &aborted)?,
        }
    } else {
        return Ok(match tx.task(task_id)? {
            Some(task) => Err(format!("task {task_id} already ended: {}", task.state)),
            None => Err(format!("no task {task_id}")),
        });
    }
    Ok(tx.task(task_id)?.ok_or_else(|| format!("no task {task_id}")))
}

/// `baton rerun`: a new task for the same commit.
pub(super) fn rerun(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    task_id: TaskId,
    by: String,
) -> anyhow::Result<Result<Accepted, String>> {
    let Some(task) = tx.task(task_id)? else { return Ok(Err(format!("no task {task_id}"))) };
    let new = NewTask {
        repo: task.repo,
        branch: task.branch,
        commit: task.commit,
        labels: task.labels,
        trigger: Trigger::Rerun,
        kind: TaskKind::Test,
        release_id: None,
        requested_by: Some(by),
        host: None,
        deployment_id: None,
    };
    submit(core, tx, effects, new).map(Ok)
}

/// `baton rollback`: a release record, and its deploy task queued.
pub(super) fn rollback(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    repo: &RepoUrl,
    to: Option<u32>,
    by: Option<&str>,
) -> anyhow::Result<Result<ReleaseInfo, String>> {
    match core.releases.rollback(tx, effects, &core.runners, repo, to, by)? {
        Ok((release, deploys)) => {
            for deploy in deploys {
                queue(core, effects, deploy);
            }
            Ok(Ok(release))
        }
        Err(why) => Ok(Err(why)),
    }
}

/// `baton deploy`, `approve`, `reject`, `rollback --env`: the deployment as
/// it is now, and its deploy tasks queued.
pub(super) fn steer_deployment(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    steer: super::deployments::Steer,
    by: &str,
) -> anyhow::Result<Result<protocol::message::DeploymentInfo, String>> {
    match core.releases.steer(tx, effects, &core.runners, steer, by)? {
        Ok((deployment, deploys)) => {
            for deploy in deploys {
                queue(core, effects, deploy);
            }
            Ok(Ok(deployment))
        }
        Err(why) => Ok(Err(why)),
    }
}

/// Waiting deployments may start once a host connects.
pub(super) fn retry_deployments(core: &mut Core, tx: &Tx<'_>, effects: &mut Effects) -> anyhow::Result<()> {
    let mut deploys = Vec::new();
    core.releases.retry_waiting(tx, effects, &core.runners, &mut deploys)?;
    for deploy in deploys {
        queue(core, effects, deploy);
    }
    Ok(())
}

/// A follower of a live task's log; `None` if the task has ended.
pub(super) fn follow(core: &mut Core, task_id: TaskId) -> Option<watch::Receiver<LogProgress>> {
    let progress = if let Some(running) = core.tasks.running(task_id) {
        LogProgress { attempt: running.task.attempts, len: running.stored_len, ended: false }
    } else if let Some(task) = core.tasks.pending(task_id) {
        LogProgress { attempt: task.attempts, len: 0, ended: false }
    } else {
        return None;
    };
    Some(core.follows.subscribe(task_id, progress))
}
