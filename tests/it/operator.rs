//! The operator's surface (issue 5): live logs, abort, labels, timeouts,
//! stopping and killing runners, configuration precedence, the `--json`
//! contract of SPEC §6, output caps and arbitrary bytes, client errors, and
//! the example config files of `scripts/config/` against the units of
//! `scripts/systemd/`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::SystemTime;

use harness::procs;
use serde_json::Value;

use crate::support::{self, baton, baton_json, show, wait_final, wait_for, Dispatcher, Repo, PATIENCE};

/// A repository whose `.baton.toml` runs `command` (a TOML literal string,
/// so the command may hold anything but three single quotes), with an
/// optional timeout; returns it and its commit.
fn repo_with_test(root: &Path, command: &str, timeout: Option<&str>) -> (Repo, String) {
    let mut baton_toml = format!("[test]\ncommand = '''{command}'''\n");
    if let Some(timeout) = timeout {
        baton_toml.push_str(&format!("timeout = \"{timeout}\"\n"));
    }
    let repo = Repo::init(&root.join("repo"));
    let commit = repo.commit(&[(".baton.toml", &baton_toml)], "test command");
    (repo, commit)
}

/// `baton submit REPO COMMIT [--label L]... --json`; returns the task id.
fn submit(addr: &str, repo: &Repo, commit: &str, labels: &[&str]) -> String {
    let repo_arg = repo.path.display().to_string();
    let mut args = vec!["submit", repo_arg.as_str(), commit];
    for label in labels {
        args.extend(["--label", label]);
    }
    let accepted = baton_json(addr, &args);
    assert_eq!(accepted["duplicate"], false, "{accepted:#}");
    accepted["id"].as_i64().expect("a numeric id").to_string()
}

/// Waits until `name` shows in `baton runners` in `state`, and returns it.
fn wait_runner(addr: &str, name: &str, state: &str) -> Value {
    wait_for(&format!("runner {name} to be {state}"), || {
        let runners = baton_json(addr, &["runners"]);
        runners.as_array()?.iter().find(|r| r["name"] == name && r["state"] == state).cloned()
    })
}

/// `baton log ID --follow` in the background. A thread reads its stdout line
/// by line, so that every read can have a deadline.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<Vec<u8>>,
    /// Everything read so far.
    output: Vec<u8>,
}

impl Follower {
    fn start(addr: &str, id: &str) -> Follower {
        let mut child = Command::new(support::bin("baton"))
            .args(["--dispatcher", addr, "log", id, "--follow"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting baton log --follow");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut line = Vec::new();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if send.send(line).is_err() {
                        return;
                    }
                }
            }
        });
        Follower { child, lines, output: Vec::new() }
    }

    /// Reads lines until one is exactly `wanted` (without its newline).
    fn wait_line(&mut self, wanted: &str) {
        let deadline = harness::Deadline::after(PATIENCE, format!("line {wanted:?}"));
        loop {
            let line = self.lines.recv_timeout(deadline.left()).unwrap_or_else(|err| {
                panic!(
                    "no line {wanted:?} from the follower ({err}); it printed:\n{}",
                    String::from_utf8_lossy(&self.output)
                )
            });
            self.output.extend_from_slice(&line);
            if line.strip_suffix(b"\n") == Some(wanted.as_bytes()) {
                return;
            }
        }
    }

    /// Waits for the follower to exit; returns its status, all of its
    /// stdout and its stderr.
    fn finish(mut self) -> (ExitStatus, Vec<u8>, String) {
        let status = support::wait_exit(&mut self.child, "baton log --follow");
        // The reader thread ends at end of file, which has come: the child exited.
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            self.output.extend_from_slice(&line);
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("reading stderr");
        }
        (status, std::mem::take(&mut self.output), stderr)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn log_follow_streams_a_line_before_the_test_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = tmp.path().join("gate");
    // The test cannot end before the harness has read its first line.
    let command = format!(
        "echo before the gate; while [ ! -e {gate} ]; do sleep 0.02; done; echo after the gate",
        gate = gate.display()
    );
    let (repo, commit) = repo_with_test(tmp.path(), &command, None);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);
    wait_for("the task to run", || {
        show(&dispatcher.addr, &id).filter(|task| task["state"] == "running").map(|_| ())
    });

    let mut follower = Follower::start(&dispatcher.addr, &id);
    follower.wait_line("before the gate");
    assert_eq!(show(&dispatcher.addr, &id).unwrap()["state"], "running", "the line came live");
    std::fs::write(&gate, "").unwrap();

    let (status, output, stderr) = follower.finish();
    check_followed_to_pass(status, &stderr, &id);
    assert_eq!(String::from_utf8_lossy(&output), "before the gate\nafter the gate\n");
    assert_eq!(wait_final(&dispatcher.addr, &id)["state"], "passed");
}

