//! The three daemons end to end (issue 2): commits pass and fail, a killed
//! runner's task finishes elsewhere, a missing commit ends `error`, and
//! duplicate submissions are not queued twice.

use std::time::Duration;

use harness::procs;
use protocol::message::{DispatcherToObserver, ObserverToDispatcher, Submit};
use protocol::{Branch, CommitId, RepoUrl};

use crate::support::{self, baton_json, show, wait_final, wait_for, Dispatcher, Repo};

#[test]
fn commits_pass_and_fail_through_the_observer() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let good = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "passing test");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _r1 = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let _r2 = support::runner(tmp.path(), &dispatcher.addr, "r2", &[]);
    let _observer = support::observer(tmp.path(), &dispatcher.addr, &repo.path, &["--poll", "100ms"]);

    let task = wait_final(&dispatcher.addr, &good);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["exit_code"], 0);
    assert_eq!(task["commit"], good.as_str());
    assert_eq!(task["branch"], "main");
    assert_eq!(task["attempts"], 1);
    assert!(matches!(task["runner"].as_str(), Some("r1" | "r2")), "{task:#}");
    assert_eq!(task["summary"]["passed"], 1, "{task:#}");
    for key in ["id", "repo", "created_at", "started_at", "finished_at"] {
        assert!(!task[key].is_null(), "{key} missing in {task:#}");
    }

    let bad = repo.commit(&[("tests/test_sum.py", &support::unittest(false))], "failing test");
    let task = wait_final(&dispatcher.addr, &bad);
    assert_eq!(task["state"], "failed", "{task:#}");
    assert_eq!(task["exit_code"], 1);
    assert_eq!(task["summary"]["failed"], 1, "{task:#}");

    let good_report = String::from_utf8(support::result_file(&dispatcher.data_dir, &good)).unwrap();
    assert!(good_report.contains("state: passed") && good_report.contains("OK"), "{good_report}");
    let bad_report = String::from_utf8(support::result_file(&dispatcher.data_dir, &bad)).unwrap();
    assert!(bad_report.contains("state: failed") && bad_report.contains("FAILED"), "{bad_report}");

    let tasks = baton_json(&dispatcher.addr, &["tasks"]);
    let commits: Vec<&str> =
        tasks.as_array().unwrap().iter().map(|t| t["commit"].as_str().unwrap()).collect();
    assert_eq!(commits, [bad.as_str(), good.as_str()], "newest first");
}

#[test]
fn a_killed_runner_s_task_finishes_on_the_other_runner() {
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // Attempt 1 records its pid and blocks; attempt 2 passes.
    let baton_toml = format!(
        "[test]\ncommand = \"echo $$ > {marks}/attempt-$BATON_ATTEMPT.pid; \
         if [ $BATON_ATTEMPT = 1 ]; then exec sleep 600; fi; echo '1 passed, 0 failed'\"\n",
        marks = marks.display()
    );
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[(".baton.toml", &baton_toml)], "slow test");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let mut r1 = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let _observer = support::observer(tmp.path(), &dispatcher.addr, &repo.path, &["--poll", "100ms"]);

    let pid_file = marks.join("attempt-1.pid");
    wait_for("attempt 1 to start", || pid_file.exists().then_some(()));
    let _r2 = support::runner(tmp.path(), &dispatcher.addr, "r2", &[]);
    let test_pid: i32 = wait_for("the pid of attempt 1", || {
        std::fs::read_to_string(&pid_file).ok().and_then(|text| text.trim().parse().ok())
    });
    r1.kill9();

    let task = wait_final(&dispatcher.addr, &commit);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["attempts"], 2, "{task:#}");
    assert_eq!(task["runner"], "r2", "{task:#}");
    // The runner's death took its test with it (parent-death signal).
    wait_for("the orphaned test process to die", || (!procs::alive(test_pid)).then_some(()));
}

#[test]
fn a_missing_commit_ends_in_error_and_the_runner_stays_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let good = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "passing test");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "only", &[]);
    let repo_arg = repo.path.display().to_string();

    let missing = "0123456789abcdef0123456789abcdef01234567";
    let accepted = baton_json(&dispatcher.addr, &["submit", &repo_arg, missing]);
    let id = accepted["id"].as_i64().unwrap().to_string();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "error", "{task:#}");
    assert!(task["reason"].as_str().unwrap_or("").contains("not found"), "{task:#}");

    let accepted = baton_json(&dispatcher.addr, &["submit", &repo_arg, &good]);
    let task = wait_final(&dispatcher.addr, &accepted["id"].as_i64().unwrap().to_string());
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["runner"], "only");
}

#[test]
fn duplicate_observer_submissions_are_acknowledged_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let submit = Submit {
        repo: RepoUrl::new("/srv/git/app.git").unwrap(),
        branch: Branch::new("main").unwrap(),
        commit: CommitId::new("a".repeat(40)).unwrap(),
        labels: Vec::new(),
    };
    let answers = observe(&dispatcher.addr, &[submit.clone(), submit]);
    let [DispatcherToObserver::Accepted(first), DispatcherToObserver::Accepted(second)] = answers.as_slice()
    else {
        panic!("unexpected answers {answers:?}");
    };
    assert_eq!(first.task_id, second.task_id);
    assert!(!first.duplicate && second.duplicate);
    let tasks = baton_json(&dispatcher.addr, &["tasks"]);
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks:#}");
    assert_eq!(show(&dispatcher.addr, &first.task_id.to_string()).unwrap()["state"], "pending");
}

/// Speaks the observer protocol directly, as a real peer would.
pub fn observe(addr: &str, submits: &[Submit]) -> Vec<DispatcherToObserver> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut conn = support::ok(harness::peer::dial_observer(addr, "test-observer").await);
        let mut answers = Vec::new();
        for submit in submits {
            conn.send(&ObserverToDispatcher::Submit(submit.clone())).await.unwrap();
            let answer = loop {
                let answer = tokio::time::timeout(Duration::from_secs(30), conn.recv()).await;
                match answer.unwrap().unwrap().unwrap() {
                    // Heartbeats of an idle connection are not answers.
                    DispatcherToObserver::Ping(_) => continue,
                    answer => break answer,
                }
            };
            answers.push(answer);
        }
        answers
    })
}

#[test]
fn show_finds_task_ids_past_a_million() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        // Seed the store as a dispatcher that has run for a long time would
        // have it: the next task gets an id past 999,999.
        let mut store =
            dispatcher::store::Store::open(&data.join("baton.db"), dispatcher::store::Sync::Normal).unwrap();
        let tx = store.begin().unwrap();
        tx.bump_task_ids(1_234_566).unwrap();
        tx.commit().unwrap();
    }
    let dispatcher = Dispatcher::start(&data, &[]);
    let accepted = baton_json(&dispatcher.addr, &["submit", "/srv/git/app.git", &"e".repeat(40)]);
    assert_eq!(accepted["id"], 1_234_567);
    let task = show(&dispatcher.addr, "1234567").expect("the task by its seven-digit id");
    assert_eq!(task["commit"], "e".repeat(40));
}
