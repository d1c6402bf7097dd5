//! What a newcomer and a real project run into (issue 13): the test runs in a
//! real git checkout, a tag pushed after its commit reaches the release,
//! multi-line reasons stay readable, daemons fail fast on what can never work
//! and survive the loss of their stderr.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{self, baton_json, wait_final, wait_for, Dispatcher, Repo};

fn submit(addr: &str, repo: &Repo, commit: &str) -> String {
    let accepted =
        baton_json(addr, &["submit", &repo.path.display().to_string(), commit, "--branch", "main"]);
    accepted["id"].as_i64().expect("task id").to_string()
}

fn task_log(data_dir: &Path, task_id: &str) -> String {
    support::stored_log_if_any(data_dir, task_id)
        .map(|log| String::from_utf8_lossy(&log).into_owned())
        .unwrap_or_default()
}

/// Issue 13, item 1: `git rev-parse HEAD` and `git describe --tags` work in
/// the task's tree and name the assigned commit, which is not the branch's
/// tip, and nothing of the previous task's tree is left.
#[test]
fn r13_the_test_runs_in_a_git_checkout_of_exactly_its_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let command =
        "[test]\ncommand = 'git rev-parse HEAD && git describe --tags && git rev-parse --abbrev-ref HEAD \
                   && git rev-parse main && git status --porcelain && ls && touch leftover'\n";
    let tagged = repo.commit(&[(".baton.toml", command)], "first");
    repo.git(&["tag", "-a", "v1.0", "-m", "release 1.0"]);
    let newer = repo.commit(&[("file", "x")], "second");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);

    for (commit, describe) in [(&newer, format!("v1.0-1-g{}", &newer[..7])), (&tagged, "v1.0".to_string())] {
        let id = submit(&dispatcher.addr, &repo, commit);
        let task = wait_final(&dispatcher.addr, &id);
        assert_eq!(task["state"], "passed", "{task:#}\n{}", task_log(&dispatcher.data_dir, &id));
        let log = task_log(&dispatcher.data_dir, &id);
        let lines: Vec<&str> = log.lines().collect();
        // HEAD, describe, detached HEAD, the branch at the commit, a clean
        // status (no line), then the tree: no `leftover` of the first task.
        assert_eq!(lines[..4], [commit.as_str(), describe.as_str(), "HEAD", commit.as_str()], "{log}");
        let files: Vec<&str> = lines[4..].to_vec();
        assert!(!files.contains(&"leftover"), "{log}");
        assert!(files.contains(&"file") == (commit == &newer), "{log}");
    }
}

/// Issue 13, item 2: `git push origin main && git tag v1.0 && git push origin
/// v1.0`: the tag arrives after the runner fetched the commit, and the
/// release still gets it; a rerun of the commit records no second release.
#[test]
fn r13_a_tag_pushed_after_its_commit_reaches_the_release_and_a_rerun_adds_none() {
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    let repo = Repo::init(&tmp.path().join("repo"));
    // The test waits until the tag has been made, so the runner's fetch of
    // the commit certainly happened before the tag existed.
    let command = format!("[test]\ncommand = 'while [ ! -e \"{}\" ]; do sleep 0.02; done'\n", go.display());
    let commit = repo.commit(&[(".baton.toml", &command)], "first");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);

    let id = submit(&dispatcher.addr, &repo, &commit);
    wait_for("the test to start", || {
        support::show(&dispatcher.addr, &id).filter(|task| task["state"] == "running")
    });
    repo.git(&["tag", "v1.0"]);
    std::fs::write(&go, "").unwrap();
    assert_eq!(wait_final(&dispatcher.addr, &id)["state"], "passed");
    let releases = baton_json(&dispatcher.addr, &["releases"]);
    let releases = releases.as_array().unwrap();
    assert_eq!(releases.len(), 1, "{releases:#?}");
    assert_eq!(releases[0]["tag"], "v1.0", "{releases:#?}");
    assert_eq!(releases[0]["commit"], commit.as_str());

    let rerun = baton_json(&dispatcher.addr, &["rerun", &id]);
    let rerun_id = rerun["id"].as_i64().unwrap().to_string();
    assert_ne!(rerun_id, id);
    assert_eq!(wait_final(&dispatcher.addr, &rerun_id)["state"], "passed");
    let releases = baton_json(&dispatcher.addr, &["releases"]);
    assert_eq!(releases.as_array().unwrap().len(), 1, "a rerun records no second release: {releases:#}");
}

/// Issue 13, item 3: an invalid `.baton.toml` gives a TOML error over
/// several lines; `show --json` and `test_results/` keep its newlines.
#[test]
fn r13_a_multi_line_reason_keeps_its_newlines() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[(".baton.toml", "[test]\ncomand = 'true'\n")], "typo");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);

    let id = submit(&dispatcher.addr, &repo, &commit);
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "error", "{task:#}");
    let reason = task["reason"].as_str().unwrap();
    assert!(reason.lines().count() >= 3, "{reason:?}");
    assert!(reason.contains("\n2 | comand"), "{reason:?}");
    assert!(!reason.contains('\u{fffd}'), "{reason:?}");
    let file = String::from_utf8(support::result_file(&dispatcher.data_dir, &commit)).unwrap();
    assert!(file.contains("\n2 | comand"), "{file}");
    let shown = support::baton(&dispatcher.addr, &["show", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("comand") && !shown.contains('\u{fffd}'), "{shown}");
}