/// Checks that a follower ended reporting that task `id` passed, and exited
/// 0: followers hear of the end only after it is committed.
fn check_followed_to_pass(status: ExitStatus, stderr: &str, id: &str) {
    assert_eq!(stderr, format!("task {id} ended: passed\n"));
    assert!(status.success(), "baton log --follow exited {status}; stderr: {stderr}");
}

#[test]
fn log_follow_of_a_pending_task_waits_for_its_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit) = repo_with_test(tmp.path(), "echo hello from the test", None);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);

    // No runner yet: the follower attaches to a pending task.
    let mut follower = Follower::start(&dispatcher.addr, &id);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    follower.wait_line("hello from the test");
    let (status, output, stderr) = follower.finish();
    check_followed_to_pass(status, &stderr, &id);
    // The first attempt of a pending task is no restart: no marker.
    assert_eq!(String::from_utf8_lossy(&output), "hello from the test\n");
}

#[test]
fn abort_of_a_running_test_kills_its_whole_process_group() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("test.pid");
    // A background child and the shell waiting for it: both must die.
    let command = format!("sleep 600 & echo $$ > {pid_file}; wait", pid_file = pid_file.display());
    let (repo, commit) = repo_with_test(tmp.path(), &command, None);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);

    let shell_pid: i32 = wait_for("the test to record its pid", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    // The test's supervisor leads its own group; the shell and the sleep
    // are in it.
    let group = procs::pgid(shell_pid).expect("the shell's process group");
    assert_ne!(group, shell_pid, "the supervisor, not the shell, leads the group");
    let members = wait_for("the sleep to join the test's group", || {
        let members = procs::group_members(group);
        (members.len() >= 3).then_some(members)
    });
    assert!(members.contains(&shell_pid) && members.contains(&group), "{members:?}");

    let answer = baton_json(&dispatcher.addr, &["abort", &id]);
    assert_eq!(answer["id"].as_i64().unwrap().to_string(), id, "{answer:#}");
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "aborted", "{task:#}");
    assert_eq!(task["exit_code"], Value::Null, "{task:#}");
    wait_for("every process of the test's group to die", || {
        procs::group_members(group).is_empty().then_some(())
    });
    wait_runner(&dispatcher.addr, "r1", "idle");
}

#[test]
fn abort_of_a_pending_task_is_immediate_and_final() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, first) = repo_with_test(tmp.path(), "echo '1 passed, 0 failed'", None);
    let second = repo.commit(&[("README", "second")], "second");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let aborted_id = submit(&dispatcher.addr, &repo, &first, &[]);

    // No runner is connected: the abort answers with the final state.
    let answer = baton_json(&dispatcher.addr, &["abort", &aborted_id]);
    assert_eq!(answer["state"], "aborted", "{answer:#}");
    assert!(answer["finished_at"].is_string(), "{answer:#}");
    assert_eq!(show(&dispatcher.addr, &aborted_id).unwrap()["state"], "aborted");

    // A later task runs on the first idle runner; the aborted one, older,
    // would have gone first had it still been queued.
    let later_id = submit(&dispatcher.addr, &repo, &second, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    assert_eq!(wait_final(&dispatcher.addr, &later_id)["state"], "passed");
    let task = show(&dispatcher.addr, &aborted_id).unwrap();
    assert_eq!((task["state"].as_str(), task["attempts"].as_i64()), (Some("aborted"), Some(0)), "{task:#}");
    assert_eq!(task["runner"], Value::Null, "{task:#}");

    let again = baton(&dispatcher.addr, &["abort", &aborted_id]);
    assert!(!again.status.success(), "aborting an ended task succeeded");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already ended"), "{stderr}");
}

