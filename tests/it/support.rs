//! Helpers that start the real Baton binaries, make real git repositories,
//! and wait for conditions against a deadline (never a fixed sleep).
//!
//! Every daemon gets its own directory in the test's temp dir; its stderr
//! (the tracing log) goes to a file that is printed when the test fails.
//! A [`Daemon`] is killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any wait may take before the test fails. Generous: CI machines
/// are shared and slow, and the waits poll, so passing tests are not slowed.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A path to one of the workspace's binaries, next to the test executable
/// (`scripts/test.sh` builds them first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path
}

/// A running daemon; killed (SIGKILL) when dropped.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|child| child.id() as i32).expect("daemon running")
    }

    /// Sends a signal (for example `libc::SIGSTOP`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we own; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.pid();
        // SAFETY: as in `signal`.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit after SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the daemon to exit by itself (after a signal sent with
    /// [`Daemon::signal`]) and returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() >= deadline {
                self.child = Some(child);
                panic!("{} did not exit", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log());
        }
        self.kill9();
    }
}

fn start(name: &str, program: &str, args: &[String], log: PathBuf, stdout: Stdio) -> (Daemon, Child) {
    start_with_env(name, program, args, &[], log, stdout)
}

/// Starts `program` with exactly `args`. `BATON_*` variables of the test's
/// own environment are removed, so only `env` sets any.
fn start_with_env(
    name: &str,
    program: &str,
    args: &[String],
    env: &[(&str, &str)],
    log: PathBuf,
    stdout: Stdio,
) -> (Daemon, Child) {
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut command = Command::new(bin(program));
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|key| key.starts_with("BATON_")) {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .env("RUST_LOG", "info,dispatcher=debug")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log_file);
    let child = command.spawn().unwrap_or_else(|err| panic!("starting {program}: {err}"));
    (Daemon { name: name.to_string(), child: None, log }, child)
}

/// Starts a runner or an observer with exactly `args` and `env` (no
/// `--dispatcher`, `--work-dir` or `--name` added), logging to `log`.
pub fn daemon(program: &str, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Daemon {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let (mut daemon, child) = start_with_env(program, program, &args, env, log, Stdio::null());
    daemon.child = Some(child);
    daemon
}

/// A dispatcher on a free loopback port (or `listen`), with its data dir.
pub struct Dispatcher {
    pub daemon: Daemon,
    pub addr: String,
    /// The web report service's address (`http: ADDR`, its second line).
    pub http: Option<String>,
    pub data_dir: PathBuf,
}

impl Dispatcher {
    /// Starts `baton-dispatcher --listen 127.0.0.1:0 --data-dir DIR ARGS`.
    pub fn start(data_dir: &Path, args: &[&str]) -> Dispatcher {
        Dispatcher::start_on(data_dir, "127.0.0.1:0", args)
    }

    /// Starts on a given address (to restart on the same port).
    pub fn start_on(data_dir: &Path, listen: &str, args: &[&str]) -> Dispatcher {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let mut all = vec!["--listen", listen, "--data-dir"];
        let data_dir_arg = data_dir.display().to_string();
        all.push(&data_dir_arg);
        if !args.contains(&"--http") {
            all.extend(["--http", "127.0.0.1:0"]);
        }
        all.extend(args);
        let log = data_dir.with_extension(format!("log{}", unique()));
        Dispatcher::start_with(data_dir, &all, &[], log)
    }

    /// Starts `baton-dispatcher` with exactly `args` and `env`, which must
    /// make it keep its data in `data_dir` and listen where it prints.
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Dispatcher {
        let all: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        let (mut daemon, mut child) =
            start_with_env("dispatcher", "baton-dispatcher", &all, env, log, Stdio::piped());
        let stdout = child.stdout.take().expect("piped stdout");
        daemon.child = Some(child);
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut line).expect("reading the dispatcher's address");
        let addr = line.trim().to_string();
        assert!(!addr.is_empty(), "dispatcher printed no address; log:\n{}", daemon.log());
        // Both lines come in one write: the second is already buffered.
        let rest = String::from_utf8_lossy(reader.buffer());
        let http = rest.lines().find_map(|line| line.strip_prefix("http: ")).map(str::to_string);
        Dispatcher { daemon, addr, http, data_dir: data_dir.to_path_buf() }
    }

    /// Restarts on the same address and data dir after the old process is gone.
    pub fn restart(&mut self, args: &[&str]) {
        self.daemon.kill9();
        let addr = self.addr.clone();
        let fresh = Dispatcher::start_on(&self.data_dir, &addr, args);
        *self = fresh;
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Starts `baton-runner` named `name` with its own work dir under `root`.
pub fn runner(root: &Path, addr: &str, name: &str, args: &[&str]) -> Daemon {
    let work_dir = root.join(format!("runner-{name}"));
    std::fs::create_dir_all(&work_dir).expect("work dir");
    let mut all = vec![
        "--dispatcher".to_string(),
        addr.to_string(),
        "--work-dir".to_string(),
        work_dir.display().to_string(),
        "--name".to_string(),
        name.to_string(),
    ];
    all.extend(args.iter().map(|arg| arg.to_string()));
    let log = root.join(format!("runner-{name}.log{}", unique()));
    let (mut daemon, child) = start(&format!("runner {name}"), "baton-runner", &all, log, Stdio::null());
    daemon.child = Some(child);
    daemon
}

/// Starts `baton-observer` on `repo`, keeping its state under `root`.
pub fn observer(root: &Path, addr: &str, repo: &Path, args: &[&str]) -> Daemon {
    let mut all = vec![
        "--dispatcher".to_string(),
        addr.to_string(),
        "--state-file".to_string(),
        root.join("observer.state.json").display().to_string(),
    ];
    all.extend(args.iter().map(|arg| arg.to_string()));
    all.push(repo.display().to_string());
    let log = root.join(format!("observer.log{}", unique()));
    let (mut daemon, child) = start("observer", "baton-observer", &all, log, Stdio::null());
    daemon.child = Some(child);
    daemon
}

/// Runs `baton --dispatcher ADDR ARGS`.
pub fn baton(addr: &str, args: &[&str]) -> Output {
    baton_with_env(addr, args, &[])
}

/// As [`baton`], with extra environment variables (`BATON_TOKEN_FILE`).
pub fn baton_with_env(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin("baton"))
        .arg("--dispatcher")
        .arg(addr)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running baton")
}

/// Runs `baton ... --json` and parses its output; panics with the full
/// output if it fails.
pub fn baton_json(addr: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = baton(addr, &all);
    assert!(
        output.status.success(),
        "baton {all:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!("baton {all:?} printed invalid JSON ({err}):\n{}", String::from_utf8_lossy(&output.stdout))
    })
}

