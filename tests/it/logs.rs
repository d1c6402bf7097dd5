//! Compressed logs and retention (issue 16, items 4 and 5; SPEC §13): a
//! finished task's log becomes `logs/<task>.log.zst` and reads back byte for
//! byte through `baton log`, `--follow`, HTTP, the task page and
//! `test_results/`; `kill -9` of the dispatcher in the middle of a
//! compression leaves a readable log; `--keep-tasks` prunes the oldest tasks
//! of a repository but never a release's; `--keep-logs` removes old logs and
//! keeps their tasks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{self, baton, baton_json, wait_final, wait_for, Dispatcher, Repo};
use crate::web::get;

/// A test that prints `lines` numbered lines (and, every 1,000 lines, bytes
/// that are not UTF-8 and an escape sequence), the same every time.
fn generator(lines: usize) -> String {
    format!(
        "import sys\nout = sys.stdout.buffer\nfor i in range({lines}):\n    \
         out.write(b'%09d the quick brown fox jumps over the lazy dog\\n' % i)\n    \
         if i % 1000 == 0:\n        out.write(b'\\xff\\xfe\\x00\\x1b[31mred\\x1b[0m\\n')\nout.flush()\n"
    )
}

/// The bytes [`generator`] prints.
fn generated(lines: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..lines {
        bytes.extend_from_slice(format!("{i:09} the quick brown fox jumps over the lazy dog\n").as_bytes());
        if i % 1000 == 0 {
            bytes.extend_from_slice(b"\xff\xfe\x00\x1b[31mred\x1b[0m\n");
        }
    }
    bytes
}

/// Commits a test printing `lines` lines, submits it and returns its id.
fn submit_generator(repo: &Repo, addr: &str, lines: usize) -> String {
    let commit = repo.commit(
        &[("gen.py", &generator(lines)), (".baton.toml", "[test]\ncommand = \"python3 gen.py\"\n")],
        &format!("print {lines} lines"),
    );
    let accepted = baton_json(addr, &["submit", &repo.path.display().to_string(), &commit]);
    accepted["id"].as_i64().expect("a numeric id").to_string()
}

fn log_file(data_dir: &Path, id: &str, suffix: &str) -> PathBuf {
    data_dir.join("logs").join(format!("{id}.log{suffix}"))
}

