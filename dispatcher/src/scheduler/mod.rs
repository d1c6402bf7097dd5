//! The scheduler: the one owner of the dispatcher's live state.
//!
//! It runs on a dedicated thread that owns the writing [`Store`]. Connection
//! tasks send it [`Event`]s over a bounded channel; it takes a batch of them,
//! applies each to its in-memory state and to one SQLite transaction, hands
//! pending tasks to idle runners, commits, and only then performs the
//! batch's [`Effects`]: replies to observers and clients, messages to runners.
//! So nothing is acknowledged before it is durable, and one commit (one
//! fsync) carries many state changes.
//!
//! Deliberately not here: sockets and framing (`handler`), SQL (`store`), file
//! layout (`files`).

mod releases;
mod runners;
mod tasks;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use protocol::message::{
    Accepted, DispatcherToRunner, HostFacts, Register, ReleaseInfo, RunnerInfo, RunnerToDispatcher,
    StatusReport, TaskInfo,
};
use protocol::{Label, Name, RepoUrl, TaskId, TaskState};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::files::{DataDir, FileJob};
use crate::store::{LiveTask, NewTask, Store};

/// Events queued for the scheduler. Large enough for a burst of submissions
/// from many observers plus a heartbeat round of 1,000 runners; a full queue
/// makes connection tasks wait, which is the backpressure we want.
const EVENT_QUEUE: usize = 8192;

/// At most this many events share one transaction, bounding the latency one
/// batch adds to the first event in it.
const MAX_BATCH: usize = 1024;

/// Messages queued for one runner's writer task. A runner that lets this many
/// pile up is not reading and is treated as lost.
pub const RUNNER_OUTBOX: usize = 1024;

/// Set when the scheduler stopped because the store failed.
static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the scheduler stopped because the store failed.
pub fn failed() -> bool {
    FAILED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Identifies one runner connection (a runner reconnecting gets a new one).
pub type ConnId = u64;

/// Everything the scheduler reacts to.
pub enum Event {
    /// An observer's or client's submission.
    Submit {
        task: NewTask,
        reply: oneshot::Sender<Result<Accepted, String>>,
    },
    /// A runner finished its handshake and sent `Register`.
    RunnerUp {
        conn: ConnId,
        name: Name,
        address: String,
        register: Register,
        outbox: mpsc::Sender<DispatcherToRunner>,
        kill: CancellationToken,
    },
    /// A message from a registered runner.
    FromRunner {
        conn: ConnId,
        message: RunnerToDispatcher,
    },
    /// A runner connection closed or failed.
    RunnerDown {
        conn: ConnId,
        reason: String,
    },
    /// Heartbeat clock, several times per heartbeat interval.
    Tick,
    Status {
        reply: oneshot::Sender<StatusReport>,
    },
    Runners {
        reply: oneshot::Sender<Vec<RunnerInfo>>,
    },
    Abort {
        task_id: TaskId,
        reply: oneshot::Sender<Result<TaskInfo, String>>,
    },
    Rerun {
        task_id: TaskId,
        reply: oneshot::Sender<Result<Accepted, String>>,
    },
    /// A client wants to follow a task's output; `None` if it has ended.
    Follow {
        task_id: TaskId,
        reply: oneshot::Sender<Option<watch::Receiver<LogProgress>>>,
    },
    /// `baton rollback`.
    Rollback {
        repo: RepoUrl,
        to: Option<u32>,
        reply: oneshot::Sender<Result<ReleaseInfo, String>>,
    },
    /// The notifier worker delivered an outbox entry (`Ok`) or failed to and
    /// will retry at `retry_at_ms`; answered once committed.
    Notified {
        id: i64,
        delivery: Result<(), String>,
        retry_at_ms: i64,
        reply: oneshot::Sender<()>,
    },
}

/// Capacity of the change feed: a subscriber (the web's SSE clients and
/// metrics) that falls this far behind misses changes and is told it lagged;
/// publishing never waits for anyone.
pub const CHANGE_FEED: usize = 4096;

/// A committed state change, published after the commit for the web report
/// service (server-sent events, metrics).
#[derive(Clone, Debug)]
pub enum Change {
    /// A task entered `state` (`from` is `None` for a new task).
    Task { task_id: TaskId, from: Option<TaskState>, state: TaskState, at_ms: i64 },
    /// A release was recorded or changed state.
    Release { repo: RepoUrl, version: u32 },
    /// A runner was declared lost.
    RunnerLost { name: Name },
}

/// How far a task's log has grown, for followers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogProgress {
    /// The attempt whose output `logs/<id>.log` holds.
    pub attempt: u32,
    pub len: u64,
    pub ended: bool,
}