#[test]
fn a_labelled_task_waits_for_a_runner_with_the_label() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, gpu_commit) = repo_with_test(tmp.path(), "echo '1 passed, 0 failed'", None);
    let plain_commit = repo.commit(&[("README", "plain")], "plain");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _plain = support::runner(tmp.path(), &dispatcher.addr, "plain", &[]);
    wait_runner(&dispatcher.addr, "plain", "idle");

    let gpu_id = submit(&dispatcher.addr, &repo, &gpu_commit, &["gpu"]);
    // Submitted later, runs first: the idle runner was free, and skipped
    // the older task only because it lacks the label.
    let plain_id = submit(&dispatcher.addr, &repo, &plain_commit, &[]);
    let task = wait_final(&dispatcher.addr, &plain_id);
    assert_eq!((task["state"].as_str(), task["runner"].as_str()), (Some("passed"), Some("plain")));

    let task = show(&dispatcher.addr, &gpu_id).unwrap();
    assert_eq!((task["state"].as_str(), task["attempts"].as_i64()), (Some("pending"), Some(0)), "{task:#}");
    assert_eq!(task["labels"], serde_json::json!(["gpu"]), "{task:#}");
    assert_eq!(task["reason"], "waiting for a runner with labels: gpu", "{task:#}");

    let _gpu = support::runner(tmp.path(), &dispatcher.addr, "gpu", &["--labels", "gpu"]);
    let task = wait_final(&dispatcher.addr, &gpu_id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["runner"], "gpu", "{task:#}");
    assert_eq!(task["attempts"], 1, "never handed to the runner without the label: {task:#}");
}

#[test]
fn a_test_over_its_timeout_fails_with_reason_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit) = repo_with_test(tmp.path(), "echo started; sleep 600", Some("1s"));
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);

    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "failed", "{task:#}");
    assert_eq!(task["reason"], "timeout", "{task:#}");
    assert_eq!(task["exit_code"], Value::Null, "{task:#}");
    let log = String::from_utf8_lossy(&support::stored_log(&dispatcher.data_dir, &id)).into_owned();
    assert_eq!(log, "started\n");

    // A timeout longer than the clock can count used to panic the attempt,
    // leaving the task `running` for ever.
    let baton_toml = "[test]\ncommand = 'echo ok'\ntimeout = \"500000000000years\"\n";
    let endless = repo.commit(&[(".baton.toml", baton_toml)], "endless timeout");
    let id = submit(&dispatcher.addr, &repo, &endless, &[]);
    assert_eq!(wait_final(&dispatcher.addr, &id)["state"], "passed");
}

#[test]
fn runner_settings_come_from_the_flag_then_the_environment_then_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let config_dir = tmp.path().join("conf");
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config_dir.join("runner.toml");
    let text = format!(
        "dispatcher = \"{addr}\"\nwork_dir = \"work\"\nname = \"from-file\"\nlabels = [\"file\"]\n",
        addr = dispatcher.addr
    );
    std::fs::write(&config, text).unwrap();
    let config_arg = config.display().to_string();
    let work_env = tmp.path().join("work-env").display().to_string();
    let work_flag = tmp.path().join("work-flag").display().to_string();
    let log = |name: &str| tmp.path().join(format!("{name}.log"));

    let _file_only = support::daemon("baton-runner", &["--config", &config_arg], &[], log("file-only"));
    let env = [("BATON_NAME", "from-env"), ("BATON_LABELS", "env-a,env-b"), ("BATON_WORK_DIR", &work_env)];
    let _env_over_file = support::daemon("baton-runner", &["--config", &config_arg], &env, log("env"));
    let flags =
        ["--config", &config_arg, "--name", "from-flag", "--labels", "flag", "--work-dir", &work_flag];
    let _flag_over_env = support::daemon("baton-runner", &flags, &env, log("flag"));

    let labels_of = |name: &str| wait_runner(&dispatcher.addr, name, "idle")["labels"].clone();
    assert_eq!(labels_of("from-file"), serde_json::json!(["file"]));
    assert_eq!(labels_of("from-env"), serde_json::json!(["env-a", "env-b"]));
    assert_eq!(labels_of("from-flag"), serde_json::json!(["flag"]));
    // Relative paths in the file are relative to the file.
    for work_dir in [config_dir.join("work"), PathBuf::from(&work_env), PathBuf::from(&work_flag)] {
        assert!(work_dir.join("cache").is_dir(), "{} was not used", work_dir.display());
    }
}

