//! What runner managers see and may do: the load (pending tasks grouped by
//! the labels they need, connected runners and whether they are idle) and
//! draining an idle runner.
//!
//! Draining happens here, on the scheduler thread, so it cannot race an
//! assignment: a runner is drained only while it holds no task, and a drained
//! runner is never picked by `schedule` again (until it registers anew).

use std::collections::BTreeMap;
use std::sync::Arc;

use protocol::message::{Load, LoadState, PendingGroup, RunnerLoad};
use protocol::{Label, Name};

use super::State;

/// Distinct label sets listed in a load; tasks needing others are counted in
/// the last group's place only up to this bound, which no sane set of
/// repositories reaches.
pub const MAX_LOAD_GROUPS: usize = 256;

/// Pending tasks looked at per load, as `schedule` does: a huge queue costs
/// a bounded amount per batch.
const MAX_LOAD_SCAN: usize = 10_000;

/// Runners listed in a load (the dispatcher admits at most a few thousand
/// connections).
pub const MAX_LOAD_RUNNERS: usize = 4096;

impl State {
    /// Marks `name` draining if it is connected and idle.
    pub(super) fn drain(&mut self, name: &Name) -> Result<(), String> {
        let Some(runner) = self.runners.get_mut(name) else { return Err("no such runner".into()) };
        if runner.conn.is_none() {
            return Err("runner is not connected".into());
        }
        if !runner.tasks.is_empty() {
            return Err("runner is busy".into());
        }
        runner.draining = true;
        tracing::info!(runner = %name, "runner drained for its manager; assigning it nothing more");
        Ok(())
    }

    /// Publishes the load to the managers after a commit, when one listens
    /// and it changed.
    pub(super) fn publish_load(&self) {
        if self.load.receiver_count() == 0 {
            return;
        }
        let load = self.load_snapshot();
        self.load.send_if_modified(|current| {
            if **current == load {
                false
            } else {
                *current = Arc::new(load);
                true
            }
        });
    }

    fn load_snapshot(&self) -> Load {
        let mut groups: BTreeMap<&[Label], u32> = BTreeMap::new();
        for task in self.pending.values().take(MAX_LOAD_SCAN) {
            if groups.len() < MAX_LOAD_GROUPS || groups.contains_key(task.labels.as_slice()) {
                *groups.entry(task.labels.as_slice()).or_default() += 1;
            }
        }
        let pending = groups
            .into_iter()
            .map(|(labels, count)| PendingGroup { labels: labels.to_vec(), count })
            .collect();
        let runners = self
            .runners
            .values()
            .filter(|runner| runner.conn.is_some())
            .take(MAX_LOAD_RUNNERS)
            .map(|runner| RunnerLoad {
                name: runner.name.clone(),
                labels: runner.labels.clone(),
                state: if runner.draining {
                    LoadState::Draining
                } else if runner.tasks.is_empty() {
                    LoadState::Idle
                } else {
                    LoadState::Busy
                },
            })
            .collect();
        Load { pending, runners }
    }
}
