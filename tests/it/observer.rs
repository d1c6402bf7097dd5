//! The observer against bare repositories receiving real `git push`es
//! (issue 4): watch mode, every commit in order or only the latest, several
//! repositories and branches, force-pushes and new branches. No runner is
//! started: the tasks stay pending, and `baton tasks --json` shows exactly
//! what was submitted.

use std::path::Path;

use crate::support::{self, baton_json, wait_for, Dispatcher, Repo};

/// A bare repository and a clone that pushes to it.
struct Remote {
    bare: std::path::PathBuf,
    work: Repo,
}

impl Remote {
    fn new(root: &Path, name: &str) -> Remote {
        let bare = root.join(format!("{name}.git"));
        let status = std::process::Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare)
            .status()
            .unwrap();
        assert!(status.success());
        let work = Repo::init(&root.join(format!("{name}-work")));
        work.git(&["remote", "add", "origin", &bare.display().to_string()]);
        Remote { bare, work }
    }

    /// Makes `n` commits and pushes them in one push; returns their ids,
    /// oldest first.
    fn push_commits(&self, branch: &str, n: usize, label: &str) -> Vec<String> {
        let commits = (0..n)
            .map(|idx| {
                self.work.commit(&[("file.txt", &format!("{label} {idx}"))], &format!("{label} {idx}"))
            })
            .collect();
        self.work.git(&["push", "-q", "--force", "origin", &format!("HEAD:refs/heads/{branch}")]);
        commits
    }
}

/// The submitted (repository, branch, commit) triples, oldest first.
fn submitted(addr: &str) -> Vec<(String, String, String)> {
    let tasks = baton_json(addr, &["tasks", "--limit", "1000"]);
    let mut triples: Vec<(i64, (String, String, String))> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|task| {
            let text = |key: &str| task[key].as_str().unwrap().to_string();
            (task["id"].as_i64().unwrap(), (text("repo"), text("branch"), text("commit")))
        })
        .collect();
    triples.sort();
    triples.into_iter().map(|(_, triple)| triple).collect()
}

fn commits_of(triples: &[(String, String, String)]) -> Vec<String> {
    triples.iter().map(|(_, _, commit)| commit.clone()).collect()
}

fn wait_count(addr: &str, n: usize) -> Vec<(String, String, String)> {
    wait_for(&format!("{n} submissions"), || {
        let triples = submitted(addr);
        (triples.len() >= n).then_some(triples)
    })
}

#[test]
fn watch_mode_submits_every_pushed_commit_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::new(tmp.path(), "app");
    let first = remote.push_commits("main", 1, "first");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _observer = support::observer(tmp.path(), &dispatcher.addr, &remote.bare, &["--watch"]);
    wait_count(&dispatcher.addr, 1);

    let five = remote.push_commits("main", 5, "burst");
    let triples = wait_count(&dispatcher.addr, 6);
    let mut expected = first;
    expected.extend(five);
    assert_eq!(commits_of(&triples), expected);
    let repo = std::fs::canonicalize(&remote.bare).unwrap().display().to_string();
    assert!(triples.iter().all(|(r, b, _)| *r == repo && b == "main"), "{triples:?}");
}

#[test]
fn latest_mode_submits_only_the_newest_commit_of_a_push() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::new(tmp.path(), "app");
    let first = remote.push_commits("main", 1, "first");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _observer =
        support::observer(tmp.path(), &dispatcher.addr, &remote.bare, &["--watch", "--mode", "latest"]);
    wait_count(&dispatcher.addr, 1);
    let five = remote.push_commits("main", 5, "burst");
    let triples = wait_count(&dispatcher.addr, 2);
    assert_eq!(commits_of(&triples), [first[0].clone(), five[4].clone()]);
    // A later push shows the burst's other commits were never queued.
    let more = remote.push_commits("main", 1, "more");
    let triples = wait_count(&dispatcher.addr, 3);
    assert_eq!(commits_of(&triples), [first[0].clone(), five[4].clone(), more[0].clone()]);
}