/// Whether every line of a daemon's log is a JSON object (and there is one).
fn log_is_json(log: &str) -> bool {
    !log.trim().is_empty()
        && log.lines().all(|line| serde_json::from_str::<Value>(line).is_ok_and(|value| value.is_object()))
}

#[test]
fn dispatcher_settings_come_from_the_flag_then_the_environment_then_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    let config = dir("dispatcher.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\nlog_format = \"json\"\n",
        data = dir("file-data").display()
    );
    std::fs::write(&config, text).unwrap();
    let config_arg = config.display().to_string();
    let env_data = dir("env-data").display().to_string();
    let flag_data = dir("flag-data").display().to_string();
    let env = [("BATON_DATA_DIR", env_data.as_str()), ("BATON_LOG_FORMAT", "text")];

    let file_only = Dispatcher::start_with(&dir("file-data"), &["--config", &config_arg], &[], dir("d1.log"));
    let env_over_file =
        Dispatcher::start_with(&dir("env-data"), &["--config", &config_arg], &env, dir("d2.log"));
    let flags = ["--config", &config_arg, "--data-dir", &flag_data, "--log-format", "json"];
    let flag_over_env = Dispatcher::start_with(&dir("flag-data"), &flags, &env, dir("d3.log"));

    for (dispatcher, json_log) in [(&file_only, true), (&env_over_file, false), (&flag_over_env, true)] {
        // Each answers on its own port and keeps its database where it was told.
        baton_json(&dispatcher.addr, &["status"]);
        let database = dispatcher.data_dir.join("baton.db");
        assert!(database.exists(), "{} missing", database.display());
        let log =
            wait_for("the dispatcher to log", || Some(dispatcher.daemon.log()).filter(|log| !log.is_empty()));
        assert_eq!(
            log_is_json(&log),
            json_log,
            "log of the dispatcher in {}:\n{log}",
            dispatcher.data_dir.display()
        );
    }
}

/// Checks the keys and types SPEC §6 promises for a task object.
fn check_task(task: &Value) {
    let object = task.as_object().unwrap_or_else(|| panic!("not an object: {task:#}"));
    for key in [
        "id",
        "repo",
        "branch",
        "commit",
        "state",
        "attempts",
        "runner",
        "exit_code",
        "created_at",
        "started_at",
        "finished_at",
        "summary",
    ] {
        assert!(object.contains_key(key), "{key} missing in {task:#}");
    }
    assert!(task["id"].as_i64().is_some_and(|id| id > 0), "{task:#}");
    for key in ["repo", "branch", "commit"] {
        assert!(task[key].is_string(), "{key} in {task:#}");
    }
    let states = ["pending", "running", "passed", "failed", "error", "aborted"];
    assert!(task["state"].as_str().is_some_and(|state| states.contains(&state)), "{task:#}");
    assert!(task["attempts"].is_u64(), "{task:#}");
    assert!(task["runner"].is_string() || task["runner"].is_null(), "{task:#}");
    assert!(task["exit_code"].is_i64() || task["exit_code"].is_null(), "{task:#}");
    assert!(task["summary"].is_object() || task["summary"].is_null(), "{task:#}");
    rfc3339(&task["created_at"]);
    for key in ["started_at", "finished_at"] {
        if !task[key].is_null() {
            rfc3339(&task[key]);
        }
    }
}

