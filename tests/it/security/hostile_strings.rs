//! Hostile strings: commits, repositories and branches that would be shell
//! syntax or path tricks are refused or never reach a shell, and commits that
//! cannot be checked out end in `error` while the runner goes on.

use super::*;

#[test]
fn hostile_commits_and_repositories_are_refused_by_baton_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let marker = tmp.path().join("pwned");
    let touch = format!("$(touch {})", marker.display());
    let backticks = format!("`touch {}`", marker.display());
    let valid = "c".repeat(40);

    let mut cases: Vec<(Vec<String>, &str)> = Vec::new();
    for commit in
        [";rm -rf /", "../../etc/passwd", &touch, &backticks, "-uexploit", "", &"C".repeat(40), "HEAD"]
    {
        cases.push((
            vec!["submit".into(), "--".into(), WITNESS_REPO.into(), commit.into()],
            "invalid commit id",
        ));
    }
    // What is not a valid location is tried as a relative path, which does
    // not exist; what looks absolute or like a URL is refused as it is.
    let relative =
        [";rm -rf /", "$(touch pwned)", "../baton-no-such-dir/../x", &touch, "ext::sh -c touch% /tmp/pwned"];
    for repo in relative.into_iter().chain(["-uexploit", "--upload-pack=touch /tmp/pwned"]) {
        cases.push((vec!["submit".into(), "--".into(), repo.into(), valid.clone()], "repository"));
    }
    for repo in ["/srv/git/../../etc", "file:///srv/../../etc", "ssh://host/../../etc", "/srv/a\tb"] {
        cases.push((vec!["submit".into(), "--".into(), repo.into(), valid.clone()], "invalid repository"));
    }
    for branch in ["-uexploit", &touch, "../x", "a;rm -rf /", "a\nb"] {
        let branch = format!("--branch={branch}");
        cases.push((vec!["submit".into(), branch, WITNESS_REPO.into(), valid.clone()], "invalid branch"));
    }
    for (args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = baton(&dispatcher.addr, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "baton {args:?}: {}\n{stderr}", output.status);
        assert!(stderr.contains(expected), "baton {args:?} said {stderr:?}, expected {expected:?}");
        assert!(
            output.stdout.is_empty(),
            "baton {args:?} printed {:?}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    // Without `--`, an argument that looks like an option is clap's to refuse.
    let output = baton(&dispatcher.addr, &["submit", WITNESS_REPO, "-uexploit"]);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));

    assert!(!marker.exists(), "a hostile string reached a shell");
    assert_only_task(&dispatcher.addr, &[], &witness);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn a_crafted_frame_with_hostile_strings_is_not_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let marker = tmp.path().join("pwned");
    let touch = format!("$(touch {})", marker.display());
    let (repo, branch, commit) = (WITNESS_REPO, "main", "d".repeat(40));

    // (repository, branch, commit) as raw strings, bypassing every check the
    // real client and observer make before sending.
    let hostile: Vec<(&str, &str, &str)> = vec![
        (repo, branch, ";rm -rf /"),
        (repo, branch, &touch),
        (repo, branch, "../../../../etc/passwd"),
        (repo, branch, "-uexploit"),
        (";rm -rf /", branch, &commit),
        ("../../etc", branch, &commit),
        ("/srv/../../etc", branch, &commit),
        (&touch, branch, &commit),
        ("-uexploit", branch, &commit),
        ("ext::sh -c touch% /tmp/pwned", branch, &commit),
        (repo, "-uexploit", &commit),
        (repo, &touch, &commit),
        (repo, "../../x", &commit),
        (repo, "a\u{0}b", &commit),
    ];
    for (repo, branch, commit) in &hostile {
        let strings = [bincode_str(repo), bincode_str(branch), bincode_str(commit)].concat();
        // ObserverToDispatcher::Submit is variant 0, with an empty label list.
        let mut observer = Raw::admitted(&dispatcher.addr, Role::Observer, None);
        observer.send_payload(&[&[0u8][..], &strings, &[0u8][..]].concat());
        assert!(observer.wait_closed_silently(), "observer: ({repo:?}, {branch:?}, {commit:?}) was answered");
        // ClientToDispatcher::Submit is variant 4, with an empty label list.
        let mut client = Raw::admitted(&dispatcher.addr, Role::Client, None);
        client.send_payload(&[&[4u8][..], &strings, &[0u8][..]].concat());
        assert!(client.wait_closed_silently(), "client: ({repo:?}, {branch:?}, {commit:?}) was answered");
    }
    assert!(!marker.exists(), "a hostile string reached a shell");
    assert_only_task(&dispatcher.addr, &[], &witness);

    // The control: the same hand-made frame with valid strings is accepted,
    // so the refusals above were the strings' doing, not the encoding's.
    let mut observer = Raw::admitted(&dispatcher.addr, Role::Observer, None);
    let strings = [bincode_str(repo), bincode_str(branch), bincode_str(&commit)].concat();
    observer.send_payload(&[&[0u8][..], &strings, &[0u8][..]].concat());
    let answer: protocol::message::DispatcherToObserver = observer.recv();
    assert!(matches!(answer, protocol::message::DispatcherToObserver::Accepted(_)), "{answer:?}");
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn shell_syntax_in_valid_repository_paths_and_branches_never_runs() {
    // Not under a `.tmp` directory: a branch component may not start with '.'.
    let tmp = tempfile::Builder::new().prefix("baton-sec").tempdir().unwrap();
    let root = tmp.path().display().to_string();
    // A repository path and a branch that the checked types accept (they are
    // a valid absolute path and a valid git branch name) but that a shell
    // would run; and an ssh URL whose host is an ssh option.
    let repo_path = tmp.path().join(format!("$(touch {root}/pwned-repo)"));
    let branch = format!("$(touch${{IFS}}{root}/pwned-branch)");
    let ssh = "ssh://-oProxyCommand=cd${IFS}~;touch${IFS}pwned-ssh/x.git";
    let repo = Repo::init(&repo_path);
    let command = "[test]\ncommand = \"printf '%s\\\\n' \\\"$BATON_REPO\\\" \\\"$BATON_BRANCH\\\"\"\n";
    let commit = repo.commit(&[(".baton.toml", command)], "prints its repository and branch");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let work_dir = tmp.path().join("runner-r1").display().to_string();
    // HOME is where the ssh payload would write.
    let _runner = support::daemon(
        "baton-runner",
        &["--dispatcher", &dispatcher.addr, "--work-dir", &work_dir, "--name", "r1"],
        &[("HOME", &root)],
        tmp.path().join("runner-r1.log"),
    );

    let over_ssh = submit(&dispatcher.addr, &[], ssh, &commit).expect("a valid ssh URL is accepted");
    let task = wait_final(&dispatcher.addr, &over_ssh);
    assert_eq!(task["state"], "error", "{task:#}");
    assert!(task["reason"].as_str().is_some_and(|reason| !reason.is_empty()), "{task:#}");

    let repo_arg = repo_path.display().to_string();
    let output = baton(&dispatcher.addr, &["submit", "--branch", &branch, &repo_arg, &commit, "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let id = serde_json::from_slice::<Value>(&output.stdout).unwrap()["id"].to_string();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(
        (task["repo"].as_str(), task["branch"].as_str()),
        (Some(repo_arg.as_str()), Some(branch.as_str()))
    );
    let log = String::from_utf8_lossy(&crate::support::stored_log(&dispatcher.data_dir, &id)).into_owned();
    assert_eq!(log, format!("{repo_arg}\n{branch}\n"), "the test saw other values than were submitted");

    for marker in ["pwned-repo", "pwned-branch", "pwned-ssh"] {
        assert!(!tmp.path().join(marker).exists(), "{marker}: a submitted string ran as shell code");
    }
    assert_still_serving(&dispatcher.addr, &[], &id);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

// ---------------------------------------------------------------- checkout

#[test]
fn commits_that_cannot_be_checked_out_end_in_error_and_the_runner_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let good = repo.commit(&[(".baton.toml", "[test]\ncommand = \"echo '1 passed, 0 failed'\"\n")], "good");
    // Trees git itself would never write (`git fsck` flags them), made by
    // hand: entries named "..", "../../x" and ".git", each of which would
    // put a file outside the checkout or into its repository metadata.
    let toml = repo.git(&["rev-parse", "HEAD:.baton.toml"]);
    let blob = support::ok(repo.run_with_input(&["hash-object", "-w", "--stdin"], b"escaped\n"));
    let inner = raw_tree(&repo, &[("100644", "escaped", &blob)]);
    let dot_git = raw_tree(&repo, &[("100644", "config", &blob)]);
    let hostile_trees = [
        ("dot-dot", raw_tree(&repo, &[("40000", "..", &inner), ("100644", ".baton.toml", &toml)]), ".."),
        (
            "slashes",
            raw_tree(&repo, &[("100644", "../../escaped", &blob), ("100644", ".baton.toml", &toml)]),
            "/",
        ),
        (
            "dot-git",
            raw_tree(&repo, &[("100644", ".baton.toml", &toml), ("40000", ".git", &dot_git)]),
            ".git",
        ),
    ];
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "only", &[]);
    let repo_arg = repo.path.display().to_string();

    for (name, tree, refused) in &hostile_trees {
        let commit = repo.git(&["commit-tree", tree, "-m", name]);
        repo.git(&["update-ref", &format!("refs/heads/{name}"), &commit]);
        let id = submit(&dispatcher.addr, &[], &repo_arg, &commit).unwrap();
        let task = wait_final(&dispatcher.addr, &id);
        assert_eq!(task["state"], "error", "{name}: {task:#}");
        let reason = task["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(refused), "{name}: the reason does not name {refused:?}: {task:#}");
    }
    let escaped = find_named(tmp.path(), "escaped");
    assert!(escaped.is_empty(), "a hostile tree was written: {escaped:?}");

    let id = submit(&dispatcher.addr, &[], &repo_arg, &good).unwrap();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!((task["state"].as_str(), task["runner"].as_str()), (Some("passed"), Some("only")), "{task:#}");
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

/// Writes a tree object with exactly these (mode, name, object id) entries,
/// in this order, bypassing git's checks; returns its id.
fn raw_tree(repo: &Repo, entries: &[(&str, &str, &str)]) -> String {
    let mut bytes = Vec::new();
    for (mode, name, id) in entries {
        bytes.extend_from_slice(format!("{mode} {name}\0").as_bytes());
        let raw: Vec<u8> =
            (0..id.len()).step_by(2).map(|at| u8::from_str_radix(&id[at..at + 2], 16).unwrap()).collect();
        bytes.extend_from_slice(&raw);
    }
    support::ok(repo.run_with_input(&["hash-object", "-t", "tree", "--literally", "-w", "--stdin"], &bytes))
}
