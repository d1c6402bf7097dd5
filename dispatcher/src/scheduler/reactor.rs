//! What each [`Event`] does: one `match` choosing a plain function over
//! `(&mut Core, &Tx, &mut Effects)`, and the runners' side of things:
//! registration and re-adoption of held attempts, messages, heartbeats, and
//! what happens to the tasks of a lost runner.

use std::sync::Arc;
use std::time::Instant;

use protocol::message::{
    DispatcherToRunner, Forget, HostFacts, Register, Registered, Resend, Resume, RunnerToDispatcher,
};
use protocol::{Name, TaskId};

use super::liveness::{self, LastHeard};

use super::runners::{Conn, Registration};
use super::{life, printable_line, Change, ConnId, Core, Effects, Event};
use crate::store::Tx;

/// Host facts are shown, never interpreted: keep them short.
const MAX_FACT_LEN: usize = 64;

/// Applies one event.
///
/// # Errors
/// Storage errors.
pub(super) fn handle(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    event: Event,
) -> anyhow::Result<()> {
    match event {
        Event::Submit { task, reply } => match core.disk.refusal() {
            Some(refusal) => effects.reply(reply, Err(refusal)),
            None => {
                let accepted = life::submit(core, tx, effects, task)?;
                effects.reply(reply, Ok(accepted));
            }
        },
        Event::RunnerUp { conn, name, address, register, outbox, kill, heard } => {
            core.runners.connect(conn, Conn { runner: name.clone(), outbox, kill });
            on_register(core, tx, effects, conn, name, address, register, heard)?;
            // A new host may be what a waiting deployment waits for.
            life::retry_deployments(core, tx, effects)?;
        }
        Event::FromRunner { conn, message } => on_runner_message(core, tx, effects, conn, message)?,
        Event::RunnerDown { conn, reason } => {
            if let Some(name) = core.runners.disconnected(conn) {
                let now = Instant::now();
                if core.closes_wait_until.is_some_and(|until| now < until) {
                    orphan_runner(core, &name, now, &reason);
                } else {
                    lose_runner(core, tx, effects, &name, &reason)?;
                }
            }
        }
        Event::Tick => on_tick(core, tx, effects, Instant::now())?,
        Event::Status { reply } => {
            let status = core.status();
            effects.reply(reply, status);
        }
        Event::Runners { reply } => {
            let runners = core.runners.infos();
            effects.reply(reply, runners);
        }
        Event::Abort { task_id, by, reply } => {
            let result = life::abort(core, tx, effects, task_id, &by)?;
            effects.reply(reply, result);
        }
        Event::Rerun { task_id, by, reply } => {
            let result = match core.disk.refusal() {
                Some(refusal) => Err(refusal),
                None => life::rerun(core, tx, effects, task_id, by)?,
            };
            effects.reply(reply, result);
        }
        Event::Follow { task_id, reply } => {
            let progress = life::follow(core, task_id);
            effects.reply(reply, progress);
        }
        Event::Rollback { repo, to, by, reply } => {
            let result = life::rollback(core, tx, effects, &repo, to, by.as_deref())?;
            effects.reply(reply, result);
        }
        Event::Notified { id, delivery, retry_at_ms, reply } => {
            match delivery {
                Ok(()) => tx.delete_notification(id)?,
                Err(error) => tx.retry_notification(id, &error, retry_at_ms)?,
            }
            effects.reply(reply, ());
        }
        Event::Deployment { steer, by, reply } => {
            let result = match core.disk.refusal() {
                Some(refusal) => Err(refusal),
                None => life::steer_deployment(core, tx, effects, steer, &by)?,
            };
            effects.reply(reply, result);
        }
        Event::Drain { runner, reply } => {
            let result = super::manager::drain(core, &runner);
            effects.reply(reply, result);
        }
        Event::Prune { tasks, logs, reply } => {
            let mut pruned = super::Pruned::default();
            // The store checks again that each may go; a live task never may.
            for task_id in tasks {
                if core.tasks.is_live(task_id) {
                    continue;
                }
                if let Some(task) = tx.prune_task(task_id)? {
                    core.tasks.forget(task.state);
                    pruned.tasks.push(task);
                }
            }
            for task_id in logs {
                if !core.tasks.is_live(task_id) && tx.prune_log(task_id, super::now_ms())? {
                    pruned.logs.push(task_id);
                }
            }
            effects.reply(reply, pruned);
        }
    }
    Ok(())
}

