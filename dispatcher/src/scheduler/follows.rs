//! Followers of task logs (`baton log --follow`): one watch channel per
//! followed live task, carrying how far its log may be read.
//!
//! The scheduler is the only writer of `logs/<id>.log`, and it publishes a
//! length only after the bytes up to it are in the file, so a follower that
//! reads up to the published length reads exactly the stored log. Progress
//! is published after the batch's commit (in `Effects::perform`), so a
//! follower that learns of an end and then reads the task sees it ended.

use std::collections::HashMap;

use protocol::TaskId;
use tokio::sync::watch;

use super::LogProgress;

/// The followed tasks.
#[derive(Default)]
pub(crate) struct Follows {
    by_task: HashMap<TaskId, watch::Sender<LogProgress>>,
}

impl Follows {
    /// A receiver of the task's progress, starting at `now` if the task had
    /// no follower yet.
    pub(crate) fn subscribe(&mut self, task_id: TaskId, now: LogProgress) -> watch::Receiver<LogProgress> {
        self.by_task.entry(task_id).or_insert_with(|| watch::channel(now).0).subscribe()
    }

    pub(crate) fn is_followed(&self, task_id: TaskId) -> bool {
        self.by_task.contains_key(&task_id)
    }

    /// Tells the task's followers; an end also forgets them.
    pub(crate) fn publish(&mut self, task_id: TaskId, progress: LogProgress) {
        if let Some(sender) = self.by_task.get(&task_id) {
            sender.send_if_modified(|current| {
                let changed = *current != progress;
                *current = progress;
                changed
            });
        }
        if progress.ended {
            self.by_task.remove(&task_id);
        }
    }

    /// The followed tasks.
    #[cfg(test)]
    pub(crate) fn followed(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.by_task.keys().copied()
    }
}
