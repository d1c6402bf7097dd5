//! What each [`Event`] does: one `match` choosing a plain function over
//! `(&mut Core, &Tx, &mut Effects)`, and the runners' side of things:
//! registration and re-adoption of held attempts, messages, heartbeats, and
//! what happens to the tasks of a lost runner.

use std::time::Instant;

use protocol::message::{
    DispatcherToRunner, Forget, HostFacts, Ping, Register, Registered, Resume, RunnerToDispatcher,
};
use protocol::{Name, TaskId};

use super::runners::{Conn, Registration};
use super::{life, printable, ConnId, Core, Effects, Event};
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
        Event::Submit { task, reply } => {
            let accepted = life::submit(core, tx, effects, task)?;
            effects.reply(reply, Ok(accepted));
        }
        Event::RunnerUp { conn, name, address, register, outbox, kill } => {
            core.runners.connect(conn, Conn { runner: name.clone(), outbox, kill });
            on_register(core, tx, effects, conn, name, address, register)?;
        }
        Event::FromRunner { conn, message } => on_runner_message(core, tx, effects, conn, message)?,
        Event::RunnerDown { conn, reason } => {
            if let Some(name) = core.runners.disconnected(conn) {
                lose_runner(core, tx, effects, &name, &reason)?;
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
        Event::Abort { task_id, reply } => {
            let result = life::abort(core, tx, effects, task_id)?;
            effects.reply(reply, result);
        }
        Event::Rerun { task_id, reply } => {
            let result = life::rerun(core, tx, effects, task_id)?;
            effects.reply(reply, result);
        }
        Event::Follow { task_id, reply } => {
            let progress = life::follow(core, task_id);
            effects.reply(reply, progress);
        }
        Event::Rollback { repo, to, reply } => {
            let result = life::rollback(core, tx, effects, &repo, to)?;
            effects.reply(reply, result);
        }
        Event::Notified { id, delivery, retry_at_ms, reply } => {
            match delivery {
                Ok(()) => tx.delete_notification(id)?,
                Err(error) => tx.retry_notification(id, &error, retry_at_ms)?,
            }
            effects.reply(reply, ());
        }
    }
    Ok(())
}

/// A runner registered: it re-adopts the attempts it holds that are still
/// its own, is told to forget the others, and loses the tasks it no longer
/// holds.
fn on_register(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    conn: ConnId,
    name: Name,
    address: String,
    register: Register,
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
        os: printable(&register.host.os, MAX_FACT_LEN),
        arch: printable(&register.host.arch, MAX_FACT_LEN),
        cpus: register.host.cpus,
    };
    tracing::info!(runner = %name, address = %address, labels = ?register.labels.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
        slots = register.slots, resumed = resume.len(), "runner registered");
    let registration =
        Registration { name, conn, address, labels: register.labels, slots: register.slots, host };
    core.runners.register(registration, tasks, Instant::now());
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
        runner.liveness.heard(Instant::now());
    }
    match message {
        RunnerToDispatcher::Pong(_) => {}
        RunnerToDispatcher::Output(output) => life::output(core, effects, &name, output),
        RunnerToDispatcher::Result(result) => life::result(core, tx, effects, conn, &name, result)?,
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
    for task_id in tasks {
        life::requeue_or_fail(core, tx, effects, task_id, &format!("runner {name} lost: {reason}"))?;
    }
    Ok(())
}

/// Heartbeats: pings every interval, declares silent runners dead, and
/// requeues tasks whose runner did not come back after a restart.
pub(super) fn on_tick(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    now: Instant,
) -> anyhow::Result<()> {
    let dead_after = core.settings.dead_after();
    for name in core.runners.silent(now, dead_after) {
        let reason = format!("missed {} heartbeats", core.settings.heartbeat_misses);
        lose_runner(core, tx, effects, &name, &reason)?;
    }
    if let Some(deadline) = now.checked_sub(dead_after) {
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
    if let Some((seq, conns)) = core.runners.ping_round(now, core.settings.heartbeat_interval) {
        for conn in conns {
            effects.send_runner(conn, DispatcherToRunner::Ping(Ping { seq }));
        }
    }
    Ok(())
}
