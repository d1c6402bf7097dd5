//! The attempts this runner holds, in memory, and the task that owns each.
//!
//! Every attempt, running or finished but not yet acknowledged, has one task
//! (spawned on the runner's `TaskTracker`) that owns its process, its spool
//! entry and its work tree, and one `Handle` in the table. The connection
//! never touches an attempt directly: it sends a [`Control`] through the
//! handle and reads the attempt's [`Progress`] to ship output. Because only
//! the owning task deletes files or writes the result, a forget racing the
//! end of a test cannot leave a result behind or delete one in flight.
//!
//! Runner slots are a `Semaphore`: a permit is taken before an attempt starts
//! and released once its result is recorded.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;

use protocol::message::{Assign, Held, Outcome};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::exec;
use crate::git::GitCache;
use crate::spool::{AttemptKey, Finished, OutputLog, Recovered, Spool};
use crate::task::{self, Ending};

/// Control messages queued per attempt. Its task reads them at once and the
/// dispatcher sends only a handful per attempt (abort, forget, ack).
const CONTROL_CAPACITY: usize = 8;

/// What the dispatcher (or the runner itself) asks of an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop the test and report the attempt aborted.
    Abort,
    /// Stop the test and delete everything, reporting nothing.
    Forget {
        /// The dispatcher's reason, for the log.
        reason: String,
    },
    /// The result arrived; delete everything.
    Ack {
        /// False when the dispatcher refused the result.
        accepted: bool,
        /// Why it was refused.
        reason: Option<String>,
    },
    /// The runner is stopping and will not wait: kill the test at once and
    /// delete everything. A finished attempt ignores this and is kept for the
    /// next start.
    Abandon,
}

/// How far an attempt has come, for its shippers.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Bytes in `output.log` so far.
    pub written: u64,
    /// The result, once the attempt has ended; `written` is final then.
    pub finished: Option<Finished>,
}

/// The table's view of one attempt.
struct Handle {
    control: mpsc::Sender<Control>,
    progress: watch::Receiver<Progress>,
}

/// State shared by the connection and the attempts.
pub struct Shared {
    /// The runner's configuration.
    pub config: Config,
    /// The on-disk state of each attempt.
    pub spool: Spool,
    /// Repository mirrors.
    pub cache: GitCache,
    slots: Arc<Semaphore>,
    /// Held attempts. A std mutex: it is held only to look up or change the
    /// map, never across an await.
    table: Mutex<BTreeMap<AttemptKey, Handle>>,
    /// Number of attempts whose files exist, for the drain to wait on: one
    /// more than the table while an attempt is being deleted.
    held: watch::Sender<usize>,
    /// Counts attempts discarded (a forgotten attempt's test is gone), so
    /// the link can tell the dispatcher that it may assign again.
    slot_freed: watch::Sender<u64>,
    draining: watch::Sender<bool>,
    tracker: TaskTracker,
}

impl Shared {
    /// Shared state with no attempts; tasks are spawned on `tracker`.
    pub fn new(config: Config, spool: Spool, cache: GitCache, tracker: TaskTracker) -> Arc<Shared> {
        let slots = Arc::new(Semaphore::new(config.slots as usize));
        Arc::new(Shared {
            config,
            spool,
            cache,
            slots,
            table: Mutex::new(BTreeMap::new()),
            held: watch::Sender::new(0),
            slot_freed: watch::Sender::new(0),
            draining: watch::Sender::new(false),
            tracker,
        })
    }

    /// Spawns `task` on the runner's tracker.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Takes an attempt found in the spool at start-up, killing the test a
    /// dead runner left behind if there is one.
    pub fn adopt(self: &Arc<Self>, recovered: Recovered) {
        let span = attempt_span(&recovered.assign);
        if let Some(pgid) = recovered.orphan_pgid {
            if exec::kill_orphaned_group(pgid, recovered.key) {
                tracing::warn!(parent: &span, pgid, "killed a test left behind by a dead runner");
            }
        }
        tracing::info!(parent: &span, outcome = ?recovered.finished.outcome, "holding an undelivered result");
        let progress =
            Progress { written: recovered.finished.output_len, finished: Some(recovered.finished) };
        let (control, progress) = self.insert(recovered.key, progress);
        let shared = self.clone();
        let key = recovered.key;
        self.tracker.spawn(
            async move {
                let _progress = progress;
                shared.hold(key, control).await;
            }
            .instrument(span),
        );
    }

