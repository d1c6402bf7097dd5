//! The whole runner, in-process, against a fake dispatcher that speaks the
//! real protocol: registration, output and results, reconnecting and
//! resuming, recovery after a restart, abort, and draining.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use protocol::message::Outcome;
use protocol::message::{
    Abort, Assign, DispatcherToRunner, Held, Output, Ping, Pong, Registered, ResultAck, Resume,
    RunnerToDispatcher, Summary, TaskResult,
};
use protocol::{Branch, CommitId, Connection, RepoUrl, TaskId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::Cli;
use crate::spool::{AttemptKey, Finished, Spool};
use crate::Config;

/// Longest wait for anything in these tests.
const WAIT: Duration = Duration::from_secs(20);

type DispatcherSide = Connection<RunnerToDispatcher, DispatcherToRunner>;

struct Dispatcher {
    listener: TcpListener,
}

impl Dispatcher {
    async fn bind() -> Dispatcher {
        Dispatcher { listener: TcpListener::bind("127.0.0.1:0").await.unwrap() }
    }

    fn address(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    async fn accept(&self) -> DispatcherSide {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept()).await.unwrap().unwrap();
        let (connection, admitted) =
            protocol::handshake::accept(stream, None, None, protocol::MAX_FRAME).await.unwrap();
        assert_eq!(admitted.name.as_str(), "test-runner");
        connection
    }
}

/// The next message that is not a pong.
async fn recv(connection: &mut DispatcherSide) -> RunnerToDispatcher {
    loop {
        let message = tokio::time::timeout(WAIT, connection.recv()).await.expect("timed out").unwrap();
        match message.expect("connection closed") {
            RunnerToDispatcher::Pong(_) | RunnerToDispatcher::SlotFreed(_) => continue,
            message => return message,
        }
    }
}

/// Registers, answering with `registered`; returns what the runner held.
async fn register(connection: &mut DispatcherSide, registered: Registered) -> Vec<Held> {
    let RunnerToDispatcher::Register(register) = recv(connection).await else { panic!("no register") };
    connection.send(&DispatcherToRunner::Registered(registered)).await.unwrap();
    register.held
}

/// Collects output until the result, checking that offsets are contiguous
/// from `offset`.
async fn until_result(connection: &mut DispatcherSide, mut offset: u64) -> (Vec<u8>, TaskResult) {
    let mut bytes = Vec::new();
    loop {
        match recv(connection).await {
            RunnerToDispatcher::Output(Output { offset: at, data, .. }) => {
                assert_eq!(at, offset);
                offset += data.len() as u64;
                bytes.extend_from_slice(&data);
            }
            RunnerToDispatcher::Result(result) => return (bytes, result),
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A repository whose `.baton.toml` runs `command`; returns its location and commit.
fn repo_with_command(dir: &Path, command: &str) -> (RepoUrl, CommitId) {
    git(dir, &["init", "-q"]);
    let toml = format!("[test]\ncommand = {:?}\ntimeout = \"60s\"\n", command);
    std::fs::write(dir.join(".baton.toml"), toml).unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "test"]);
    (RepoUrl::new(dir.to_str().unwrap()).unwrap(), CommitId::new(git(dir, &["rev-parse", "HEAD"])).unwrap())
}

fn config(dispatcher: &Dispatcher, work_dir: &Path, extra: &[&str]) -> Config {
    let args = ["baton-runner", "--dispatcher", &dispatcher.address(), "--name", "test-runner", "--work-dir"];
    let args = args.into_iter().chain([work_dir.to_str().unwrap()]).chain(extra.iter().copied());
    Config::from_cli(<Cli as clap::Parser>::try_parse_from(args).unwrap()).unwrap()
}

fn assignment(task_id: i64, repo: &RepoUrl, commit: &CommitId) -> Assign {
    Assign {
        task_id: TaskId::new(task_id).unwrap(),
        attempt: 1,
        repo: repo.clone(),
        branch: Branch::new("main").unwrap(),
        commit: commit.clone(),
        job: protocol::message::Job::Test,
    }
}

fn assign(task_id: i64, repo: &RepoUrl, commit: &CommitId) -> DispatcherToRunner {
    DispatcherToRunner::Assign(assignment(task_id, repo, commit))
}

fn key(task_id: i64) -> AttemptKey {
    AttemptKey { task_id: TaskId::new(task_id).unwrap(), attempt: 1 }
}

fn ack(task_id: i64) -> DispatcherToRunner {
    DispatcherToRunner::ResultAck(ResultAck {
        task_id: TaskId::new(task_id).unwrap(),
        attempt: 1,
        accepted: true,
        reason: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_an_assignment_and_delivers_its_output_and_result() {
    let origin = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let script = "printf 'a:b\\000\\377\\n'; echo '3 passed, 1 failed' >&2; exit 1";
    let (repo, commit) = repo_with_command(origin.path(), script);
    let dispatcher = Dispatcher::bind().await;
    let stop = CancellationToken::new();
    let runner =
        tokio::spawn(crate::run(config(&dispatcher, work.path(), &["--labels", "linux"]), stop.clone()));

    let mut connection = dispatcher.accept().await;
    let RunnerToDispatcher::Register(register) = recv(&mut connection).await else { panic!("no register") };
    assert_eq!((register.slots, register.held.len(), register.labels[0].as_str()), (1, 0, "linux"));
    assert_eq!(register.host.os, std::env::consts::OS);
    connection
        .send(&DispatcherToRunner::Registered(Registered {
            resume: vec![],
            forget: vec![],
            heartbeat_interval_ms: 1000,
            heartbeat_misses: 3,
        }))
        .await
        .unwrap();
    connection.send(&DispatcherToRunner::Ping(Ping { seq: 7 })).await.unwrap();
    let pong = tokio::time::timeout(WAIT, connection.recv()).await.unwrap().unwrap();
    assert_eq!(pong, Some(RunnerToDispatcher::Pong(Pong { seq: 7 })));

    connection.send(&assign(1, &repo, &commit)).await.unwrap();
    let (output, result) = until_result(&mut connection, 0).await;
    // stdout and stderr are read concurrently: each line is intact, in either order.
    let mut lines: Vec<&[u8]> = output.split_inclusive(|byte| *byte == b'\n').collect();
    lines.sort();
    assert_eq!(lines, [&b"3 passed, 1 failed\n"[..], &b"a:b\0\xff\n"[..]]);
    assert_eq!((result.outcome, result.exit_code, result.reason), (Outcome::Failed, Some(1), None));
    assert_eq!(result.summary, Some(Summary { passed: 3, failed: 1, skipped: 0 }));
    assert_eq!(result.output_len, output.len() as u64);
    assert!(work.path().join("spool/1-1/result.json").exists());

    connection.send(&ack(1)).await.unwrap();
    wait_until("the spool entry is deleted", || !work.path().join("spool/1-1").exists()).await;
    assert!(!work.path().join("tasks/1-1").exists());

    // A commit that does not exist ends in an error, and the runner goes on.
    let missing = CommitId::new("0123456789abcdef0123456789abcdef01234567").unwrap();
    connection.send(&assign(2, &repo, &missing)).await.unwrap();
    let (_, result) = until_result(&mut connection, 0).await;
    assert_eq!(result.outcome, Outcome::Error);
    assert_eq!(result.reason, Some(format!("commit {missing} not found in {repo}")));
    connection.send(&ack(2)).await.unwrap();
    connection.send(&assign(3, &repo, &commit)).await.unwrap();
    let (_, result) = until_result(&mut connection, 0).await;
    assert_eq!(result.exit_code, Some(1));
    connection.send(&ack(3)).await.unwrap();

    stop.cancel();
    assert_eq!(recv(&mut connection).await, RunnerToDispatcher::Draining);
    tokio::time::timeout(WAIT, runner).await.unwrap().unwrap().unwrap();
    assert!(std::fs::read_dir(work.path().join("spool")).unwrap().next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_keeps_running_across_a_reconnect_and_resumes_at_the_offset() {
    let origin = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let go = work.path().join("go");
    let script = format!("echo first; while [ ! -e '{}' ]; do sleep 0.05; done; echo second", go.display());
    let (repo, commit) = repo_with_command(origin.path(), &script);
    let dispatcher = Dispatcher::bind().await;
    let stop = CancellationToken::new();
    let runner = tokio::spawn(crate::run(config(&dispatcher, work.path(), &[]), stop.clone()));

    let mut connection = dispatcher.accept().await;
    assert!(register(
        &mut connection,
        Registered { resume: vec![], forget: vec![], heartbeat_interval_ms: 1000, heartbeat_misses: 3 }
    )
    .await
    .is_empty());
    connection.send(&assign(1, &repo, &commit)).await.unwrap();
    let RunnerToDispatcher::Output(first) = recv(&mut connection).await else { panic!("no output") };
    assert_eq!((first.offset, first.data.as_slice()), (0, &b"first\n"[..]));
    drop(connection);

    let mut connection = dispatcher.accept().await;
    let resume = Resume { task_id: TaskId::new(1).unwrap(), attempt: 1, output_offset: 6 };
    let held = register(
        &mut connection,
        Registered { resume: vec![resume], forget: vec![], heartbeat_interval_ms: 1000, heartbeat_misses: 3 },
    )
    .await;
    assert_eq!(held, [Held { task_id: TaskId::new(1).unwrap(), attempt: 1 }]);
    std::fs::write(&go, "").unwrap();
    let (output, result) = until_result(&mut connection, 6).await;
    assert_eq!(output, b"second\n");
    assert_eq!((result.outcome, result.output_len), (Outcome::Passed, 13));
    connection.send(&ack(1)).await.unwrap();
    wait_until("the spool entry is deleted", || !work.path().join("spool/1-1").exists()).await;

    stop.cancel();
    tokio::time::timeout(WAIT, runner).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_abort_and_an_abandoning_drain() {
    let origin = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (repo, commit) = repo_with_command(origin.path(), "echo running; sleep 600");
    // What a previous runner process left: a finished attempt and one that
    // was running when it died.
    let spool = Spool::open(work.path()).unwrap();
    for task_id in [5, 6] {
        spool.create(&assignment(task_id, &repo, &commit), 1024).unwrap();
    }
    spool.write_result(key(5), &Finished::error("earlier", 1, 0)).unwrap();
    let dispatcher = Dispatcher::bind().await;
    let stop = CancellationToken::new();
    let config = config(&dispatcher, work.path(), &["--drain-timeout", "1s", "--slots", "2"]);
    let runner = tokio::spawn(crate::run(config, stop.clone()));

    // The dispatcher resumes 6 and names neither: 5 is forgotten.
    let mut connection = dispatcher.accept().await;
    let resume = Resume { task_id: TaskId::new(6).unwrap(), attempt: 1, output_offset: 0 };
    let held = register(
        &mut connection,
        Registered { resume: vec![resume], forget: vec![], heartbeat_interval_ms: 1000, heartbeat_misses: 3 },
    )
    .await;
    assert_eq!(held.len(), 2);
    let (_, result) = until_result(&mut connection, 0).await;
    assert_eq!((result.task_id.get(), result.outcome), (6, Outcome::Error));
    assert_eq!(result.reason.as_deref(), Some(crate::spool::RESTARTED_REASON));
    wait_until("the unnamed attempt is deleted", || !work.path().join("spool/5-1").exists()).await;

    // Abort a running test.
    connection.send(&assign(7, &repo, &commit)).await.unwrap();
    let RunnerToDispatcher::Output(running) = recv(&mut connection).await else { panic!("no output") };
    assert_eq!(running.data, b"running\n");
    let abort = Abort { task_id: TaskId::new(7).unwrap(), attempt: 1 };
    connection.send(&DispatcherToRunner::Abort(abort)).await.unwrap();
    let (_, result) = until_result(&mut connection, 8).await;
    assert_eq!(result.outcome, Outcome::Aborted);

    // Stop while a test runs: it is refused new work, and after the drain
    // timeout the running test is dropped without a result.
    connection.send(&assign(8, &repo, &commit)).await.unwrap();
    let RunnerToDispatcher::Output(_) = recv(&mut connection).await else { panic!("no output") };
    stop.cancel();
    assert_eq!(recv(&mut connection).await, RunnerToDispatcher::Draining);
    connection.send(&assign(9, &repo, &commit)).await.unwrap();
    let (_, result) = until_result(&mut connection, 0).await;
    assert_eq!((result.task_id.get(), result.reason.as_deref()), (9, Some("runner stopping")));
    assert_eq!(result.outcome, Outcome::Refused);
    let closed = loop {
        match tokio::time::timeout(WAIT, connection.recv()).await.unwrap() {
            Ok(Some(RunnerToDispatcher::Result(result))) => panic!("result after abandoning: {result:?}"),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break true,
        }
    };
    assert!(closed);
    tokio::time::timeout(WAIT, runner).await.unwrap().unwrap().unwrap();
    assert!(!work.path().join("spool/8-1").exists(), "abandoned attempts are deleted");
    // Unacknowledged results stay for the next start.
    assert!(work.path().join("spool/6-1/result.json").exists());
    assert!(work.path().join("spool/9-1/result.json").exists());
}
