//! `baton-runner-manager` with the real binaries: pools that grow with the
//! work and shrink when idle, labels no pool serves, runners killed, the
//! manager killed and restarted, and the command driver.

use std::path::{Path, PathBuf};

use harness::procs;
use serde_json::Value;

use crate::support::{self, baton_json, wait_final, wait_for, Daemon, Dispatcher, Repo};

/// The manager's runners outlive it on purpose (a restart adopts them), so
/// each test kills every runner recorded under its work root when it ends.
struct Fleet {
    root: PathBuf,
}

impl Fleet {
    fn new(root: &Path) -> Fleet {
        std::fs::create_dir_all(root).unwrap();
        Fleet { root: root.to_path_buf() }
    }

    /// The pid recorded for each runner, by name.
    fn pids(&self) -> Vec<(String, i32)> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(&self.root).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Ok(text) = std::fs::read_to_string(entry.path().join("manager.pid")) else { continue };
            if let Some(pid) = text.split_whitespace().next().and_then(|pid| pid.parse().ok()) {
                pids.push((name, pid));
            }
        }
        pids.sort();
        pids
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, pid) in self.pids() {
            // Only processes that are ours: a runner whose command line names
            // this test's work root.
            procs::kill_if_cmdline_contains(pid, &self.root.to_string_lossy());
        }
    }
}

fn manager(tmp: &Path, addr: &str, root: &Path, args: &[&str]) -> Daemon {
    let root_arg = root.display().to_string();
    let mut all = vec!["--dispatcher", addr, "--work-root", &root_arg];
    all.extend(args);
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let log = tmp.join(format!("manager-{}.log", NEXT.fetch_add(1, Ordering::Relaxed)));
    support::daemon("baton-runner-manager", &all, &[], log)
}

/// `status --json`'s pool named `name`, once a manager reports it.
fn pool(addr: &str, name: &str) -> Option<Value> {
    let status = baton_json(addr, &["status"]);
    status["pools"].as_array()?.iter().find(|pool| pool["name"] == name).cloned()
}

/// Connected runners (`baton runners --json`, not dead) with their states.
fn live_runners(addr: &str) -> Vec<Value> {
    let runners = baton_json(addr, &["runners"]);
    runners.as_array().unwrap().iter().filter(|runner| runner["state"] != "dead").cloned().collect()
}

/// A commit whose test blocks until `gate` exists, then passes.
fn gated_commits(repo: &Repo, gate: &Path, count: usize) -> Vec<String> {
    let baton_toml = format!(
        "[test]\ncommand = \"while [ ! -e {gate} ]; do sleep 0.05; done; echo '1 passed, 0 failed'\"\n",
        gate = gate.display()
    );
    (0..count).map(|idx| repo.commit(&[(".baton.toml", &baton_toml)], &format!("gated {idx}"))).collect()
}

fn submit(addr: &str, repo: &Repo, commit: &str, labels: &[&str]) -> String {
    let repo_arg = repo.path.display().to_string();
    let mut args = vec!["submit", &repo_arg, commit];
    for label in labels {
        args.extend(["--label", label]);
    }
    baton_json(addr, &args)["id"].as_i64().unwrap().to_string()
}

