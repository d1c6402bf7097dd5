//! Running one invocation: connect, send the request, turn the answer into
//! output and an [`Outcome`].
//!
//! This is the only module that pairs a request with the answers it may get;
//! an answer that does not fit the request is an error, never a guess. What
//! the output looks like lives in `render` and `protocol::view`, the connection in
//! `session`, and exit codes in `main`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use protocol::message::{
    Accepted, ClientToDispatcher, CommitQuery, DispatcherToClient, PoolInfo, Selector, TaskInfo,
};
use protocol::view::{self, now_ms};
use protocol::CommitId;

use crate::render::Style;
use crate::request::Invocation;
use crate::session::{Session, ANSWER_TIMEOUT};
use crate::{culprit, log, render};

/// Where output goes and how it will be seen.
pub struct Console<'a> {
    /// Stdout: tables, JSON, log bytes.
    pub out: &'a mut dyn Write,
    /// Stderr: notes and verdicts (errors are `main`'s).
    pub err: &'a mut dyn Write,
    /// Whether stdout is a terminal, and whether to colour.
    pub style: Style,
}

/// How a command ended when nothing went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1 without an error message: `log --follow` of a task that did not
    /// pass (it has said so on stderr).
    Unsuccessful,
}

/// Runs the invocation against the dispatcher.
///
/// # Errors
/// [`crate::session::ConnectionFailed`] when the dispatcher is unreachable or
/// the connection breaks; otherwise the dispatcher's `Error` answer, "no task
/// ..." for a `show` that matched nothing, an answer that does not fit the
/// request, or a failed write to stdout.
pub async fn run(invocation: &Invocation, console: &mut Console<'_>) -> anyhow::Result<Outcome> {
    let mut session = Session::open(&invocation.address, &invocation.credentials).await?;
    let request = match (&invocation.request, &invocation.then_submit) {
        (ClientToDispatcher::Commits(query), Some(rest)) => {
            ClientToDispatcher::Submit(rest.with(resolve_commit(&mut session, query).await?))
        }
        (request, _) => request.clone(),
    };
    session.send(&request).await?;
    if let ClientToDispatcher::Log(request) = &request {
        return log::stream(&mut session, request, console).await;
    }
    let answer = match session.answer(Some(ANSWER_TIMEOUT)).await? {
        DispatcherToClient::Aborted(task) => {
            DispatcherToClient::Aborted(Box::new(wait_aborted(&mut session, *task).await?))
        }
        answer => answer,
    };
    let shows_pools = matches!(
        (&request, &answer),
        (ClientToDispatcher::Status, DispatcherToClient::Status(_))
            | (ClientToDispatcher::Runners, DispatcherToClient::Runners(_))
    );
    let pools = if shows_pools { pools(&mut session).await } else { Vec::new() };
    let tests = match (&answer, invocation.with_tests) {
        (DispatcherToClient::Task(Some(task)), true) => Some(culprit::tests_of(&mut session, task.id).await?),
        _ => None,
    };
    let mut text = present(&request, answer, &pools, invocation.json, console)?;
    if let Some(tests) = tests {
        text = culprit::with_tests(text, &tests, invocation.json, console.style);
    }
    console.out.write_all(text.as_bytes()).and_then(|()| console.out.flush()).context("writing to stdout")?;
    Ok(Outcome::Success)
}

/// The runner managers' pools, shown by `status` and `runners`; none when
/// the dispatcher does not answer the question (the main answer stands).
async fn pools(session: &mut Session) -> Vec<PoolInfo> {
    if session.send(&ClientToDispatcher::Pools).await.is_err() {
        return Vec::new();
    }
    match session.answer(Some(ANSWER_TIMEOUT)).await {
        Ok(DispatcherToClient::Pools(pools)) => pools,
        _ => Vec::new(),
    }
}

/// How long `abort` waits for a running task to end: its runner kills the
/// test's process group at once, so this is ample unless the runner is gone.
const ABORT_WAIT: Duration = Duration::from_secs(3);

/// How often `abort` asks whether the task has ended.
const ABORT_POLL: Duration = Duration::from_millis(50);

