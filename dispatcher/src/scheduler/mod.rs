//! The scheduler: the one owner of the dispatcher's live state.
//!
//! It runs on a dedicated thread that owns the writing [`Store`]. Connection
//! tasks send it [`Event`]s over a bounded channel; it takes a batch of them,
//! applies each to the [`Core`] (plain data: `Tasks`, `Runners`,
//! followers and releases) and to one SQLite transaction, hands pending
//! tasks to idle runners, commits, and only then performs the batch's
//! [`Effects`]: replies, messages to runners, follower progress, file jobs,
//! outbox wake-ups and state-change events. So nothing is acknowledged
//! before it is durable, and one commit (one fsync) carries many changes.
//!
//! The handlers are plain functions over `(&mut Core, &Tx, &mut Effects)`:
//! `reactor` for events from connections and the clock, `life` for the life
//! of a task, `releases` for what a finished task means beyond itself. This
//! is the shape of hyperqueue's `tako` core (`core.rs`, `reactor.rs`), and it
//! lets `tests` script events against a temp-dir store without processes.
//!
//! Deliberately not here: sockets and framing (`handler`), SQL (`store`), file
//! layout (`files`).

mod bisect;
mod core;
mod deployments;
mod disk;
mod effects;
mod flaky;
mod follows;
mod life;
mod liveness;
mod manager;
mod reactor;
mod releases;
mod runners;
mod tasks;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use protocol::message::{
    Accepted, DispatcherToRunner, Register, ReleaseInfo, RunnerInfo, RunnerToDispatcher, StatusReport,
    TaskInfo,
};
use protocol::{Name, RepoUrl, TaskId, TaskState};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

pub(crate) use self::core::Core;
pub use self::deployments::Steer;
pub(crate) use self::effects::{Effects, Sinks};
pub use self::liveness::LastHeard;
use crate::files::{DataDir, FileJob};
use crate::store::{NewTask, Store};

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
        /// Noted by the connection's reader on every frame.
        heard: Arc<LastHeard>,
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
        /// Who asks: the proven user, or the client's name (recorded).
        by: String,
        reply: oneshot::Sender<Result<TaskInfo, String>>,
    },
    Rerun {
        task_id: TaskId,
        /// Who asks: the proven user, or the client's name (recorded).
        by: String,
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
        /// The proven user who asks, named in the release's trigger.
        by: Option<String>,
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
    /// `baton deploy`, `approve`, `reject`, `rollback --env`; `by` is who
    /// asks (the client's name).
    Deployment {
        steer: Steer,
        by: String,
        reply: oneshot::Sender<Result<protocol::message::DeploymentInfo, String>>,
    },
    /// A runner manager asks to drain an idle runner (`manager`).
    Drain {
        runner: Name,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Retention removes these tasks and these tasks' logs, those that may
    /// still go (`retention`); answered once committed with what went.
    Prune {
        tasks: Vec<TaskId>,
        logs: Vec<TaskId>,
        reply: oneshot::Sender<Pruned>,
    },
}

/// What one [`Event::Prune`] removed.
#[derive(Debug, Default)]
pub struct Pruned {
    pub tasks: Vec<crate::store::PrunedTask>,
    pub logs: Vec<TaskId>,
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
    /// Runs of a failed test task again (`--retry-failed`).
    pub retry_failed: u32,
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

    /// How long a task whose runner held it when the dispatcher restarted
    /// (or stalled and saw the runner close) waits for that runner: a
    /// heartbeat window, and never less than a runner's longest wait between
    /// two reconnection tries (plus an interval to register), so a runner
    /// that was away as long as the dispatcher re-adopts its task instead of
    /// finding it given to another.
    pub(crate) fn orphan_grace(&self) -> Duration {
        self.dead_after().max(protocol::peer::LONGEST_RECONNECT_WAIT + self.heartbeat_interval)
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
    changes: broadcast::Sender<Change>,
    load: manager::LoadSender,
    /// Batches committed so far (see [`Handle::committed`]).
    committed: Arc<AtomicU64>,
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

    /// Task state changes, release changes and lost runners from now on,
    /// each published after its commit.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The load runner managers see, updated after each batch that changes
    /// it while anyone subscribes.
    pub fn subscribe_load(&self) -> watch::Receiver<Arc<protocol::message::Load>> {
        self.load.subscribe()
    }

    /// How many batches the scheduler has committed. It counts up after each
    /// commit and before anything of that batch is acknowledged, so two
    /// reads of the store made while it showed the same number saw the same
    /// rows, and a reader that was answered (a submission accepted) and then
    /// reads this number sees a larger one than before: a cache of query
    /// answers keyed by it is never stale.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
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

/// State changes kept for subscribers that fall behind; a slower one gets
/// `Lagged` and should re-read what it shows from the store.
const STATE_CHANGES: usize = 4096;

/// What subscribers such as the web service's live views and metrics learn,
/// each published after the commit that recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Task(StateChange),
    Release(ReleaseChange),
    /// A deployment was asked for or changed (state, hosts, approval).
    Deployment(Box<protocol::message::DeploymentInfo>),
    /// A runner was declared lost (its connection closed or it went silent).
    RunnerLost {
        runner: Name,
    },
}

/// A release record was made or changed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseChange {
    pub repo: RepoUrl,
    pub version: u32,
    pub state: protocol::ReleaseState,
}

/// A task changed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub task_id: TaskId,
    pub state: TaskState,
    /// The attempt the task is on (0 before its first).
    pub attempt: u32,
    /// The runner of a running task.
    pub runner: Option<Name>,
}