#[test]
fn a_burst_scales_a_pool_to_max_and_idle_runners_go_back_to_min() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runners");
    let fleet = Fleet::new(&root);
    let repo = Repo::init(&tmp.path().join("repo"));
    let gate = tmp.path().join("gate");
    let commits = gated_commits(&repo, &gate, 5);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _manager =
        manager(tmp.path(), &dispatcher.addr, &root, &["--pool", "ci:linux:1:3", "--idle-timeout", "1s"]);

    wait_for("the pool at MIN", || pool(&dispatcher.addr, "ci").filter(|pool| pool["size"] == 1));
    wait_for("the MIN runner to register", || (live_runners(&dispatcher.addr).len() == 1).then_some(()));
    let ids: Vec<String> =
        commits.iter().map(|commit| submit(&dispatcher.addr, &repo, commit, &[])).collect();

    let mut most = 0;
    let busy = wait_for("three busy runners", || {
        let runners = live_runners(&dispatcher.addr);
        most = most.max(runners.len());
        let busy: Vec<String> = runners
            .iter()
            .filter(|runner| runner["state"] == "busy")
            .map(|runner| runner["name"].as_str().unwrap().to_string())
            .collect();
        (busy.len() == 3).then_some(busy)
    });
    let mut names = busy.clone();
    names.sort();
    assert_eq!(names, ["ci-1", "ci-2", "ci-3"]);
    let status = baton_json(&dispatcher.addr, &["status"]);
    let pool_json = &status["pools"][0];
    assert_eq!((pool_json["size"].as_u64(), pool_json["busy"].as_u64()), (Some(3), Some(3)), "{status:#}");
    assert_eq!((pool_json["min"].as_u64(), pool_json["max"].as_u64()), (Some(1), Some(3)), "{status:#}");
    assert_eq!(pool_json["pending"], 2, "{status:#}");
    let runners = baton_json(&dispatcher.addr, &["runners"]);
    assert!(runners.as_array().unwrap().iter().all(|runner| runner["pool"] == "ci"), "{runners:#}");

    std::fs::write(&gate, "").unwrap();
    for id in &ids {
        let task = wait_final(&dispatcher.addr, id);
        assert_eq!(task["state"], "passed", "{task:#}");
        assert_eq!(task["attempts"], 1, "a runner was stopped under its task: {task:#}");
    }
    wait_for("the pool back at MIN", || {
        let pool = pool(&dispatcher.addr, "ci")?;
        let stopped = fleet.pids().len() == 1;
        (pool["size"] == 1 && live_runners(&dispatcher.addr).len() == 1 && stopped).then_some(())
    });
    assert!(most <= 3, "the pool grew past MAX: {most} runners");
}

#[test]
fn a_pool_whose_labels_do_not_match_never_starts_for_a_task() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runners");
    let _fleet = Fleet::new(&root);
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "passing test");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let manager =
        manager(tmp.path(), &dispatcher.addr, &root, &["--pool", "ci:linux:0:2", "--idle-timeout", "1s"]);
    wait_for("the pool", || pool(&dispatcher.addr, "ci"));

    let gpu = submit(&dispatcher.addr, &repo, &commit, &["gpu"]);
    let reason = wait_for("the waiting text", || {
        let task = support::show(&dispatcher.addr, &gpu)?;
        let reason = task["reason"].as_str()?.to_string();
        reason.contains("no runner manager's pool serves").then_some(reason)
    });
    assert!(reason.contains("gpu"), "{reason}");
    wait_for("the manager to log the unservable task", || {
        manager.log().contains("pending tasks need labels no pool serves").then_some(())
    });

    // The manager is live: a task the pool serves gets a runner and passes.
    let linux = submit(&dispatcher.addr, &repo, &commit, &["linux"]);
    let task = wait_final(&dispatcher.addr, &linux);
    assert_eq!(task["state"], "passed", "{task:#}");
    let gpu_task = support::show(&dispatcher.addr, &gpu).unwrap();
    assert_eq!(gpu_task["state"], "pending", "{gpu_task:#}");
    assert_eq!(manager.log().matches("starting a runner").count(), 1, "{}", manager.log());
}

#[test]
fn a_killed_managed_runner_is_replaced_and_its_task_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runners");
    let fleet = Fleet::new(&root);
    let repo = Repo::init(&tmp.path().join("repo"));
    let baton_toml =
        "[test]\ncommand = \"if [ $BATON_ATTEMPT = 1 ]; then exec sleep 600; fi; echo '1 passed'\"\n";
    let commit = repo.commit(&[(".baton.toml", baton_toml)], "slow first attempt");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let _manager =
        manager(tmp.path(), &dispatcher.addr, &root, &["--pool", "ci::0:1", "--idle-timeout", "1m"]);
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);

    wait_for("attempt 1 running", || {
        support::show(&dispatcher.addr, &id)
            .filter(|task| task["state"] == "running" && task["attempts"] == 1)
    });
    let (name, first_pid) = fleet.pids().into_iter().next().expect("a runner pid file");
    assert_eq!(name, "ci-1");
    // SAFETY: kill(2) on the runner the manager started for this test.
    unsafe { libc::kill(first_pid, libc::SIGKILL) };

    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["attempts"], 2, "{task:#}");
    assert_eq!(task["runner"], "ci-1", "the replacement takes the free name: {task:#}");
    let pids = fleet.pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert_ne!(pids[0].1, first_pid, "a new process replaced the killed one");
}