/// The scheduler's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub heartbeat_misses: u32,
    pub max_attempts: u32,
    pub output_cap: u64,
    pub releases: crate::config::Releases,
    pub notifiers: std::sync::Arc<Vec<crate::config::Notifier>>,
}

impl Settings {
    /// How long a silent runner (or a runner absent after a restart) is
    /// waited for before its tasks go to another.
    fn dead_after(&self) -> Duration {
        self.heartbeat_interval * self.heartbeat_misses
    }

    /// The tick period: a quarter of the heartbeat, so that a silent runner
    /// is declared dead at most a quarter interval after its window ends.
    pub fn tick_period(&self) -> Duration {
        (self.heartbeat_interval / 4).max(Duration::from_millis(5))
    }
}

/// A cheap, cloneable way to send events to the scheduler.
#[derive(Clone)]
pub struct Handle {
    events: mpsc::Sender<Event>,
}

impl Handle {
    /// Queues an event; fails only when the scheduler has stopped.
    pub async fn send(&self, event: Event) -> Result<(), Stopped> {
        self.events.send(event).await.map_err(|_| Stopped)
    }

    /// Sends an event carrying a reply channel and awaits the reply.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply)).await?;
        answer.await.map_err(|_| Stopped)
    }
}

/// The scheduler stopped (shutdown, or a storage failure dropped the reply).
#[derive(Debug)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the dispatcher's scheduler is not available (stopping, or its storage failed)")
    }
}

/// Starts the scheduler thread.
///
/// `fatal` is cancelled when the store fails (disk full, I/O error) or the
/// thread ends any other way (a panic), which stops the whole daemon: the
/// in-memory state may then be ahead of the database, and a restart rebuilds
/// it from what was committed.
///
/// # Errors
/// When the live state cannot be read from the store.
pub fn start(
    store: Store,
    files: DataDir,
    settings: Settings,
    outbox: Arc<Notify>,
    file_writer: SyncSender<FileJob>,
    fatal: CancellationToken,
    changes: tokio::sync::broadcast::Sender<Change>,
) -> anyhow::Result<(Handle, std::thread::JoinHandle<()>)> {
    let mut state = State::recover(&store, files, settings, outbox, file_writer)?;
    state.changes = Some(changes);
    let (events, receiver) = mpsc::channel(EVENT_QUEUE);
    let thread = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || run(store, state, receiver, fatal))?;
    Ok((Handle { events }, thread))
}

fn run(mut store: Store, mut state: State, mut receiver: mpsc::Receiver<Event>, fatal: CancellationToken) {
    // However the thread ends, a panic included, the daemon stops with it:
    // a dispatcher whose scheduler is gone accepts connections but can
    // answer nothing, which is worse than a restart (issue 6).
    let _stop_daemon = fatal.clone().drop_guard();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        if let Err(err) = state.process(&mut store, batch.drain(..)) {
            tracing::error!(error = %format!("{err:#}"), "storage failed; stopping the dispatcher");
            FAILED.store(true, std::sync::atomic::Ordering::SeqCst);
            fatal.cancel();
            return;
        }
    }
    tracing::debug!("scheduler stopped");
}

/// What a batch does once it is committed.
#[derive(Default)]
pub(crate) struct Effects {
    to_runners: Vec<(ConnId, DispatcherToRunner)>,
    replies: Vec<Box<dyn FnOnce() + Send>>,
}

impl Effects {
    fn reply<T: Send + 'static>(&mut self, sender: oneshot::Sender<T>, value: T) {
        self.replies.push(Box::new(move || {
            // The asker may have gone away; nothing to do then.
            let _ = sender.send(value);
        }));
    }

    fn send_runner(&mut self, conn: ConnId, message: DispatcherToRunner) {
        self.to_runners.push((conn, message));
    }
}

/// One connected runner connection.
struct Conn {
    runner: Name,
    outbox: mpsc::Sender<DispatcherToRunner>,
    kill: CancellationToken,
}

/// A runner the dispatcher has seen since it started.
struct Runner {
    name: Name,
    conn: Option<ConnId>,
    address: String,
    labels: Vec<Label>,
    slots: u32,
    host: HostFacts,
    tasks: Vec<TaskId>,
    last_seen: SystemTime,
    last_heard: Instant,
    draining: bool,
}

