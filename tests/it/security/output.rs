//! Test output: any bytes stored byte for byte, huge output capped, a test
//! that never ends timed out; the runner goes on each time.

use super::*;

#[test]
fn test_output_with_any_bytes_is_stored_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    // Every byte value, invalid UTF-8, NULs, colons, CR/LF, an escape
    // sequence, then 256 KiB of noise: several output chunks.
    let mut payload: Vec<u8> = (0..=255u8).collect();
    payload.extend_from_slice(
        b"\0:\0::\n\r\n\x1b[31mred\x1b[0m\xff\xfe\xc3\x28\xed\xa0\x80 task: 1\nstate: passed\n",
    );
    let mut seed = 0x1234_5678_9abc_def1u64;
    payload.extend(random_bytes(&mut seed, 256 * 1024));
    payload.extend_from_slice(b"\ntrailing bytes without a newline:\0");
    let repo = Repo::init(&tmp.path().join("repo"));
    std::fs::write(repo.path.join("payload.bin"), &payload).unwrap();
    let commit = repo.commit(&[(".baton.toml", "[test]\ncommand = \"cat payload.bin\"\n")], "binary output");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);

    let id = submit(&dispatcher.addr, &[], &repo.path.display().to_string(), &commit).unwrap();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    let stored = crate::support::stored_log(&dispatcher.data_dir, &id);
    assert_bytes_eq(&stored, &payload, "DIR/logs");
    let printed = baton(&dispatcher.addr, &["log", &id]);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    assert_bytes_eq(&printed.stdout, &payload, "baton log");
    let report = support::result_file(&dispatcher.data_dir, &commit);
    assert!(report.ends_with(&payload), "test_results/{commit} does not end with the output");
    assert_still_serving(&dispatcher.addr, &[], &id);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn huge_output_is_capped_and_the_runner_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let cap: usize = 1024 * 1024;
    // 20 MiB of a known pattern, far over the cap and over the frame limit.
    let command = "[test]\ncommand = \"yes 0123456789abcdef | head -c 20971520\"\n";
    let repo = Repo::init(&tmp.path().join("repo"));
    let loud = repo.commit(&[(".baton.toml", command)], "very loud test");
    let quiet = repo.commit(&[(".baton.toml", "[test]\ncommand = \"echo '1 passed, 0 failed'\"\n")], "quiet");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--output-cap", &cap.to_string()]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let repo_arg = repo.path.display().to_string();

    let loud_id = submit(&dispatcher.addr, &[], &repo_arg, &loud).unwrap();
    let quiet_id = submit(&dispatcher.addr, &[], &repo_arg, &quiet).unwrap();
    let task = wait_final(&dispatcher.addr, &loud_id);
    assert_eq!(task["state"], "passed", "{task:#}");
    let stored = crate::support::stored_log(&dispatcher.data_dir, &loud_id);
    let pattern = b"0123456789abcdef\n".repeat(cap / 17 + 1);
    assert_bytes_eq(&stored[..cap.min(stored.len())], &pattern[..cap], "the first bytes up to the cap");
    let marker = &stored[cap.min(stored.len())..];
    assert!(
        String::from_utf8_lossy(marker).contains("truncated"),
        "after the cap: {:?}",
        String::from_utf8_lossy(marker)
    );
    assert!(marker.len() < 200, "{} bytes kept past the cap", marker.len());

    let task = wait_final(&dispatcher.addr, &quiet_id);
    assert_eq!((task["state"].as_str(), task["runner"].as_str()), (Some("passed"), Some("r1")), "{task:#}");
    assert_still_serving(&dispatcher.addr, &[], &loud_id);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn a_test_that_never_ends_times_out_and_the_runner_takes_the_next_task() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("endless.pid");
    let endless =
        format!("[test]\ncommand = \"echo $$ > {}; exec sleep 600\"\ntimeout = \"1s\"\n", pid_file.display());
    let repo = Repo::init(&tmp.path().join("repo"));
    let stuck = repo.commit(&[(".baton.toml", &endless)], "a test that never ends");
    let next = repo.commit(&[(".baton.toml", "[test]\ncommand = \"echo '1 passed, 0 failed'\"\n")], "next");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "only", &[]);
    let repo_arg = repo.path.display().to_string();

    let stuck_id = submit(&dispatcher.addr, &[], &repo_arg, &stuck).unwrap();
    let next_id = submit(&dispatcher.addr, &[], &repo_arg, &next).unwrap();
    let task = wait_final(&dispatcher.addr, &stuck_id);
    assert_eq!(task["state"], "failed", "{task:#}");
    assert_eq!(task["reason"], "timeout", "{task:#}");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    wait_for("the timed-out test process to be killed", || (!procs::alive(pid)).then_some(()));

    let task = wait_final(&dispatcher.addr, &next_id);
    assert_eq!((task["state"].as_str(), task["runner"].as_str()), (Some("passed"), Some("only")), "{task:#}");
    assert_still_serving(&dispatcher.addr, &[], &stuck_id);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}