/// Parses an RFC 3339 time, failing the test if it is not one.
fn rfc3339(value: &Value) -> SystemTime {
    let text = value.as_str().unwrap_or_else(|| panic!("time is not a string: {value}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|err| panic!("{text:?} is not RFC 3339: {err}"))
}

#[test]
fn every_json_output_has_the_keys_of_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    // pytest's and cargo's summary lines, added up by the runner.
    let command = "echo '===== 3 passed, 1 skipped in 0.12s ====='; \
                   echo 'test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s'";
    let (repo, commit) = repo_with_test(tmp.path(), command, None);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let addr = dispatcher.addr.as_str();

    let first = submit(addr, &repo, &commit, &[]);
    let task = wait_final(addr, &first);
    check_task(&task);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!((task["attempts"].as_i64(), task["runner"].as_str()), (Some(1), Some("r1")));
    assert_eq!(task["exit_code"], 0);
    assert_eq!(task["summary"], serde_json::json!({"passed": 5, "failed": 0, "skipped": 2}));
    let (created, started, finished) =
        (rfc3339(&task["created_at"]), rfc3339(&task["started_at"]), rfc3339(&task["finished_at"]));
    assert!(created <= started && started <= finished, "{task:#}");

    let rerun = baton_json(addr, &["rerun", &first]);
    assert_eq!(rerun["duplicate"], false, "{rerun:#}");
    let second = rerun["id"].as_i64().unwrap();
    assert!(second > first.parse().unwrap(), "ids increase: {rerun:#}");
    assert_eq!(wait_final(addr, &second.to_string())["state"], "passed");

    // Nobody has this label: the task stays pending until aborted.
    let third = submit(addr, &repo, &commit, &["nobody"]);
    let pending = show(addr, &third).unwrap();
    check_task(&pending);
    assert_eq!(pending["state"], "pending");
    for key in ["runner", "exit_code", "started_at", "finished_at", "summary"] {
        assert_eq!(pending[key], Value::Null, "{key} of a pending task: {pending:#}");
    }
    let aborted = baton_json(addr, &["abort", &third]);
    check_task(&aborted);
    assert_eq!(aborted["state"], "aborted", "{aborted:#}");

    let tasks = baton_json(addr, &["tasks"]);
    let tasks = tasks.as_array().unwrap_or_else(|| panic!("tasks is not an array: {tasks:#}"));
    tasks.iter().for_each(check_task);
    let ids: Vec<String> = tasks.iter().map(|task| task["id"].to_string()).collect();
    assert_eq!(ids, [third.clone(), second.to_string(), first.clone()], "newest first");
    // A commit shows its newest task.
    assert_eq!(show(addr, &commit[..10]).unwrap()["id"].to_string(), third);

    let runners = baton_json(addr, &["runners"]);
    let [runner] = runners.as_array().unwrap_or_else(|| panic!("not an array: {runners:#}")).as_slice()
    else {
        panic!("one runner expected: {runners:#}");
    };
    for key in ["name", "state", "labels", "task", "last_seen"] {
        assert!(runner.as_object().unwrap().contains_key(key), "{key} missing in {runner:#}");
    }
    assert_eq!((runner["name"].as_str(), runner["state"].as_str()), (Some("r1"), Some("idle")), "{runner:#}");
    assert_eq!((&runner["labels"], &runner["task"]), (&serde_json::json!([]), &Value::Null), "{runner:#}");
    rfc3339(&runner["last_seen"]);

    let status = baton_json(addr, &["status"]);
    assert_eq!(status["runners"], serde_json::json!({"idle": 1, "busy": 0, "dead": 0}), "{status:#}");
    assert_eq!(
        status["tasks"],
        serde_json::json!({"pending": 0, "running": 0, "passed": 2, "failed": 0, "error": 0, "aborted": 1}),
        "{status:#}"
    );
}

#[test]
fn output_over_the_cap_is_truncated_with_a_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit) = repo_with_test(tmp.path(), "yes 0123456789 | head -c 5000", None);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--output-cap", "1000"]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);
    assert_eq!(wait_final(&dispatcher.addr, &id)["state"], "passed");

    let mut expected = "0123456789\n".repeat(100).into_bytes();
    expected.truncate(1000);
    expected.extend_from_slice(b"\n[baton: output truncated at 1000 bytes]\n");
    let log = support::stored_log(&dispatcher.data_dir, &id);
    assert_eq!(String::from_utf8_lossy(&log), String::from_utf8_lossy(&expected));
    let output = baton(&dispatcher.addr, &["log", &id]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.stdout, expected);
}

