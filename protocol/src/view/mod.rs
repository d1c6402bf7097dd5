//! How Baton's values look outside the wire: the `--json` objects of SPEC §6
//! (tasks, runners, status, releases) and times as RFC 3339 text.
//!
//! One module for every reader of these shapes: the `baton` client prints
//! them, the dispatcher writes them to `releases/` and into notifications,
//! and a web page serves them. They are built from the protocol's types by
//! hand and are a public contract for scripts, separate from the wire types
//! on purpose: a field added to `TaskInfo` for the dispatcher's sake does not
//! leak into anyone's `jq` filter, and a renamed Rust field does not rename a
//! JSON key. serde_json's default map sorts keys, so the output is stable.
//! Times are RFC 3339 in UTC with milliseconds, or `null`.

#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
mod time;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};

pub use self::time::{duration, now_ms, relative, rfc3339};
use crate::message::{
    Accepted, Culprit, DeploymentInfo, FlakyTest, PoolInfo, ReleaseInfo, RunnerInfo, StatusReport, Summary,
    TaskInfo, TestCase,
};
use crate::TaskState;

/// One task: `show --json`, an element of `tasks --json`, `abort --json`.
///
/// `requested_by` (who submitted or reran it) and `aborted_by` are there
/// only on tasks a client steered, so the objects of observed tasks keep
/// their keys.
pub fn task(task: &TaskInfo) -> Value {
    // Serialising strings, numbers and lists into a `Value` cannot fail.
    serde_json::to_value(TaskJson(task)).unwrap_or(Value::Null)
}

/// A task's `--json` object as a `Serialize`r, written straight out without
/// building a `Value` first: the web serves lists of fifty per request
/// (issue 14), where a map of owned keys per task was most of the cost.
/// Keys come in sorted order, as serde_json's sorted map prints them, so
/// `task()` and this print the same bytes (tested).
pub struct TaskJson<'a>(pub &'a TaskInfo);

impl Serialize for TaskJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let task = self.0;
        let mut map = serializer.serialize_map(None)?;
        if let Some(by) = &task.aborted_by {
            map.serialize_entry("aborted_by", by)?;
        }
        map.serialize_entry("attempts", &task.attempts)?;
        map.serialize_entry("branch", task.branch.as_str())?;
        map.serialize_entry("commit", task.commit.as_str())?;
        map.serialize_entry("created_at", &rfc3339(task.created_at_ms))?;
        map.serialize_entry("culprit", &task.culprit.as_ref().map(CulpritJson))?;
        map.serialize_entry("duration_ms", &task.duration_ms)?;
        map.serialize_entry("exit_code", &task.exit_code)?;
        map.serialize_entry("finished_at", &task.finished_at_ms.and_then(rfc3339))?;
        map.serialize_entry("flaky", &task.flaky)?;
        map.serialize_entry("flaky_tests", &task.flaky_tests)?;
        map.serialize_entry("id", &task.id.get())?;
        map.serialize_entry("kind", &task.kind)?;
        map.serialize_entry("labels", &Strings(&task.labels))?;
        map.serialize_entry("reason", &task.reason)?;
        map.serialize_entry("repo", task.repo.as_str())?;
        if let Some(by) = &task.requested_by {
            map.serialize_entry("requested_by", by)?;
        }
        map.serialize_entry("runner", &task.runner.as_ref().map(|name| name.as_str()))?;
        map.serialize_entry("started_at", &task.started_at_ms.and_then(rfc3339))?;
        map.serialize_entry("state", task.state.as_str())?;
        map.serialize_entry("summary", &task.summary.as_ref().map(SummaryJson))?;
        map.serialize_entry("trigger", &task.trigger)?;
        map.end()
    }
}

/// Labels as a list of strings.
struct Strings<'a>(&'a [crate::Label]);

impl Serialize for Strings<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|label| label.as_str()))
    }
}

/// `{"commit": C, "steps": N, "tasks": [ID...]}`.
struct CulpritJson<'a>(&'a Culprit);