    /// Starts an assigned attempt, or records an error result for it at once
    /// when the runner is stopping or has no free slot.
    ///
    /// # Returns
    /// The attempt's progress, for shipping; `None` for an attempt already
    /// held (a duplicate assignment, ignored).
    pub fn assign(self: &Arc<Self>, assign: Assign) -> Option<watch::Receiver<Progress>> {
        let key = AttemptKey::of(&assign);
        let span = attempt_span(&assign);
        if self.lock().contains_key(&key) {
            tracing::warn!(parent: &span, "duplicate assignment ignored");
            return None;
        }
        let permit = if *self.draining.borrow() {
            Err("runner stopping")
        } else {
            self.slots.clone().try_acquire_owned().map_err(|_| {
                tracing::error!(parent: &span, slots = self.config.slots, "assignment while every slot is busy");
                "runner has no free slot"
            })
        };
        let (control, progress_tx) = self.insert(key, Progress::default());
        let progress = progress_tx.subscribe();
        let shared = self.clone();
        self.tracker.spawn(
            async move {
                let log = shared.create_entry(&assign).await;
                match permit {
                    Ok(permit) => {
                        tracing::info!(repo = %assign.repo, branch = %assign.branch, "attempt started");
                        let mut control = control;
                        // A bug that panics inside one attempt must still end
                        // it with a result, or its task would stay running.
                        let attempt = task::execute(&shared, &assign, log, &progress_tx, &mut control);
                        let ending = AssertUnwindSafe(attempt).catch_unwind().await.unwrap_or_else(|_| {
                            let reason = "the runner failed while running the attempt (see its log)";
                            Ending::Finished(Finished::error(reason, 0, progress_tx.borrow().written))
                        });
                        match ending {
                            Ending::Finished(finished) => {
                                shared.record(key, finished, &progress_tx).await;
                                drop(permit);
                                shared.hold(key, control).await;
                            }
                            Ending::Discarded => {
                                shared.discard(key).await;
                                drop(permit);
                                // The test is gone and its slot free: say so.
                                shared.slot_freed.send_modify(|n_freed| *n_freed += 1);
                            }
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(reason, "assignment refused");
                        let refused = Finished { outcome: Outcome::Refused, ..Finished::error(reason, 0, 0) };
                        shared.record(key, refused, &progress_tx).await;
                        shared.hold(key, control).await;
                    }
                }
            }
            .instrument(span),
        );
        Some(progress)
    }

    /// Passes `control` to a held attempt.
    ///
    /// # Returns
    /// False when no such attempt is held.
    pub async fn control(&self, key: AttemptKey, control: Control) -> bool {
        let sender = self.lock().get(&key).map(|handle| handle.control.clone());
        match sender {
            Some(sender) => sender.send(control).await.is_ok(),
            None => false,
        }
    }

    /// Every held attempt, for `Register`.
    pub fn held(&self) -> Vec<Held> {
        self.lock().keys().map(|key| Held { task_id: key.task_id, attempt: key.attempt }).collect()
    }

    /// A held attempt's progress.
    pub fn progress(&self, key: AttemptKey) -> Option<watch::Receiver<Progress>> {
        self.lock().get(&key).map(|handle| handle.progress.clone())
    }

    /// Changes each time a slot is freed without a result.
    pub fn slot_freed(&self) -> watch::Receiver<u64> {
        self.slot_freed.subscribe()
    }

    /// Slots free right now.
    pub fn free_slots(&self) -> u32 {
        self.slots.available_permits() as u32
    }

    /// From now on every assignment is refused.
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Whether the runner is stopping, and changes of it.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Waits until no test is running.
    pub async fn wait_idle(&self) {
        // The semaphore is never closed, so acquiring fails only if it were.
        let _all = self.slots.acquire_many(self.config.slots).await;
    }

    /// Kills every running test and discards its attempt; finished attempts
    /// are kept for the next start.
    pub fn abandon_running(&self) {
        for handle in self.lock().values() {
            // A full queue means the attempt is already being told something
            // final; either way it ends.
            let _ = handle.control.try_send(Control::Abandon);
        }
    }

    /// Waits until every held attempt has been acknowledged or forgotten.
    pub async fn wait_delivered(&self) {
        let mut held = self.held.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = held.wait_for(|n_held| *n_held == 0).await;
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<AttemptKey, Handle>> {
        // A panic while holding this lock leaves the map itself intact.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(
        &self,
        key: AttemptKey,
        progress: Progress,
    ) -> (mpsc::Receiver<Control>, watch::Sender<Progress>) {
        let (control_tx, control_rx) = mpsc::channel(CONTROL_CAPACITY);
        let (progress_tx, progress_rx) = watch::channel(progress);
        self.lock().insert(key, Handle { control: control_tx, progress: progress_rx });
        self.held.send_modify(|n_held| *n_held += 1);
        (control_rx, progress_tx)
    }

    async fn create_entry(&self, assign: &Assign) -> anyhow::Result<OutputLog> {
        let spool = self.spool.clone();
        let assign = assign.clone();
        let cap = self.config.output_cap;
        blocking(move || spool.create(&assign, cap)).await
    }

    async fn record(&self, key: AttemptKey, finished: Finished, progress: &watch::Sender<Progress>) {
        tracing::info!(
            outcome = ?finished.outcome,
            exit_code = ?finished.exit_code,
            duration_ms = finished.duration_ms,
            reason = finished.reason.as_deref().unwrap_or(""),
            output_len = finished.output_len,
            "attempt finished"
        );
        let spool = self.spool.clone();
        let to_write = finished.clone();
        if let Err(err) = blocking(move || spool.write_result(key, &to_write)).await {
            tracing::error!(error = %format!("{err:#}"), "cannot write the result file, keeping it in memory only");
        }
        progress.send_modify(|progress| {
            progress.written = finished.output_len;
            progress.finished = Some(finished);
        });
    }

    /// Waits for the dispatcher to acknowledge or forget a finished attempt,
    /// then deletes it.
    async fn hold(&self, key: AttemptKey, mut control: mpsc::Receiver<Control>) {
        while let Some(message) = control.recv().await {
            match message {
                Control::Ack { accepted: true, .. } => {
                    tracing::info!("result accepted");
                    break;
                }
                Control::Ack { accepted: false, reason } => {
                    tracing::warn!(reason = reason.as_deref().unwrap_or(""), "result refused");
                    break;
                }
                Control::Forget { reason } => {
                    tracing::info!(%reason, "attempt forgotten");
                    break;
                }
                Control::Abort => tracing::info!("abort of a finished attempt ignored"),
                Control::Abandon => {}
            }
        }
        self.discard(key).await;
        // A finished attempt held no slot; a forgotten one's slot is free
        // for the dispatcher to use again.
        self.slot_freed.send_modify(|n_freed| *n_freed += 1);
    }

    /// Removes an attempt from the table (so no new registration names it),
    /// then from the disk, and only then counts it as gone.
    async fn discard(&self, key: AttemptKey) {
        self.lock().remove(&key);
        let spool = self.spool.clone();
        if let Err(err) = blocking(move || spool.remove(key)).await {
            tracing::warn!(error = %format!("{err:#}"), "cannot delete the attempt's files");
        }
        self.held.send_modify(|n_held| *n_held -= 1);
        if self.lock().is_empty() {
            // Trimming cannot fail; a failed blocking task only skips it.
            let _ = blocking(|| {
                release_free_memory();
                Ok(())
            })
            .await;
        }
    }
}

/// Gives the heap's free pages back to the system once no attempt is left:
/// a checkout and a test's output grow the allocator's per-thread arenas,
/// which glibc otherwise keeps, and an idle runner should be small (SPEC
/// §8: 8 MiB; 8.06 MiB after one task before, see the README).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of glibc's own arenas to
    // the system; it touches no allocation in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn attempt_span(assign: &Assign) -> tracing::Span {
    // A root span: an attempt outlives the connection that assigned it.
    tracing::info_span!(parent: None, "attempt", task_id = %assign.task_id, attempt = assign.attempt, commit = %assign.commit)
}

/// Runs file-system work (fsync, deleting trees) off the async threads.
async fn blocking<T, F>(work: F) -> anyhow::Result<T>
where
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|err| anyhow::anyhow!("file task failed: {err}"))?
}