/// `baton show X --json`, or `None` when no task matches.
pub fn show(addr: &str, task: &str) -> Option<Value> {
    let output = baton(addr, &["show", task, "--json"]);
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// Polls `check` every 25 ms until it returns `Some`, failing the test with
/// `what` after [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until the task (id or commit) is in a final state and returns it.
pub fn wait_final(addr: &str, task: &str) -> Value {
    wait_for(&format!("task {task} to finish"), || {
        show(addr, task)
            .filter(|task| matches!(task["state"].as_str(), Some("passed" | "failed" | "error" | "aborted")))
    })
}

/// A git repository with a working tree, made with the git CLI.
pub struct Repo {
    pub path: PathBuf,
}

impl Repo {
    /// `git init -b main` with an identity.
    pub fn init(path: &Path) -> Repo {
        std::fs::create_dir_all(path).expect("repo dir");
        let repo = Repo { path: path.to_path_buf() };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.email", "ci@example.com"]);
        repo.git(&["config", "user.name", "Baton Test"]);
        repo
    }

    /// Runs git in the repository and returns trimmed stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git").arg("-C").arg(&self.path).args(args).output().expect("git");
        assert!(output.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Writes files and commits them; returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, content) in files {
            let path = self.path.join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(&path, content).expect("write");
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A Python unittest file with one test that passes or fails.
pub fn unittest(pass: bool) -> String {
    let assertion = if pass { "self.assertEqual(1 + 1, 2)" } else { "self.assertEqual(1 + 1, 3)" };
    format!("import unittest\n\nclass T(unittest.TestCase):\n    def test_sum(self):\n        {assertion}\n")
}

/// Waits for `DIR/test_results/<commit>` (written just after the task's end
/// is committed) and returns its bytes.
pub fn result_file(data_dir: &Path, commit: &str) -> Vec<u8> {
    let path = data_dir.join("test_results").join(commit);
    wait_for(&format!("{}", path.display()), || std::fs::read(&path).ok())
}
