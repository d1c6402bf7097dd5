//! What the `baton` client does beyond one request and one answer (issue 13):
//! short commit ids in `submit` (item 4), resolved by git in a repository the
//! client can read and among the dispatcher's tasks otherwise, with a clear
//! refusal when a prefix is ambiguous or unknown; and saying what happened
//! (item 7): `abort` waits for a running task's end, `log` of a task that
//! ended in error says why.

use std::collections::HashMap;
use std::process::Output;

use crate::support::{self, baton, baton_json, show, wait_final, wait_for, Dispatcher, Repo};

/// A repository with `n` commits made in one `git fast-import`, with fixed
/// dates, so their ids (and which of them share a prefix) are the same on
/// every run.
fn repo_with_commits(path: &std::path::Path, n: usize) -> (Repo, Vec<String>) {
    let repo = Repo::init(path);
    let mut stream = String::new();
    for idx in 1..=n {
        let message = format!("commit {idx}\n");
        stream.push_str(&format!(
            "commit refs/heads/main\nmark :{idx}\ncommitter Baton Test <ci@baton.invalid> {} +0000\ndata {}\n{message}",
            1_700_000_000 + idx,
            message.len()
        ));
        if idx > 1 {
            stream.push_str(&format!("from :{}\n", idx - 1));
        }
        stream.push('\n');
    }
    crate::support::ok(repo.run_with_input(&["fast-import", "--quiet"], stream.as_bytes()));
    let commits = repo.git(&["rev-list", "main"]).lines().map(str::to_string).collect();
    (repo, commits)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn submit_resolves_a_short_commit_in_a_local_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[("README", "hello\n")], "first");
    let repo_arg = repo.path.display().to_string();

    let accepted = baton_json(&dispatcher.addr, &["submit", &repo_arg, &commit[..10]]);
    let task = show(&dispatcher.addr, &accepted["id"].to_string()).expect("the submitted task");
    assert_eq!(task["commit"], commit.as_str(), "{task:#}");
    assert_eq!(task["repo"], repo_arg.as_str(), "{task:#}");
}

#[test]
fn submit_refuses_an_ambiguous_or_unknown_prefix_in_a_local_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    // 1,000 commits share a 4-digit prefix somewhere with near certainty,
    // and the ids are fixed, so this pair is the same on every run.
    let (repo, commits) = repo_with_commits(&tmp.path().join("repo"), 1000);
    let mut by_prefix: HashMap<&str, Vec<&str>> = HashMap::new();
    for commit in &commits {
        by_prefix.entry(&commit[..4]).or_default().push(commit);
    }
    let (shared, _) =
        by_prefix.iter().find(|(_, commits)| commits.len() > 1).expect("two commits share 4 digits");
    let unknown =
        (0..=0xffffu32).map(|n| format!("{n:04x}")).find(|p| !by_prefix.contains_key(p.as_str())).unwrap();
    let repo_arg = repo.path.display().to_string();

    let ambiguous = baton(&dispatcher.addr, &["submit", &repo_arg, shared]);
    assert_eq!(ambiguous.status.code(), Some(1), "{}", stderr(&ambiguous));
    assert!(stderr(&ambiguous).contains(&format!("commit {shared} is ambiguous")), "{}", stderr(&ambiguous));
    let missing = baton(&dispatcher.addr, &["submit", &repo_arg, &unknown]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(stderr(&missing).contains(&format!("no commit {unknown}")), "{}", stderr(&missing));
    // Nothing was queued by either.
    assert_eq!(baton_json(&dispatcher.addr, &["tasks"]), serde_json::json!([]));
}

#[test]
fn submit_resolves_a_prefix_among_the_dispatcher_s_tasks_when_the_repository_is_not_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    // A path on the dispatcher's side that this client cannot read, and
    // commits no runner will fetch (there is none): the tasks stay pending.
    let repo = "/srv/git/elsewhere.git";
    let first = format!("abcd{}", "0".repeat(36));
    let second = format!("abcd{}", "1".repeat(36));
    for commit in [&first, &second] {
        baton_json(&dispatcher.addr, &["submit", repo, commit]);
    }
    // A commit of another repository is no answer for this one.
    let elsewhere = format!("abcd{}", "2".repeat(36));
    baton_json(&dispatcher.addr, &["submit", "/srv/git/other.git", &elsewhere]);

    let accepted = baton_json(&dispatcher.addr, &["submit", repo, "abcd0", "--branch", "dev"]);
    let task = show(&dispatcher.addr, &accepted["id"].to_string()).expect("the submitted task");
    assert_eq!(
        (task["commit"].as_str(), task["branch"].as_str()),
        (Some(first.as_str()), Some("dev")),
        "{task:#}"
    );

    let ambiguous = baton(&dispatcher.addr, &["submit", repo, "abcd"]);
    assert_eq!(ambiguous.status.code(), Some(1), "{}", stderr(&ambiguous));
    let expected = format!("commit abcd is ambiguous in {repo}: {first}, {second}; give more digits");
    assert!(stderr(&ambiguous).contains(&expected), "{}", stderr(&ambiguous));
    let unknown = baton(&dispatcher.addr, &["submit", repo, "abcd2"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("no task of /srv/git/elsewhere.git has a commit starting with abcd2"));
    // Three submissions of full ids and one of a prefix: nothing else queued.
    assert_eq!(baton_json(&dispatcher.addr, &["tasks"]).as_array().map(Vec::len), Some(4));
}

#[test]
fn abort_of_a_running_task_waits_for_its_end_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("started");
    let config = format!("[test]\ncommand = \"touch {}; exec sleep 600\"\n", marker.display());
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[(".baton.toml", &config)], "a test that never ends");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = baton_json(&dispatcher.addr, &["submit", &repo.path.display().to_string(), &commit])["id"]
        .to_string();
    wait_for("the test to start", || marker.exists().then_some(()));

    let output = baton(&dispatcher.addr, &["abort", &id]);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), stderr(&output));
    assert!(output.status.success(), "{stderr}");
    // The runner kills the test at once, so the answer is the end; on a
    // machine too slow for that, the client says the abort is under way.
    if stderr.contains("aborting:") {
        assert!(stdout.contains("running"), "{stdout}");
    } else {
        assert_eq!(stderr.trim(), format!("task {id} aborted"), "{stdout}");
        assert!(stdout.contains("aborted") && !stdout.contains("running"), "{stdout}");
    }
    assert_eq!(wait_final(&dispatcher.addr, &id)["state"], "aborted");
}

#[test]
fn log_of_a_task_that_ended_in_error_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    repo.commit(&[("README", "hello\n")], "first");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    // A commit the repository does not have: the runner cannot check it out.
    let missing = "0".repeat(40);
    let id = baton_json(&dispatcher.addr, &["submit", &repo.path.display().to_string(), &missing])["id"]
        .to_string();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "error", "{task:#}");
    let reason = task["reason"].as_str().expect("an error task has a reason");

    for args in [vec!["log", id.as_str()], vec!["log", id.as_str(), "--follow"]] {
        let output = baton(&dispatcher.addr, &args);
        let stderr = stderr(&output);
        assert!(stderr.contains(&format!("task {id} ended: error: {reason}")), "{args:?}: {stderr}");
        // Stdout stays the log's bytes: the reason is not mixed into them.
        assert!(!String::from_utf8_lossy(&output.stdout).contains(reason), "{args:?}");
    }
}