/// `baton log ID [ARGS]`, which must succeed.
fn baton_log(addr: &str, id: &str, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["log", id];
    all.extend(args);
    let output = baton(addr, &all);
    assert!(output.status.success(), "baton log {id}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

#[track_caller]
fn assert_same(what: &str, got: &[u8], expected: &[u8]) {
    if got != expected {
        let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        panic!(
            "{what}: {} bytes, expected {}; first difference at byte {at}:\ngot:      {:?}\nexpected: {:?}",
            got.len(),
            expected.len(),
            String::from_utf8_lossy(&got[at.min(got.len())..(at + 80).min(got.len())]),
            String::from_utf8_lossy(&expected[at.min(expected.len())..(at + 80).min(expected.len())]),
        );
    }
}

/// Waits until the task's log is compressed and the plain file gone.
fn wait_compressed(data_dir: &Path, id: &str) {
    wait_for(&format!("the log of task {id} to be compressed"), || {
        (log_file(data_dir, id, ".zst").exists() && !log_file(data_dir, id, "").exists()).then_some(())
    });
}

#[test]
fn a_finished_log_is_compressed_and_reads_back_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let lines = 20_000;
    let expected = generated(lines);
    let id = submit_generator(&repo, &dispatcher.addr, lines);
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    let data_dir = &dispatcher.data_dir;
    wait_compressed(data_dir, &id);
    let compressed = std::fs::metadata(log_file(data_dir, &id, ".zst")).unwrap().len();
    assert!(
        compressed < expected.len() as u64 / 4,
        "{compressed} compressed bytes for {} plain ones",
        expected.len()
    );

    assert_same("baton log", &baton_log(&dispatcher.addr, &id, &[]), &expected);
    assert_same("baton log --follow", &baton_log(&dispatcher.addr, &id, &["--follow"]), &expected);
    let http = dispatcher.http.as_deref().expect("the web service runs");
    let answer = get(http, &format!("/api/v1/tasks/{id}/log"));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_same("GET /api/v1/tasks/ID/log", &answer.body, &expected);
    let answer = get(http, &format!("/api/v1/tasks/{id}/log?follow=1"));
    assert_same("GET /api/v1/tasks/ID/log?follow=1", &answer.body, &expected);
    let page = get(http, &format!("/tasks/{id}"));
    assert_eq!(page.status, 200);
    let last_line = format!("{:09} the quick brown fox", lines - 1);
    assert!(page.text().contains(&last_line), "the task page lacks its log's last line");

    // The result file holds the log after its header.
    let commit = task["commit"].as_str().unwrap();
    let result = support::result_file(data_dir, commit);
    assert!(result.ends_with(&expected), "test_results/{commit} does not end with the log");

    // A restart reads the compressed log as well, and leaves it compressed.
    let mut dispatcher = dispatcher;
    dispatcher.restart(&[]);
    assert_same("baton log after a restart", &baton_log(&dispatcher.addr, &id, &[]), &expected);
    assert!(!log_file(&dispatcher.data_dir, &id, "").exists());
}

#[test]
fn kill_9_during_a_compression_leaves_a_readable_log() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let mut dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    // About 38 MB: compressing it takes seconds in a debug build, long
    // enough to be cut short.
    let lines = 700_000;
    let expected = generated(lines);
    let id = submit_generator(&repo, &dispatcher.addr, lines);
    let data_dir = dispatcher.data_dir.clone();
    let tmp_file = log_file(&data_dir, &id, ".zst.tmp");
    // Polled tightly: the window is the compression's time.
    let deadline = std::time::Instant::now() + support::PATIENCE * 4;
    while !tmp_file.exists() {
        assert!(
            !log_file(&data_dir, &id, ".zst").exists(),
            "the compression ended before the test could interrupt it"
        );
        assert!(std::time::Instant::now() < deadline, "no compression of task {id} started");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(runner);
    dispatcher.restart(&[]);
    // Readable at once, whichever file it is in now.
    assert_same("baton log after kill -9", &baton_log(&dispatcher.addr, &id, &[]), &expected);
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    // The restart finishes the job: compressed, no plain file, no leftover.
    wait_compressed(&data_dir, &id);
    wait_for("the stale temporary file to go", || (!tmp_file.exists()).then_some(()));
    assert_same("baton log once compressed", &baton_log(&dispatcher.addr, &id, &[]), &expected);
}

/// Commits a test that passes or fails (each commit distinct), submits it on
/// `branch` and waits for its end; returns the task's id and commit.
fn run_task(addr: &str, repo: &Repo, pass: bool, branch: &str, n: usize) -> (i64, String) {
    let commit = repo.commit(
        &[("tests/test_one.py", &support::unittest(pass)), ("n.txt", &n.to_string())],
        &format!("task {n}"),
    );
    let repo_arg = repo.path.display().to_string();
    let accepted = baton_json(addr, &["submit", &repo_arg, &commit, "--branch", branch]);
    let id = accepted["id"].as_i64().expect("a numeric id");
    let task = wait_final(addr, &id.to_string());
    assert_eq!(task["state"], if pass { "passed" } else { "failed" }, "{task:#}");
    (id, commit)
}

fn task_ids(addr: &str, repo: &Repo) -> Vec<i64> {
    let tasks = baton_json(addr, &["tasks", "--repo", &repo.path.display().to_string(), "--limit", "100"]);
    let mut ids: Vec<i64> =
        tasks.as_array().unwrap().iter().map(|task| task["id"].as_i64().unwrap()).collect();
    ids.sort();
    ids
}

#[test]
fn keep_tasks_prunes_the_oldest_tasks_of_a_repository_and_keeps_releases() {
    let tmp = tempfile::tempdir().unwrap();
    let app = Repo::init(&tmp.path().join("app"));
    let lib = Repo::init(&tmp.path().join("lib"));
    let dispatcher =
        Dispatcher::start(&tmp.path().join("data"), &["--keep-tasks", "2", "--prune-interval", "100ms"]);
    let addr = &dispatcher.addr;
    let _runner = support::runner(tmp.path(), addr, "r1", &[]);
    // A passed test of main is release r1; the failures after it are not.
    let (release, _) = run_task(addr, &app, true, "main", 0);
    let (lib_task, _) = run_task(addr, &lib, false, "main", 0);
    let mut failed = Vec::new();
    for n in 1..=4 {
        failed.push(run_task(addr, &app, false, "main", n));
    }
    let releases = baton_json(addr, &["releases"]);
    assert_eq!(releases[0]["task"], release, "{releases:#}");

    let kept = vec![release, failed[2].0, failed[3].0];
    wait_for("app to keep its 2 newest tasks and its release's", || {
        (task_ids(addr, &app) == kept).then_some(())
    });
    assert_eq!(task_ids(addr, &lib), vec![lib_task], "another repository keeps its own 2");
    for (id, commit) in &failed[..2] {
        let id = id.to_string();
        assert!(support::show(addr, &id).is_none(), "task {id} is pruned");
        wait_for("the pruned task's files to go", || {
            let gone =
                [".zst", ""].iter().all(|suffix| !log_file(&dispatcher.data_dir, &id, suffix).exists())
                    && !dispatcher.data_dir.join("test_results").join(commit).exists();
            gone.then_some(())
        });
    }
    for (id, commit) in &failed[2..] {
        assert!(dispatcher.data_dir.join("test_results").join(commit).exists(), "task {id}'s result stays");
        assert!(!baton_log(addr, &id.to_string(), &[]).is_empty());
    }
    // The counts by state follow the rows.
    let status = baton_json(addr, &["status"]);
    assert_eq!(status["tasks"]["failed"], 3, "{status:#}");
    assert_eq!(status["tasks"]["passed"], 1, "{status:#}");
    assert!(status["data_dir_bytes"].as_u64().is_some_and(|bytes| bytes > 0), "{status:#}");
}

#[test]
fn keep_logs_removes_old_logs_and_keeps_their_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let dispatcher =
        Dispatcher::start(&tmp.path().join("data"), &["--keep-logs", "1s", "--prune-interval", "100ms"]);
    let addr = &dispatcher.addr;
    let _runner = support::runner(tmp.path(), addr, "r1", &[]);
    let (old, _) = run_task(addr, &repo, true, "feature", 0);
    let old_id = old.to_string();
    wait_for("the old log to be pruned", || {
        let gone =
            [".zst", ""].iter().all(|suffix| !log_file(&dispatcher.data_dir, &old_id, suffix).exists());
        gone.then_some(())
    });
    let task = support::show(addr, &old_id).expect("the task stays");
    assert_eq!(task["state"], "passed");
    let output = baton(addr, &["log", &old_id]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("pruned"), "baton log of a pruned log: {stderr}");
    let http = dispatcher.http.as_deref().expect("the web service runs");
    get(http, &format!("/api/v1/tasks/{old_id}/log")).assert_error(410);
    // A release's log is kept, however old: a task that ended after it has
    // its log pruned, so the release's was old enough too.
    let (release, _) = run_task(addr, &repo, true, "main", 1);
    let (later, _) = run_task(addr, &repo, false, "feature", 2);
    let later = later.to_string();
    wait_for("a later log to be pruned", || {
        let gone = [".zst", ""].iter().all(|suffix| !log_file(&dispatcher.data_dir, &later, suffix).exists());
        gone.then_some(())
    });
    let log = baton_log(addr, &release.to_string(), &[]);
    assert!(String::from_utf8_lossy(&log).contains("OK"), "{}", String::from_utf8_lossy(&log));
}
