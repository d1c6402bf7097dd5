//! The API's JSON: the same objects, with the same keys, as `baton --json`
//! (SPEC §6 and §10), from `protocol::view`, plus the server-sent events'
//! data.

pub use protocol::view::{accepted, count, release, runner, status, task};
use serde_json::{json, Value};

use crate::scheduler::StateChange;
use crate::time::rfc3339;

/// A task's state change as a server-sent event's data.
pub fn change(change: &StateChange) -> Value {
    json!({
        "id": change.task_id.get(),
        "state": change.state.as_str(),
        "attempt": change.attempt,
        "runner": change.runner.as_ref().map(|name| name.as_str()),
        "at": rfc3339(crate::time::now_ms()),
    })
}