#[test]
fn a_killed_manager_adopts_its_runners_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runners");
    let fleet = Fleet::new(&root);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let args = ["--pool", "ci::2:3", "--idle-timeout", "1s"];
    let mut first = manager(tmp.path(), &dispatcher.addr, &root, &args);
    wait_for("two registered runners", || (live_runners(&dispatcher.addr).len() == 2).then_some(()));
    let before = fleet.pids();
    assert_eq!(before.len(), 2, "{before:?}");
    first.kill9();
    wait_for("the pool to vanish with its manager", || pool(&dispatcher.addr, "ci").is_none().then_some(()));

    let second = manager(tmp.path(), &dispatcher.addr, &root, &args);
    let pool_json = wait_for("the pool reported again", || pool(&dispatcher.addr, "ci"));
    assert_eq!(pool_json["size"], 2, "{pool_json:#}");
    assert_eq!(fleet.pids(), before, "the same runners, no extra ones");
    for (name, pid) in &before {
        assert!(procs::alive(*pid), "{name} ({pid}) died");
    }
    assert_eq!(live_runners(&dispatcher.addr).len(), 2);
    let log = second.log();
    assert_eq!(log.matches("adopting a runner").count(), 2, "{log}");
    assert!(!log.contains("starting a runner"), "{log}");
}

#[test]
fn the_command_driver_runs_the_operator_s_argv_without_a_shell() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runners");
    let fleet = Fleet::new(&root);
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "passing test");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    // A stand-in for `systemctl start baton-runner@{name}`: records its
    // arguments, and starts or stops a real runner with a pid file the way
    // the local driver writes them (so the test's guard cleans it up).
    let argv_log = tmp.path().join("argv.log");
    let script = tmp.path().join("driver.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -eu\nprintf '%s|' \"$@\" >> {argv}\necho >> {argv}\nroot={root}\n\
             if [ \"$1\" = start ]; then\n  mkdir -p \"$root/$2\"\n  \
             {runner} --dispatcher {addr} --work-dir \"$root/$2\" --name \"$2\" >\"$root/$2.log\" 2>&1 &\n  \
             echo \"$! 0\" > \"$root/$2/manager.pid\"\nelse\n  \
             kill \"$(cut -d' ' -f1 \"$root/$2/manager.pid\")\"\nfi\n",
            argv = argv_log.display(),
            root = root.display(),
            runner = support::bin("baton-runner").display(),
            addr = dispatcher.addr,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script_arg = script.display().to_string();
    let start = format!("{script_arg} start {{name}} pool={{pool}}");
    let stop = format!("{script_arg} stop {{name}}");
    let _manager = manager(
        tmp.path(),
        &dispatcher.addr,
        &root,
        &[
            "--pool",
            "ci::0:1",
            "--idle-timeout",
            "1s",
            "--driver",
            "command",
            "--start",
            &start,
            "--stop",
            &stop,
        ],
    );
    let id = submit(&dispatcher.addr, &repo, &commit, &[]);
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["runner"], "ci-1", "{task:#}");
    wait_for("the idle runner to be stopped", || {
        let lines = std::fs::read_to_string(&argv_log).unwrap_or_default();
        (lines.lines().count() == 2).then_some(())
    });
    let lines = std::fs::read_to_string(&argv_log).unwrap();
    assert_eq!(lines, "start|ci-1|pool=ci|\nstop|ci-1|\n");
    wait_for("the runner to go", || live_runners(&dispatcher.addr).is_empty().then_some(()));
    drop(fleet);

    // Hostile pool names are refused before anything starts.
    for hostile in [";rm -rf /:a:0:1", "../x:a:0:1", "{name}:a:0:1"] {
        let output = std::process::Command::new(support::bin("baton-runner-manager"))
            .args(["--work-root", &tmp.path().join("hostile").display().to_string(), "--pool", hostile])
            .env_remove("BATON_POOL")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{hostile:?} accepted");
        assert!(String::from_utf8_lossy(&output.stderr).contains("pool"), "{hostile:?}: {output:?}");
        assert!(!tmp.path().join("hostile").exists());
    }
}