#[test]
fn output_with_any_bytes_is_stored_and_served_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let mut payload: Vec<u8> = (0..=255u8).collect();
    payload.extend_from_slice(b"a:b::\n\n:\r\n\0\xff\xfe not utf-8 \xc3(");
    payload.extend((0..=255u8).rev());
    payload.extend_from_slice(b"no newline at the end \0");
    let (repo, _) = repo_with_test(tmp.path(), "cat payload.bin", None);
    std::fs::write(repo.path.join("payload.bin"), &payload).unwrap();
    let commit = repo.commit(&[], "binary payload");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--output-cap", "1000"]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);
    assert_eq!(wait_final(&dispatcher.addr, &id)["state"], "passed");

    assert!(payload.len() < 1000, "the payload stays under the cap");
    let log = support::stored_log(&dispatcher.data_dir, &id);
    assert!(log == payload, "the log differs:\nexpected {payload:?}\ngot      {log:?}");
    let output = baton(&dispatcher.addr, &["log", &id]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.stdout == payload,
        "baton log differs:\nexpected {payload:?}\ngot      {:?}",
        output.stdout
    );
}

#[test]
fn client_errors_exit_non_zero_with_a_clear_message() {
    // Bind, then drop: nobody listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    for args in [&["status"][..], &["tasks", "--json"], &["show", "1"]] {
        let output = baton(&closed, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "baton {args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot reach the dispatcher at {closed}")),
            "baton {args:?}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "baton {args:?} printed {:?}", output.stdout);
    }

    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    for (args, message) in [
        (&["show", "999999"][..], "no task with id 999999"),
        (&["show", "999999", "--json"], "no task with id 999999"),
        (&["show", "deadbeef"], "no task for commit deadbeef"),
        (&["abort", "999999"], "no task 999999"),
        (&["rerun", "999999"], "no task 999999"),
        (&["log", "999999"], "no task 999999"),
    ] {
        let output = baton(&dispatcher.addr, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "baton {args:?}: {stderr}");
        assert!(stderr.contains(message), "baton {args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "baton {args:?} printed {:?}", output.stdout);
    }
}

