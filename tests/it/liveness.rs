//! One liveness model (issue 12, items 2 and 3): a paused dispatcher judges
//! nobody for its own pause, a frozen runner is lost for its silence and
//! never before the window, a network partition shorter than the window
//! requeues nothing and a longer one requeues once, and a refused assignment
//! is not an attempt.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::support::{self, baton_json, baton_with_env, show, wait_final, wait_for, Dispatcher, Repo};

/// Fast heartbeats: a 600 ms window, judged every 50 ms.
const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--heartbeat-misses", "3"];
const INTERVAL: Duration = Duration::from_millis(200);
const WINDOW: Duration = Duration::from_millis(600);

/// A repository whose test prints a line, notes that attempt N started, and
/// (on attempt 1 only) blocks until `go` exists in the gate directory,
/// ignoring SIGTERM while it waits when `stubborn` (so a forgotten attempt
/// keeps its runner's slot for the runner's whole kill grace).
fn gated_repo(root: &Path, name: &str, stubborn: bool) -> (Repo, String, PathBuf) {
    let gate = root.join(format!("gate-{name}"));
    std::fs::create_dir_all(&gate).unwrap();
    let trap = if stubborn { "trap '' TERM; " } else { "" };
    let baton_toml = format!(
        "[test]\ncommand = \"{trap}echo started attempt $BATON_ATTEMPT; touch {gate}/started-$BATON_ATTEMPT; \
         if [ $BATON_ATTEMPT = 1 ]; then while [ ! -e {gate}/go ]; do sleep 0.02; done; fi; \
         echo finished attempt $BATON_ATTEMPT; echo '1 passed, 0 failed'\"\n",
        gate = gate.display()
    );
    let repo = Repo::init(&root.join(format!("repo-{name}")));
    let commit = repo.commit(&[(".baton.toml", &baton_toml)], "gated test");
    (repo, commit, gate)
}

fn wait_started(gate: &Path, attempt: u32) {
    let marker = gate.join(format!("started-{attempt}"));
    wait_for(&format!("attempt {attempt} to start in {}", gate.display()), || marker.exists().then_some(()));
}

fn submit(addr: &str, env: &[(&str, &str)], repo: &Repo, commit: &str) -> String {
    let output = baton_with_env(addr, &["submit", &repo.path.display().to_string(), commit, "--json"], env);
    assert!(output.status.success(), "submit failed: {}", String::from_utf8_lossy(&output.stderr));
    let accepted: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    accepted["id"].as_i64().unwrap().to_string()
}

fn runner_state(addr: &str, name: &str) -> Option<String> {
    runner(addr, name).map(|r| r["state"].as_str().unwrap_or("").to_string())
}

/// The runner `name` as `baton runners` shows it.
fn runner(addr: &str, name: &str) -> Option<serde_json::Value> {
    let runners = baton_json(addr, &["runners"]);
    runners.as_array()?.iter().find(|r| r["name"] == name).cloned()
}

/// When the dispatcher last handled a frame (a pong at least) from the runner `name`.
fn last_seen(addr: &str, name: &str) -> Option<DateTime<Utc>> {
    let runner = runner(addr, name)?;
    let text = runner["last_seen"].as_str()?;
    Some(DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc))
}

