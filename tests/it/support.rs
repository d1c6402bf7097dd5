//! The tests' face of the `harness` crate: the same binaries, guards, git
//! repositories and deadlines as the benchmark, with errors turned into
//! panics that print the whole chain, plus what only tests need (running
//! `baton` and reading its JSON).
//!
//! Every daemon gets its own directory in the test's temp dir; its stderr
//! (the tracing log) goes to a file that is printed when the test fails.
//! A [`Daemon`] is killed when dropped.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

pub use harness::system::{unless_opted_out, Netns, Tmpfs};
pub use harness::PATIENCE;
use harness::{Bins, Launch};
use serde_json::Value;

/// Unwraps a harness result, panicking with the whole error chain.
pub fn ok<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|err| panic!("{err:#}"))
}

/// A path to one of the workspace's binaries, next to the test executable
/// (`scripts/test.sh` builds them first).
pub fn bin(name: &str) -> PathBuf {
    ok(Bins::locate().and_then(|bins| bins.path(name)))
}

/// A running daemon; killed (SIGKILL) when dropped. Derefs to
/// [`harness::Daemon`] (`name`, `log()`, `log_path()`).
pub struct Daemon(pub harness::Daemon);

impl Deref for Daemon {
    type Target = harness::Daemon;
    fn deref(&self) -> &harness::Daemon {
        &self.0
    }
}

impl DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut harness::Daemon {
        &mut self.0
    }
}

impl Daemon {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.0.pid().expect("daemon running")
    }

    /// Sends a signal (for example `libc::SIGSTOP`).
    pub fn signal(&self, signal: i32) {
        ok(self.0.signal(signal));
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        self.0.kill();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        ok(self.0.terminate(PATIENCE))
    }

    /// Waits for the daemon to exit by itself (after a signal sent with
    /// [`Daemon::signal`]) and returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        ok(self.0.wait(PATIENCE))
    }
}

/// Starts `program` with exactly `args` and `env` (plus the tests' log
/// filter), under `name`.
fn start(
    name: &str,
    program: &str,
    args: Vec<String>,
    env: &[(&str, &str)],
    log: PathBuf,
    stdout: bool,
) -> Daemon {
    let mut launch = Launch::new(program, &args, &log);
    launch.name = name.to_string();
    launch.stdout = stdout;
    start_launch(launch, env)
}

fn start_launch(mut launch: Launch, env: &[(&str, &str)]) -> Daemon {
    launch.env.push(("RUST_LOG".into(), "info,dispatcher=debug".into()));
    launch.env.extend(env.iter().map(|(key, value)| (key.to_string(), value.to_string())));
    Daemon(ok(Bins::locate().and_then(|bins| harness::Daemon::spawn(&bins, launch))))
}