/// A task handed to a runner (or, after a restart, waiting for its runner to
/// come back).
struct Running {
    task: LiveTask,
    /// The open `logs/<id>.log` of this attempt, once it has output.
    log: Option<std::fs::File>,
    /// Bytes of this attempt's output stored in `logs/<id>.log`.
    log_len: u64,
    /// Set when the output cap was reached and the marker written.
    truncated: bool,
    /// Since when the runner is absent (dispatcher restart); `None` while
    /// its runner is connected.
    orphaned_at: Option<Instant>,
    /// A client asked to abort it; if its runner is lost before it reports,
    /// the task ends `aborted` instead of running again.
    aborting: bool,
}

/// The scheduler's in-memory state, rebuilt from the store at start-up.
pub(crate) struct State {
    settings: Settings,
    files: DataDir,
    started: Instant,
    runners: BTreeMap<Name, Runner>,
    conns: HashMap<ConnId, Conn>,
    /// Queued tasks; task ids increase in submission order, so the map's
    /// order is oldest first.
    pending: BTreeMap<TaskId, LiveTask>,
    running: HashMap<TaskId, Running>,
    counts: HashMap<TaskState, u64>,
    follows: HashMap<TaskId, watch::Sender<LogProgress>>,
    /// Follower updates about state changes of this batch (a new attempt, an
    /// end), sent only after the commit, so a follower that reads the task
    /// then sees the new state.
    progress_after_commit: Vec<(TaskId, LogProgress)>,
    next_ping: u64,
    last_ping: Instant,
    /// Set when the batch queued notifications; wakes the notifier worker
    /// after the commit.
    outbox_changed: bool,
    outbox: Arc<Notify>,
    /// Result and release files of this batch, handed to the file writer
    /// after the commit.
    file_jobs: Vec<FileJob>,
    file_writer: SyncSender<FileJob>,
    /// Where committed changes are published (`None` in scheduler tests).
    changes: Option<tokio::sync::broadcast::Sender<Change>>,
    /// This batch's changes, published after the commit.
    changes_after_commit: Vec<Change>,
}

impl State {
    fn recover(
        store: &Store,
        files: DataDir,
        settings: Settings,
        outbox: Arc<Notify>,
        file_writer: SyncSender<FileJob>,
    ) -> anyhow::Result<State> {
        let now = Instant::now();
        let mut state = State {
            settings,
            files,
            started: now,
            runners: BTreeMap::new(),
            conns: HashMap::new(),
            pending: BTreeMap::new(),
            running: HashMap::new(),
            counts: store.count_by_state()?.into_iter().collect(),
            follows: HashMap::new(),
            progress_after_commit: Vec::new(),
            next_ping: 1,
            last_ping: now,
            outbox_changed: false,
            outbox,
            file_jobs: Vec::new(),
            file_writer,
            changes: None,
            changes_after_commit: Vec::new(),
        };
        for task in store.live_tasks()? {
            match task.state {
                TaskState::Running => {
                    let log_len = state.files.log_len(task.id);
                    tracing::info!(task_id = %task.id, runner = ?task.runner.as_ref().map(Name::as_str),
                        attempt = task.attempts, "waiting for the runner of a running task to come back");
                    state.running.insert(
                        task.id,
                        Running {
                            task,
                            log: None,
                            log_len,
                            truncated: false,
                            orphaned_at: Some(now),
                            aborting: false,
                        },
                    );
                }
                _ => {
                    state.pending.insert(task.id, task);
                }
            }
        }
        tracing::info!(pending = state.pending.len(), running = state.running.len(), "recovered live tasks");
        Ok(state)
    }

    fn process(&mut self, store: &mut Store, events: impl Iterator<Item = Event>) -> anyhow::Result<()> {
        let mut effects = Effects::default();
        let tx = store.begin()?;
        for event in events {
            self.handle(&tx, &mut effects, event)?;
        }
        self.schedule(&tx, &mut effects)?;
        tx.commit()?;
        if std::mem::take(&mut self.outbox_changed) {
            self.outbox.notify_one();
        }
        for job in self.file_jobs.drain(..) {
            // Blocks only when the writer is far behind: then the disk sets
            // the pace. A writer that is gone has logged why.
            let _ = self.file_writer.send(job);
        }
        for (task_id, progress) in std::mem::take(&mut self.progress_after_commit) {
            if let Some(sender) = self.follows.get(&task_id) {
                sender.send_replace(progress);
            }
            if progress.ended {
                self.follows.remove(&task_id);
            }
        }
        if let Some(changes) = &self.changes {
            for change in self.changes_after_commit.drain(..) {
                // No subscriber is not an error; a slow one lags, never blocks.
                let _ = changes.send(change);
            }
        }
        self.changes_after_commit.clear();
        self.apply(effects);
        Ok(())
    }

