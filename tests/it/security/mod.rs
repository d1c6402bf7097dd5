//! Security and bad input (issue 6, SPEC §9): hostile bytes, frames and
//! strings, wrong tokens, impostor runners, endless and binary test output,
//! a full disk. Each test attacks the real dispatcher binary and ends by
//! checking that it still serves a normal client and that nothing it
//! acknowledged before the attack was lost.
//!
//! One module per kind of attack. Hostile frames are written by hand over a
//! blocking socket (`raw::Raw`), so they can be what no real peer would send;
//! impostor runners speak the real protocol (`harness::peer::FakeRunner`). Covered elsewhere: a commit that
//! does not exist (`foundation`), runners that vanish or freeze and a
//! dispatcher killed mid-write (`durability`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use harness::peer::FakeRunner;
use harness::procs;
use protocol::codec::encode;
use protocol::handshake::{DispatcherHandshake, Hello, Role};
use protocol::message::{DispatcherToRunner, Held, Outcome, Pong, ResultAck, RunnerToDispatcher, TaskResult};
use protocol::{Name, TaskId, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION};
use serde_json::Value;

use self::raw::{bincode_str, flood, frame, random_bytes, Raw};
use crate::support::{self, baton, baton_with_env, show, wait_final, wait_for, Dispatcher, Repo, PATIENCE};

/// The commit of the task every test submits before its attack.
pub const WITNESS_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
/// Its repository, which no runner could fetch anyway.
pub const WITNESS_REPO: &str = "/srv/git/witness.git";
/// A label no runner in these tests has, so the witness task stays pending.
pub const WITNESS_LABEL: &str = "unserved";

mod disk;
mod hostile_bytes;
mod hostile_strings;
mod impostors;
mod output;
mod raw;
mod tokens;

/// A repository whose test prints a line, blocks until `go` exists in the
/// gate directory, then passes.
pub struct Gated {
    repo: Repo,
    commit: String,
    gate: PathBuf,
}

impl Gated {
    fn new(root: &Path) -> Gated {
        let gate = root.join("gate");
        std::fs::create_dir_all(&gate).unwrap();
        let command = format!(
            "[test]\ncommand = \"echo started; touch {gate}/started; \
             while [ ! -e {gate}/go ]; do sleep 0.02; done; echo finished; echo '1 passed, 0 failed'\"\n",
            gate = gate.display()
        );
        let repo = Repo::init(&root.join("gated"));
        let commit = repo.commit(&[(".baton.toml", &command)], "gated test");
        Gated { repo, commit, gate }
    }

    fn repo_arg(&self) -> String {
        self.repo.path.display().to_string()
    }

    /// Waits until the task's test is running on `runner`.
    fn wait_started(&self, addr: &str, id: &str, runner: &str) {
        let marker = self.gate.join("started");
        wait_for("the gated test to start", || marker.exists().then_some(()));
        let task = show(addr, id).unwrap();
        assert_eq!(
            (task["state"].as_str(), task["runner"].as_str()),
            (Some("running"), Some(runner)),
            "{task:#}"
        );
    }

    fn open(&self) {
        std::fs::write(self.gate.join("go"), "").unwrap();
    }
}

/// Submits a task with `baton submit`; the task id, or the whole output when
/// it failed.
pub fn submit(addr: &str, env: &[(&str, &str)], repo: &str, commit: &str) -> Result<String, Output> {
    let output = baton_with_env(addr, &["submit", repo, commit, "--json"], env);
    if !output.status.success() {
        return Err(output);
    }
    let accepted: Value = serde_json::from_slice(&output.stdout).unwrap();
    Ok(accepted["id"].as_i64().expect("an id").to_string())
}

/// The task each test acknowledges before its attack: pending forever, as
/// it needs a label no runner has (impostor runners included).
pub fn submit_witness(addr: &str, env: &[(&str, &str)]) -> String {
    let args = ["submit", "--label", WITNESS_LABEL, WITNESS_REPO, WITNESS_COMMIT, "--json"];
    let output = baton_with_env(addr, &args, env);
    assert!(output.status.success(), "submitting the witness: {}", String::from_utf8_lossy(&output.stderr));
    let accepted: Value = serde_json::from_slice(&output.stdout).unwrap();
    accepted["id"].as_i64().expect("an id").to_string()
}

/// The dispatcher still answers a normal client and still has the task
/// `id`, in the state and with the commit it had.
pub fn assert_still_serving(addr: &str, env: &[(&str, &str)], id: &str) {
    let status = baton_json_with_env(addr, &["status"], env);
    assert!(status["tasks"].is_object() && status["runners"].is_object(), "{status:#}");
    let task = baton_json_with_env(addr, &["show", id], env);
    assert_eq!(task["id"].to_string(), id, "{task:#}");
    if task["commit"] == WITNESS_COMMIT {
        assert_eq!(
            (task["repo"].as_str(), task["state"].as_str()),
            (Some(WITNESS_REPO), Some("pending")),
            "{task:#}"
        );
    }
}

/// The dispatcher holds exactly one task, `id`: nothing was queued.
pub fn assert_only_task(addr: &str, env: &[(&str, &str)], id: &str) {
    let tasks = baton_json_with_env(addr, &["tasks"], env);
    let ids: Vec<String> = tasks.as_array().unwrap().iter().map(|task| task["id"].to_string()).collect();
    assert_eq!(ids, [id], "tasks were queued: {tasks:#}");
}

pub fn baton_json_with_env(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = baton_with_env(addr, &all, env);
    assert!(output.status.success(), "baton {all:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits until `daemon` has logged `text` (a connection may close before
/// the line about it is written).
pub fn wait_logged(daemon: &support::Daemon, text: &str) {
    wait_for(&format!("{} to log {text:?}", daemon.name), || daemon.log().contains(text).then_some(()));
}

/// A token file readable by its owner only.
pub fn token_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

pub fn hello(version: u32, role: Role, name: &str) -> Hello {
    Hello { version, role, name: Name::new(name).unwrap() }
}

pub fn register(held: Vec<Held>) -> RunnerToDispatcher {
    RunnerToDispatcher::Register(harness::peer::register(Vec::new(), held))
}

/// A result that says the attempt passed.
pub fn passed(task_id: TaskId, attempt: u32) -> TaskResult {
    harness::peer::passed(task_id, attempt)
}

/// Every path under `root` whose file name is `name`.
pub fn find_named(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_name() == name {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                dirs.push(path);
            }
        }
    }
    found
}

/// Compares bytes, reporting the first difference instead of two dumps.
pub fn assert_bytes_eq(got: &[u8], expected: &[u8], what: &str) {
    if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}: got {:?}, expected {:?}", got[at], expected[at]);
    }
    assert_eq!(got.len(), expected.len(), "{what}: length differs");
}

/// Writes zeros to `path` until the filesystem is full.
pub fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(err) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "filling the disk: {err}");
            return;
        }
    }
}
