//! What the `baton` client does beyond one request and one answer: short
//! commit ids in `submit` (issue 13, item 4), resolved by git in a
//! repository the client can read and among the dispatcher's tasks
//! otherwise, with a clear refusal when a prefix is ambiguous or unknown.

use std::collections::HashMap;
use std::process::Output;

use crate::support::{baton, baton_json, show, Dispatcher, Repo};

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
