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
use tokio::sync::watch;

use super::Core;

/// Distinct label sets listed in a load; tasks needing others are left out
/// beyond this bound, which no sane set of repositories reaches.
const MAX_LOAD_GROUPS: usize = 256;

/// Pending tasks looked at per load, as `schedule` does: a huge queue costs
/// a bounded amount per batch.
const MAX_LOAD_SCAN: usize = 10_000;

/// Runners listed in a load (the dispatcher admits a few thousand
/// connections at most).
const MAX_LOAD_RUNNERS: usize = 4096;

/// Where the scheduler publishes the load; shared with [`super::Handle`].
pub(crate) type LoadSender = Arc<watch::Sender<Arc<Load>>>;

/// Marks `name` draining if it is connected and idle.
pub(super) fn drain(core: &mut Core, name: &Name) -> Result<(), String> {
    let Some(runner) = core.runners.get_mut(name) else { return Err("no such runner".into()) };
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

/// Publishes the load after a commit, when a manager listens and it changed.
pub(super) fn publish_load(core: &Core, sender: &LoadSender) {
    if sender.receiver_count() == 0 {
        return;
    }
    let load = snapshot(core);
    sender.send_if_modified(|current| {
        if **current == load {
            false
        } else {
            *current = Arc::new(load);
            true
        }
    });
}

pub(super) fn snapshot(core: &Core) -> Load {
    let mut groups: BTreeMap<&[Label], u32> = BTreeMap::new();
    for task in core.tasks.pending_in_order().take(MAX_LOAD_SCAN) {
        if groups.len() < MAX_LOAD_GROUPS || groups.contains_key(task.labels.as_slice()) {
            *groups.entry(task.labels.as_slice()).or_default() += 1;
        }
    }
    let pending =
        groups.into_iter().map(|(labels, count)| PendingGroup { labels: labels.to_vec(), count }).collect();
    let runners = core
        .runners
        .all()
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
