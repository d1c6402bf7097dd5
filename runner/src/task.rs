//! One attempt from assignment to result: fetch and check out the commit,
//! resolve the test command, run it (see `exec`), and turn how it ended into
//! the result reported to the dispatcher, test counts included.
//!
//! Control messages that arrive while the commit is being fetched are obeyed
//! here; once the test runs, `exec` obeys them. This module does not own the
//! attempt's lifetime or its files (see `attempts`) and does not talk to the
//! dispatcher.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use protocol::message::{Assign, Job, Outcome};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use crate::attempts::{Control, Progress, Shared};
use crate::command::TestCommand;
use crate::exec::{self, StopCause, Supervised};
use crate::spool::{AttemptKey, Finished, OutputLog};
use crate::{command, git, outcomes, summary};

/// How long reading the repository's tags again may delay a passed result.
const TAG_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How an attempt ended.
#[derive(Debug)]
pub enum Ending {
    /// With a result to report.
    Finished(Finished),
    /// Without one: the dispatcher took it away, or the runner abandoned it.
    Discarded,
}

/// Runs one attempt to its end. `log` is the attempt's output log, or why
/// its spool entry could not be created; then the attempt ends in an error
/// at once.
pub async fn execute(
    shared: &Shared,
    assign: &Assign,
    log: anyhow::Result<OutputLog>,
    progress: &watch::Sender<Progress>,
    control: &mut mpsc::Receiver<Control>,
) -> Ending {
    let started = Instant::now();
    let elapsed_ms = || started.elapsed().as_millis() as u64;
    let mut log = match log {
        Ok(log) => log,
        Err(err) => return Ending::Finished(Finished::error(format!("{err:#}"), elapsed_ms(), 0)),
    };
    let key = AttemptKey::of(assign);
    let tree = shared.spool.tree(key);
    let interrupt = Arc::new(AtomicBool::new(false));
    let prepare = prepare(shared, assign, &tree, interrupt.clone());
    tokio::pin!(prepare);
    let prepared = loop {
        tokio::select! {
            prepared = &mut prepare => break prepared,
            Some(control) = control.recv() => {
                // gix checks the flag and stops; the fetch keeps its mirror's
                // lock until it has, so the mirror stays consistent.
                match control {
                    Control::Abort => {
                        interrupt.store(true, Ordering::Relaxed);
                        return Ending::Finished(aborted(elapsed_ms(), 0));
                    }
                    Control::Forget { .. } | Control::Abandon => {
                        interrupt.store(true, Ordering::Relaxed);
                        return Ending::Discarded;
                    }
                    Control::Ack { .. } => tracing::warn!("acknowledgement for a running attempt ignored"),
                }
            }
        }
    };
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(reason) => return Ending::Finished(Finished::error(reason, elapsed_ms(), 0)),
    };
    let env = environment(assign);
    let mut ending = Ending::Discarded;
    for (step, command) in &prepared.steps {
        if let Some(step) = step {
            let header = format!("==> {step}\n");
            if let Err(err) = log.append(header.as_bytes()) {
                return Ending::Finished(Finished::error(
                    format!("writing the output: {err}"),
                    elapsed_ms(),
                    0,
                ));
            }
            progress.send_modify(|progress| progress.written = log.written());
        }
        tracing::info!(step = ?step, source = ?command.source, program = ?command.program, "starting");
        let mut process = match exec::spawn(command, &tree, &env) {
            Ok(process) => process,
            Err(err) => {
                let reason = format!("starting the command: {err:#}");
                return Ending::Finished(Finished::error(reason, elapsed_ms(), log.written()));
            }
        };
        if let Err(err) = shared.spool.write_pgid(key, process.pgid) {
            tracing::warn!(error = %format!("{err:#}"), "cannot record the test's process group");
        }
        let supervised =
            match exec::supervise(&mut process, command.timeout, &mut log, progress, control).await {
                Ok(supervised) => supervised,
                Err(err) => {
                    let reason = format!("waiting for the command: {err:#}");
                    return Ending::Finished(Finished::error(reason, elapsed_ms(), log.written()));
                }
            };
        ending = classify(supervised, elapsed_ms(), log.written());
        match &mut ending {
            Ending::Finished(finished) if finished.outcome == Outcome::Passed => {}
            Ending::Finished(finished) => {
                finished.failed_step = step.clone();
                break;
            }
            Ending::Discarded => break,
        }
    }
    let output_len = log.written();
    let tail = read_tail(&shared.spool.output_path(key), output_len).await;
    if let Ending::Finished(finished) = &mut ending {
        let tests = matches!(assign.job, Job::Test).then_some(shared.config.max_test_names);
        (finished.summary, finished.tests) = read_output(tail, tree.clone(), tests).await;
        if finished.outcome == Outcome::Passed && matches!(assign.job, Job::Test) {
            finished.tag = fresh_tag(shared, assign, prepared.mirror).await;
        }
    }
    ending
}

/// What an attempt runs once its tree is checked out: the test command, or
/// the deploy steps by name; and the mirror the tree was cloned from.
struct Prepared {
    steps: Vec<(Option<String>, TestCommand)>,
    mirror: PathBuf,
}