/// Runs `program ARGS` to its end (failing the test after
/// [`support::PATIENCE`]) and returns its status, stdout and stderr.
fn run_to_end(program: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(support::bin(program))
        .args(args)
        .env_remove("BATON_DISPATCHER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_exit(&mut child, &format!("{program} {args:?}"));
    let output = child.wait_with_output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// Asserts that the daemon exited 2 with one line on stderr containing
/// `wanted`, and (the dispatcher) printed no address.
fn assert_fails_fast(program: &str, args: &[&str], wanted: &str) {
    let (code, stdout, stderr) = run_to_end(program, args);
    assert_eq!(code, Some(2), "{program} {args:?}\nstdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "", "{program} {args:?} printed on stdout");
    assert_eq!(stderr.lines().count(), 1, "{program} {args:?}: one line, got:\n{stderr}");
    assert!(stderr.contains(wanted), "{program} {args:?}: wanted {wanted:?} in:\n{stderr}");
}

/// Issue 13, item 5: each daemon refuses at start-up what can never work,
/// with exit code 2 and one line; the dispatcher prints no address.
#[test]
fn r13_daemons_fail_fast_on_what_can_never_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let file = file.display().to_string();
    let not_a_repo = tmp.path().join("plain");
    std::fs::create_dir(&not_a_repo).unwrap();
    let not_a_repo = not_a_repo.display().to_string();
    let data_in_file = format!("{file}/data");
    let state = format!("{dir}/state.json");
    let repo = Repo::init(&tmp.path().join("repo")).path.display().to_string();

    for address in ["nonsense", "localhost"] {
        assert_fails_fast("baton-runner", &["--dispatcher", address, "--work-dir", &dir], "host:port");
        assert_fails_fast(
            "baton-observer",
            &["--dispatcher", address, "--state-file", &state, &repo],
            "host:port",
        );
    }
    assert_fails_fast("baton-runner", &["--dispatcher", "127.0.0.1:9", "--work-dir", &file], &file);
    assert_fails_fast(
        "baton-observer",
        &["--dispatcher", "127.0.0.1:9", "--state-file", &state, &not_a_repo],
        "not a git repository",
    );
    // A webhook receiver refuses unsigned requests, so it needs its secret,
    // on loopback too (SPEC §13), and a secret it can read.
    let webhook = ["--dispatcher", "127.0.0.1:9", "--state-file", &state, "--webhook", "127.0.0.1:0"];
    assert_fails_fast("baton-observer", &[&webhook[..], &[&repo]].concat(), "needs --webhook-secret-file");
    let missing_secret = format!("{dir}/no-such-secret");
    assert_fails_fast(
        "baton-observer",
        &[&webhook[..], &["--webhook-secret-file", &missing_secret, &repo]].concat(),
        &missing_secret,
    );
    assert_fails_fast("baton-dispatcher", &["--listen", "nonsense", "--data-dir", &dir], "host:port");
    assert_fails_fast("baton-dispatcher", &["--listen", "127.0.0.1:0", "--data-dir", &data_in_file], &file);
    // A port already taken: the address is usable in form but not now; the
    // dispatcher still prints nothing on stdout.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    assert_fails_fast("baton-dispatcher", &["--listen", &taken, "--data-dir", &dir], &taken);
}

/// Starts `program` with `args`, its stderr on a pipe; reads `n_lines` of
/// it, then closes the read end, as `2>&1 | head -3` does.
fn start_then_close_stderr(program: &str, args: &[&str], n_lines: usize) -> std::process::Child {
    let mut child = Command::new(support::bin(program))
        .args(args)
        .env("RUST_LOG", "info,dispatcher=debug,runner=debug,observer=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    for _ in 0..n_lines {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{program} closed its stderr early");
    }
    drop(stderr);
    child
}

/// SIGTERM, then the exit status within [`support::PATIENCE`].
fn terminate(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    // SAFETY: kill(2) on a child we started; no memory is involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    support::wait_exit(child, &format!("{what}, its stderr lost, after SIGTERM,"))
}

/// Issue 13, item 6: each daemon whose stderr is closed mid-run keeps
/// working (the dispatcher serves, the runner registers and runs a task, the
/// observer submits) and stops on SIGTERM.
#[test]
fn r13_daemons_survive_the_loss_of_their_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let repo = Repo::init(&tmp.path().join("repo"));
    repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "first");

    let data = data_dir.display().to_string();
    let mut dispatcher =
        start_then_close_stderr("baton-dispatcher", &["--listen", "127.0.0.1:0", "--data-dir", &data], 1);
    let mut address = String::new();
    BufReader::new(dispatcher.stdout.as_mut().unwrap()).read_line(&mut address).unwrap();
    let addr = address.trim().to_string();
    let work = tmp.path().join("work").display().to_string();
    let mut runner = start_then_close_stderr(
        "baton-runner",
        &["--dispatcher", &addr, "--work-dir", &work, "--name", "r1"],
        1,
    );
    let state = tmp.path().join("observer.json").display().to_string();
    let repo_path = repo.path.display().to_string();
    let mut observer = start_then_close_stderr(
        "baton-observer",
        &["--dispatcher", &addr, "--state-file", &state, "--poll", "100ms", &repo_path],
        1,
    );

    // The observer submits the first commit, the runner runs it, and every
    // commit after that too: each goes through logging with no reader.
    for round in 0..3 {
        let commit = repo.commit(&[("round", &round.to_string())], "next");
        let task: Value = wait_for("the pushed commit to pass", || {
            support::show(&addr, &commit).filter(|task| task["state"] == "passed")
        });
        assert_eq!(task["runner"], "r1");
    }
    let runners = baton_json(&addr, &["runners"]);
    assert_eq!(runners[0]["state"], "idle", "the runner was never lost: {runners:#}");
    for (child, what) in
        [(&mut observer, "the observer"), (&mut runner, "the runner"), (&mut dispatcher, "the dispatcher")]
    {
        let status = terminate(child, what);
        assert!(status.success(), "{what} ended {status}");
    }
}