/// An example config file of `scripts/config/`, parsed.
fn example_config(name: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/config").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    text.parse().unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Replaces the value of a key the example must already have, so that every
/// key the example sets reaches the daemon.
fn replace(table: &mut toml::Table, key: &str, value: &str) {
    assert!(table.contains_key(key), "the example config has no {key}: {table:#?}");
    table.insert(key.to_string(), toml::Value::String(value.to_string()));
}

/// `/var/lib/<StateDirectory=>` of a unit in `scripts/systemd/`.
fn state_directory(unit: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/systemd").join(unit);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let name = text.lines().find_map(|line| line.strip_prefix("StateDirectory="));
    Path::new("/var/lib").join(name.unwrap_or_else(|| panic!("{unit} has no StateDirectory=")))
}

#[test]
fn the_example_configs_run_the_three_daemons() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name).display().to_string();
    let token = path("token");
    std::fs::write(&token, "an example secret\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "passing test");
    let repo_path = repo.path.display().to_string();

    let mut dispatcher_config = example_config("dispatcher.toml");
    let data_dir = state_directory("baton-dispatcher.service");
    assert_eq!(dispatcher_config["data_dir"].as_str(), data_dir.to_str(), "the unit's state dir");
    replace(&mut dispatcher_config, "listen", "127.0.0.1:0");
    replace(&mut dispatcher_config, "data_dir", &path("data"));
    replace(&mut dispatcher_config, "token_file", &token);
    std::fs::write(path("dispatcher.toml"), dispatcher_config.to_string()).unwrap();
    let args = ["--config", &path("dispatcher.toml"), "--log-format", "json"];
    let dispatcher = Dispatcher::start_with(&tmp.path().join("data"), &args, &[], tmp.path().join("d.log"));
    let addr = dispatcher.addr.as_str();

    let mut runner_config = example_config("runner.toml");
    let work_dir = state_directory("baton-runner.service");
    assert_eq!(runner_config["work_dir"].as_str(), work_dir.to_str(), "the unit's state dir");
    replace(&mut runner_config, "dispatcher", addr);
    replace(&mut runner_config, "work_dir", &path("work"));
    replace(&mut runner_config, "token_file", &token);
    std::fs::write(path("runner.toml"), runner_config.to_string()).unwrap();
    let args = ["--config", &path("runner.toml"), "--log-format", "json"];
    let runner = support::daemon("baton-runner", &args, &[], tmp.path().join("r.log"));

    let mut observer_config = example_config("observer.toml");
    let state_dir = state_directory("baton-observer.service");
    let state_file = observer_config["state_file"].as_str().map(PathBuf::from);
    assert_eq!(
        state_file.as_deref().and_then(Path::parent),
        Some(state_dir.as_path()),
        "the unit's state dir"
    );
    replace(&mut observer_config, "dispatcher", addr);
    replace(&mut observer_config, "state_file", &path("observer.state.json"));
    replace(&mut observer_config, "cache_dir", &path("observer-cache"));
    replace(&mut observer_config, "token_file", &token);
    let repos = observer_config.get_mut("repo").and_then(toml::Value::as_array_mut).expect("[[repo]]");
    let first_repo = repos[0].as_table_mut().expect("a [[repo]] table");
    replace(first_repo, "path", &repo_path);
    replace(first_repo, "clone_url", &repo_path);
    std::fs::write(path("observer.toml"), observer_config.to_string()).unwrap();
    let args = ["--config", &path("observer.toml"), "--log-format", "json"];
    let observer = support::daemon("baton-observer", &args, &[], tmp.path().join("o.log"));

    // The observer submits the commit, the runner passes it, and the client
    // sees it: all three authenticated with the token file.
    let task = wait_for("the commit to pass", || {
        let output = baton(addr, &["show", &commit, "--json", "--token-file", &token]);
        let task: Value = serde_json::from_slice(&output.stdout).ok()?;
        matches!(task["state"].as_str(), Some("passed" | "failed" | "error" | "aborted")).then_some(task)
    });
    assert_eq!(task["state"], "passed", "{task:#}");
    let runners = baton_json(addr, &["runners", "--token-file", &token]);
    let labels = runners[0]["labels"].as_array().cloned().unwrap_or_default();
    let expected: Vec<Value> = runner_config["labels"]
        .as_array()
        .expect("labels in runner.toml")
        .iter()
        .map(|label| Value::from(label.as_str().expect("a label")))
        .collect();
    assert_eq!(labels, expected, "{runners:#}");
    for daemon in [&dispatcher.daemon, &runner, &observer] {
        let log = daemon.log();
        assert!(log_is_json(&log), "the log of {} is not JSON lines:\n{log}", daemon.name);
    }
}