/// The tag on the commit of a passed test, read after fetching the
/// repository's tags again: a release is recorded from this result, and its
/// tag is often pushed just after the commit (issue 13). When the fetch
/// fails, the cache's tags are still the best answer.
async fn fresh_tag(shared: &Shared, assign: &Assign, mirror: PathBuf) -> Option<protocol::Branch> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let refresh = shared.cache.refresh_tags(&assign.repo, interrupt.clone());
    match tokio::time::timeout(TAG_FETCH_TIMEOUT, refresh).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %format!("{err:#}"), "cannot fetch tags; using the cached ones")
        }
        Err(_) => {
            // gix sees the flag and gives up; the result is not held back.
            interrupt.store(true, Ordering::Relaxed);
            tracing::warn!(timeout = ?TAG_FETCH_TIMEOUT, "fetching tags timed out; using the cached ones");
        }
    }
    git::tag_of(mirror, &assign.commit).await
}

/// Fetches, checks out and resolves the test command. Errors are the reason
/// reported to the dispatcher.
async fn prepare(
    shared: &Shared,
    assign: &Assign,
    tree: &Path,
    interrupt: Arc<AtomicBool>,
) -> Result<Prepared, String> {
    if matches!(assign.job, Job::Deploy(_))
        && !shared.config.labels.iter().any(|label| label.as_str() == "deploy")
    {
        return Err("this runner has no deploy label and runs no deploy steps".into());
    }
    if let Job::DeployHost(host) = &assign.job {
        if host.host != shared.config.name {
            return Err(format!("deploy steps for host {} reached runner {}", host.host, shared.config.name));
        }
    }
    let started = Instant::now();
    let mirror = match shared.cache.fetch(&assign.repo, &assign.commit, interrupt.clone()).await {
        Ok(Some(mirror)) => mirror,
        Ok(None) => return Err(format!("commit {} not found in {}", assign.commit, assign.repo)),
        Err(err) => return Err(format!("{err:#}")),
    };
    let fetched = started.elapsed();
    git::checkout(&mirror, &assign.commit, &assign.branch, tree, interrupt)
        .await
        .map_err(|err| format!("{err:#}"))?;
    tracing::debug!(
        fetch_ms = fetched.as_secs_f64() * 1e3,
        checkout_ms = (started.elapsed() - fetched).as_secs_f64() * 1e3,
        "tree ready"
    );
    match &assign.job {
        Job::Test => {
            let command =
                command::resolve(tree, shared.config.test_command.as_deref(), shared.config.timeout)
                    .map_err(|err| format!("{err:#}"))?;
            Ok(Prepared { steps: vec![(None, command)], mirror })
        }
        Job::Deploy(deploy) | Job::DeployHost(protocol::message::DeployHost { deploy, .. }) => {
            // The steps are the dispatcher operator's configuration; the
            // release and commits reach them only as environment variables.
            let steps = deploy
                .steps
                .iter()
                .map(|step| {
                    let command = TestCommand {
                        program: command::Program::Shell(step.command.clone()),
                        timeout: shared.config.timeout,
                        source: command::Source::Dispatcher,
                    };
                    (Some(step.name.clone()), command)
                })
                .collect();
            Ok(Prepared { steps, mirror })
        }
    }
}

fn aborted(duration_ms: u64, output_len: u64) -> Finished {
    Finished {
        outcome: Outcome::Aborted,
        exit_code: None,
        duration_ms,
        summary: None,
        reason: Some("aborted by the dispatcher".into()),
        output_len,
        tag: None,
        failed_step: None,
        tests: Vec::new(),
    }
}

/// Turns how the process ended into the attempt's result.
fn classify(supervised: Supervised, duration_ms: u64, output_len: u64) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    let failed = |exit_code, reason: String| Finished {
        outcome: Outcome::Failed,
        exit_code,
        duration_ms,
        summary: None,
        reason: Some(reason),
        output_len,
        tag: None,
        failed_step: None,
        tests: Vec::new(),
    };
    let finished = match supervised.cause {
        Some(StopCause::Timeout) => failed(None, "timeout".into()),
        Some(StopCause::Abort) => aborted(duration_ms, output_len),
        Some(StopCause::Discard) => return Ending::Discarded,
        Some(StopCause::OutputFailed(reason)) => Finished::error(reason, duration_ms, output_len),
        None => match (supervised.status.code(), supervised.status.signal()) {
            (Some(0), _) => Finished {
                outcome: Outcome::Passed,
                exit_code: Some(0),
                duration_ms,
                summary: None,
                reason: None,
                output_len,
                tag: None,
                failed_step: None,
                tests: Vec::new(),
            },
            (Some(code), _) => Finished { reason: None, ..failed(Some(code), String::new()) },
            (None, Some(signal)) => failed(None, format!("killed by signal {signal}")),
            (None, None) => failed(None, format!("ended with {}", supervised.status)),
        },
    };
    Ending::Finished(finished)
}

