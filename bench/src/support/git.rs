//! Git repositories for the scenarios, made and driven with the git CLI
//! (what a developer pushing would use), with a fixed identity and neither
//! user nor system configuration, so the machine's git setup cannot change
//! what is measured.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use protocol::CommitId;

/// A git repository driven with the git CLI, with a fixed identity and no
/// user or system configuration.
pub struct Repo {
    pub path: PathBuf,
}

impl Repo {
    /// `git init --bare -b main PATH`: what observers watch and runners fetch.
    ///
    /// # Errors
    /// When git fails.
    pub fn init_bare(path: &Path) -> anyhow::Result<Repo> {
        let repo = Repo { path: path.to_path_buf() };
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        repo.git(&["init", "-q", "--bare", "-b", "main"])?;
        Ok(repo)
    }

    /// A working repository whose `origin` is `origin`.
    ///
    /// # Errors
    /// When git fails.
    pub fn init_work(path: &Path, origin: &Repo) -> anyhow::Result<Repo> {
        let repo = Repo { path: path.to_path_buf() };
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        repo.git(&["init", "-q", "-b", "main"])?;
        repo.git(&["remote", "add", "origin", &origin.path.display().to_string()])?;
        Ok(repo)
    }

    /// Writes `files` (path relative to the tree, content) and commits all.
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
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "-m", message])?;
        let head = self.git(&["rev-parse", "HEAD"])?;
        CommitId::new(head.trim()).map_err(anyhow::Error::msg)
    }

    /// `git push -q origin main`.
    ///
    /// # Errors
    /// When the push fails.
    pub fn push(&self) -> anyhow::Result<()> {
        self.git(&["push", "-q", "origin", "main"]).map(drop)
    }

    /// Runs git in the repository; returns its stdout.
    ///
    /// # Errors
    /// When git cannot start or exits non-zero (its stderr is in the error).
    pub fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "baton-bench")
            .env("GIT_AUTHOR_EMAIL", "bench@baton.invalid")
            .env("GIT_COMMITTER_NAME", "baton-bench")
            .env("GIT_COMMITTER_EMAIL", "bench@baton.invalid")
            .stdin(Stdio::null())
            .output()
            .context("running git (is it installed?)")?;
        anyhow::ensure!(
            output.status.success(),
            "git {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