#[test]
fn a_paused_dispatcher_declares_no_runner_lost_for_its_own_pause() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let mut gates = Vec::new();
    let mut runners = Vec::new();
    for name in ["r1", "r2"] {
        runners.push(support::runner(tmp.path(), &dispatcher.addr, name, &[]));
        let (repo, commit, gate) = gated_repo(tmp.path(), name, false);
        let id = submit(&dispatcher.addr, &[], &repo, &commit);
        wait_started(&gate, 1);
        gates.push((id, gate));
    }

    // Twice the window, while both tests run.
    dispatcher.daemon.signal(libc::SIGSTOP);
    std::thread::sleep(WINDOW * 2);
    dispatcher.daemon.signal(libc::SIGCONT);
    // The dispatcher judges at every tick while it runs. Once it has heard
    // both runners (their pongs) two windows after its resume, it has run
    // and judged for two windows on what it heard meanwhile: enough to
    // declare them lost, wrongly, as it did before the fix at its first
    // tick. The same machine's clock dates the resume and `last_seen`.
    let judged_after = Utc::now() + WINDOW * 2;
    wait_for("the dispatcher to hear both runners two windows after its pause", || {
        let heard = ["r1", "r2"]
            .iter()
            .all(|name| last_seen(&dispatcher.addr, name).is_some_and(|seen| seen >= judged_after));
        heard.then_some(())
    });
    for name in ["r1", "r2"] {
        assert_eq!(runner_state(&dispatcher.addr, name).as_deref(), Some("busy"), "{name}");
    }

    for (id, gate) in &gates {
        std::fs::write(gate.join("go"), "").unwrap();
        let task = wait_final(&dispatcher.addr, id);
        assert_eq!(
            (task["state"].as_str(), task["attempts"].as_i64()),
            (Some("passed"), Some(1)),
            "{task:#}"
        );
    }
    let log = dispatcher.daemon.log();
    assert!(
        !log.contains("runner lost"),
        "a runner was declared lost for the dispatcher's own pause:\n{log}"
    );
}

#[test]
fn a_frozen_runner_is_lost_for_its_silence_never_before_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit, gate) = gated_repo(tmp.path(), "frozen", false);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let r1 = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &[], &repo, &commit);
    wait_started(&gate, 1);

    r1.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    wait_for("the frozen runner to be declared lost", || {
        (runner_state(&dispatcher.addr, "r1").as_deref() == Some("dead")).then_some(())
    });
    let lost_after = frozen_at.elapsed();
    // Never before the window (the last pong may have come just before the
    // freeze, so the window is a strict lower bound only after one interval
    // of pings). A slow machine only makes it later: no upper bound here;
    // what ended it is read from the dispatcher's log instead.
    assert!(lost_after + INTERVAL >= WINDOW, "declared lost after only {lost_after:?}");
    let log = dispatcher.daemon.log();
    let silent = "no answer to pings for 600ms (3 heartbeats)";
    assert!(
        log.lines().any(|line| line.contains("runner lost") && line.contains("r1") && line.contains(silent)),
        "wanted r1 lost for {silent:?} in the dispatcher's log:\n{log}"
    );
    let task = show(&dispatcher.addr, &id).unwrap();
    assert_eq!(task["state"], "pending", "{task:#}");
    r1.signal(libc::SIGCONT);
}

/// The acceptance scenario of issue 12, item 2: a runner that comes back
/// after losing its attempt is told to forget it while its test still holds
/// the slot (it ignores SIGTERM), so it refuses the next assignment; that
/// refusal must cost nothing, and the runner is not asked again until its
/// slot is free.
#[test]
fn a_refused_assignment_is_not_an_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit, gate) = gated_repo(tmp.path(), "refused", true);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let r1 = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &[], &repo, &commit);
    wait_started(&gate, 1);

    r1.signal(libc::SIGSTOP);
    wait_for("the frozen runner to be declared lost", || {
        (runner_state(&dispatcher.addr, "r1").as_deref() == Some("dead")).then_some(())
    });
    r1.signal(libc::SIGCONT);

    // The only runner comes back: it forgets attempt 1 (which takes its
    // kill grace) and then runs attempt 2, which passes.
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(
        (task["state"].as_str(), task["attempts"].as_i64(), task["runner"].as_str()),
        (Some("passed"), Some(2), Some("r1")),
        "one lost runner costs one attempt, refusals none: {task:#}"
    );
    let log = dispatcher.daemon.log();
    let refusals = log.matches("refused it").count();
    assert!(refusals <= 1, "the runner was asked {refusals} times while its slot was busy:\n{log}");
}

