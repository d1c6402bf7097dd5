//! The chaos test of issue 3: a stream of commits whose tests take a random
//! time and sometimes fail, while the dispatcher (twice), runners (twice) and
//! the observer (once) are killed with `kill -9` and restarted. At the end,
//! every commit has exactly one task, in the state its test deserves, with a
//! result file, and the database is intact. Seeded, bounded in time.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::{self, baton_json, wait_for, Dispatcher, Repo};

const COMMITS: usize = 30;
const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--heartbeat-misses", "3", "--max-attempts", "10"];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn nothing_is_lost_while_every_daemon_is_killed_and_restarted() {
    let seed = std::env::var("BATON_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_ba70);
    eprintln!("chaos seed {seed} (set BATON_CHAOS_SEED to replay)");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let mut dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let mut runners: Vec<support::Daemon> = ["r1", "r2", "r3"]
        .iter()
        .map(|name| support::runner(tmp.path(), &dispatcher.addr, name, &[]))
        .collect();
    let observe = |addr: &str| support::observer(tmp.path(), addr, &repo.path, &["--poll", "50ms"]);
    let mut observer = observe(&dispatcher.addr);

    let mut expected: HashMap<String, &str> = HashMap::new();
    for idx in 0..COMMITS {
        let passes = rng.below(4) != 0;
        let millis = 50 + rng.below(1500);
        let command = format!(
            "[test]\ncommand = \"sleep {}.{:03}; echo commit {idx}; exit {}\"\n",
            millis / 1000,
            millis % 1000,
            if passes { 0 } else { 1 }
        );
        let commit = repo.commit(&[(".baton.toml", &command)], &format!("commit {idx}"));
        expected.insert(commit, if passes { "passed" } else { "failed" });
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        match idx {
            8 | 20 => {
                eprintln!("chaos: kill -9 the dispatcher after commit {idx}");
                dispatcher.restart(FAST);
            }
            5 | 15 => {
                let victim = rng.below(runners.len() as u64) as usize;
                let name = ["r1", "r2", "r3"][victim];
                eprintln!("chaos: kill -9 runner {name} after commit {idx}");
                runners[victim].kill9();
                runners[victim] = support::runner(tmp.path(), &dispatcher.addr, name, &[]);
            }
            12 => {
                eprintln!("chaos: kill -9 the observer after commit {idx}");
                observer.kill9();
                observer = observe(&dispatcher.addr);
            }
            _ => {}
        }
    }

    let tasks = wait_for("every commit to reach a final state", || {
        let tasks = baton_json(&dispatcher.addr, &["tasks", "--limit", "1000"]);
        let tasks = tasks.as_array()?.clone();
        let done = tasks.len() >= COMMITS
            && tasks.iter().all(|task| {
                matches!(task["state"].as_str(), Some("passed" | "failed" | "error" | "aborted"))
            });
        done.then_some(tasks)
    });
    let mut seen: HashMap<String, usize> = HashMap::new();
    for task in &tasks {
        let commit = task["commit"].as_str().unwrap().to_string();
        *seen.entry(commit.clone()).or_default() += 1;
        let want = expected.get(&commit).unwrap_or_else(|| panic!("task for an unknown commit: {task:#}"));
        assert_eq!(task["state"].as_str(), Some(*want), "{task:#}");
        support::result_file(&dispatcher.data_dir, &commit);
    }
    assert_eq!(seen.len(), COMMITS, "every commit has a task");
    assert!(seen.values().all(|count| *count == 1), "one task per commit: {seen:?}");
    let results = std::fs::read_dir(dispatcher.data_dir.join("test_results")).unwrap();
    assert_eq!(
        results
            .filter(|entry| !entry.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .count(),
        COMMITS
    );

    drop(observer);
    drop(runners);
    dispatcher.daemon.terminate();
    let store =
        dispatcher::store::Store::open(&dispatcher.data_dir.join("baton.db"), dispatcher::store::Sync::Full)
            .unwrap();
    assert!(store.integrity_ok().unwrap(), "PRAGMA integrity_check failed");
    assert!(store.live_tasks().unwrap().is_empty(), "no task left pending or running");
}