/// The task `abort` answered with, or, when it was still running (its
/// runner had been told to stop it), the task as it is once it has ended or
/// [`ABORT_WAIT`] has passed.
///
/// # Errors
/// A broken connection or an answer of the wrong kind.
async fn wait_aborted(session: &mut Session, mut task: TaskInfo) -> anyhow::Result<TaskInfo> {
    let deadline = tokio::time::Instant::now() + ABORT_WAIT;
    while !task.state.is_final() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(ABORT_POLL).await;
        session.send(&ClientToDispatcher::Show(Selector::Id(task.id))).await?;
        match session.answer(Some(ANSWER_TIMEOUT)).await? {
            DispatcherToClient::Task(Some(now)) => task = *now,
            DispatcherToClient::Task(None) => anyhow::bail!("task {} vanished while being aborted", task.id),
            DispatcherToClient::Error(reason) => anyhow::bail!("{reason}"),
            other => return Err(unexpected(&other)),
        }
    }
    Ok(task)
}

/// The one commit of the query's repository that the dispatcher knows by the
/// query's prefix.
///
/// # Errors
/// None or several such commits, the dispatcher's `Error`, or a broken
/// connection.
async fn resolve_commit(session: &mut Session, query: &CommitQuery) -> anyhow::Result<CommitId> {
    session.send(&ClientToDispatcher::Commits(query.clone())).await?;
    let (prefix, repo) = (&query.prefix, &query.repo);
    match session.answer(Some(ANSWER_TIMEOUT)).await? {
        DispatcherToClient::Commits(mut commits) => match commits.len() {
            0 => anyhow::bail!(
                "no task of {repo} has a commit starting with {prefix}, and the repository is not readable \
                 here: give the full commit id"
            ),
            1 => Ok(commits.remove(0)),
            _ => {
                let listed: Vec<&str> = commits.iter().map(CommitId::as_str).collect();
                anyhow::bail!(
                    "commit {prefix} is ambiguous in {repo}: {}; give more digits",
                    listed.join(", ")
                )
            }
        },
        DispatcherToClient::Error(reason) => anyhow::bail!("{reason}"),
        other => Err(unexpected(&other)),
    }
}

/// The text for stdout, for every request but `Log`.
fn present(
    request: &ClientToDispatcher,
    answer: DispatcherToClient,
    pools: &[PoolInfo],
    as_json: bool,
    console: &mut Console<'_>,
) -> anyhow::Result<String> {
    let style = console.style;
    let json_text = |value: serde_json::Value| json_to_text(&value, style.terminal) + "\n";
    let text = match (request, answer) {
        (_, DispatcherToClient::Error(reason)) => anyhow::bail!(reason),
        (ClientToDispatcher::Status, DispatcherToClient::Status(report)) => {
            if as_json {
                let mut value = view::status(&report);
                value["pools"] = pools.iter().map(view::pool).collect();
                json_text(value)
            } else {
                render::status(&report, pools, style)
            }
        }
        (ClientToDispatcher::Runners, DispatcherToClient::Runners(runners)) => {
            let pool_of = view::pool_of_runners(pools);
            if as_json {
                let with_pool = |runner| {
                    let mut value = view::runner(runner);
                    value["pool"] = pool_of.get(&runner.name).map(|pool| pool.as_str()).into();
                    value
                };
                json_text(runners.iter().map(with_pool).collect())
            } else {
                render::runners(&runners, &pool_of, now_ms(), style)
            }
        }
        (ClientToDispatcher::Tasks(_), DispatcherToClient::Tasks(tasks)) => {
            if as_json {
                json_text(tasks.iter().map(view::task).collect())
            } else {
                render::tasks(&tasks, now_ms(), style)
            }
        }
        (ClientToDispatcher::Show(selector), DispatcherToClient::Task(found)) => {
            let Some(task) = found else {
                match selector {
                    Selector::Id(id) => anyhow::bail!("no task with id {id}"),
                    Selector::Commit(commit) => anyhow::bail!("no task for commit {commit}"),
                }
            };
            if as_json {
                json_text(view::task(&task))
            } else {
                render::task(&task, now_ms(), style)
            }
        }
        (ClientToDispatcher::Abort(_), DispatcherToClient::Aborted(task)) => {
            // Said on stderr in both modes: a `running` task would otherwise
            // read as an abort that failed.
            let _ = if task.state.is_final() {
                writeln!(console.err, "task {} {}", task.id, task.state)
            } else {
                writeln!(
                    console.err,
                    "aborting: task {} is still {}; it ends aborted once its runner has stopped it",
                    task.id, task.state
                )
            };
            if as_json {
                json_text(view::task(&task))
            } else {
                render::task(&task, now_ms(), style)
            }
        }
        (
            ClientToDispatcher::Submit(_) | ClientToDispatcher::Rerun(_),
            DispatcherToClient::Accepted(accepted),
        ) => {
            if as_json {
                json_text(view::accepted(&accepted))
            } else {
                note_duplicate(&accepted, console);
                format!("{}\n", accepted.task_id)
            }
        }
        (ClientToDispatcher::Releases(_), DispatcherToClient::Releases(releases)) => {
            if as_json {
                json_text(releases.iter().map(view::release).collect())
            } else {
                render::releases(&releases, now_ms(), style)
            }
        }
        (ClientToDispatcher::Flaky(_), DispatcherToClient::Flaky(tests)) => {
            if as_json {
                json_text(tests.iter().map(view::flaky_test).collect())
            } else {
                culprit::flaky(&tests, now_ms(), style)
            }
        }
        (ClientToDispatcher::Rollback(_), DispatcherToClient::Release(release)) => {
            if as_json {
                json_text(view::release(&release))
            } else {
                render::releases(std::slice::from_ref(&release), now_ms(), style)
            }
        }
        (request, other) => match crate::deploy::present(request, &other, as_json, now_ms(), style) {
            Some(text) => text,
            None => return Err(unexpected(&other)),
        },
    };
    Ok(text)
}