/// Issue 12, item 4: heartbeats are read and answered independently of
/// output. Twenty tests print as fast as they can on four runners of five
/// slots each, with the default heartbeats (a 3 s window, the runner's
/// mirror rule at 6 s); no runner may be taken for a silent one, every task
/// runs once, and every byte is stored.
#[test]
fn twenty_tasks_streaming_output_as_fast_as_they_can_lose_no_runner() {
    const TASKS: usize = 20;
    const BYTES: u64 = 4 * 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dispatcher = Dispatcher::start(&data, &[]);
    let _runners: Vec<_> = (1..=4)
        .map(|n| support::runner(tmp.path(), &dispatcher.addr, &format!("r{n}"), &["--slots", "5"]))
        .collect();
    let repo = Repo::init(&tmp.path().join("repo"));
    let mut ids = Vec::new();
    for n in 0..TASKS {
        let baton_toml = format!(
            "[test]\ncommand = \"yes 'task {n}: 0123456789abcdefghijklmnopqrstuvwxyz' | head -c {BYTES}; \
             echo '1 passed, 0 failed'\"\n"
        );
        let commit = repo.commit(&[(".baton.toml", &baton_toml)], &format!("streaming test {n}"));
        ids.push(submit(&dispatcher.addr, &[], &repo, &commit));
    }
    for id in &ids {
        let task = wait_final(&dispatcher.addr, id);
        assert_eq!(
            (task["state"].as_str(), task["attempts"].as_i64()),
            (Some("passed"), Some(1)),
            "{task:#}"
        );
        let stored = support::baton(&dispatcher.addr, &["log", id]);
        assert!(stored.status.success(), "baton log {id}: {}", String::from_utf8_lossy(&stored.stderr));
        assert_eq!(
            stored.stdout.len() as u64,
            BYTES + "1 passed, 0 failed\n".len() as u64,
            "task {id}'s log"
        );
    }
    let log = dispatcher.daemon.log();
    assert!(!log.contains("runner lost"), "a streaming runner was declared lost:\n{log}");
}

// ------------------------------------------------------------ partitions

/// Heartbeats for partition tests: a 2 s window, wide enough that the
/// half-window cut is far from both edges on a busy machine.
const PARTITION: &[&str] = &["--heartbeat-interval", "500ms", "--heartbeat-misses", "4"];
const PARTITION_WINDOW: Duration = Duration::from_secs(2);

/// A network namespace joined to the host by a veth pair: the host side is
/// `10.213.N.1`, the namespace side `10.213.N.2`. Removed when dropped.
struct Netns {
    name: String,
    host_if: String,
    host_addr: String,
}

impl Netns {
    /// Creates it, or fails the test: CI runs as root and must be able to.
    fn create() -> Netns {
        let n = std::process::id() % 200 + 20;
        let seq = NEXT_NS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("baton-it-{}-{seq}", std::process::id());
        let host_if = format!("bti{n}x{seq}a");
        let ns_if = format!("bti{n}x{seq}b");
        let subnet = format!("10.213.{}", (n + seq * 7) % 250 + 1);
        let netns = Netns { name: name.clone(), host_if: host_if.clone(), host_addr: format!("{subnet}.1") };
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "addr", "add", &format!("{subnet}.2/24"), "dev", &ns_if]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        netns
    }

    /// Cuts the link: packets are dropped, sockets stay open.
    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }

    fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

static NEXT_NS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("running ip(8)");
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}\n(the partition tests need root to make a network namespace; CI runs as root)",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A runner inside the namespace; killed when dropped.
struct NsRunner {
    child: Child,
    log: PathBuf,
}

