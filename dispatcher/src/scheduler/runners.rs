//! Runners coming, going and heartbeating: registration and re-adoption of
//! held attempts, pings, and what happens to the tasks of a lost runner.

use std::time::{Instant, SystemTime};

use protocol::message::{
    DispatcherToRunner, Forget, Ping, Register, Registered, Resume, RunnerInfo, RunnerState,
    RunnerToDispatcher,
};
use protocol::{Name, TaskId};

use super::{printable, ConnId, Effects, Runner, State};
use crate::store::Tx;

/// Host facts are shown, never interpreted: keep them short.
const MAX_FACT_LEN: usize = 64;

impl State {
    pub(super) fn register(
        &mut self,
        tx: &Tx<'_>,
        effects: &mut Effects,
        conn: ConnId,
        name: Name,
        address: String,
        register: Register,
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
                last_heard: Instant::now(),
                draining: false,
            },
        );
        let heartbeat_interval_ms =
            self.settings.heartbeat_interval.as_millis().try_into().unwrap_or(u64::MAX);
        let heartbeat_misses = self.settings.heartbeat_misses;
        let registered = Registered { resume, forget, heartbeat_interval_ms, heartbeat_misses };
        effects.send_runner(conn, DispatcherToRunner::Registered(registered));
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
            runner.last_heard = Instant::now();
        }
        match message {
            RunnerToDispatcher::Pong(_) => {}
            RunnerToDispatcher::Output(output) => self.output(&name, output),
            RunnerToDispatcher::Result(result) => self.result(tx, effects, conn, &name, result)?,
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
        if is_current {
            self.lose_runner(tx, &closed.runner, reason)?;
        }
        Ok(())
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
        let dead_after = self.settings.dead_after();
        let silent: Vec<Name> = self
            .runners
            .values()
            .filter(|runner| runner.conn.is_some() && now.duration_since(runner.last_heard) > dead_after)
            .map(|runner| runner.name.clone())
            .collect();
        for name in silent {
            let reason = format!("missed {} heartbeats", self.settings.heartbeat_misses);
            self.lose_runner(tx, &name, &reason)?;
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
            self.last_ping = now;
            let seq = self.next_ping;
            self.next_ping += 1;
            for runner in self.runners.values() {
                if let Some(conn) = runner.conn {
                    effects.send_runner(conn, DispatcherToRunner::Ping(Ping { seq }));
                }
            }
        }
        Ok(())
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