/// The attempt's identity for the test, as environment variables: the only
/// way network input reaches the test (all of it validated on decode).
fn environment(assign: &Assign) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("BATON_TASK_ID", assign.task_id.to_string()),
        ("BATON_ATTEMPT", assign.attempt.to_string()),
        ("BATON_COMMIT", assign.commit.to_string()),
        ("BATON_BRANCH", assign.branch.to_string()),
        ("BATON_REPO", assign.repo.to_string()),
    ];
    let deploy = match &assign.job {
        Job::Test => None,
        Job::Deploy(deploy) => Some(deploy),
        Job::DeployHost(host) => {
            env.push(("BATON_ENVIRONMENT", host.environment.to_string()));
            env.push(("BATON_HOST", host.host.to_string()));
            Some(&host.deploy)
        }
    };
    if let Some(deploy) = deploy {
        env.push(("BATON_RELEASE", deploy.release.clone()));
        let previous = deploy.previous_commit.as_ref().map(ToString::to_string).unwrap_or_default();
        env.push(("BATON_PREVIOUS_COMMIT", previous));
    }
    env
}

/// Each test's outcome from the output's tail and the JUnit reports in the
/// tree (a blocking walk, so off the runtime's threads).
/// What the output's tail says: the summary and, for a test (`tests` is
/// then the most names to report), every test's outcome, with the JUnit
/// reports of the tree. On a blocking thread: the tail is up to a megabyte,
/// read once without its colours for both.
async fn read_output(
    tail: Option<Vec<u8>>,
    tree: PathBuf,
    tests: Option<usize>,
) -> (Option<protocol::message::Summary>, Vec<protocol::message::TestCase>) {
    let span = tracing::Span::current();
    let read = tokio::task::spawn_blocking(move || {
        let _span = span.enter();
        let lines =
            tail.map(|tail| summary::plain_lines(&String::from_utf8_lossy(&tail))).unwrap_or_default();
        let summary = summary::summarize_lines(&lines);
        let Some(max_names) = tests else { return (summary, Vec::new()) };
        let mut collected = outcomes::Collected::default();
        collected.add_lines(&lines);
        outcomes::junit::collect(&tree, &mut collected);
        tracing::debug!(tests = collected.len(), "per-test outcomes recognised");
        (summary, collected.into_reported(max_names))
    });
    read.await.unwrap_or_default()
}

/// The last [`summary::TAIL_BYTES`] of the output, or `None` if unreadable.
async fn read_tail(path: &Path, len: u64) -> Option<Vec<u8>> {
    use tokio::io::AsyncSeekExt;
    let start = len.saturating_sub(summary::TAIL_BYTES);
    let mut file = tokio::fs::File::open(path).await.ok()?;
    file.seek(io::SeekFrom::Start(start)).await.ok()?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.take(len - start).read_to_end(&mut tail).await.ok()?;
    Some(tail)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    fn check(status: ExitStatus, cause: Option<StopCause>) -> Option<(Outcome, Option<i32>, Option<String>)> {
        match classify(Supervised { status, cause }, 10, 3) {
            Ending::Finished(finished) => {
                assert_eq!((finished.duration_ms, finished.output_len), (10, 3));
                Some((finished.outcome, finished.exit_code, finished.reason))
            }
            Ending::Discarded => None,
        }
    }

    #[test]
    fn outcomes() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let signalled = |signal: i32| ExitStatus::from_raw(signal);
        assert_eq!(check(exited(0), None), Some((Outcome::Passed, Some(0), None)));
        assert_eq!(check(exited(3), None), Some((Outcome::Failed, Some(3), None)));
        assert_eq!(
            check(signalled(9), None),
            Some((Outcome::Failed, None, Some("killed by signal 9".into())))
        );
        assert_eq!(
            check(signalled(15), Some(StopCause::Timeout)),
            Some((Outcome::Failed, None, Some("timeout".into())))
        );
        assert_eq!(
            check(exited(0), Some(StopCause::Timeout)),
            Some((Outcome::Failed, None, Some("timeout".into())))
        );
        assert_eq!(
            check(signalled(15), Some(StopCause::Abort)),
            Some((Outcome::Aborted, None, Some("aborted by the dispatcher".into())))
        );
        assert_eq!(check(signalled(9), Some(StopCause::Discard)), None);
        assert_eq!(
            check(signalled(9), Some(StopCause::OutputFailed("disk full".into()))),
            Some((Outcome::Error, None, Some("disk full".into())))
        );
    }

    #[test]
    fn the_environment_carries_the_attempt() {
        let assign = Assign {
            task_id: protocol::TaskId::new(4).unwrap(),
            attempt: 2,
            repo: protocol::RepoUrl::new("/srv/a b.git").unwrap(),
            branch: protocol::Branch::new("main").unwrap(),
            commit: protocol::CommitId::new("f".repeat(40)).unwrap(),
            job: Job::Test,
        };
        let names: Vec<&str> = environment(&assign).iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["BATON_TASK_ID", "BATON_ATTEMPT", "BATON_COMMIT", "BATON_BRANCH", "BATON_REPO"]);
        assert_eq!(environment(&assign)[4].1, "/srv/a b.git");
    }
}