impl NsRunner {
    fn start(netns: &Netns, root: &Path, addr: &str, name: &str, token: &Path) -> NsRunner {
        let work_dir = root.join(format!("runner-{name}"));
        std::fs::create_dir_all(&work_dir).unwrap();
        let log = root.join(format!("runner-{name}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name])
            .arg(support::bin("baton-runner"))
            .args(["--dispatcher", addr, "--name", name, "--work-dir"])
            .arg(&work_dir)
            .arg("--token-file")
            .arg(token)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting a runner in the namespace");
        NsRunner { child, log }
    }
}

impl Drop for NsRunner {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- log of the namespaced runner -----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dispatcher on the namespace's host address, with a token file (it
/// serves non-loopback peers), plus the environment its clients need.
fn partition_setup(tmp: &Path, netns: &Netns) -> (Dispatcher, PathBuf) {
    let token = tmp.join("token");
    std::fs::write(&token, "a shared secret for the partition tests\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let data_dir = tmp.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let listen = format!("{}:0", netns.host_addr);
    let data_arg = data_dir.display().to_string();
    let token_arg = token.display().to_string();
    let mut args = vec!["--listen", &listen, "--data-dir", &data_arg, "--token-file", &token_arg];
    args.extend(PARTITION);
    let dispatcher = Dispatcher::start_with(&data_dir, &args, &[], tmp.join("dispatcher.log"));
    (dispatcher, token)
}

#[test]
fn a_partition_shorter_than_the_window_requeues_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let netns = Netns::create();
    let (dispatcher, token) = partition_setup(tmp.path(), &netns);
    let token_arg = token.display().to_string();
    let env = [("BATON_TOKEN_FILE", token_arg.as_str())];
    let _runner = NsRunner::start(&netns, tmp.path(), &dispatcher.addr, "ns1", &token);
    let (repo, commit, gate) = gated_repo(tmp.path(), "short", false);
    let id = submit(&dispatcher.addr, &env, &repo, &commit);
    wait_started(&gate, 1);

    for _ in 0..3 {
        netns.cut();
        std::thread::sleep(PARTITION_WINDOW / 2);
        netns.heal();
        // Let heartbeats flow again before the next cut.
        std::thread::sleep(PARTITION_WINDOW);
    }
    std::fs::write(gate.join("go"), "").unwrap();
    let task = wait_for("the task to finish", || {
        let output = baton_with_env(&dispatcher.addr, &["show", &id, "--json"], &env);
        let task: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        matches!(task["state"].as_str(), Some("passed" | "failed" | "error" | "aborted")).then_some(task)
    });
    assert_eq!((task["state"].as_str(), task["attempts"].as_i64()), (Some("passed"), Some(1)), "{task:#}");
    let log = dispatcher.daemon.log();
    assert!(!log.contains("runner lost"), "a partition shorter than the window requeued:\n{log}");
}

#[test]
fn a_partition_longer_than_the_window_requeues_once_and_the_late_result_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let netns = Netns::create();
    let (dispatcher, token) = partition_setup(tmp.path(), &netns);
    let token_arg = token.display().to_string();
    let env = [("BATON_TOKEN_FILE", token_arg.as_str())];
    let _cut_off = NsRunner::start(&netns, tmp.path(), &dispatcher.addr, "ns1", &token);
    let (repo, commit, gate) = gated_repo(tmp.path(), "long", false);
    let id = submit(&dispatcher.addr, &env, &repo, &commit);
    wait_started(&gate, 1);

    netns.cut();
    // A second runner, on the host side, is there to take the task over.
    let _r2 = support::runner(tmp.path(), &dispatcher.addr, "r2", &["--token-file", &token_arg]);
    let task = wait_for("the task to run again elsewhere", || {
        let output = baton_with_env(&dispatcher.addr, &["show", &id, "--json"], &env);
        let task: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        (task["state"] == "passed").then_some(task)
    });
    assert_eq!((task["attempts"].as_i64(), task["runner"].as_str()), (Some(2), Some("r2")), "{task:#}");
    std::thread::sleep(PARTITION_WINDOW);
    netns.heal();
    // The cut-off attempt finishes; its runner delivers a result that must
    // not replace the recorded one.
    std::fs::write(gate.join("go"), "").unwrap();
    let spool = tmp.path().join("runner-ns1/spool");
    wait_for("the cut-off runner to discard its stale attempt", || {
        let empty = std::fs::read_dir(&spool).map(|mut entries| entries.next().is_none()).unwrap_or(true);
        empty.then_some(())
    });
    let output = baton_with_env(&dispatcher.addr, &["show", &id, "--json"], &env);
    let task: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (task["state"].as_str(), task["attempts"].as_i64(), task["runner"].as_str()),
        (Some("passed"), Some(2), Some("r2")),
        "{task:#}"
    );
    let log = dispatcher.daemon.log();
    assert_eq!(log.matches("task requeued").count(), 1, "requeued more than once:\n{log}");
}
