//! A data dir that fills up (issue 12, items 1 and 2): output is part of the
//! result, so a task is never `passed` with a short or holed log; the
//! dispatcher serves reads and refuses submissions while the disk is full,
//! resumes by itself when space returns, and starts degraded after a
//! restart on the still-full disk.
//!
//! The data dir is a small tmpfs, which needs root. CI runs as root, so a
//! failed mount fails the test; a developer without root opts out with
//! `harness::system::OPT_OUT_VAR`.

use std::io::Write;
use std::path::Path;

use crate::support::{self, baton, baton_json, show, unless_opted_out, wait_for, Dispatcher, Repo, Tmpfs};

/// Lines the test prints before it waits for the gate, and after.
const LINES_BEFORE: usize = 2_000;
const LINES_AFTER: usize = 30_000;

/// The exact bytes the test prints: numbered lines of 100 bytes.
fn expected_output() -> Vec<u8> {
    let mut out = Vec::new();
    for n in 0..LINES_BEFORE + LINES_AFTER {
        out.extend_from_slice(format!("line {n:08} {}\n", "x".repeat(85)).as_bytes());
    }
    out
}

fn generator(gate: &Path) -> String {
    format!(
        "import os, sys, time\n\
         def line(n):\n    return 'line %08d %s\\n' % (n, 'x' * 85)\n\
         for n in range({before}):\n    sys.stdout.write(line(n))\n\
         sys.stdout.flush()\n\
         open('{gate}/started', 'w').close()\n\
         while not os.path.exists('{gate}/go'):\n    time.sleep(0.02)\n\
         for n in range({before}, {total}):\n    sys.stdout.write(line(n))\n    \
         if n % 1000 == 0:\n        sys.stdout.flush()\n\
         sys.stdout.flush()\n",
        before = LINES_BEFORE,
        total = LINES_BEFORE + LINES_AFTER,
        gate = gate.display()
    )
}

#[test]
fn a_full_data_dir_loses_no_output_serves_reads_and_resumes_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let mount_point = tmp.path().join("small");
    let mounted = unless_opted_out(Tmpfs::mount(&mount_point, "16m"), "the full-disk test");
    let Some(_mount) = support::ok(mounted) else { return };
    let data_dir = mount_point.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let data_arg = data_dir.display().to_string();
    let args = ["--listen", "127.0.0.1:0", "--data-dir", &data_arg, "--heartbeat-interval", "200ms"];
    // The dispatcher's own log stays outside the small filesystem.
    let mut dispatcher = Dispatcher::start_with(&data_dir, &args, &[], tmp.path().join("dispatcher.log"));
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);

    let gate = tmp.path().join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(
        &[("gen.py", &generator(&gate)), (".baton.toml", "[test]\ncommand = \"python3 gen.py\"\n")],
        "a test with a lot of output",
    );
    let repo_arg = repo.path.display().to_string();
    let accepted = baton_json(&dispatcher.addr, &["submit", &repo_arg, &commit]);
    let id = accepted["id"].as_i64().unwrap().to_string();
    let before = LINES_BEFORE as u64 * 100;
    let log_path = data_dir.join(format!("logs/{id}.log"));
    wait_for("the first output to be stored", || {
        (std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0) >= before).then_some(())
    });

    // Another process fills the disk; then the test writes 3 MB more.
    let filler = mount_point.join("filler");
    fill(&filler);
    std::fs::write(gate.join("go"), "").unwrap();
    let expected = expected_output();

    // The dispatcher notices, says so, and serves reads meanwhile.
    let status = wait_for("the dispatcher to report its data dir full", || {
        let task = show(&dispatcher.addr, &id)?;
        assert_not_passed_short(&task, &data_dir, &id, &expected);
        let status = status_json(&dispatcher.addr)?;
        status["data_dir_full"].is_object().then_some(status)
    });
    assert!(status["data_dir_full"]["bytes_free"].is_u64(), "{status:#}");
    assert_serves_reads(&dispatcher.addr, &id);
    assert_prefix(&data_dir, &id, &expected);
    let refused = baton(&dispatcher.addr, &["submit", &repo_arg, &"c".repeat(40)]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("data dir full"), "{refused:?}");

    // A restart on the still-full disk starts degraded, not dead.
    dispatcher.daemon.kill9();
    let addr = dispatcher.addr.clone();
    let restart_args = ["--listen", &addr, "--data-dir", &data_arg, "--heartbeat-interval", "200ms"];
    dispatcher = Dispatcher::start_with(&data_dir, &restart_args, &[], tmp.path().join("dispatcher2.log"));
    wait_for("the restarted dispatcher to report its data dir full", || {
        status_json(&dispatcher.addr)?["data_dir_full"].is_object().then_some(())
    });
    assert_serves_reads(&dispatcher.addr, &id);
    let task = show(&dispatcher.addr, &id).unwrap();
    assert_not_passed_short(&task, &data_dir, &id, &expected);
    assert_prefix(&data_dir, &id, &expected);

    // Space returns: the dispatcher resumes by itself, gets the rest of the
    // output from the runner's spool, and records the task whole.
    std::fs::remove_file(&filler).unwrap();
    let task = support::wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    // Once passed, the log may already be compressed (`<id>.log.zst`).
    let stored = support::stored_log(&data_dir, &id);
    assert!(
        stored == expected,
        "stored log of {} bytes is not the {} bytes the test wrote",
        stored.len(),
        expected.len()
    );
    wait_for("the dispatcher to leave degraded mode", || {
        status_json(&dispatcher.addr)?["data_dir_full"].is_null().then_some(())
    });
    let accepted = baton_json(&dispatcher.addr, &["submit", &repo_arg, &"d".repeat(40)]);
    assert!(accepted["id"].is_i64(), "{accepted:#}");
}

/// `baton status --json`, or `None` if this call failed (a busy machine);
/// that reads are served is asserted by [`assert_serves_reads`].
fn status_json(addr: &str) -> Option<serde_json::Value> {
    let output = baton(addr, &["status", "--json"]);
    output.status.success().then(|| serde_json::from_slice(&output.stdout).ok()).flatten()
}

/// A task is never `passed` while its stored log is short.
fn assert_not_passed_short(task: &serde_json::Value, data_dir: &Path, id: &str, expected: &[u8]) {
    if task["state"] == "passed" {
        let stored = support::stored_log_if_any(data_dir, id).unwrap_or_default();
        assert!(
            stored == expected,
            "task passed with {} of {} bytes of output: {task:#}",
            stored.len(),
            expected.len()
        );
    }
}

/// The stored log is always a prefix of what the test wrote: no holes.
fn assert_prefix(data_dir: &Path, id: &str, expected: &[u8]) {
    let stored = support::stored_log_if_any(data_dir, id).unwrap_or_default();
    assert!(
        stored.len() <= expected.len() && stored[..] == expected[..stored.len()],
        "the stored log ({} bytes) is not a prefix of the output",
        stored.len()
    );
}

fn assert_serves_reads(addr: &str, id: &str) {
    for args in [&["status"][..], &["tasks"], &["runners"], &["show", id]] {
        let _ = baton_json(addr, args);
    }
    let log = baton(addr, &["log", id]);
    assert!(log.status.success(), "baton log failed: {}", String::from_utf8_lossy(&log.stderr));
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    // Whatever is left is smaller than a chunk: take it too.
    for _ in 0..1024 {
        if file.write_all(&[0u8; 64]).is_err() {
            break;
        }
    }
}
