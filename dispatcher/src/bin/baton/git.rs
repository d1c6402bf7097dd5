//! Resolving a short commit id in a repository the client can read itself,
//! with the git CLI run as an argument vector (never through a shell): what
//! `git rev-parse` accepts is exactly what the user's own git would.
//!
//! A repository the client cannot read (a URL, a path on the dispatcher's
//! host) is left to the dispatcher, which knows the commits of its tasks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use protocol::{CommitId, CommitPrefix, RepoUrl};

/// The local directory of `repo`, when it is one on this machine.
pub fn local_directory(repo: &RepoUrl) -> Option<PathBuf> {
    let path = Path::new(repo.as_str());
    (path.is_absolute() && path.is_dir()).then(|| path.to_path_buf())
}

/// The full id of the one commit `prefix` names in the repository at `dir`,
/// or `None` when `dir` is not a git repository (or git is missing), so the
/// dispatcher may be asked instead.
///
/// # Errors
/// When git reads the repository and the prefix is ambiguous or names no
/// commit.
pub fn resolve(dir: &Path, prefix: &CommitPrefix) -> anyhow::Result<Option<CommitId>> {
    let revision = format!("{prefix}^{{commit}}");
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--verify", "--end-of-options", &revision])
        .stdin(Stdio::null())
        .output();
    let Ok(output) = output else { return Ok(None) };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        let full = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let commit = CommitId::new(full.as_str())
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("git rev-parse printed {full:?}"))?;
        return Ok(Some(commit));
    }
    if stderr.contains("not a git repository") {
        return Ok(None);
    }
    if stderr.contains("ambiguous") {
        let candidates: Vec<&str> = stderr
            .lines()
            .filter_map(|line| line.strip_prefix("hint:"))
            .map(str::trim)
            .filter(|line| line.starts_with(prefix.as_str()))
            .collect();
        anyhow::bail!(
            "commit {prefix} is ambiguous in {}: {}; give more digits",
            dir.display(),
            if candidates.is_empty() {
                "several objects start with it".to_string()
            } else {
                candidates.join("; ")
            }
        );
    }
    anyhow::bail!("no commit {prefix} in {}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_a_repository_is_left_to_the_dispatcher() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = CommitPrefix::new("abcd").unwrap();
        assert_eq!(resolve(dir.path(), &prefix).unwrap(), None);
        let repo = RepoUrl::new(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(local_directory(&repo).as_deref(), Some(dir.path()));
        assert_eq!(local_directory(&RepoUrl::new("https://example.com/app.git").unwrap()), None);
    }
}