/// Stdout carries only the id, for `id=$(baton submit ...)`; a duplicate is
/// worth telling the person.
fn note_duplicate(accepted: &Accepted, console: &mut Console<'_>) {
    if accepted.duplicate {
        let _ = writeln!(
            console.err,
            "note: task {} already existed for this repository and commit",
            accepted.task_id
        );
    }
}

/// The text printed for a JSON value: indented for a person at a terminal,
/// one line for a pipe (one object or array per line suits `jq` and `grep`
/// alike).
fn json_to_text(value: &serde_json::Value, pretty: bool) -> String {
    let text = if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) };
    // Serialising a `Value` cannot fail: its map keys are always strings.
    text.expect("a serde_json::Value always serialises")
}

/// The error for an answer that does not belong to the request sent: a
/// dispatcher of another version, or a bug in one of the two.
pub fn unexpected(answer: &DispatcherToClient) -> anyhow::Error {
    // Named, not `{:?}`-printed: a log chunk can be megabytes.
    let kind = match answer {
        DispatcherToClient::Status(_) => "Status",
        DispatcherToClient::Runners(_) => "Runners",
        DispatcherToClient::Tasks(_) => "Tasks",
        DispatcherToClient::Task(_) => "Task",
        DispatcherToClient::Accepted(_) => "Accepted",
        DispatcherToClient::Aborted(_) => "Aborted",
        DispatcherToClient::LogChunk(_) => "LogChunk",
        DispatcherToClient::LogEnd(_) => "LogEnd",
        DispatcherToClient::Error(_) => "Error",
        DispatcherToClient::Releases(_) => "Releases",
        DispatcherToClient::Release(_) => "Release",
        DispatcherToClient::Commits(_) => "Commits",
        DispatcherToClient::Pools(_) => "Pools",
        DispatcherToClient::Deployments(_) => "Deployments",
        DispatcherToClient::Deployment(_) => "Deployment",
        DispatcherToClient::TestCases(_) => "TestCases",
        DispatcherToClient::Flaky(_) => "Flaky",
    };
    anyhow::anyhow!("unexpected answer from the dispatcher: {kind}")
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use protocol::handshake::Role;
    use protocol::message::{ManualSubmit, TaskInfo};
    use protocol::view::fixtures;
    use protocol::{Branch, CommitPrefix, Label, RepoUrl, Secret, TaskId, TaskState};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::cli::Cli;
    use crate::session::ConnectionFailed;

    /// A dispatcher that admits one client, reads one request, sends the
    /// canned answers and closes; it hands back the request it read.
    async fn fake_dispatcher(
        secret: Option<Secret>,
        answers: Vec<DispatcherToClient>,
    ) -> (String, JoinHandle<ClientToDispatcher>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut connection, admitted) = protocol::handshake::accept::<
                ClientToDispatcher,
                DispatcherToClient,
            >(stream, secret.as_ref(), None, protocol::MAX_FRAME)
            .await
            .unwrap();
            assert_eq!(admitted.role, Role::Client);
            assert_eq!(admitted.name.as_str(), "baton");
            assert_eq!(admitted.authenticated, secret.is_some());
            let request = connection.recv().await.unwrap().expect("a request");
            for answer in &answers {
                connection.send(answer).await.unwrap();
            }
            request
        });
        (address, server)
    }

    /// What one run of the client did.
    struct Ran {
        result: anyhow::Result<Outcome>,
        stdout: Vec<u8>,
        stderr: String,
        request: ClientToDispatcher,
    }

    impl Ran {
        fn stdout(&self) -> &str {
            std::str::from_utf8(&self.stdout).unwrap()
        }

        fn error(&self) -> String {
            format!("{:#}", self.result.as_ref().unwrap_err())
        }
    }

    async fn run_client(args: &[&str], answers: Vec<DispatcherToClient>) -> Ran {
        run_client_with_secret(args, None, answers).await
    }

    async fn run_client_with_secret(
        args: &[&str],
        secret: Option<Secret>,
        answers: Vec<DispatcherToClient>,
    ) -> Ran {
        let (address, server) = fake_dispatcher(secret, answers).await;
        let argv = ["baton", "--dispatcher", &address].into_iter().chain(args.iter().copied());
        let invocation =
            Invocation::from_cli(Cli::try_parse_from(argv).unwrap(), std::path::Path::new("/")).unwrap();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut console = Console { out: &mut stdout, err: &mut stderr, style: Style::PLAIN };
        let result = run(&invocation, &mut console).await;
        let request = server.await.unwrap();
        Ran { result, stdout, stderr: String::from_utf8(stderr).unwrap(), request }
    }

    fn task(id: i64, state: TaskState) -> Box<TaskInfo> {
        Box::new(TaskInfo { id: TaskId::new(id).unwrap(), state, ..fixtures::task_info() })
    }

    #[tokio::test]
    async fn show_json_prints_the_task_object() {
        let ran = run_client(
            &["show", "7", "--json"],
            vec![DispatcherToClient::Task(Some(task(7, TaskState::Failed)))],
        )
        .await;
        assert_eq!(ran.request, ClientToDispatcher::Show(Selector::Id(TaskId::new(7).unwrap())));
        assert_eq!(*ran.result.as_ref().unwrap(), Outcome::Success);
        let printed: serde_json::Value = serde_json::from_str(ran.stdout()).unwrap();
        assert_eq!(printed, view::task(&fixtures::task_info()));
        assert!(ran.stdout().ends_with("}\n") && ran.stdout().lines().count() == 1, "{}", ran.stdout());
    }

    #[tokio::test]
    async fn show_of_an_unknown_commit_fails() {
        let ran = run_client(&["show", "1234567"], vec![DispatcherToClient::Task(None)]).await;
        assert_eq!(
            ran.request,
            ClientToDispatcher::Show(Selector::Commit(CommitPrefix::new("1234567").unwrap()))
        );
        assert_eq!(ran.error(), "no task for commit 1234567");
        assert!(ran.stdout.is_empty());
    }

    #[tokio::test]
    async fn submit_sends_checked_values_and_prints_the_id() {
        let accepted = Accepted { task_id: TaskId::new(41).unwrap(), duplicate: false };
        let args = ["submit", "/srv/app.git", fixtures::COMMIT, "--branch", "dev", "--label", "gpu"];
        let ran = run_client(&args, vec![DispatcherToClient::Accepted(accepted.clone())]).await;
        assert_eq!(
            ran.request,
            ClientToDispatcher::Submit(ManualSubmit {
                repo: RepoUrl::new("/srv/app.git").unwrap(),
                branch: Branch::new("dev").unwrap(),
                commit: CommitId::new(fixtures::COMMIT).unwrap(),
                labels: vec![Label::new("gpu").unwrap()],
            })
        );
        assert_eq!(ran.stdout(), "41\n");
        assert_eq!(ran.stderr, "");

        let duplicate = Accepted { duplicate: true, ..accepted };
        let ran = run_client(&["rerun", "40", "--json"], vec![DispatcherToClient::Accepted(duplicate)]).await;
        assert_eq!(ran.request, ClientToDispatcher::Rerun(TaskId::new(40).unwrap()));
        assert_eq!(ran.stdout(), "{\"duplicate\":true,\"id\":41}\n");
    }

    #[tokio::test]
    async fn an_error_answer_is_an_error() {
        let ran =
            run_client(&["abort", "7"], vec![DispatcherToClient::Error("task 7 already ended".into())]).await;
        assert_eq!(ran.request, ClientToDispatcher::Abort(TaskId::new(7).unwrap()));
        assert_eq!(ran.error(), "task 7 already ended");
        assert!(ran.stdout.is_empty());
    }

    #[tokio::test]
    async fn an_answer_of_the_wrong_kind_is_refused() {
        let ran = run_client(&["status"], vec![DispatcherToClient::Runners(vec![])]).await;
        assert_eq!(ran.error(), "unexpected answer from the dispatcher: Runners");
    }

    #[tokio::test]
    async fn a_dispatcher_that_hangs_up_is_a_connection_failure() {
        let ran = run_client(&["runners"], vec![]).await;
        let err = ran.result.unwrap_err();
        assert!(err.downcast_ref::<ConnectionFailed>().is_some(), "{err:#}");
        assert!(format!("{err:#}").ends_with(": the dispatcher closed the connection"), "{err:#}");
    }

    #[tokio::test]
    async fn log_copies_bytes_exactly_and_follow_reports_the_end() {
        let chunks = [b"line 1\n".to_vec(), vec![0, 0xff, b':', b'\n', 0xc3], vec![0xa9, b'x']];
        let mut answers: Vec<DispatcherToClient> =
            chunks.iter().cloned().map(DispatcherToClient::LogChunk).collect();
        answers.push(DispatcherToClient::LogEnd(task(7, TaskState::Failed)));
        let ran = run_client(&["log", "7", "--follow"], answers.clone()).await;
        assert_eq!(
            ran.request,
            ClientToDispatcher::Log(protocol::message::LogRequest {
                task_id: TaskId::new(7).unwrap(),
                follow: true
            })
        );
        assert_eq!(ran.stdout, chunks.concat());
        assert_eq!(ran.stderr, "task 7 ended: failed\n");
        assert_eq!(*ran.result.as_ref().unwrap(), Outcome::Unsuccessful);

        *answers.last_mut().unwrap() = DispatcherToClient::LogEnd(task(7, TaskState::Passed));
        let ran = run_client(&["log", "7", "--follow"], answers.clone()).await;
        assert_eq!(*ran.result.as_ref().unwrap(), Outcome::Success);
        assert_eq!(ran.stderr, "task 7 ended: passed\n");

        *answers.last_mut().unwrap() = DispatcherToClient::LogEnd(task(7, TaskState::Running));
        let ran = run_client(&["log", "7"], answers).await;
        assert_eq!(ran.stdout, chunks.concat());
        assert_eq!(ran.stderr, "");
        assert_eq!(*ran.result.as_ref().unwrap(), Outcome::Success);
    }

    #[tokio::test]
    async fn the_token_file_authenticates() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let secret = Secret::new(b"s3cret".to_vec()).unwrap();
        let report = fixtures::status_report();
        let token_arg = token.to_str().unwrap();
        let ran = run_client_with_secret(
            &["status", "--token-file", token_arg],
            Some(secret),
            vec![DispatcherToClient::Status(report)],
        )
        .await;
        assert_eq!(ran.request, ClientToDispatcher::Status);
        assert!(ran.stdout().starts_with("version: 0.1.0\n"), "{}", ran.stdout());
    }

    #[test]
    fn json_is_pretty_at_a_terminal_and_one_line_in_a_pipe() {
        let value = serde_json::json!({ "id": 4, "duplicate": true });
        assert_eq!(json_to_text(&value, false), r#"{"duplicate":true,"id":4}"#);
        assert_eq!(json_to_text(&value, true), "{\n  \"duplicate\": true,\n  \"id\": 4\n}");
    }
}
