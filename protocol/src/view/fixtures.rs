//! Canned protocol values for unit tests of code that shows them (this
//! module's own tests and the client's); compiled only for tests and with the
//! `fixtures` feature, which only dev-dependencies turn on.

use crate::message::{HostFacts, ReleaseInfo, RunnerInfo, RunnerState, StatusReport, Summary, TaskInfo};
use crate::{Branch, CommitId, Label, Name, RepoUrl, TaskId, TaskState};

/// A full commit id.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// 2026-05-01T12:00:00Z.
pub const NOON_MS: i64 = 1_777_636_800_000;

/// A finished, failed task with every field set but the reason.
pub fn task_info() -> TaskInfo {
    TaskInfo {
        id: TaskId::new(7).unwrap(),
        repo: RepoUrl::new("/srv/app.git").unwrap(),
        branch: Branch::new("main").unwrap(),
        commit: CommitId::new(COMMIT).unwrap(),
        state: TaskState::Failed,
        attempts: 2,
        runner: Some(Name::new("r1").unwrap()),
        exit_code: Some(1),
        created_at_ms: NOON_MS,
        started_at_ms: Some(NOON_MS + 1_500),
        finished_at_ms: Some(NOON_MS + 5_750),
        duration_ms: Some(4_250),
        summary: Some(Summary { passed: 3, failed: 1, skipped: 0 }),
        reason: None,
        labels: vec![Label::new("linux").unwrap()],
        trigger: "observer".into(),
        kind: "test".into(),
        flaky: false,
        flaky_tests: vec![],
        culprit: None,
        requested_by: None,
        aborted_by: None,
    }
}

/// A task nobody has started.
pub fn pending_task() -> TaskInfo {
    TaskInfo {
        id: TaskId::new(8).unwrap(),
        state: TaskState::Pending,
        attempts: 0,
        runner: None,
        exit_code: None,
        started_at_ms: None,
        finished_at_ms: None,
        duration_ms: None,
        summary: None,
        labels: vec![],
        trigger: "manual".into(),
        kind: "test".into(),
        requested_by: None,
        aborted_by: None,
        ..task_info()
    }
}

/// A busy runner with two slots, both in use.
pub fn runner_info() -> RunnerInfo {
    RunnerInfo {
        name: Name::new("r1").unwrap(),
        address: "10.0.0.5:41234".into(),
        labels: vec![Label::new("linux").unwrap(), Label::new("x86").unwrap()],
        state: RunnerState::Busy,
        slots: 2,
        tasks: vec![TaskId::new(7).unwrap(), TaskId::new(9).unwrap()],
        last_seen_ms: NOON_MS,
        host: HostFacts { os: "linux".into(), arch: "x86_64".into(), cpus: 8 },
    }
}

/// A report that leaves out two states, as a terse dispatcher might.
pub fn status_report() -> StatusReport {
    StatusReport {
        version: "0.1.0".into(),
        uptime_ms: 3_723_000,
        runners_idle: 2,
        runners_busy: 1,
        runners_dead: 0,
        tasks: vec![
            (TaskState::Pending, 3),
            (TaskState::Running, 1),
            (TaskState::Passed, 40),
            (TaskState::Failed, 2),
        ],
        data_dir_full: None,
        data_dir_bytes: 0,
    }
}

/// A deployed release of `task_info`'s commit, the third of its repository.
pub fn release_info() -> ReleaseInfo {
    ReleaseInfo {
        repo: RepoUrl::new("/srv/app.git").unwrap(),
        version: 3,
        tag: Some(Branch::new("v1.2").unwrap()),
        branch: Branch::new("main").unwrap(),
        commit: CommitId::new(COMMIT).unwrap(),
        task_id: Some(TaskId::new(7).unwrap()),
        deploy_task_id: None,
        created_at_ms: NOON_MS,
        previous: Some(2),
        kind: crate::types::ReleaseKind::Release,
        rollback_to: None,
        state: crate::types::ReleaseState::Deployed,
        trigger: "task 7".into(),
    }
}