#[test]
fn sigterm_lets_the_running_test_finish_before_the_runner_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let (started, gate) = (tmp.path().join("started"), tmp.path().join("gate"));
    let command = format!(
        "touch {started}; while [ ! -e {gate} ]; do sleep 0.02; done; echo finished",
        started = started.display(),
        gate = gate.display()
    );
    let (repo, commit) = repo_with_test(tmp.path(), &command, None);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let mut runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);
    wait_for("the test to start", || started.exists().then_some(()));

    // What `systemctl stop` does first (KillMode=mixed): SIGTERM to the runner alone.
    runner.signal(libc::SIGTERM);
    // Only the runner's log tells that it has seen the signal.
    wait_for("the runner to start draining", || runner.log().contains("taking no new work").then_some(()));
    std::fs::write(&gate, "").unwrap();
    let status = runner.wait();
    assert!(status.success(), "the runner exited {status}");
    // Had the runner quit at once, its test would have died with it and
    // the task would be pending again.
    let task = show(&dispatcher.addr, &id).unwrap();
    assert_eq!((task["state"].as_str(), task["attempts"].as_i64()), (Some("passed"), Some(1)), "{task:#}");
    let log = String::from_utf8_lossy(&support::stored_log(&dispatcher.data_dir, &id)).into_owned();
    assert_eq!(log, "finished\n");
}

#[test]
fn past_its_drain_timeout_a_stopping_runner_kills_its_test() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("test.pid");
    let command = format!("sleep 600 & echo $$ > {pid_file}; wait", pid_file = pid_file.display());
    let (repo, commit) = repo_with_test(tmp.path(), &command, None);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let mut runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &["--drain-timeout", "200ms"]);
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);
    let shell_pid: i32 = wait_for("the test to record its pid", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });

    let group = procs::pgid(shell_pid).expect("the shell's process group");
    wait_for("the sleep to join the test's group", || (procs::group_members(group).len() >= 3).then_some(()));

    runner.signal(libc::SIGTERM);
    let status = runner.wait();
    assert!(status.success(), "the runner exited {status}");
    wait_for("every process of the test's group to die", || {
        procs::group_members(group).is_empty().then_some(())
    });
    // The abandoned attempt has no result: the task waits for another runner.
    let task = wait_for("the task to be requeued", || {
        show(&dispatcher.addr, &id).filter(|task| task["state"] == "pending")
    });
    assert_eq!(task["attempts"], 1, "{task:#}");
}

#[test]
fn a_runner_killed_outright_takes_its_test_s_whole_group_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("test.pid");
    let command = format!("sleep 600 & echo $$ > {pid_file}; wait", pid_file = pid_file.display());
    let (repo, commit) = repo_with_test(tmp.path(), &command, None);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let mut runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    submit(&dispatcher.addr, &repo, &commit, &[]);
    let shell_pid: i32 = wait_for("the test to record its pid", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    let group = procs::pgid(shell_pid).expect("the shell's process group");
    wait_for("the sleep to join the test's group", || (procs::group_members(group).len() >= 3).then_some(()));

    // The parent-death signal reaches the supervisor, which kills the whole
    // group (and any descendant that left it) before it exits: no restarted
    // runner is needed for that any more (issue 12, item 5).
    runner.kill9();
    wait_for("every process of the test's group to die", || {
        procs::group_members(group).is_empty().then_some(())
    });
}

#[test]
fn an_abort_the_runner_never_saw_still_ends_the_task_when_the_runner_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("test.pid");
    let command = format!("echo $$ > {pid_file}; exec sleep 600", pid_file = pid_file.display());
    let (repo, commit) = repo_with_test(tmp.path(), &command, None);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let mut runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);
    wait_for("the test to start", || pid_file.exists().then_some(()));

    runner.signal(libc::SIGSTOP);
    wait_for("the runner to stop", || (procs::state(runner.pid()) == Some('T')).then_some(()));
    // `abort` waits briefly for the end: the frozen runner never acts, but
    // its loss may be noticed within that wait.
    let answer = baton_json(&dispatcher.addr, &["abort", &id]);
    assert!(matches!(answer["state"].as_str(), Some("running" | "aborted")), "{answer:#}");
    runner.kill9();

    let task = wait_for("the runner's loss to be noticed", || {
        show(&dispatcher.addr, &id).filter(|task| task["state"] != "running")
    });
    // The abort is remembered: the task is not requeued for another runner.
    assert_eq!((task["state"].as_str(), task["attempts"].as_i64()), (Some("aborted"), Some(1)), "{task:#}");
}