/// Starts a runner or an observer with exactly `args` and `env` (no
/// `--dispatcher`, `--work-dir` or `--name` added), logging to `log`.
pub fn daemon(program: &str, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Daemon {
    start(program, program, strings(args), env, log, false)
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
    /// make it keep its data in `data_dir` and listen where it prints. The
    /// web service's address is read when `args` name one (`--http ADDR`):
    /// on its default address it may not run (the port may be taken).
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Dispatcher {
        let daemon = start("dispatcher", "baton-dispatcher", strings(args), env, log, true);
        Dispatcher::read_addresses(daemon, data_dir, args)
    }

    /// Reads the address the dispatcher prints, then its `http: ADDR` line
    /// when `args` ask for the web service on an address of their own.
    fn read_addresses(mut daemon: Daemon, data_dir: &Path, args: &[&str]) -> Dispatcher {
        let web = args.windows(2).any(|pair| pair[0] == "--http" && pair[1] != "off");
        let web_line = |line: &String| line.strip_prefix("http: ").map(str::to_string);
        let lines = ok(daemon.stdout_lines(PATIENCE, |lines| {
            !lines.is_empty() && (!web || lines.iter().any(|line| web_line(line).is_some()))
        }));
        let http = lines.iter().find_map(web_line);
        Dispatcher { daemon, addr: lines[0].clone(), http, data_dir: data_dir.to_path_buf() }
    }

    /// Starts `baton-dispatcher --listen 0.0.0.0:0 --data-dir DIR ARGS`
    /// inside `netns`; its printed address is `0.0.0.0:PORT`.
    pub fn start_in(netns: &Netns, data_dir: &Path, args: &[&str]) -> Dispatcher {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let mut all = strings(&["--listen", "0.0.0.0:0", "--data-dir", &data_dir.display().to_string()]);
        all.extend(strings(args));
        let log = data_dir.with_extension(format!("log{}", unique()));
        let mut launch = Launch::new("baton-dispatcher", &all, &log);
        launch.name = "dispatcher".into();
        launch.stdout = true;
        launch.netns = Some(netns.path().to_path_buf());
        let daemon = start_launch(launch, &[]);
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        Dispatcher::read_addresses(daemon, data_dir, &args)
    }

    /// Restarts on the same address and data dir after the old process is gone.
    pub fn restart(&mut self, args: &[&str]) {
        self.daemon.kill9();
        let addr = self.addr.clone();
        let fresh = Dispatcher::start_on(&self.data_dir, &addr, args);
        *self = fresh;
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
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
    let work_dir = work_dir.display().to_string();
    let mut all = strings(&["--dispatcher", addr, "--work-dir", &work_dir, "--name", name]);
    all.extend(strings(args));
    let log = root.join(format!("runner-{name}.log{}", unique()));
    start(&format!("runner {name}"), "baton-runner", all, &[], log, false)
}

/// Starts `baton-observer` on `repo`, keeping its state under `root`.
pub fn observer(root: &Path, addr: &str, repo: &Path, args: &[&str]) -> Daemon {
    let state_file = root.join("observer.state.json").display().to_string();
    let mut all = strings(&["--dispatcher", addr, "--state-file", &state_file]);
    all.extend(strings(args));
    all.push(repo.display().to_string());
    let log = root.join(format!("observer.log{}", unique()));
    start("observer", "baton-observer", all, &[], log, false)
}

/// Runs `baton --dispatcher ADDR ARGS`.
pub fn baton(addr: &str, args: &[&str]) -> Output {
    baton_with_env(addr, args, &[])
}

/// As [`baton`], with extra environment variables (`BATON_TOKEN_FILE`).
pub fn baton_with_env(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    baton_command(addr, args, env).output().expect("running baton")
}

/// The command [`baton_with_env`] runs, for callers that change it further
/// (run it inside a [`Netns`]).
pub fn baton_command(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(bin("baton"));
    command.arg("--dispatcher").arg(addr).args(args).envs(env.iter().copied()).stdin(Stdio::null());
    command
}

/// Runs `baton ... --json` and parses its output; panics with the full
/// output if it fails.
pub fn baton_json(addr: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    json_output(&all, &baton(addr, &all))
}

/// The JSON a successful `baton ALL` printed; panics with the full output
/// if it failed or printed something else.
pub fn json_output(all: &[&str], output: &std::process::Output) -> Value {
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
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    ok(harness::wait_for(what, PATIENCE, check))
}

/// Waits for a child process to exit and returns its status; after
/// [`PATIENCE`], kills it and fails the test.
pub fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    harness::wait::exit(child, PATIENCE, what).unwrap_or_else(|err| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{err:#}")
    })
}

/// Waits until the task (id or commit) is in a final state and returns it.
pub fn wait_final(addr: &str, task: &str) -> Value {
    wait_for(&format!("task {task} to finish"), || {
        show(addr, task)
            .filter(|task| matches!(task["state"].as_str(), Some("passed" | "failed" | "error" | "aborted")))
    })
}

/// A git repository with a working tree, made with the git CLI. Derefs to
/// [`harness::Repo`] (`path`, `run`, `run_with_input`).
pub struct Repo(pub harness::Repo);

impl Deref for Repo {
    type Target = harness::Repo;
    fn deref(&self) -> &harness::Repo {
        &self.0
    }
}

impl Repo {
    /// `git init -b main` with an identity.
    pub fn init(path: &Path) -> Repo {
        Repo(ok(harness::Repo::init(path)))
    }

    /// Runs git in the repository and returns trimmed stdout.
    pub fn git(&self, args: &[&str]) -> String {
        ok(self.0.run(args))
    }

    /// Writes files and commits them; returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        ok(self.0.commit(files, message)).as_str().to_string()
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

/// A task's stored log, `DIR/logs/<id>.log` or, once the task has ended and
/// the dispatcher compressed it, `DIR/logs/<id>.log.zst` decoded; `None`
/// when it has neither.
pub fn stored_log_if_any(data_dir: &Path, id: impl std::fmt::Display) -> Option<Vec<u8>> {
    let logs = data_dir.join("logs");
    // The plain file is removed only after the compressed one is whole.
    if let Ok(bytes) = std::fs::read(logs.join(format!("{id}.log"))) {
        return Some(bytes);
    }
    let file = std::fs::File::open(logs.join(format!("{id}.log.zst"))).ok()?;
    Some(zstd::decode_all(file).expect("decoding a compressed log"))
}

/// As [`stored_log_if_any`], for a log that must be there.
pub fn stored_log(data_dir: &Path, id: impl std::fmt::Display) -> Vec<u8> {
    let shown = id.to_string();
    stored_log_if_any(data_dir, id).unwrap_or_else(|| panic!("task {shown} has no stored log"))
}