impl Serialize for CulpritJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let culprit = self.0;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("commit", culprit.commit.as_str())?;
        map.serialize_entry("steps", &culprit.steps)?;
        map.serialize_entry("tasks", &culprit.tasks.iter().map(|id| id.get()).collect::<Vec<_>>())?;
        map.end()
    }
}

/// `{"failed": N, "passed": N, "skipped": N}`.
struct SummaryJson<'a>(&'a Summary);

impl Serialize for SummaryJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let summary = self.0;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("failed", &summary.failed)?;
        map.serialize_entry("passed", &summary.passed)?;
        map.serialize_entry("skipped", &summary.skipped)?;
        map.end()
    }
}

/// One test of a task: an element of `show --tests --json`'s `tests`.
pub fn test_case(test: &TestCase) -> Value {
    json!({ "name": test.name, "outcome": test.status.as_str() })
}

/// One test's record: an element of `flaky --json`.
pub fn flaky_test(test: &FlakyTest) -> Value {
    json!({
        "repo": test.repo.as_str(),
        "name": test.name,
        "runs": test.runs,
        "failures": test.failures,
        "flips": test.flips,
        "flip_rate": test.flip_rate(),
        "last_seen": rfc3339(test.last_seen_ms),
    })
}

/// One runner: an element of `runners --json`. `task` is the first current
/// task (what SPEC §6 names), `tasks` all of them (a runner may have slots).
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

/// One runner manager's pool: an element of `status --json`'s `pools`.
pub fn pool(pool: &PoolInfo) -> Value {
    json!({
        "name": pool.name.as_str(),
        "labels": pool.labels.iter().map(|label| label.as_str()).collect::<Vec<_>>(),
        "size": pool.size,
        "busy": pool.busy,
        "pending": pool.pending,
        "min": pool.min,
        "max": pool.max,
        "runners": pool.runners.iter().map(|name| name.as_str()).collect::<Vec<_>>(),
    })
}

/// The pool of each managed runner.
pub fn pool_of_runners(pools: &[PoolInfo]) -> std::collections::HashMap<crate::Name, crate::Name> {
    pools
        .iter()
        .flat_map(|pool| pool.runners.iter().map(|runner| (runner.clone(), pool.name.clone())))
        .collect()
}

/// `status --json`. Every state appears under `tasks`, with 0 when the
/// dispatcher did not list it.
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
        "data_dir_full": report.data_dir_full.map(|bytes_free| json!({ "bytes_free": bytes_free })),
        "data_dir_bytes": report.data_dir_bytes,
    })
}

/// The number of tasks in `state`; a state listed twice is summed.
pub fn count(report: &StatusReport, state: TaskState) -> u64 {
    report.tasks.iter().filter(|(listed, _)| *listed == state).map(|(_, n)| *n).sum()
}

/// `submit --json` and `rerun --json`.
pub fn accepted(accepted: &Accepted) -> Value {
    json!({ "id": accepted.task_id.get(), "duplicate": accepted.duplicate })
}

/// A release: an element of `releases --json`, `rollback --json`, the files
/// in `releases/` (which leave out `state`) and release notifications.
pub fn release(release: &ReleaseInfo) -> Value {
    json!({
        "repo": release.repo.as_str(),
        "version": format!("r{}", release.version),
        "tag": release.tag.as_ref().map(|tag| tag.as_str()),
        "branch": release.branch.as_str(),
        "commit": release.commit.as_str(),
        "task": release.task_id.map(|id| id.get()),
        "deploy_task": release.deploy_task_id.map(|id| id.get()),
        "created_at": rfc3339(release.created_at_ms),
        "previous": release.previous.map(|version| format!("r{version}")),
        "kind": release.kind,
        "rollback_to": release.rollback_to.map(|version| format!("r{version}")),
        "state": release.state,
        "trigger": release.trigger,
    })
}

