//! Test support: real git repositories made with the `git` command line in
//! temporary folders, isolated from the user's and the system's git config.
//!
//! Commit times increase by one second per commit, so orders that depend on
//! time are the same on every run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};

use protocol::CommitId;

/// Commit times of every test repository, one second apart.
static CLOCK: AtomicI64 = AtomicI64::new(1_700_000_000);

/// A repository in a temporary folder, deleted on drop.
pub struct TestRepo {
    /// Keeps the folder alive.
    _dir: tempfile::TempDir,
    /// The repository (a work tree, or the repository itself when bare).
    pub path: PathBuf,
}

impl TestRepo {
    /// A non-bare repository whose first branch is `main`.
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("creating a temporary folder");
        let path = dir.path().join("work");
        git(dir.path(), &["init", "-q", "-b", "main", path.to_str().expect("utf-8 temp path")]);
        TestRepo { _dir: dir, path }
    }

    /// A bare repository whose HEAD names `head`.
    pub fn bare(head: &str) -> TestRepo {
        let dir = tempfile::tempdir().expect("creating a temporary folder");
        let path = dir.path().join("origin.git");
        git(dir.path(), &["init", "-q", "--bare", "-b", head, path.to_str().expect("utf-8 temp path")]);
        TestRepo { _dir: dir, path }
    }

    /// The canonical path, as the observer resolves it.
    pub fn canonical(&self) -> PathBuf {
        std::fs::canonicalize(&self.path).expect("canonicalising the repository path")
    }

    /// Runs git in the repository and returns its trimmed standard output.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
    }

    /// Makes an empty commit on the current branch and returns its id.
    pub fn commit(&self, message: &str) -> CommitId {
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.rev("HEAD")
    }

    /// Resolves a revision to a commit id.
    pub fn rev(&self, rev: &str) -> CommitId {
        CommitId::new(self.git(&["rev-parse", rev])).expect("git prints commit ids")
    }
}

/// Runs git in `dir` with a fixed identity and clock; panics with git's
/// message when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let time = CLOCK.fetch_add(1, Ordering::Relaxed);
    let date = format!("@{time} +0000");
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .output()
        .expect("running git");
    assert!(output.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("git prints utf-8").trim().to_string()
}
