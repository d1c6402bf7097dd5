//! The API's JSON: the same objects, with the same keys, as `baton --json`
//! (SPEC §6 and §10), from `protocol::view`, plus the server-sent events'
//! data.

pub use protocol::view::{accepted, count, release, runner, status, task};
use protocol::TaskState;
use serde_json::{json, Value};

use crate::scheduler::Change;
use crate::time::rfc3339;

/// A change as a server-sent event: its event name and data.
pub fn change(change: &Change) -> (&'static str, Value) {
    match change {
        Change::Task { task_id, from, state, at_ms } => (
            "task",
            json!({
                "id": task_id.get(),
                "from": from.map(TaskState::as_str),
                "state": state.as_str(),
                "at": rfc3339(*at_ms),
            }),
        ),
        Change::Release { repo, version } => {
            ("release", json!({ "repo": repo.as_str(), "version": version }))
        }
        Change::RunnerLost { name } => ("runner_lost", json!({ "name": name.as_str() })),
    }
}
