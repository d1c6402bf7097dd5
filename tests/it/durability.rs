//! Nothing acknowledged is lost (issue 3): dispatcher `kill -9` and restart,
//! runners that freeze, runners that finish while the dispatcher is away,
//! runners that never come back, and observer restarts.

use std::path::{Path, PathBuf};

use crate::support::{self, baton_json, show, wait_final, wait_for, Dispatcher, Repo};

/// Fast heartbeats so lost runners are noticed in well under a second.
const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--heartbeat-misses", "3"];

/// A repository whose test blocks until `go` exists in `gate` (attempt 1
/// only, unless `every_attempt`), after printing a line, then passes.
fn gated_repo(root: &Path, every_attempt: bool) -> (Repo, String, PathBuf) {
    let gate = root.join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let condition = if every_attempt { "true" } else { "[ $BATON_ATTEMPT = 1 ]" };
    let baton_toml = format!(
        "[test]\ncommand = \"echo started attempt $BATON_ATTEMPT; touch {gate}/started-$BATON_ATTEMPT; \
         if {condition}; then while [ ! -e {gate}/go ]; do sleep 0.02; done; fi; \
         echo finished attempt $BATON_ATTEMPT; echo '1 passed, 0 failed'\"\n",
        gate = gate.display()
    );
    let repo = Repo::init(&root.join("repo"));
    let commit = repo.commit(&[(".baton.toml", &baton_toml)], "gated test");
    (repo, commit, gate)
}

fn wait_started(gate: &Path, attempt: u32) {
    let marker = gate.join(format!("started-{attempt}"));
    wait_for(&format!("attempt {attempt} to start"), || marker.exists().then_some(()));
}

fn submit(addr: &str, repo: &Repo, commit: &str) -> String {
    let accepted = baton_json(addr, &["submit", &repo.path.display().to_string(), commit]);
    accepted["id"].as_i64().unwrap().to_string()
}

#[test]
fn a_running_task_is_re_adopted_after_a_dispatcher_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit, gate) = gated_repo(tmp.path(), true);
    let mut dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit);
    wait_started(&gate, 1);

    dispatcher.restart(FAST);
    wait_for("the runner to re-adopt its task", || {
        let runners = baton_json(&dispatcher.addr, &["runners"]);
        let busy = runners.as_array()?.iter().any(|r| r["name"] == "r1" && r["state"] == "busy");
        busy.then_some(())
    });
    std::fs::write(gate.join("go"), "").unwrap();

    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["attempts"], 1, "re-adopted, not rerun: {task:#}");
    let log = String::from_utf8_lossy(&support::stored_log(&dispatcher.data_dir, &id)).into_owned();
    assert!(log.contains("started attempt 1") && log.contains("finished attempt 1"), "{log}");
    assert_eq!(log.matches("started attempt").count(), 1, "output delivered once: {log}");
}

#[test]
fn a_result_made_while_the_dispatcher_was_down_is_delivered_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit, gate) = gated_repo(tmp.path(), true);
    let mut dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit);
    wait_started(&gate, 1);

    dispatcher.daemon.kill9();
    std::fs::write(gate.join("go"), "").unwrap();
    let result_file = tmp.path().join("runner-r1/spool");
    wait_for("the runner to keep the result on disk", || {
        let entries = std::fs::read_dir(&result_file).ok()?;
        let has_result = entries.flatten().any(|entry| entry.path().join("result.json").exists());
        has_result.then_some(())
    });
    dispatcher.restart(FAST);

    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["attempts"], 1, "{task:#}");
    let report = String::from_utf8_lossy(&support::result_file(&dispatcher.data_dir, &commit)).to_string();
    assert!(report.contains("finished attempt 1"), "{report}");
}

#[test]
fn a_task_whose_runner_never_returns_is_requeued_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit, gate) = gated_repo(tmp.path(), false);
    let mut dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let mut r1 = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit);
    wait_started(&gate, 1);

    dispatcher.daemon.kill9();
    r1.kill9();
    dispatcher.restart(FAST);
    let _r2 = support::runner(tmp.path(), &dispatcher.addr, "r2", &[]);

    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["attempts"], 2, "{task:#}");
    assert_eq!(task["runner"], "r2", "{task:#}");
}