/// A deployment: an element of `deployments --json`, the answer of
/// `deploy`, `approve`, `reject` and `rollback --env`, the files
/// `releases/<repository>/deployments/d<N>.json` and deployment
/// notifications. `hosts` maps each host to its state; `host_details` adds
/// which hosts were canaries and their tasks.
pub fn deployment(deployment: &DeploymentInfo) -> Value {
    let hosts: serde_json::Map<String, Value> = deployment
        .hosts
        .iter()
        .map(|host| (host.name.as_str().to_string(), Value::from(host.state.as_str())))
        .collect();
    let details: Vec<Value> = deployment
        .hosts
        .iter()
        .map(|host| {
            json!({
                "name": host.name.as_str(),
                "canary": host.canary,
                "state": host.state.as_str(),
                "task": host.task_id.map(|id| id.get()),
            })
        })
        .collect();
    json!({
        "id": deployment.id,
        "repo": deployment.repo.as_str(),
        "version": format!("r{}", deployment.version),
        "commit": deployment.commit.as_str(),
        "environment": deployment.environment.as_str(),
        "state": deployment.state.as_str(),
        "kind": deployment.kind.as_str(),
        "waiting_for": deployment.waiting_for,
        "requested_by": deployment.requested_by,
        "approved_by": deployment.approved_by,
        "approved_at": deployment.approved_at_ms.and_then(rfc3339),
        "reason": deployment.reason,
        "hosts": hosts,
        "host_details": details,
        "created_at": rfc3339(deployment.created_at_ms),
        "started_at": deployment.started_at_ms.and_then(rfc3339),
        "finished_at": deployment.finished_at_ms.and_then(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::RunnerState;

    fn keys(value: &Value) -> Vec<&str> {
        let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    fn sorted(mut keys: Vec<&str>) -> Vec<&str> {
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_task_streamed_prints_the_bytes_of_its_value() {
        let plain = fixtures::task_info();
        let mut steered = fixtures::task_info();
        steered.requested_by = Some("alice".into());
        steered.aborted_by = Some("bob".into());
        steered.summary = Some(Summary { passed: 3, failed: 1, skipped: 2 });
        steered.culprit = Some(Culprit { commit: plain.commit.clone(), steps: 4, tasks: vec![plain.id] });
        steered.started_at_ms = Some(plain.created_at_ms + 5);
        steered.reason = Some("a \"quoted\" reason\n".into());
        for task_info in [&plain, &steered] {
            let streamed = serde_json::to_string(&TaskJson(task_info)).unwrap();
            assert_eq!(streamed, serde_json::to_string(&task(task_info)).unwrap());
        }
        // The bytes the `json!` object of before `TaskJson` printed for it
        // (compared once, then written down): the contract of `--json`.
        let before = r#"{"aborted_by":"bob","attempts":2,"branch":"main","commit":"0123456789abcdef0123456789abcdef01234567","created_at":"2026-05-01T12:00:00.000Z","culprit":{"commit":"0123456789abcdef0123456789abcdef01234567","steps":4,"tasks":[7]},"duration_ms":4250,"exit_code":1,"finished_at":"2026-05-01T12:00:05.750Z","flaky":false,"flaky_tests":[],"id":7,"kind":"test","labels":["linux"],"reason":"a \"quoted\" reason\n","repo":"/srv/app.git","requested_by":"alice","runner":"r1","started_at":"2026-05-01T12:00:00.005Z","state":"failed","summary":{"failed":1,"passed":3,"skipped":2},"trigger":"observer"}"#;
        assert_eq!(serde_json::to_string(&TaskJson(&steered)).unwrap(), before);
        let value = task(&steered);
        assert_eq!(value["summary"], json!({ "passed": 3, "failed": 1, "skipped": 2 }));
        assert_eq!(value["culprit"]["steps"], 4);
        assert_eq!(
            (value["requested_by"].as_str(), value["aborted_by"].as_str()),
            (Some("alice"), Some("bob"))
        );
    }

    #[test]
    fn a_task_has_every_spec_key() {
        let value = task(&fixtures::task_info());
        assert_eq!(
            keys(&value),
            sorted(vec![
                "id",
                "repo",
                "branch",
                "commit",
                "state",
                "attempts",
                "runner",
                "exit_code",
                "created_at",
                "started_at",
                "finished_at",
                "summary",
                "duration_ms",
                "reason",
                "labels",
                "trigger",
                "kind",
                "flaky",
                "flaky_tests",
                "culprit",
            ])
        );
        assert_eq!(
            value,
            json!({
                "id": 7,
                "repo": "/srv/app.git",
                "branch": "main",
                "commit": fixtures::COMMIT,
                "state": "failed",
                "attempts": 2,
                "runner": "r1",
                "exit_code": 1,
                "created_at": "2026-05-01T12:00:00.000Z",
                "started_at": "2026-05-01T12:00:01.500Z",
                "finished_at": "2026-05-01T12:00:05.750Z",
                "duration_ms": 4250,
                "summary": { "passed": 3, "failed": 1, "skipped": 0 },
                "reason": null,
                "labels": ["linux"],
                "trigger": "observer",
                "kind": "test",
                "flaky": false,
                "flaky_tests": [],
                "culprit": null,
            })
        );
    }

    #[test]
    fn a_pending_task_has_nulls() {
        let value = task(&fixtures::pending_task());
        for key in ["runner", "exit_code", "started_at", "finished_at", "duration_ms", "summary"] {
            assert_eq!(value[key], Value::Null, "{key}");
        }
        assert_eq!(value["state"], "pending");
        assert_eq!(value["labels"], json!([]));
    }

    #[test]
    fn a_runner_has_every_spec_key() {
        let value = runner(&fixtures::runner_info());
        assert_eq!(
            keys(&value),
            sorted(vec!["name", "state", "labels", "task", "tasks", "last_seen", "address", "slots", "host"])
        );
        assert_eq!(
            value,
            json!({
                "name": "r1",
                "state": "busy",
                "labels": ["linux", "x86"],
                "task": 7,
                "tasks": [7, 9],
                "last_seen": "2026-05-01T12:00:00.000Z",
                "address": "10.0.0.5:41234",
                "slots": 2,
                "host": { "os": "linux", "arch": "x86_64", "cpus": 8 },
            })
        );
        let idle = RunnerInfo { state: RunnerState::Idle, tasks: vec![], ..fixtures::runner_info() };
        assert_eq!(runner(&idle)["task"], Value::Null);
    }

    #[test]
    fn status_lists_every_state() {
        let value = status(&fixtures::status_report());
        assert_eq!(
            keys(&value),
            sorted(vec!["version", "uptime_ms", "runners", "tasks", "data_dir_full", "data_dir_bytes"])
        );
        assert_eq!(value["runners"], json!({ "idle": 2, "busy": 1, "dead": 0 }));
        assert_eq!(
            value["tasks"],
            json!({ "pending": 3, "running": 1, "passed": 40, "failed": 2, "error": 0, "aborted": 0 })
        );
        assert_eq!(value["version"], "0.1.0");
        assert_eq!(value["uptime_ms"], 3_723_000);
    }

    #[test]
    fn accepted_has_the_id_and_whether_it_was_a_duplicate() {
        let value = super::accepted(&Accepted { task_id: crate::TaskId::new(4).unwrap(), duplicate: true });
        assert_eq!(value, json!({ "id": 4, "duplicate": true }));
    }

    #[test]
    fn a_release_has_every_key_and_versions_read_r_n() {
        let value = release(&fixtures::release_info());
        assert_eq!(
            value,
            json!({
                "repo": "/srv/app.git",
                "version": "r3",
                "tag": "v1.2",
                "branch": "main",
                "commit": fixtures::COMMIT,
                "task": 7,
                "deploy_task": null,
                "created_at": "2026-05-01T12:00:00.000Z",
                "previous": "r2",
                "kind": "release",
                "rollback_to": null,
                "state": "deployed",
                "trigger": "task 7",
            })
        );
        let out_of_range = ReleaseInfo { created_at_ms: i64::MIN, ..fixtures::release_info() };
        assert_eq!(release(&out_of_range)["created_at"], Value::Null);
    }
}