/// A runner registered: it re-adopts the attempts it holds that are still
/// its own, is told to forget the others, and loses the tasks it no longer
/// holds.
#[allow(clippy::too_many_arguments)]
fn on_register(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    conn: ConnId,
    name: Name,
    address: String,
    register: Register,
    heard: Arc<LastHeard>,
) -> anyhow::Result<()> {
    let held: Vec<(TaskId, u32)> = register.held.iter().map(|held| (held.task_id, held.attempt)).collect();
    core.runners.replace_connection(&name, conn);
    // Tasks the dispatcher thinks this runner has but that it does not
    // hold any more are lost with its previous life.
    for task_id in core.tasks.running_on(&name) {
        let attempt = core.tasks.running(task_id).map(|running| running.task.attempts);
        if attempt.is_some_and(|attempt| !held.contains(&(task_id, attempt))) {
            life::requeue_or_fail(core, tx, effects, task_id, "runner restarted without the task")?;
        }
    }
    let mut resume = Vec::new();
    let mut forget = Vec::new();
    let mut tasks = Vec::new();
    for (task_id, attempt) in held {
        match core.tasks.running_mut(task_id) {
            Some(running)
                if running.task.attempts == attempt && running.task.runner.as_ref() == Some(&name) =>
            {
                running.orphaned_at = None;
                // The runner sends everything from `log_len` again.
                running.needs_resend = false;
                running.resend_pending = false;
                resume.push(Resume { task_id, attempt, output_offset: running.log_len });
                tasks.push(task_id);
                tracing::info!(runner = %name, task_id = %task_id, attempt, "runner re-adopted its task");
            }
            _ => {
                tracing::info!(runner = %name, task_id = %task_id, attempt, "runner holds a task that is no longer its own");
                forget.push(Forget {
                    task_id,
                    attempt,
                    reason: "the attempt is no longer current (reassigned or finished)".into(),
                });
            }
        }
    }
    let host = HostFacts {
        os: printable_line(&register.host.os, MAX_FACT_LEN),
        arch: printable_line(&register.host.arch, MAX_FACT_LEN),
        cpus: register.host.cpus,
    };
    tracing::info!(runner = %name, address = %address, labels = ?register.labels.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
        slots = register.slots, resumed = resume.len(), "runner registered");
    // A forgotten attempt's test may still hold a slot: the runner gets no
    // work until it says the slot is free.
    let forgets = !forget.is_empty();
    let registration = Registration {
        name,
        conn,
        address,
        labels: register.labels,
        slots: register.slots,
        host,
        heard,
        forgets,
    };
    core.runners.register(registration, tasks);
    let heartbeat_interval_ms = core.settings.heartbeat_interval.as_millis().try_into().unwrap_or(u64::MAX);
    let heartbeat_misses = core.settings.heartbeat_misses;
    let registered = Registered { resume, forget, heartbeat_interval_ms, heartbeat_misses };
    effects.send_runner(conn, DispatcherToRunner::Registered(registered));
    Ok(())
}

fn on_runner_message(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    conn: ConnId,
    message: RunnerToDispatcher,
) -> anyhow::Result<()> {
    let Some(name) = core.runners.name_of(conn).cloned() else {
        // A message that was in flight when the connection was dropped.
        return Ok(());
    };
    if let Some(runner) = core.runners.get_mut(&name) {
        runner.liveness.heard();
    }
    match message {
        RunnerToDispatcher::Pong(_) => {}
        RunnerToDispatcher::Output(output) => life::output(core, effects, &name, output),
        RunnerToDispatcher::Result(result) => life::result(core, tx, effects, conn, &name, result)?,
        RunnerToDispatcher::SlotFreed(freed) => {
            if let Some(runner) = core.runners.get_mut(&name) {
                tracing::debug!(runner = %name, free_slots = freed.free_slots, "runner has a free slot");
                runner.awaiting_slot = false;
            }
        }
        RunnerToDispatcher::Draining => {
            tracing::info!(runner = %name, "runner is draining; assigning it nothing more");
            if let Some(runner) = core.runners.get_mut(&name) {
                runner.draining = true;
            }
        }
        RunnerToDispatcher::Register(_) => {
            tracing::warn!(runner = %name, "second register on one connection; dropping it");
            core.runners.kill(conn);
        }
    }
    Ok(())
}

