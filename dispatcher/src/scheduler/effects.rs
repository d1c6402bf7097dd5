//! Everything a batch does once its transaction has committed: replies to
//! observers and clients, messages to runners, follower progress, result and
//! release files, the notifier's wake-up, and state-change events.
//!
//! Handlers only collect here; [`Effects::perform`] acts, after the commit,
//! so nothing is acknowledged or shown before it is durable (the role of
//! hyperqueue's `Comm`, as a value the tests can inspect).

use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use protocol::message::DispatcherToRunner;
use protocol::TaskId;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use super::{Change, ConnId, Core, LogProgress, StateChange};
use crate::files::FileJob;

/// What a committed batch is to do.
#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) to_runners: Vec<(ConnId, DispatcherToRunner)>,
    replies: Vec<Box<dyn FnOnce() + Send>>,
    /// Follower updates, in order.
    pub(crate) progress: Vec<(TaskId, LogProgress)>,
    /// Result and release files for the file writer.
    pub(crate) file_jobs: Vec<FileJob>,
    /// The batch queued notifications: wake the notifier worker.
    pub(crate) outbox_changed: bool,
    /// Task state changes, release changes and lost runners, for subscribers.
    pub(crate) state_changes: Vec<Change>,
}

/// Where effects go, outside the scheduler's own state.
pub(crate) struct Sinks {
    /// Wakes the notifier worker.
    pub(crate) outbox: Arc<Notify>,
    /// The file writer thread.
    pub(crate) file_writer: SyncSender<FileJob>,
    /// State-change subscribers.
    pub(crate) changes: broadcast::Sender<Change>,
}

impl Effects {
    /// Answers an asker once the batch is committed.
    pub(crate) fn reply<T: Send + 'static>(&mut self, sender: oneshot::Sender<T>, value: T) {
        self.replies.push(Box::new(move || {
            // The asker may have gone away; nothing to do then.
            let _ = sender.send(value);
        }));
    }

    pub(crate) fn send_runner(&mut self, conn: ConnId, message: DispatcherToRunner) {
        self.to_runners.push((conn, message));
    }

    pub(crate) fn progress(&mut self, task_id: TaskId, progress: LogProgress) {
        self.progress.push((task_id, progress));
    }

    pub(crate) fn file(&mut self, job: FileJob) {
        self.file_jobs.push(job);
    }

    pub(crate) fn state_changed(&mut self, change: StateChange) {
        self.state_changes.push(Change::Task(change));
    }

    /// Publishes a release or runner change once the batch is committed.
    pub(crate) fn changed(&mut self, change: Change) {
        self.state_changes.push(change);
    }

    /// Performs a committed batch's effects.
    pub(crate) fn perform(self, core: &mut Core, sinks: &Sinks) {
        if self.outbox_changed {
            sinks.outbox.notify_one();
        }
        for job in self.file_jobs {
            // Blocks only when the writer is far behind: then the disk sets
            // the pace. A writer that is gone has logged why.
            let _ = sinks.file_writer.send(job);
        }
        for (task_id, progress) in self.progress {
            core.follows.publish(task_id, progress);
        }
        for change in self.state_changes {
            // No subscriber is not an error.
            let _ = sinks.changes.send(change);
        }
        for reply in self.replies {
            reply();
        }
        let mut stuck = Vec::new();
        for (conn_id, message) in self.to_runners {
            let Some(conn) = core.runners.conn(conn_id) else { continue };
            if let Err(mpsc::error::TrySendError::Full(_)) = conn.outbox.try_send(message) {
                stuck.push(conn_id);
            }
        }
        for conn_id in stuck {
            if let Some(conn) = core.runners.conn(conn_id) {
                tracing::warn!(runner = %conn.runner, "runner is not reading its messages; dropping its connection");
                // The connection task reports RunnerDown, which requeues its tasks.
                conn.kill.cancel();
            }
        }
    }
}