#[test]
fn a_frozen_runner_loses_its_task_and_its_late_result_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit, gate) = gated_repo(tmp.path(), false);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let r1 = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit);
    wait_started(&gate, 1);

    r1.signal(libc::SIGSTOP);
    let _r2 = support::runner(tmp.path(), &dispatcher.addr, "r2", &[]);
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!((task["state"].as_str(), task["attempts"].as_i64()), (Some("passed"), Some(2)), "{task:#}");
    assert_eq!(task["runner"], "r2");

    // Let the frozen attempt finish, then wake its runner: it reconnects,
    // offers the stale attempt, and is told to forget it.
    std::fs::write(gate.join("go"), "").unwrap();
    r1.signal(libc::SIGCONT);
    wait_for("r1 to reconnect and become idle", || {
        let runners = baton_json(&dispatcher.addr, &["runners"]);
        let idle = runners.as_array()?.iter().any(|r| r["name"] == "r1" && r["state"] == "idle");
        idle.then_some(())
    });
    let spool = tmp.path().join("runner-r1/spool");
    wait_for("r1 to discard the stale attempt", || {
        let empty = std::fs::read_dir(&spool).map(|mut entries| entries.next().is_none()).unwrap_or(true);
        empty.then_some(())
    });
    let task = show(&dispatcher.addr, &id).unwrap();
    assert_eq!((task["attempts"].as_i64(), task["runner"].as_str()), (Some(2), Some("r2")), "{task:#}");
    let report = String::from_utf8_lossy(&support::result_file(&dispatcher.data_dir, &commit)).to_string();
    assert!(report.contains("attempts: 2") && !report.contains("finished attempt 1"), "{report}");
}

#[test]
fn an_observer_restart_neither_loses_nor_repeats_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let first = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "one");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let mut observer = support::observer(tmp.path(), &dispatcher.addr, &repo.path, &["--poll", "50ms"]);
    wait_for("the first commit to be submitted", || show(&dispatcher.addr, &first));
    let second = repo.commit(&[("README", "two")], "two");
    wait_for("the second commit to be submitted", || show(&dispatcher.addr, &second));
    observer.kill9();

    // Committed while the observer was down: found after its restart.
    let third = repo.commit(&[("README", "three")], "three");
    let _observer = support::observer(tmp.path(), &dispatcher.addr, &repo.path, &["--poll", "50ms"]);
    wait_for("the third commit to be submitted", || show(&dispatcher.addr, &third));
    let fourth = repo.commit(&[("README", "four")], "four");
    wait_for("the fourth commit to be submitted", || show(&dispatcher.addr, &fourth));

    let tasks = baton_json(&dispatcher.addr, &["tasks"]);
    let commits: Vec<&str> =
        tasks.as_array().unwrap().iter().map(|t| t["commit"].as_str().unwrap()).collect();
    assert_eq!(commits, [fourth.as_str(), third.as_str(), second.as_str(), first.as_str()]);
}

#[test]
fn sigterm_stops_the_dispatcher_and_the_observer_cleanly_and_nothing_is_requeued() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit, gate) = gated_repo(tmp.path(), true);
    let mut dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let mut observer = support::observer(tmp.path(), &dispatcher.addr, &repo.path, &["--poll", "50ms"]);
    wait_started(&gate, 1);

    let status = observer.terminate();
    assert!(status.success(), "observer exited {status}:\n{}", observer.log());
    let status = dispatcher.daemon.terminate();
    assert!(status.success(), "dispatcher exited {status}:\n{}", dispatcher.daemon.log());

    // A graceful stop does not declare the runner lost: after the restart
    // it re-adopts its attempt, which finishes as attempt 1.
    let addr = dispatcher.addr.clone();
    dispatcher = Dispatcher::start_on(&dispatcher.data_dir.clone(), &addr, FAST);
    std::fs::write(gate.join("go"), "").unwrap();
    let task = wait_final(&dispatcher.addr, &commit);
    assert_eq!((task["state"].as_str(), task["attempts"].as_i64()), (Some("passed"), Some(1)), "{task:#}");
}
