//! Round trips and golden bytes of every message: a change to the wire
//! format shows up here before it reaches a peer.

use super::*;
use crate::codec::{decode, encode};

fn commit() -> CommitId {
    CommitId::new("0123456789abcdef0123456789abcdef01234567").unwrap()
}

fn task_info() -> TaskInfo {
    TaskInfo {
        id: TaskId::new(7).unwrap(),
        repo: RepoUrl::new("/srv/app.git").unwrap(),
        branch: Branch::new("main").unwrap(),
        commit: commit(),
        state: TaskState::Passed,
        attempts: 2,
        runner: Some(Name::new("r1").unwrap()),
        exit_code: Some(0),
        created_at_ms: 1,
        started_at_ms: Some(2),
        finished_at_ms: Some(3),
        duration_ms: Some(1),
        summary: Some(Summary { passed: 3, failed: 0, skipped: 1 }),
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

fn release_info() -> ReleaseInfo {
    ReleaseInfo {
        repo: RepoUrl::new("/srv/app.git").unwrap(),
        version: 3,
        tag: Some(Branch::new("v1.2").unwrap()),
        branch: Branch::new("main").unwrap(),
        commit: commit(),
        task_id: Some(task_id()),
        deploy_task_id: None,
        created_at_ms: 5,
        previous: Some(2),
        kind: ReleaseKind::Release,
        rollback_to: None,
        state: ReleaseState::Deployed,
        trigger: "task 7".into(),
    }
}

#[test]
fn deploy_jobs_round_trip() {
    let assign = DispatcherToRunner::Assign(Assign {
        task_id: task_id(),
        attempt: 1,
        repo: RepoUrl::new("/r").unwrap(),
        branch: Branch::new("m").unwrap(),
        commit: commit(),
        job: Job::Deploy(Deploy {
            release: "r1".into(),
            previous_commit: None,
            steps: vec![DeployStep { name: "deploy".into(), command: "true".into() }],
        }),
    });
    let expected = format!(
        "020e01{}{}{}01 027231 00 01 066465706c6f79 0474727565",
        hex("/r"),
        hex("m"),
        hex(commit().as_str())
    );
    assert_eq!(round_trip(&assign), expected.replace(' ', ""));
}

/// Encodes, decodes, compares, and returns the bytes as hex.
fn round_trip<T>(message: &T) -> String
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug,
{
    let bytes = encode(message).unwrap();
    let back: T = decode(&bytes).unwrap();
    assert_eq!(&back, message);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn task_id() -> TaskId {
    TaskId::new(7).unwrap()
}

#[test]
fn observer_messages_golden() {
    let submit = ObserverToDispatcher::Submit(Submit {
        repo: RepoUrl::new("/r").unwrap(),
        branch: Branch::new("main").unwrap(),
        commit: commit(),
        labels: vec![Label::new("gpu").unwrap()],
    });
    let expected = format!("00{}{}{}01{}", hex("/r"), hex("main"), hex(commit().as_str()), hex("gpu"));
    assert_eq!(round_trip(&submit), expected);
    let accepted = DispatcherToObserver::Accepted(Accepted { task_id: task_id(), duplicate: true });
    assert_eq!(round_trip(&accepted), "000e01");
    let refused = DispatcherToObserver::Refused(Refused { reason: "no".into() });
    assert_eq!(round_trip(&refused), "01026e6f");
    assert_eq!(round_trip(&DispatcherToObserver::Ping(Ping { seq: 4 })), "0204");
    assert_eq!(round_trip(&ObserverToDispatcher::Pong(Pong { seq: 4 })), "0104");
    let scheduled = ObserverToDispatcher::SubmitScheduled(Submit {
        repo: RepoUrl::new("/r").unwrap(),
        branch: Branch::new("main").unwrap(),
        commit: commit(),
        labels: Vec::new(),
    });
    let expected = format!("02{}{}{}00", hex("/r"), hex("main"), hex(commit().as_str()));
    assert_eq!(round_trip(&scheduled), expected);
}

#[test]
fn runner_messages_golden() {
    let cases: Vec<(RunnerToDispatcher, &str)> = vec![
        (
            RunnerToDispatcher::Register(Register {
                labels: vec![Label::new("a").unwrap()],
                slots: 1,
                host: HostFacts { os: "l".into(), arch: "x".into(), cpus: 2 },
                held: vec![Held { task_id: task_id(), attempt: 1 }],
            }),
            "00 01 0161 01 016c 0178 02 01 0e 01",
        ),
        (RunnerToDispatcher::Pong(Pong { seq: 5 }), "0105"),
        (
            RunnerToDispatcher::Output(Output {
                task_id: task_id(),
                attempt: 1,
                offset: 3,
                data: b"hi".to_vec(),
            }),
            "02 0e 01 03 02 6869",
        ),
        (
            RunnerToDispatcher::Result(TaskResult {
                task_id: task_id(),
                attempt: 1,
                outcome: Outcome::Failed,
                exit_code: Some(1),
                duration_ms: 300,
                summary: Some(Summary { passed: 1, failed: 1, skipped: 0 }),
                reason: None,
                output_len: 9,
                tag: None,
                failed_step: None,
                tests: vec![TestCase { name: "t".into(), status: TestStatus::Failed }],
            }),
            "03 0e 01 01 01 02 fb2c01 01 01 01 00 00 09 00 00 01 0174 01",
        ),
        (RunnerToDispatcher::SlotFreed(SlotFreed { free_slots: 1 }), "05 01"),
    ];
    for (message, expected) in cases {
        assert_eq!(round_trip(&message), expected.replace(' ', ""), "{message:?}");
    }
    let to_runner: Vec<(DispatcherToRunner, &str)> = vec![
        (
            DispatcherToRunner::Registered(Registered {
                resume: vec![Resume { task_id: task_id(), attempt: 1, output_offset: 4 }],
                forget: vec![],
                heartbeat_interval_ms: 1000,
                heartbeat_misses: 3,
            }),
            "00 01 0e 01 04 00 fbe803 03",
        ),
        (DispatcherToRunner::Ping(Ping { seq: 9 }), "0109"),
        (
            DispatcherToRunner::Assign(Assign {
                task_id: task_id(),
                attempt: 2,
                repo: RepoUrl::new("/r").unwrap(),
                branch: Branch::new("m").unwrap(),
                commit: commit(),
                job: Job::Test,
            }),
            format!("020e02{}{}{}00", hex("/r"), hex("m"), hex(commit().as_str())).leak(),
        ),
        (DispatcherToRunner::Abort(Abort { task_id: task_id(), attempt: 2 }), "030e02"),
        (
            DispatcherToRunner::ResultAck(ResultAck {
                task_id: task_id(),
                attempt: 2,
                accepted: true,
                reason: None,
            }),
            "040e020100",
        ),
        (
            DispatcherToRunner::Forget(Forget { task_id: task_id(), attempt: 2, reason: "x".into() }),
            "050e02 0178",
        ),
        (
            DispatcherToRunner::Resend(Resend { task_id: task_id(), attempt: 2, output_offset: 7 }),
            "06 0e 02 07",
        ),
    ];
    for (message, expected) in to_runner {
        assert_eq!(round_trip(&message), expected.replace(' ', ""), "{message:?}");
    }
}

#[test]
fn client_messages_golden() {
    let requests: Vec<(ClientToDispatcher, &str)> = vec![
        (ClientToDispatcher::Status, "00"),
        (ClientToDispatcher::Runners, "01"),
        (
            ClientToDispatcher::Tasks(TaskQuery { repo: None, state: Some(TaskState::Failed), limit: 50 }),
            "0200010332",
        ),
        (ClientToDispatcher::Show(Selector::Id(task_id())), "03000e"),
        (ClientToDispatcher::Show(Selector::Commit(CommitPrefix::new("abcd").unwrap())), "03010461626364"),
        (
            ClientToDispatcher::Submit(ManualSubmit {
                repo: RepoUrl::new("/r").unwrap(),
                branch: Branch::new("m").unwrap(),
                commit: commit(),
                labels: vec![],
            }),
            format!("04{}{}{}00", hex("/r"), hex("m"), hex(commit().as_str())).leak(),
        ),
        (ClientToDispatcher::Rerun(task_id()), "050e"),
        (ClientToDispatcher::Abort(task_id()), "060e"),
        (ClientToDispatcher::Log(LogRequest { task_id: task_id(), follow: true }), "070e01"),
        (ClientToDispatcher::Releases(ReleaseQuery { repo: None }), "0800"),
        (
            ClientToDispatcher::Rollback(RollbackRequest { repo: RepoUrl::new("/r").unwrap(), to: Some(2) }),
            "09 022f72 01 02",
        ),
        (
            ClientToDispatcher::Commits(CommitQuery {
                repo: RepoUrl::new("/r").unwrap(),
                prefix: CommitPrefix::new("abcd").unwrap(),
            }),
            "0a 022f72 0461626364",
        ),
        (ClientToDispatcher::TestCases(task_id()), "11 0e"),
        (ClientToDispatcher::Flaky(FlakyQuery { repo: None, limit: 50 }), "12 00 32"),
    ];
    for (message, expected) in requests {
        assert_eq!(round_trip(&message), expected.replace(' ', ""), "{message:?}");
    }
    let status = DispatcherToClient::Status(StatusReport {
        version: "1".into(),
        uptime_ms: 2,
        runners_idle: 1,
        runners_busy: 0,
        runners_dead: 0,
        tasks: vec![(TaskState::Running, 3)],
        data_dir_full: Some(4),
        data_dir_bytes: 5,
    });
    assert_eq!(round_trip(&status), "00 0131 02 01 00 00 01 01 03 0104 05".replace(' ', ""));
    let runner = RunnerInfo {
        name: Name::new("r").unwrap(),
        address: "a".into(),
        labels: vec![],
        state: RunnerState::Busy,
        slots: 1,
        tasks: vec![task_id()],
        last_seen_ms: 1,
        host: HostFacts::default(),
    };
    assert_eq!(
        round_trip(&DispatcherToClient::Runners(vec![runner])),
        "01 01 0172 0161 00 01 01 010e 02 00 00 00".replace(' ', "")
    );
    for response in [
        DispatcherToClient::Tasks(vec![task_info()]),
        DispatcherToClient::Task(Some(Box::new(task_info()))),
        DispatcherToClient::Task(None),
        DispatcherToClient::Accepted(Accepted { task_id: task_id(), duplicate: false }),
        DispatcherToClient::Aborted(Box::new(task_info())),
        DispatcherToClient::LogChunk(vec![0, 255, b':', b'\n']),
        DispatcherToClient::LogEnd(Box::new(task_info())),
        DispatcherToClient::Error("nope".into()),
        DispatcherToClient::Releases(vec![release_info()]),
        DispatcherToClient::Release(Box::new(release_info())),
    ] {
        round_trip(&response);
    }
    assert_eq!(round_trip(&DispatcherToClient::Task(None)), "0300");
    // The release's kind and state travel as enums (protocol version 2).
    let release = format!(
        "0a {} 03 01{} {} {} 010e 00 0a 0102 00 00 02 {}",
        hex("/srv/app.git"),
        hex("v1.2"),
        hex("main"),
        hex(commit().as_str()),
        hex("task 7")
    );
    assert_eq!(round_trip(&DispatcherToClient::Release(Box::new(release_info()))), release.replace(' ', ""));
    assert_eq!(round_trip(&DispatcherToClient::Error("e".into())), "080165");
    assert_eq!(
        round_trip(&DispatcherToClient::Commits(vec![commit()])),
        format!("0b01{}", hex(commit().as_str()))
    );
    let tests =
        DispatcherToClient::TestCases(Some(vec![TestCase { name: "t".into(), status: TestStatus::Skipped }]));
    assert_eq!(round_trip(&tests), "0f 01 01 0174 02".replace(' ', ""));
    let flaky = DispatcherToClient::Flaky(vec![FlakyTest {
        repo: RepoUrl::new("/r").unwrap(),
        name: "t".into(),
        runs: 2,
        failures: 1,
        flips: 1,
        last_seen_ms: 1,
    }]);
    assert_eq!(round_trip(&flaky), "10 01 022f72 0174 02 01 01 02".replace(' ', ""));
    let culprit = Culprit { commit: commit(), steps: 5, tasks: vec![task_id()] };
    let flaky_task =
        TaskInfo { flaky: true, flaky_tests: vec!["t".into()], culprit: Some(culprit), ..task_info() };
    round_trip(&DispatcherToClient::Task(Some(Box::new(flaky_task))));
}

#[test]
fn manager_messages_golden() {
    let pools = ManagerToDispatcher::Pools(vec![PoolReport {
        name: Name::new("p").unwrap(),
        labels: vec![Label::new("a").unwrap()],
        min: 0,
        max: 10,
        runners: vec![Name::new("p-1").unwrap()],
    }]);
    assert_eq!(round_trip(&pools), "00 01 0170 01 0161 00 0a 01 03702d31".replace(' ', ""));
    let drain = ManagerToDispatcher::Drain(Name::new("p-1").unwrap());
    assert_eq!(round_trip(&drain), "01 03702d31".replace(' ', ""));
    let load = DispatcherToManager::Load(Load {
        pending: vec![PendingGroup { labels: vec![], count: 3 }],
        runners: vec![RunnerLoad {
            name: Name::new("p-1").unwrap(),
            labels: vec![Label::new("a").unwrap()],
            state: LoadState::Draining,
        }],
    });
    assert_eq!(round_trip(&load), "00 01 00 03 01 03702d31 01 0161 02".replace(' ', ""));
    let drained = DispatcherToManager::Drained(Drained {
        runner: Name::new("p-1").unwrap(),
        drained: false,
        reason: Some("b".into()),
    });
    assert_eq!(round_trip(&drained), "01 03702d31 00 01 0162".replace(' ', ""));
    assert_eq!(round_trip(&ClientToDispatcher::Pools), "0b");
    let info = DispatcherToClient::Pools(vec![PoolInfo {
        name: Name::new("p").unwrap(),
        labels: vec![],
        min: 1,
        max: 2,
        size: 2,
        busy: 1,
        pending: 0,
        runners: vec![],
    }]);
    assert_eq!(round_trip(&info), "0c 01 0170 00 01 02 02 01 00 00".replace(' ', ""));
}

fn hex(text: &str) -> String {
    let mut out = format!("{:02x}", text.len());
    for byte in text.bytes() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[test]
fn deployment_messages_golden() {
    let request =
        || DeploymentRequest { repo: RepoUrl::new("/r").unwrap(), version: 3, env: Name::new("p").unwrap() };
    let requests = [
        (ClientToDispatcher::Deploy(request()), "0c 022f72 03 0170"),
        (ClientToDispatcher::Approve(request()), "0d 022f72 03 0170"),
        (
            ClientToDispatcher::Reject(RejectRequest {
                repo: RepoUrl::new("/r").unwrap(),
                version: 3,
                env: Name::new("p").unwrap(),
                reason: "x".into(),
            }),
            "0e 022f72 03 0170 0178",
        ),
        (ClientToDispatcher::Deployments(DeploymentQuery { repo: None, env: None }), "0f 00 00"),
        (
            ClientToDispatcher::RollbackEnv(EnvRollbackRequest {
                repo: RepoUrl::new("/r").unwrap(),
                env: Name::new("p").unwrap(),
                to: None,
            }),
            "10 022f72 0170 00",
        ),
    ];
    for (message, expected) in requests {
        assert_eq!(round_trip(&message), expected.replace(' ', ""), "{message:?}");
    }
    let deployment = DeploymentInfo {
        id: 1,
        repo: RepoUrl::new("/r").unwrap(),
        version: 3,
        commit: commit(),
        environment: Name::new("p").unwrap(),
        state: DeploymentState::Canary,
        kind: ReleaseKind::Release,
        waiting_for: None,
        requested_by: "b".into(),
        approved_by: Some("a".into()),
        approved_at_ms: Some(1),
        reason: None,
        hosts: vec![DeploymentHost {
            name: Name::new("h").unwrap(),
            canary: true,
            state: HostState::Deploying,
            task_id: Some(task_id()),
        }],
        created_at_ms: 1,
        started_at_ms: None,
        finished_at_ms: None,
    };
    assert_eq!(
        round_trip(&DispatcherToClient::Deployment(Box::new(deployment.clone()))),
        format!(
            "0e 02 022f72 03 {} 0170 01 00 00 0162 010161 0102 00 01 0168 01 01 010e 02 00 00",
            hex(commit().as_str())
        )
        .replace(' ', "")
    );
    round_trip(&DispatcherToClient::Deployments(vec![deployment]));
    let job = Job::DeployHost(DeployHost {
        deploy: Deploy { release: "r1".into(), previous_commit: None, steps: vec![] },
        environment: Name::new("p").unwrap(),
        host: Name::new("h").unwrap(),
    });
    assert_eq!(round_trip(&job), "02 027231 00 00 0170 0168".replace(' ', ""));
}
