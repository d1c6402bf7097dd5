//! Runners coming, going and heartbeating: registration and re-adoption of
//! held attempts, pings, and what happens to the tasks of a lost runner.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use protocol::message::{
    DispatcherToRunner, Forget, Ping, Register, Registered, Resend, Resume, RunnerInfo, RunnerState,
    RunnerToDispatcher,
};
use protocol::{Name, TaskId};

use super::liveness::{self, Heartbeat, LastHeard};
use super::{printable, ConnId, Effects, Runner, State};
use crate::store::Tx;

/// Host facts are shown, never interpreted: keep them short.
const MAX_FACT_LEN: usize = 64;

impl State {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn register(
        &mut self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        conn: ConnId,
        name: Name,
        address: String,
        register: Register,
        heard: Arc<LastHeard>,
    ) -> anyhow::Result<()> {
        let held: Vec<(TaskId, u32)> =
            register.held.iter().map(|held| (held.task_id, held.attempt)).collect();
        // A runner registering under a name whose old connection is still
        // open (it restarted faster than the kernel told us, or a frozen
        // process came back) replaces that connection.
        let previous = self.runners.get(&name).and_then(|runner| runner.conn);
        if let Some(old) = previous.filter(|old| *old != conn) {
            if let Some(old_conn) = self.conns.remove(&old) {
                old_conn.kill.cancel();
            }
        }
        // Tasks the dispatcher thinks this runner has but that it does not
        // hold any more are lost with its previous life.
        let owned: Vec<TaskId> = self
            .running
            .iter()
            .filter(|(_, running)| running.task.runner.as_ref() == Some(&name))
            .map(|(id, _)| *id)
            .collect();
        for task_id in owned {
            let attempt = self.running[&task_id].task.attempts;
            if !held.contains(&(task_id, attempt)) {
                self.requeue_or_fail(tx, task_id, "runner restarted without the task")?;
            }
        }
        let mut resume = Vec::new();
        let mut forget = Vec::new();
        let mut tasks = Vec::new();
        for (task_id, attempt) in held {
            match self.running.get_mut(&task_id) {
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
        let host = protocol::message::HostFacts {
            os: printable(&register.host.os, MAX_FACT_LEN),
            arch: printable(&register.host.arch, MAX_FACT_LEN),
            cpus: register.host.cpus,
        };
        tracing::info!(runner = %name, address = %address, labels = ?register.labels.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
            slots = register.slots, resumed = resume.len(), "runner registered");
        self.runners.insert(
            name.clone(),
            Runner {
                name,
                conn: Some(conn),
                address,
                labels: register.labels,
                slots: register.slots.max(1),
                host,
                tasks,
                last_seen: SystemTime::now(),
                heard,
                heartbeat: Heartbeat::default(),
                draining: false,
                // A forgotten attempt's test may still hold a slot: wait
                // until the runner says it is gone.
                awaiting_slot: !forget.is_empty(),
            },
        );
        effects.send_runner(conn, DispatcherToRunner::Registered(Registered { resume, forget }));
        Ok(())
    }

    pub(super) fn runner_message(
        &mut self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        conn: ConnId,
        message: RunnerToDispatcher,
    ) -> anyhow::Result<()> {
        let Some(name) = self.conns.get(&conn).map(|c| c.runner.clone()) else {
            // A message that was in flight when the connection was dropped.
            return Ok(());
        };
        if let Some(runner) = self.runners.get_mut(&name) {
            runner.last_seen = SystemTime::now();
        }
        match message {
            RunnerToDispatcher::Pong(_) => {}
            RunnerToDispatcher::Output(output) => self.output(&name, output),
            RunnerToDispatcher::Result(result) => self.result(tx, effects, conn, &name, result)?,
            RunnerToDispatcher::SlotFreed(freed) => {
                if let Some(runner) = self.runners.get_mut(&name) {
                    tracing::debug!(runner = %name, free_slots = freed.free_slots, "runner has a free slot");
                    runner.awaiting_slot = false;
                }
            }
            RunnerToDispatcher::Draining => {
                tracing::info!(runner = %name, "runner is draining; assigning it nothing more");
                if let Some(runner) = self.runners.get_mut(&name) {
                    runner.draining = true;
                }
            }
            RunnerToDispatcher::Register(_) => {
                tracing::warn!(runner = %name, "second register on one connection; dropping it");
                if let Some(conn) = self.conns.get(&conn) {
                    conn.kill.cancel();
                }
            }
        }
        Ok(())
    }

    /// A runner's connection closed: the process died or its host is gone.
    pub(super) fn connection_lost(&mut self, tx: &Tx<'_>, conn: ConnId, reason: &str) -> anyhow::Result<()> {
        let Some(closed) = self.conns.remove(&conn) else { return Ok(()) };
        let is_current = self.runners.get(&closed.runner).is_some_and(|runner| runner.conn == Some(conn));
        if !is_current {
            return Ok(());
        }
        let now = Instant::now();
        if self.closes_wait_until.is_some_and(|until| now < until) {
            // Just after a stall of the dispatcher: the runner may have
            // closed a link it thought dead and be reconnecting. Its tasks
            // wait a window for it, as after a restart.
            self.orphan_runner(&closed.runner, now, reason);
            return Ok(());
        }
        self.lose_runner(tx, &closed.runner, reason)
    }

    /// A runner disconnected, but not (yet) lost: its tasks wait one window
    /// for it to re-register and re-adopt them.
    fn orphan_runner(&mut self, name: &Name, now: Instant, reason: &str) {
        let Some(runner) = self.runners.get_mut(name) else { return };
        runner.conn = None;
        let tasks = std::mem::take(&mut runner.tasks);
        tracing::warn!(runner = %name, reason, tasks = tasks.len(), "runner disconnected just after a stall of the dispatcher; waiting a window for it to come back");
        for task_id in tasks {
            if let Some(running) = self.running.get_mut(&task_id) {
                running.orphaned_at = Some(now);
            }
        }
    }

    /// At the start of each batch: if the last heartbeat tick is long ago,
    /// the dispatcher was not running (SIGSTOP, a VM pause, a stalled
    /// disk). Evidence gathered across that gap is void: forget unanswered
    /// pings, ping everyone now, and give runners (and tasks waiting for
    /// theirs) a full window from now.
    pub(super) fn notice_stall(&mut self, effects: &mut Effects) {
        let now = Instant::now();
        if !liveness::stalled(self.last_tick, now, self.settings.heartbeat_interval) {
            return;
        }
        let gap = now.saturating_duration_since(self.last_tick);
        tracing::warn!(gap = ?gap, "the dispatcher was not running for a while; judging no runner for it");
        self.last_tick = now;
        let window = self.settings.dead_after();
        self.closes_wait_until = Some(now + window);
        for running in self.running.values_mut() {
            if running.orphaned_at.is_some() {
                running.orphaned_at = Some(now);
            }
        }
        for runner in self.runners.values_mut() {
            runner.heartbeat.forget();
        }
        self.ping_all(effects, now);
    }

    fn ping_all(&mut self, effects: &mut Effects, now: Instant) {
        self.last_ping = now;
        let seq = self.next_ping;
        self.next_ping += 1;
        for runner in self.runners.values_mut() {
            if let Some(conn) = runner.conn {
                runner.heartbeat.pinged(now);
                effects.send_runner(conn, DispatcherToRunner::Ping(Ping { seq }));
            }
        }
    }

    /// Marks a runner dead and sends its tasks elsewhere.
    fn lose_runner(&mut self, tx: &Tx<'_>, name: &Name, reason: &str) -> anyhow::Result<()> {
        let Some(runner) = self.runners.get_mut(name) else { return Ok(()) };
        if let Some(conn) = runner.conn.take().and_then(|conn| self.conns.remove(&conn)) {
            conn.kill.cancel();
        }
        let tasks = std::mem::take(&mut runner.tasks);
        tracing::warn!(runner = %name, reason, tasks = tasks.len(), "runner lost");
        for task_id in tasks {
            self.requeue_or_fail(tx, task_id, &format!("runner {name} lost: {reason}"))?;
        }
        Ok(())
    }

    /// Heartbeats: pings every interval, declares silent runners dead, and
    /// requeues tasks whose runner did not come back after a restart.
    pub(super) fn tick(&mut self, tx: &Tx<'_>, effects: &mut Effects) -> anyhow::Result<()> {
        let now = Instant::now();
        self.last_tick = now;
        let dead_after = self.settings.dead_after();
        let silent: Vec<Name> = self
            .runners
            .values_mut()
            .filter(|runner| runner.conn.is_some())
            .filter_map(|runner| {
                let heard = Arc::clone(&runner.heard);
                runner.heartbeat.silent_for(&heard, now, dead_after).then(|| runner.name.clone())
            })
            .collect();
        for name in silent {
            let reason = format!(
                "no answer to pings for {dead_after:?} ({} heartbeats)",
                self.settings.heartbeat_misses
            );
            self.lose_runner(tx, &name, &reason)?;
        }
        if self.disk.check() || self.disk.full().is_none() {
            self.ask_for_missing_output(effects);
        }
        let orphans: Vec<TaskId> = self
            .running
            .iter()
            .filter(|(_, running)| running.orphaned_at.is_some_and(|at| now.duration_since(at) > dead_after))
            .map(|(id, _)| *id)
            .collect();
        for task_id in orphans {
            self.requeue_or_fail(tx, task_id, "runner did not come back after a dispatcher restart")?;
        }
        if now.duration_since(self.last_ping) >= self.settings.heartbeat_interval {
            self.ping_all(effects, now);
        }
        Ok(())
    }

    /// Asks runners to send again the output the dispatcher could not
    /// store, from what it has.
    fn ask_for_missing_output(&mut self, effects: &mut Effects) {
        for (task_id, running) in self.running.iter_mut().filter(|(_, running)| running.needs_resend) {
            let conn =
                running.task.runner.as_ref().and_then(|name| self.runners.get(name)).and_then(|r| r.conn);
            let Some(conn) = conn.filter(|_| running.orphaned_at.is_none()) else { continue };
            tracing::info!(task_id = %task_id, attempt = running.task.attempts, offset = running.log_len, "asking the runner for the output not stored");
            running.needs_resend = false;
            running.resend_pending = true;
            effects.send_runner(
                conn,
                DispatcherToRunner::Resend(Resend {
                    task_id: *task_id,
                    attempt: running.task.attempts,
                    output_offset: running.log_len,
                }),
            );
        }
    }

    pub(super) fn runner_infos(&self) -> Vec<RunnerInfo> {
        self.runners
            .values()
            .map(|runner| RunnerInfo {
                name: runner.name.clone(),
                address: runner.address.clone(),
                labels: runner.labels.clone(),
                state: match runner.conn {
                    None => RunnerState::Dead,
                    Some(_) if runner.tasks.is_empty() => RunnerState::Idle,
                    Some(_) => RunnerState::Busy,
                },
                slots: runner.slots,
                tasks: runner.tasks.clone(),
                last_seen_ms: runner
                    .last_seen
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
                host: runner.host.clone(),
            })
            .collect()
    }
}