/// Marks a runner dead and sends its tasks elsewhere.
fn lose_runner(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    name: &Name,
    reason: &str,
) -> anyhow::Result<()> {
    let tasks = core.runners.lose(name);
    tracing::warn!(runner = %name, reason, tasks = tasks.len(), "runner lost");
    effects.changed(Change::RunnerLost { runner: name.clone() });
    for task_id in tasks {
        life::requeue_or_fail(core, tx, effects, task_id, &format!("runner {name} lost: {reason}"))?;
    }
    Ok(())
}

/// Whether a heartbeat tick is due: the last was a tick period ago.
pub(super) fn tick_due(core: &Core, now: Instant) -> bool {
    now.saturating_duration_since(core.last_tick) >= core.settings.tick_period()
}

/// Heartbeats: declares silent runners dead, asks for output not stored, and
/// requeues tasks whose runner did not come back after a restart.
pub(super) fn on_tick(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    now: Instant,
) -> anyhow::Result<()> {
    core.last_tick = now;
    let dead_after = core.settings.dead_after();
    for name in core.runners.silent(now, dead_after, core.settings.heartbeat_interval) {
        let reason =
            format!("no answer to pings for {dead_after:?} ({} heartbeats)", core.settings.heartbeat_misses);
        lose_runner(core, tx, effects, &name, &reason)?;
    }
    if core.disk.check() || core.disk.full().is_none() {
        ask_for_missing_output(core, effects);
    }
    if let Some(deadline) = now.checked_sub(core.settings.orphan_grace()) {
        for task_id in core.tasks.orphaned_before(deadline) {
            life::requeue_or_fail(
                core,
                tx,
                effects,
                task_id,
                "runner did not come back after a dispatcher restart",
            )?;
        }
    }
    Ok(())
}

/// A runner whose connection closed just after a stall of the dispatcher:
/// it may have closed a link it thought dead and be reconnecting, so its
/// tasks wait a window for it, as after a restart.
fn orphan_runner(core: &mut Core, name: &Name, now: Instant, reason: &str) {
    let tasks = core.runners.orphan(name);
    tracing::warn!(runner = %name, reason, tasks = tasks.len(),
        "runner disconnected just after a stall of the dispatcher; its tasks wait a window for it");
    for task_id in tasks {
        if let Some(running) = core.tasks.running_mut(task_id) {
            running.orphaned_at = Some(now);
        }
    }
}

/// At the start of each batch: if the last heartbeat tick is long ago, the
/// dispatcher was not running (SIGSTOP, a VM pause, a stalled disk).
/// Evidence gathered across that gap is void: forget unanswered pings (the
/// connections' writers, late too, ping at once), and give runners (and
/// tasks waiting for theirs) a full window from now (see `liveness`).
pub(super) fn notice_stall(core: &mut Core, now: Instant) {
    if !liveness::stalled(core.last_tick, now, core.settings.heartbeat_interval) {
        return;
    }
    let gap = now.saturating_duration_since(core.last_tick);
    tracing::warn!(gap = ?gap, "the dispatcher was not running for a while; judging no runner for it");
    core.last_tick = now;
    core.closes_wait_until = Some(now + core.settings.dead_after());
    core.tasks.restart_orphan_clocks(now);
    core.runners.forget_heartbeats();
}

/// Asks runners to send again the output the dispatcher could not store,
/// from what it has.
fn ask_for_missing_output(core: &mut Core, effects: &mut Effects) {
    for task_id in core.tasks.needing_resend() {
        let Some(running) = core.tasks.running_mut(task_id) else { continue };
        let conn = running.task.runner.as_ref().and_then(|name| core.runners.conn_of(name));
        let Some(conn) = conn.filter(|_| running.orphaned_at.is_none()) else { continue };
        tracing::info!(task_id = %task_id, attempt = running.task.attempts, offset = running.log_len,
            "asking the runner for the output not stored");
        running.needs_resend = false;
        running.resend_pending = true;
        let resend = Resend { task_id, attempt: running.task.attempts, output_offset: running.log_len };
        effects.send_runner(conn, DispatcherToRunner::Resend(resend));
    }
}
