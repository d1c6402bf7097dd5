//! Bisection (SPEC §14, issue 17): a branch whose newest tested commit fails
//! after a pass, with untested commits between, is bisected on idle runners
//! to its first failing commit, which `baton show` names.

use serde_json::Value;

use crate::support::{baton, baton_json, runner, show, wait_final, wait_for, Dispatcher, Repo};

/// A repository of `n` commits whose tests fail from commit `first_bad`
/// (1-based) on; commits in `broken` carry a `.baton.toml` the runner
/// cannot read, so they end in `error`. Returns the commits, oldest first.
fn regressing_repo(
    path: &std::path::Path,
    n: usize,
    first_bad: usize,
    broken: &[usize],
) -> (Repo, Vec<String>) {
    let repo = Repo::init(path);
    let test = "import unittest\n\nclass T(unittest.TestCase):\n    def test_number(self):\n        \
                n = int(open('number.txt').read())\n        self.assertLess(n, FIRST_BAD)\n"
        .replace("FIRST_BAD", &first_bad.to_string());
    let mut commits = Vec::new();
    for idx in 1..=n {
        let config = if broken.contains(&idx) { "[test\n" } else { "# fine\n" };
        let number = idx.to_string();
        let files = [
            ("tests/test_number.py", test.as_str()),
            ("number.txt", number.as_str()),
            (".baton.toml", config),
        ];
        commits.push(repo.commit(&files, &format!("commit {idx}")));
    }
    (repo, commits)
}

fn submit(addr: &str, repo: &Repo, commit: &str, branch: &str) -> String {
    let repo_arg = repo.path.display().to_string();
    baton_json(addr, &["submit", &repo_arg, commit, "--branch", branch])["id"].to_string()
}

/// Waits for the failed task's culprit.
fn wait_culprit(addr: &str, task: &str) -> Value {
    wait_for(&format!("the culprit of task {task}"), || {
        show(addr, task).and_then(|task| (!task["culprit"].is_null()).then(|| task["culprit"].clone()))
    })
}

/// A pass on commit 1 and a failure on the tip: the culprit is bisected.
fn pass_then_fail(addr: &str, repo: &Repo, commits: &[String]) -> String {
    let good = submit(addr, repo, &commits[0], "main");
    assert_eq!(wait_final(addr, &good)["state"], "passed");
    let bad = submit(addr, repo, commits.last().unwrap(), "main");
    assert_eq!(wait_final(addr, &bad)["state"], "failed");
    bad
}

#[test]
fn the_first_failing_commit_of_33_is_found_in_at_most_6_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let (repo, commits) = regressing_repo(&tmp.path().join("repo"), 33, 21, &[]);
    let _r1 = runner(tmp.path(), &dispatcher.addr, "r1", &[]);

    let bad = pass_then_fail(&dispatcher.addr, &repo, &commits);
    // Ordinary work submitted during the bisection does not wait behind it:
    // the one runner's bisect step makes room for it.
    let ordinary = submit(&dispatcher.addr, &repo, &commits[0], "other");
    assert_eq!(wait_final(&dispatcher.addr, &ordinary)["state"], "passed");

    let culprit = wait_culprit(&dispatcher.addr, &bad);
    assert_eq!(culprit["commit"], commits[20].as_str(), "{culprit:#}");
    let steps = culprit["steps"].as_u64().unwrap();
    assert!((1..=6).contains(&steps), "{steps} steps: {culprit:#}");
    for task in culprit["tasks"].as_array().unwrap() {
        let step = show(&dispatcher.addr, &task.to_string()).unwrap();
        assert_eq!(step["kind"], "bisect", "{step:#}");
    }
    let text = baton(&dispatcher.addr, &["show", &bad]);
    let text = String::from_utf8_lossy(&text.stdout);
    let line = format!("first failing commit: {} (found by bisection in {steps} steps)", commits[20]);
    assert!(text.contains(&line), "{text}");
    let http = dispatcher.http.as_deref().expect("the web service");
    let page = crate::web::get(http, &format!("/tasks/{bad}"));
    let page = String::from_utf8_lossy(&page.body);
    assert!(page.contains("first failing commit: "), "{page}");
    assert!(page.contains(&format!("found by bisection in {steps} steps")), "{page}");
    // The ordinary task was never queued behind a bisect step: it was
    // assigned once and ran to its end.
    assert_eq!(show(&dispatcher.addr, &ordinary).unwrap()["attempts"], 1);
}

#[test]
fn commits_that_end_in_error_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    // 17 commits, the first midpoints (8 and 9) cannot be built.
    let (repo, commits) = regressing_repo(&tmp.path().join("repo"), 17, 12, &[8, 9, 10]);
    let _r1 = runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let _r2 = runner(tmp.path(), &dispatcher.addr, "r2", &[]);

    let bad = pass_then_fail(&dispatcher.addr, &repo, &commits);
    let culprit = wait_culprit(&dispatcher.addr, &bad);
    assert_eq!(culprit["commit"], commits[11].as_str(), "{culprit:#}");
    let states: Vec<String> = culprit["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| show(&dispatcher.addr, &task.to_string()).unwrap()["state"].as_str().unwrap().to_string())
        .collect();
    assert!(states.iter().any(|state| state == "error"), "a step ended in error: {states:?}");
}

#[test]
fn a_restarted_dispatcher_resumes_the_bisection() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let (repo, commits) = regressing_repo(&tmp.path().join("repo"), 33, 7, &[]);
    let _r1 = runner(tmp.path(), &dispatcher.addr, "r1", &[]);

    let bad = pass_then_fail(&dispatcher.addr, &repo, &commits);
    // Once the first bisect step exists, kill -9 the dispatcher.
    wait_for("a bisect step", || {
        let tasks = baton_json(&dispatcher.addr, &["tasks", "--limit", "5"]);
        tasks.as_array().unwrap().iter().any(|task| task["kind"] == "bisect").then_some(())
    });
    dispatcher.restart(&[]);
    let culprit = wait_culprit(&dispatcher.addr, &bad);
    assert_eq!(culprit["commit"], commits[6].as_str(), "{culprit:#}");
}