#[test]
fn two_repositories_and_two_branches_in_one_observer() {
    let tmp = tempfile::tempdir().unwrap();
    let app = Remote::new(tmp.path(), "app");
    let lib = Remote::new(tmp.path(), "lib");
    app.push_commits("main", 1, "app main");
    lib.push_commits("main", 1, "lib main");
    app.push_commits("dev", 1, "app dev");
    lib.push_commits("dev", 1, "lib dev");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let state = tmp.path().join("observer.state.json").display().to_string();
    let args = [
        "--dispatcher",
        &dispatcher.addr,
        "--state-file",
        &state,
        "--watch",
        "--branch",
        "main",
        "--branch",
        "dev",
    ];
    let app_path = app.bare.display().to_string();
    let lib_path = lib.bare.display().to_string();
    let mut all = args.to_vec();
    all.extend([app_path.as_str(), lib_path.as_str()]);
    let _observer = support::daemon("baton-observer", &all, &[], tmp.path().join("observer.log"));
    wait_count(&dispatcher.addr, 4);

    let app_dev = app.push_commits("dev", 2, "app dev more");
    let lib_main = lib.push_commits("main", 1, "lib main more");
    let triples = wait_count(&dispatcher.addr, 7);
    let pairs: std::collections::BTreeSet<(String, String)> = triples
        .iter()
        .map(|(repo, branch, _)| (repo.rsplit('/').next().unwrap().to_string(), branch.clone()))
        .collect();
    let expected: std::collections::BTreeSet<(String, String)> =
        [("app.git", "dev"), ("app.git", "main"), ("lib.git", "dev"), ("lib.git", "main")]
            .iter()
            .map(|(repo, branch)| (repo.to_string(), branch.to_string()))
            .collect();
    assert_eq!(pairs, expected);
    let commits = commits_of(&triples);
    for commit in app_dev.iter().chain(&lib_main) {
        assert_eq!(commits.iter().filter(|c| *c == commit).count(), 1, "{commit} submitted once");
    }
}

#[test]
fn a_force_push_and_a_new_branch_submit_only_commits_not_seen_before() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::new(tmp.path(), "app");
    let base = remote.push_commits("main", 1, "base");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _observer = support::observer(
        tmp.path(),
        &dispatcher.addr,
        &remote.bare,
        &["--watch", "--branch", "main", "--branch", "feature/*"],
    );
    wait_count(&dispatcher.addr, 1);
    let doomed = remote.push_commits("main", 2, "doomed");
    wait_count(&dispatcher.addr, 3);

    // Rewrite main: back to the base, one new commit, force-pushed.
    remote.work.git(&["reset", "-q", "--hard", &base[0]]);
    let rewritten = remote.push_commits("main", 1, "rewritten");
    let triples = wait_count(&dispatcher.addr, 4);
    // A new branch off the rewritten main with one commit of its own.
    remote.work.git(&["checkout", "-q", "-b", "feature/x"]);
    let feature = remote.push_commits("feature/x", 1, "feature");
    let triples_after = wait_count(&dispatcher.addr, 5);
    assert_eq!(triples.len(), 4);

    let mut expected = base;
    expected.extend(doomed);
    expected.extend(rewritten);
    expected.extend(feature.clone());
    assert_eq!(commits_of(&triples_after), expected);
    assert_eq!(triples_after[4].1, "feature/x");
    // Nothing more arrives: settle by pushing one more commit and checking
    // it is the only addition.
    let last = remote.push_commits("feature/x", 1, "last");
    let settled = wait_count(&dispatcher.addr, 6);
    assert_eq!(settled.len(), 6);
    assert_eq!(settled[5].2, last[0]);
}

#[test]
fn labels_from_a_commit_s_baton_toml_route_its_task() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let toml = "[test]\ncommand = \"echo on a gpu runner\"\nlabels = [\"gpu\"]\n";
    let commit = repo.commit(&[(".baton.toml", toml)], "needs a gpu");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _plain = support::runner(tmp.path(), &dispatcher.addr, "plain", &[]);
    let _observer = support::observer(tmp.path(), &dispatcher.addr, &repo.path, &["--poll", "50ms"]);

    let task = wait_for("the task to wait for a gpu runner", || {
        support::show(&dispatcher.addr, &commit).filter(|task| task["reason"].as_str().is_some())
    });
    assert_eq!(task["state"], "pending", "{task:#}");
    assert_eq!(task["labels"], serde_json::json!(["gpu"]));
    assert_eq!(task["reason"], "waiting for a runner with labels: gpu");

    let _gpu = support::runner(tmp.path(), &dispatcher.addr, "gpu-1", &["--labels", "gpu"]);
    let task = support::wait_final(&dispatcher.addr, &commit);
    assert_eq!(
        (task["state"].as_str(), task["runner"].as_str()),
        (Some("passed"), Some("gpu-1")),
        "{task:#}"
    );
}
