//! The runners as data: every runner seen since the start (by name), its
//! current connection (by connection id), the tasks it runs, and what the
//! dispatcher has heard from it. Which runner is lost, and what happens to
//! its tasks, is decided in `reactor`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use protocol::message::{DispatcherToRunner, HostFacts, RunnerInfo, RunnerState};
use protocol::{Label, Name, TaskId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::liveness::LastHeard;
use super::ConnId;

/// The runners and their connections.
pub(crate) struct Runners {
    by_name: BTreeMap<Name, Runner>,
    conns: HashMap<ConnId, Conn>,
}

/// One runner connection (a runner reconnecting gets a new one).
pub(crate) struct Conn {
    pub(crate) runner: Name,
    /// The runner's writer task; a full one means the runner is not reading.
    pub(crate) outbox: mpsc::Sender<DispatcherToRunner>,
    /// Drops the connection.
    pub(crate) kill: CancellationToken,
}

/// A runner the dispatcher has seen since it started.
pub(crate) struct Runner {
    pub(crate) name: Name,
    /// `None` once the runner is lost.
    pub(crate) conn: Option<ConnId>,
    pub(crate) address: String,
    pub(crate) labels: Vec<Label>,
    pub(crate) slots: u32,
    pub(crate) host: HostFacts,
    /// The tasks it runs, at most `slots`.
    pub(crate) tasks: Vec<TaskId>,
    pub(crate) liveness: Liveness,
    /// It said it is stopping: it keeps its tasks and gets no new ones.
    pub(crate) draining: bool,
    /// It refused an assignment, or was told to forget an attempt whose
    /// test may still hold a slot: ask it nothing until it reports a free
    /// slot (`SlotFreed`, or a result).
    pub(crate) awaiting_slot: bool,
}

/// What the dispatcher has heard from a runner, to tell a live runner from a
/// dead one (the model is in `liveness`).
pub(crate) struct Liveness {
    /// Wall-clock time of the last frame handled, for people (`baton runners`).
    pub(crate) last_seen: SystemTime,
    /// Pings written and frames read, noted by the connection's writer and
    /// reader.
    pub(crate) heard: Arc<LastHeard>,
}

impl Liveness {
    fn new(heard: Arc<LastHeard>) -> Liveness {
        Liveness { last_seen: SystemTime::now(), heard }
    }

    /// Any frame from the runner is a sign of life (its reader noted it).
    pub(crate) fn heard(&mut self) {
        self.last_seen = SystemTime::now();
    }
}

/// A runner that just registered.
pub(crate) struct Registration {
    pub(crate) name: Name,
    pub(crate) conn: ConnId,
    pub(crate) address: String,
    pub(crate) labels: Vec<Label>,
    pub(crate) slots: u32,
    pub(crate) host: HostFacts,
    /// Noted by the connection's reader on every frame.
    pub(crate) heard: Arc<LastHeard>,
    /// It was told to forget attempts whose tests may still hold slots.
    pub(crate) forgets: bool,
}

impl Runners {
    pub(crate) fn new() -> Runners {
        Runners { by_name: BTreeMap::new(), conns: HashMap::new() }
    }

    /// Adds a connection before its runner registers; a connection its
    /// runner later replaces is closed then.
    pub(crate) fn connect(&mut self, conn_id: ConnId, conn: Conn) {
        self.conns.insert(conn_id, conn);
    }

    /// The connection a runner had before `conn`, if still open: closed and
    /// forgotten (a runner restarted faster than the kernel told us, or a
    /// frozen process came back).
    pub(crate) fn replace_connection(&mut self, name: &Name, conn: ConnId) {
        let previous = self.by_name.get(name).and_then(|runner| runner.conn);
        if let Some(old) = previous.filter(|old| *old != conn) {
            if let Some(old_conn) = self.conns.remove(&old) {
                old_conn.kill.cancel();
            }
        }
    }

    /// Records a registered runner (replacing what was known of it) with the
    /// tasks it re-adopted.
    pub(crate) fn register(&mut self, registration: Registration, tasks: Vec<TaskId>) {
        let Registration { name, conn, address, labels, slots, host, heard, forgets } = registration;
        let runner = Runner {
            name: name.clone(),
            conn: Some(conn),
            address,
            labels,
            slots: slots.max(1),
            host,
            tasks,
            liveness: Liveness::new(heard),
            draining: false,
            awaiting_slot: forgets,
        };
        self.by_name.insert(name, runner);
    }

    /// Every runner seen since the start, by name.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Runner> {
        self.by_name.values()
    }

    /// The runner a connection belongs to.
    pub(crate) fn name_of(&self, conn: ConnId) -> Option<&Name> {
        self.conns.get(&conn).map(|conn| &conn.runner)
    }

    pub(crate) fn get(&self, name: &Name) -> Option<&Runner> {
        self.by_name.get(name)
    }

    pub(crate) fn get_mut(&mut self, name: &Name) -> Option<&mut Runner> {
        self.by_name.get_mut(name)
    }

    /// The runner's current connection, if it is connected.
    pub(crate) fn conn_of(&self, name: &Name) -> Option<ConnId> {
        self.by_name.get(name).and_then(|runner| runner.conn)
    }

    #[cfg(test)]
    pub(crate) fn is_connected(&self, name: &Name) -> bool {
        self.conn_of(name).is_some()
    }

    /// The writer of a connection, if it is still open.
    pub(crate) fn conn(&self, conn: ConnId) -> Option<&Conn> {
        self.conns.get(&conn)
    }

    /// Closes a connection (the reader reports `RunnerDown` afterwards).
    pub(crate) fn kill(&self, conn: ConnId) {
        if let Some(conn) = self.conns.get(&conn) {
            conn.kill.cancel();
        }
    }

    /// Forgets a closed connection.
    ///
    /// # Returns
    /// The runner it belonged to, if it was that runner's current connection.
    pub(crate) fn disconnected(&mut self, conn: ConnId) -> Option<Name> {
        let closed = self.conns.remove(&conn)?;
        let is_current = self.by_name.get(&closed.runner).is_some_and(|runner| runner.conn == Some(conn));
        is_current.then_some(closed.runner)
    }

    /// Marks a runner dead, closing its connection.
    ///
    /// # Returns
    /// The tasks it was running.
    pub(crate) fn lose(&mut self, name: &Name) -> Vec<TaskId> {
        let Some(runner) = self.by_name.get_mut(name) else { return Vec::new() };
        if let Some(conn) = runner.conn.take().and_then(|conn| self.conns.remove(&conn)) {
            conn.kill.cancel();
        }
        std::mem::take(&mut runner.tasks)
    }

    /// A runner whose connection closed but who may come back (just after a
    /// stall of the dispatcher): marked disconnected, its tasks handed back
    /// so they can wait for it.
    pub(crate) fn orphan(&mut self, name: &Name) -> Vec<TaskId> {
        let Some(runner) = self.by_name.get_mut(name) else { return Vec::new() };
        runner.conn = None;
        std::mem::take(&mut runner.tasks)
    }

    /// Closes every connection (runners register again).
    pub(crate) fn kill_all(&self) {
        for conn in self.conns.values() {
            conn.kill.cancel();
        }
    }

    /// Evidence gathered across a stall of the dispatcher is void.
    pub(crate) fn forget_heartbeats(&mut self) {
        for runner in self.by_name.values_mut() {
            runner.liveness.heard.forget();
        }
    }

    /// Adds a task to a connected runner's list.
    pub(crate) fn add_task(&mut self, name: &Name, task_id: TaskId) {
        if let Some(runner) = self.by_name.get_mut(name) {
            runner.tasks.push(task_id);
        }
    }

    /// Removes a task from a runner's list.
    pub(crate) fn remove_task(&mut self, name: &Name, task_id: TaskId) {
        if let Some(runner) = self.by_name.get_mut(name) {
            runner.tasks.retain(|id| *id != task_id);
        }
    }

    /// Connected, non-draining runners with free slots, most free first.
    pub(crate) fn with_free_slots(&self) -> Vec<(Name, usize)> {
        let mut free: Vec<(Name, usize)> = self
            .by_name
            .values()
            .filter(|runner| runner.conn.is_some() && !runner.draining && !runner.awaiting_slot)
            .filter_map(|runner| {
                let free_slots = (runner.slots as usize).saturating_sub(runner.tasks.len());
                (free_slots > 0).then(|| (runner.name.clone(), free_slots))
            })
            .collect();
        // Least-loaded first spreads work over the runners.
        free.sort_by_key(|(_, free_slots)| std::cmp::Reverse(*free_slots));
        free
    }

    /// Connected runners silent for longer than `window` while a ping went
    /// unanswered for at least `interval` (see `liveness`).
    pub(crate) fn silent(
        &self,
        now: Instant,
        window: std::time::Duration,
        interval: std::time::Duration,
    ) -> Vec<Name> {
        self.by_name
            .values()
            .filter(|runner| runner.conn.is_some())
            .filter(|runner| runner.liveness.heard.silent_for(now, window, interval))
            .map(|runner| runner.name.clone())
            .collect()
    }

    /// Idle, busy and dead runners.
    pub(crate) fn counts(&self) -> (u32, u32, u32) {
        let (mut idle, mut busy, mut dead) = (0, 0, 0);
        for runner in self.by_name.values() {
            match runner.state() {
                RunnerState::Dead => dead += 1,
                RunnerState::Idle => idle += 1,
                RunnerState::Busy => busy += 1,
            }
        }
        (idle, busy, dead)
    }

    /// The runners as `baton runners` shows them.
    pub(crate) fn infos(&self) -> Vec<RunnerInfo> {
        self.by_name
            .values()
            .map(|runner| RunnerInfo {
                name: runner.name.clone(),
                address: runner.address.clone(),
                labels: runner.labels.clone(),
                state: runner.state(),
                slots: runner.slots,
                tasks: runner.tasks.clone(),
                last_seen_ms: runner
                    .liveness
                    .last_seen
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
                host: runner.host.clone(),
            })
            .collect()
    }

    /// The runners that list `task_id`.
    #[cfg(test)]
    pub(crate) fn listing(&self, task_id: TaskId) -> impl Iterator<Item = &Name> {
        self.by_name.values().filter(move |runner| runner.tasks.contains(&task_id)).map(|runner| &runner.name)
    }

    /// Every (runner, task) pair the runners list.
    #[cfg(test)]
    pub(crate) fn all_listed(&self) -> impl Iterator<Item = (&Name, TaskId)> {
        self.by_name
            .values()
            .flat_map(|runner| runner.tasks.iter().map(move |task_id| (&runner.name, *task_id)))
    }

    /// What holds within the runners alone.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        for (name, runner) in &self.by_name {
            assert_eq!(*name, runner.name);
            assert!(runner.tasks.len() <= runner.slots as usize, "runner {name} runs more than its slots");
            let mut tasks = runner.tasks.clone();
            tasks.sort();
            tasks.dedup();
            assert_eq!(tasks.len(), runner.tasks.len(), "runner {name} lists a task twice");
            match runner.conn {
                Some(conn) => assert_eq!(
                    self.conns.get(&conn).map(|c| &c.runner),
                    Some(name),
                    "runner {name}'s connection {conn} is not open as its own"
                ),
                None => assert!(runner.tasks.is_empty(), "dead runner {name} still lists tasks"),
            }
        }
    }
}

impl Runner {
    fn state(&self) -> RunnerState {
        match self.conn {
            None => RunnerState::Dead,
            Some(_) if self.tasks.is_empty() => RunnerState::Idle,
            Some(_) => RunnerState::Busy,
        }
    }
}