/// Starts the scheduler thread.
///
/// `fatal` is cancelled when the store fails (disk full, I/O error) or the
/// thread ends any other way (a panic), which stops the whole daemon: the
/// in-memory state may then be ahead of the database, and a restart rebuilds
/// it from what was committed. The thread's result says whether the store
/// failed.
///
/// # Errors
/// When the live state cannot be read from the store.
pub fn start(
    mut store: Store,
    files: DataDir,
    settings: Settings,
    outbox: Arc<Notify>,
    file_writer: SyncSender<FileJob>,
    fatal: CancellationToken,
) -> anyhow::Result<(Handle, std::thread::JoinHandle<anyhow::Result<()>>)> {
    let names: Vec<Name> = settings.notifiers.iter().map(|notifier| notifier.name.clone()).collect();
    let tx = store.begin()?;
    let named = tx.name_positional_notifications(&names)?;
    tx.commit()?;
    if named > 0 {
        tracing::info!(named, "named the notifiers of events queued before notifiers had names");
    }
    let core = Core::recover(&store, files, settings)?;
    let (events, receiver) = mpsc::channel(EVENT_QUEUE);
    let (changes, _) = broadcast::channel(STATE_CHANGES);
    let sinks = Sinks { outbox, file_writer, changes: changes.clone() };
    let load = manager::LoadSender::default();
    let publish = load.clone();
    let committed = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&committed);
    let thread = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || run(store, core, sinks, publish, &count, receiver, fatal))?;
    Ok((Handle { events, changes, load, committed }, thread))
}

fn run(
    mut store: Store,
    mut core: Core,
    sinks: Sinks,
    load: manager::LoadSender,
    committed: &AtomicU64,
    mut receiver: mpsc::Receiver<Event>,
    fatal: CancellationToken,
) -> anyhow::Result<()> {
    // However the thread ends, a panic included, the daemon stops with it:
    // a dispatcher whose scheduler is gone accepts connections but can
    // answer nothing, which is worse than a restart (issue 6).
    let _stop_daemon = fatal.clone().drop_guard();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = receiver.blocking_recv() {
        // A tick queued behind thousands of output events would come late
        // and the runners, missing pings, would reconnect: tick now when one
        // is due (the ticker's own ticks then find nothing to do).
        if reactor::tick_due(&core, std::time::Instant::now()) {
            batch.push(Event::Tick);
        }
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        match step(&mut core, &mut store, batch.drain(..)) {
            Ok(effects) => {
                // Before any reply: see `Handle::committed`.
                committed.fetch_add(1, Ordering::Release);
                effects.perform(&mut core, &sinks);
                manager::publish_load(&core, &load);
            }
            Err(err) if disk::is_disk_full(&err) => {
                // The batch was rolled back and nothing in it acknowledged,
                // but memory may be ahead of the database: rebuild it from
                // what was committed, degraded (issue 12, item 2).
                tracing::error!(error = %format!("{err:#}"), "data dir full: batch rolled back; rebuilding the live state from the database");
                match core.rebuild(&store) {
                    Ok(rebuilt) => core = rebuilt,
                    Err(err) => {
                        tracing::error!(error = %format!("{err:#}"), "cannot rebuild the live state; stopping the dispatcher");
                        fatal.cancel();
                        return Err(err);
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "storage failed; stopping the dispatcher");
                fatal.cancel();
                return Err(err);
            }
        }
    }
    tracing::debug!("scheduler stopped");
    Ok(())
}

/// Applies a batch of events and a scheduling pass in one transaction and
/// commits it; returns what is to be done now that it is durable.
///
/// # Errors
/// Storage errors; the transaction is then rolled back, nothing in it is
/// acknowledged, and the core may be ahead of the database.
pub(crate) fn step(
    core: &mut Core,
    store: &mut Store,
    events: impl Iterator<Item = Event>,
) -> anyhow::Result<Effects> {
    let mut effects = Effects::default();
    reactor::notice_stall(core, std::time::Instant::now());
    let tx = store.begin()?;
    for event in events {
        reactor::handle(core, &tx, &mut effects, event)?;
    }
    life::schedule(core, &tx, &mut effects)?;
    tx.commit()?;
    Ok(effects)
}

pub(crate) use crate::time::now_ms;

/// Text a runner sent that people will read over several lines (reasons):
/// newlines and tabs are kept, so a TOML parse error or a traceback stays
/// readable; every other control character (ESC above all) becomes U+FFFD,
/// so no terminal escape reaches `baton`'s output; at most `max_bytes` are
/// kept.
pub(crate) fn printable(text: &str, max_bytes: usize) -> String {
    let unprintable = |c: char| c.is_control() && c != '\n' && c != '\t';
    bounded(text.chars().map(|c| if unprintable(c) { char::REPLACEMENT_CHARACTER } else { c }), max_bytes)
}

/// As [`printable`], for one-line values (host facts, step names): newlines
/// and tabs become U+FFFD too.
pub(crate) fn printable_line(text: &str, max_bytes: usize) -> String {
    bounded(text.chars().map(|c| if c.is_control() { char::REPLACEMENT_CHARACTER } else { c }), max_bytes)
}

/// The characters that fit in `max_bytes` of UTF-8.
fn bounded(chars: impl Iterator<Item = char>, max_bytes: usize) -> String {
    let mut out = String::new();
    for c in chars {
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}
