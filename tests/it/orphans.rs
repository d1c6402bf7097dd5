//! Nothing outlives a runner (issue 12, item 5): a test that leaves a
//! background `sleep`, a forking `sh -c` and a daemon that double-forked and
//! called `setsid` leaves no process behind when its runner is killed with
//! `kill -9`, nor when it times out.
//! Processes are told apart from other tests' by a marker in their
//! environment.

use std::path::Path;

use harness::procs::{self, marked};

use crate::support::{self, baton_json, wait_final, wait_for, Dispatcher, Repo, PATIENCE};

const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--heartbeat-misses", "3"];

/// A repository whose test, run as `sh -c 'sh test.sh'`, starts a background
/// `sleep 60`, a `setsid` daemon through a double fork, and a foreground
/// `python3` that sleeps; `ready` and `daemon` appear in `gate` once all run.
fn escaping_repo(root: &Path, marker: &str, timeout: Option<&str>) -> (Repo, String) {
    let gate = root.join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let gate = gate.display();
    let mark_var = procs::MARK_VAR;
    let script = format!(
        "export {mark_var}={marker}\n\
         sleep 60 &\n\
         python3 -c 'import os,time\n\
         if os.fork(): os._exit(0)\n\
         os.setsid()\n\
         if os.fork(): os._exit(0)\n\
         open(\"{gate}/daemon\",\"w\").close()\n\
         time.sleep(60)' </dev/null >/dev/null 2>&1\n\
         while [ ! -e {gate}/daemon ]; do sleep 0.05; done\n\
         touch {gate}/ready\n\
         echo escaped\n\
         python3 -c 'import time; time.sleep(60)'\n"
    );
    let timeout = timeout.map(|timeout| format!("timeout = \"{timeout}\"\n")).unwrap_or_default();
    let baton_toml = format!("[test]\ncommand = \"sh test.sh\"\n{timeout}");
    let repo = Repo::init(&root.join("repo"));
    let commit = repo.commit(&[("test.sh", &script), (".baton.toml", &baton_toml)], "escaping test");
    (repo, commit)
}

fn assert_none_left(marker: &str) {
    let gone = harness::wait_for("the test's processes to end", PATIENCE, || {
        marked(marker).is_empty().then_some(())
    });
    if let Err(err) = gone {
        let commands: Vec<String> =
            marked(marker).iter().map(|pid| format!("{pid}: {}", procs::cmdline(*pid))).collect();
        panic!("{err:#}: processes of the test outlived it:\n{}", commands.join("\n"));
    }
}

fn unique_marker(root: &Path) -> String {
    let dir = root.file_name().unwrap().to_string_lossy().into_owned();
    format!("{}-{dir}", std::process::id())
}

#[test]
fn kill_9_of_a_runner_leaves_no_process_of_its_test() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = unique_marker(tmp.path());
    let (repo, commit) = escaping_repo(tmp.path(), &marker, None);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let mut runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    baton_json(&dispatcher.addr, &["submit", &repo.path.display().to_string(), &commit]);
    let gate = tmp.path().join("gate");
    wait_for("the test and its daemon to start", || {
        (gate.join("ready").exists() && gate.join("daemon").exists()).then_some(())
    });
    // The script's shell, the background sleep and the setsid daemon at
    // least (the foreground python may still be starting).
    wait_for("the test's processes to be seen", || (marked(&marker).len() >= 3).then_some(()));

    runner.kill9();
    assert_none_left(&marker);
}

#[test]
fn a_timeout_leaves_no_process_of_the_test() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = unique_marker(tmp.path());
    let (repo, commit) = escaping_repo(tmp.path(), &marker, Some("20s"));
    // The default heartbeat: this test is not about liveness.
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    baton_json(&dispatcher.addr, &["submit", &repo.path.display().to_string(), &commit]);
    let task = wait_final(&dispatcher.addr, &commit);
    assert_eq!(task["state"], "failed", "{task:#}");
    assert!(tmp.path().join("gate/ready").exists(), "the daemon never started");
    assert_none_left(&marker);
}
