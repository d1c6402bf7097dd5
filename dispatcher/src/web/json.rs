//! The API's JSON: the same objects, with the same keys, as `baton --json`
//! (SPEC §6 and §10), built by hand from the protocol's types.
//!
//! FIXME: these mirror `src/bin/baton/json.rs`; once the client's shapes
//! move into a module both can use, this file becomes a re-export.

use protocol::message::{Accepted, RunnerInfo, StatusReport, Summary, TaskInfo};
use protocol::TaskState;
use serde_json::{json, Value};

use crate::scheduler::Change;
use crate::time::rfc3339;

/// One task, as `baton show --json`.
pub fn task(task: &TaskInfo) -> Value {
    json!({
        "id": task.id.get(),
        "repo": task.repo.as_str(),
        "branch": task.branch.as_str(),
        "commit": task.commit.as_str(),
        "state": task.state.as_str(),
        "attempts": task.attempts,
        "runner": task.runner.as_ref().map(|name| name.as_str()),
        "exit_code": task.exit_code,
        "created_at": rfc3339(task.created_at_ms),
        "started_at": task.started_at_ms.and_then(rfc3339),
        "finished_at": task.finished_at_ms.and_then(rfc3339),
        "duration_ms": task.duration_ms,
        "summary": task.summary.as_ref().map(summary),
        "reason": task.reason,
        "labels": task.labels.iter().map(|label| label.as_str()).collect::<Vec<_>>(),
        "trigger": task.trigger,
        "kind": task.kind,
    })
}

fn summary(summary: &Summary) -> Value {
    json!({ "passed": summary.passed, "failed": summary.failed, "skipped": summary.skipped })
}

/// One runner, as an element of `baton runners --json`.
pub fn runner(runner: &RunnerInfo) -> Value {
    json!({
        "name": runner.name.as_str(),
        "state": runner.state.as_str(),
        "labels": runner.labels.iter().map(|label| label.as_str()).collect::<Vec<_>>(),
        "task": runner.tasks.first().map(|id| id.get()),
        "tasks": runner.tasks.iter().map(|id| id.get()).collect::<Vec<_>>(),
        "last_seen": rfc3339(runner.last_seen_ms),
        "address": runner.address,
        "slots": runner.slots,
        "host": { "os": runner.host.os, "arch": runner.host.arch, "cpus": runner.host.cpus },
    })
}

/// `baton status --json`.
pub fn status(report: &StatusReport) -> Value {
    let tasks: serde_json::Map<String, Value> = TaskState::ALL
        .into_iter()
        .map(|state| (state.as_str().to_string(), Value::from(count(report, state))))
        .collect();
    json!({
        "version": report.version,
        "uptime_ms": report.uptime_ms,
        "runners": {
            "idle": report.runners_idle,
            "busy": report.runners_busy,
            "dead": report.runners_dead,
        },
        "tasks": tasks,
    })
}

/// The number of tasks in `state`.
pub fn count(report: &StatusReport, state: TaskState) -> u64 {
    report.tasks.iter().filter(|(listed, _)| *listed == state).map(|(_, n)| *n).sum()
}

/// `baton submit --json` and `baton rerun --json`.
pub fn accepted(accepted: &Accepted) -> Value {
    json!({ "id": accepted.task_id.get(), "duplicate": accepted.duplicate })
}

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