    fn handle(
        &mut self,
        tx: &crate::store::Tx<'_>,
        effects: &mut Effects,
        event: Event,
    ) -> anyhow::Result<()> {
        match event {
            Event::Submit { task, reply } => {
                let accepted = self.submit(tx, task)?;
                effects.reply(reply, Ok(accepted));
            }
            Event::RunnerUp { conn, name, address, register, outbox, kill } => {
                self.conns.insert(conn, Conn { runner: name.clone(), outbox, kill });
                self.register(tx, effects, conn, name, address, register)?;
            }
            Event::FromRunner { conn, message } => self.runner_message(tx, effects, conn, message)?,
            Event::RunnerDown { conn, reason } => self.connection_lost(tx, conn, &reason)?,
            Event::Tick => self.tick(tx, effects)?,
            Event::Status { reply } => {
                let status = self.status();
                effects.reply(reply, status);
            }
            Event::Runners { reply } => {
                let runners = self.runner_infos();
                effects.reply(reply, runners);
            }
            Event::Abort { task_id, reply } => {
                let result = self.abort(tx, effects, task_id)?;
                effects.reply(reply, result);
            }
            Event::Rerun { task_id, reply } => {
                let result = self.rerun(tx, task_id)?;
                effects.reply(reply, result);
            }
            Event::Follow { task_id, reply } => {
                let progress = self.follow(task_id);
                effects.reply(reply, progress);
            }
            Event::Rollback { repo, to, reply } => {
                let result = self.rollback(tx, &repo, to)?;
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

    /// Performs a committed batch's effects.
    fn apply(&mut self, effects: Effects) {
        for reply in effects.replies {
            reply();
        }
        let mut stuck = Vec::new();
        for (conn_id, message) in effects.to_runners {
            let Some(conn) = self.conns.get(&conn_id) else { continue };
            if let Err(mpsc::error::TrySendError::Full(_)) = conn.outbox.try_send(message) {
                stuck.push(conn_id);
            }
        }
        for conn_id in stuck {
            if let Some(conn) = self.conns.get(&conn_id) {
                tracing::warn!(runner = %conn.runner, "runner is not reading its messages; dropping its connection");
                // The connection task reports RunnerDown, which requeues its tasks.
                conn.kill.cancel();
            }
        }
    }

    fn status(&self) -> StatusReport {
        let (mut idle, mut busy, mut dead) = (0, 0, 0);
        for runner in self.runners.values() {
            match runner.conn {
                None => dead += 1,
                Some(_) if runner.tasks.is_empty() => idle += 1,
                Some(_) => busy += 1,
            }
        }
        StatusReport {
            version: protocol::BATON_VERSION.to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            runners_idle: idle,
            runners_busy: busy,
            runners_dead: dead,
            tasks: TaskState::ALL.iter().map(|state| (*state, self.count(*state))).collect(),
        }
    }

    fn count(&self, state: TaskState) -> u64 {
        self.counts.get(&state).copied().unwrap_or(0)
    }

    fn move_count(&mut self, task_id: TaskId, from: Option<TaskState>, to: TaskState) {
        if self.changes.is_some() {
            self.changes_after_commit.push(Change::Task { task_id, from, state: to, at_ms: now_ms() });
        }
        if let Some(from) = from {
            let slot = self.counts.entry(from).or_default();
            *slot = slot.saturating_sub(1);
        }
        *self.counts.entry(to).or_default() += 1;
    }
}

pub(crate) use crate::time::now_ms;

/// Text a runner sent that people will read (host facts, reasons): control
/// characters become U+FFFD, so no terminal escape reaches `baton`'s tables,
/// and at most `max_bytes` are kept.
pub(crate) fn printable(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes));
    for c in text.chars().map(|c| if c.is_control() { char::REPLACEMENT_CHARACTER } else { c }) {
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn runner_text_is_made_printable_and_bounded() {
        assert_eq!(printable("linux", 64), "linux");
        assert_eq!(printable("a\u{1b}[2Jb\n", 64), "a\u{fffd}[2Jb\u{fffd}");
        assert_eq!(printable("ééé", 5), "éé");
    }
}
