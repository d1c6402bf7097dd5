//! Git repositories for tests and benchmarks, made and driven with the git
//! CLI (what a developer pushing would use). Every git command goes through
//! [`git`], with a fixed identity and neither user nor system configuration,
//! so the machine's git set-up cannot change what is tested or measured.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use protocol::CommitId;

/// A git repository on disk.
#[derive(Clone, Debug)]
pub struct Repo {
    pub path: PathBuf,
}

impl Repo {
    /// `git init -b main PATH`, with an identity in its config (for git
    /// commands a test runs by other means).
    ///
    /// # Errors
    /// When the directory cannot be made or git fails.
    pub fn init(path: &Path) -> anyhow::Result<Repo> {
        let repo = Repo::create(path, &["init", "-q", "-b", "main"])?;
        repo.run(&["config", "user.email", IDENTITY.1])?;
        repo.run(&["config", "user.name", IDENTITY.0])?;
        Ok(repo)
    }

    /// `git init --bare -b main PATH`: what observers watch and runners fetch.
    ///
    /// # Errors
    /// When the directory cannot be made or git fails.
    pub fn init_bare(path: &Path) -> anyhow::Result<Repo> {
        Repo::create(path, &["init", "-q", "--bare", "-b", "main"])
    }

    /// A working repository whose `origin` is `origin`.
    ///
    /// # Errors
    /// As [`Repo::init`].
    pub fn init_work(path: &Path, origin: &Repo) -> anyhow::Result<Repo> {
        let repo = Repo::init(path)?;
        repo.run(&["remote", "add", "origin", &origin.path.display().to_string()])?;
        Ok(repo)
    }

    fn create(path: &Path, init: &[&str]) -> anyhow::Result<Repo> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let repo = Repo { path: path.to_path_buf() };
        repo.run(init)?;
        Ok(repo)
    }

    /// Runs git in the repository; returns its stdout, trimmed.
    ///
    /// # Errors
    /// As [`git`].
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        git(&self.path, args, None)
    }

    /// As [`Repo::run`], with `input` on git's stdin.
    ///
    /// # Errors
    /// As [`git`].
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> anyhow::Result<String> {
        git(&self.path, args, Some(input))
    }

    /// Writes `files` (path relative to the tree, content), commits
    /// everything (an empty commit when nothing changed) and returns the
    /// commit id.
    ///
    /// # Errors
    /// When writing or git fails.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> anyhow::Result<CommitId> {
        for (relative, content) in files {
            let path = self.path.join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        }
        self.run(&["add", "-A"])?;
        self.run(&["commit", "-q", "--allow-empty", "-m", message])?;
        CommitId::new(self.run(&["rev-parse", "HEAD"])?).map_err(anyhow::Error::msg)
    }

    /// `git push -q origin main`.
    ///
    /// # Errors
    /// When the push fails.
    pub fn push(&self) -> anyhow::Result<()> {
        self.run(&["push", "-q", "origin", "main"]).map(drop)
    }
}

/// Author and committer of every commit made here.
const IDENTITY: (&str, &str) = ("Baton Test", "ci@baton.invalid");

/// Runs `git -C DIR ARGS` (an argument vector, never a shell), with `input`
/// on stdin if given; returns stdout, trimmed.
///
/// # Errors
/// When git cannot start or exits non-zero (its stderr is in the error).
pub fn git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> anyhow::Result<String> {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", IDENTITY.0)
        .env("GIT_AUTHOR_EMAIL", IDENTITY.1)
        .env("GIT_COMMITTER_NAME", IDENTITY.0)
        .env("GIT_COMMITTER_EMAIL", IDENTITY.1)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("running git (is it installed?)")?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input).context("writing to git's stdin")?;
    }
    let output = child.wait_with_output().context("waiting for git")?;
    anyhow::ensure!(
        output.status.success(),
        "git {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
