//! The API's JSON: the same objects, with the same keys, as `baton --json`
//! (SPEC §6 and §10), from `protocol::view`, plus the server-sent events'
//! data.

pub use protocol::view::{accepted, count, release, runner, status, task};
use serde_json::{json, Value};

use crate::scheduler::Change;
use crate::time::rfc3339;

/// A change as a server-sent event: its name (`task`, `release`,
/// `deployment`, `runner_lost`) and its data (a deployment's is the object
/// of `baton deployments --json`).
pub fn change(change: &Change) -> (&'static str, Value) {
    let at = rfc3339(crate::time::now_ms());
    match change {
        Change::Task(change) => (
            "task",
            json!({
                "id": change.task_id.get(),
                "state": change.state.as_str(),
                "attempt": change.attempt,
                "runner": change.runner.as_ref().map(|name| name.as_str()),
                "at": at,
            }),
        ),
        Change::Release(change) => (
            "release",
            json!({
                "repo": change.repo.as_str(),
                "version": change.version,
                "state": change.state.as_str(),
                "at": at,
            }),
        ),
        Change::Deployment(deployment) => {
            let mut data = protocol::view::deployment(deployment);
            data["at"] = json!(at);
            ("deployment", data)
        }
        Change::RunnerLost { runner } => ("runner_lost", json!({ "runner": runner.as_str(), "at": at })),
    }
}
