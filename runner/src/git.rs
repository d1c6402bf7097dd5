//! The repository cache and clean checkouts, all through gix.
//!
//! Each repository is fetched into a bare mirror `DIR/cache/<sha256 of the
//! url>.git`, with explicit refspecs (a bare mirror has none configured), and
//! only when the wanted commit is not already there. Fetches of one mirror are
//! serialised by a per-url async mutex; different repositories fetch in
//! parallel. A task's tree is then written into a fresh directory from the
//! commit's tree object, so nothing of an earlier task can leak into it.
//!
//! gix is blocking, so every call into it runs in `spawn_blocking`. This
//! module never runs the test and never decides an outcome; it reports a
//! missing commit as `None` and everything else as an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use protocol::{CommitId, RepoUrl};
use sha2::{Digest, Sha256};

/// What the mirror fetches: every branch and every tag, forced, so that a
/// force-pushed branch does not make the fetch fail.
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// The bare mirrors under `DIR/cache` and the locks that serialise their
/// fetches.
pub struct GitCache {
    dir: PathBuf,
    /// One lock per repository url, created on first use and kept for the
    /// runner's lifetime (a runner sees few distinct repositories).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl GitCache {
    /// A cache rooted at `dir`, which must exist.
    pub fn new(dir: PathBuf) -> GitCache {
        GitCache { dir, locks: Mutex::new(HashMap::new()) }
    }

    /// The bare mirror's path for `repo`.
    pub fn mirror_path(&self, repo: &RepoUrl) -> PathBuf {
        let digest = Sha256::digest(repo.as_str().as_bytes());
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        self.dir.join(format!("{hex}.git"))
    }

    /// Makes sure `commit` is in the mirror of `repo`, fetching when it is not.
    ///
    /// `interrupt` stops a fetch in progress when set.
    ///
    /// # Returns
    /// The mirror's path, or `None` when the commit does not exist in the
    /// repository even after fetching.
    ///
    /// # Errors
    /// Creating or opening the mirror, or the fetch itself.
    pub async fn fetch(
        &self,
        repo: &RepoUrl,
        commit: &CommitId,
        interrupt: Arc<AtomicBool>,
    ) -> anyhow::Result<Option<PathBuf>> {
        let lock = {
            // The std mutex only guards the map for a moment, never across an await.
            let mut locks = self.locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(repo.as_str().to_string()).or_default().clone()
        };
        // The guard moves into the blocking closure: if the caller stops
        // waiting (an abort), the fetch still finishes before the next one of
        // this mirror starts.
        let guard = lock.lock_owned().await;
        let mirror = self.mirror_path(repo);
        let repo = repo.clone();
        let commit = commit.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let _span = span.enter();
            let found = fetch_blocking(&mirror, &repo, &commit, &interrupt)?;
            Ok(found.then_some(mirror))
        })
        .await
        .context("fetch task panicked")?
    }
}

/// Writes a clean tree of `commit` from `mirror` into `dest`, which is
/// removed first if it exists.
///
/// # Errors
/// The commit cannot be read from the mirror, or writing the tree failed.
pub async fn checkout(
    mirror: PathBuf,
    commit: &CommitId,
    dest: PathBuf,
    interrupt: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let commit = commit.clone();
    tokio::task::spawn_blocking(move || checkout_blocking(&mirror, &commit, &dest, &interrupt))
        .await
        .context("checkout task panicked")?
}

/// Opens the mirror, creating it (or re-creating it when it is damaged).
fn open_mirror(mirror: &Path) -> anyhow::Result<gix::Repository> {
    if mirror.exists() {
        match gix::open(mirror) {
            Ok(repo) => return Ok(repo),
            Err(err) => {
                tracing::warn!(mirror = %mirror.display(), error = %err, "repository cache is damaged, re-creating it");
                std::fs::remove_dir_all(mirror)
                    .with_context(|| format!("removing damaged cache {}", mirror.display()))?;
            }
        }
    }
    // Initialise beside the final path and rename, so a crash never leaves a
    // half-made mirror where the next fetch would find it.
    let partial = mirror.with_extension("git.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    gix::init_bare(&partial).with_context(|| format!("creating cache {}", partial.display()))?;
    std::fs::rename(&partial, mirror).with_context(|| format!("moving cache into {}", mirror.display()))?;
    gix::open(mirror).with_context(|| format!("opening cache {}", mirror.display()))
}

fn object_id(commit: &CommitId) -> anyhow::Result<gix::ObjectId> {
    gix::ObjectId::from_hex(commit.as_str().as_bytes()).with_context(|| format!("parsing commit id {commit}"))
}

/// Whether `id` names a commit in `repo` (a blob with that id does not count).
fn has_commit(repo: &gix::Repository, id: gix::ObjectId) -> bool {
    repo.find_commit(id).is_ok()
}

fn fetch_blocking(
    mirror: &Path,
    repo_url: &RepoUrl,
    commit: &CommitId,
    interrupt: &AtomicBool,
) -> anyhow::Result<bool> {
    let id = object_id(commit)?;
    let repo = open_mirror(mirror)?;
    if has_commit(&repo, id) {
        tracing::debug!(mirror = %mirror.display(), "commit already cached, not fetching");
        return Ok(true);
    }
    let started = std::time::Instant::now();
    let remote = repo
        .remote_at(repo_url.as_str())
        .with_context(|| format!("parsing repository location {repo_url}"))?
        .with_refspecs(REFSPECS, gix::remote::Direction::Fetch)
        .context("setting fetch refspecs")?;
    let connection =
        remote.connect(gix::remote::Direction::Fetch).with_context(|| format!("connecting to {repo_url}"))?;
    let prepared = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .with_context(|| format!("listing refs of {repo_url}"))?;
    prepared.receive(gix::progress::Discard, interrupt).with_context(|| format!("fetching {repo_url}"))?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "fetched repository");
    // The fetch wrote new packs; a freshly opened object store sees them.
    let repo = gix::open(mirror).with_context(|| format!("reopening cache {}", mirror.display()))?;
    Ok(has_commit(&repo, id))
}

fn checkout_blocking(
    mirror: &Path,
    commit: &CommitId,
    dest: &Path,
    interrupt: &AtomicBool,
) -> anyhow::Result<()> {
    let repo = gix::open(mirror).with_context(|| format!("opening cache {}", mirror.display()))?;
    let id = object_id(commit)?;
    let commit_object = repo.find_commit(id).with_context(|| format!("reading commit {commit}"))?;
    let tree_id = commit_object.tree_id().with_context(|| format!("reading the tree of {commit}"))?;
    let mut index =
        repo.index_from_tree(&tree_id).with_context(|| format!("reading the tree of {commit}"))?;
    if dest.exists() {
        std::fs::remove_dir_all(dest).with_context(|| format!("removing old tree {}", dest.display()))?;
    }
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut options = repo
        .checkout_options(gix::worktree::stack::state::attributes::Source::IdMapping)
        .context("reading checkout options")?;
    options.destination_is_initially_empty = true;
    let objects = repo.objects.clone().into_arc().context("sharing the object store")?;
    let outcome = gix::worktree::state::checkout(
        &mut index,
        dest,
        objects,
        &gix::progress::Discard,
        &gix::progress::Discard,
        interrupt,
        options,
    )
    .with_context(|| format!("writing the tree of {commit} into {}", dest.display()))?;
    if let Some(collision) = outcome.collisions.first() {
        anyhow::bail!("checkout of {commit} collided on {:?}", collision.path);
    }
    if let Some(failure) = outcome.errors.first() {
        anyhow::bail!("checkout of {commit} failed on {:?}: {}", failure.path, failure.error);
    }
    Ok(())
}

/// A tag of the mirror that points at `commit` (directly or through an
/// annotated tag), for release records; the first by name if several do.
pub async fn tag_of(mirror: PathBuf, commit: &CommitId) -> Option<protocol::Branch> {
    let commit = commit.clone();
    let found = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<protocol::Branch>> {
        let repo = gix::open(&mirror)?;
        let wanted = object_id(&commit)?;
        let mut names = Vec::new();
        for reference in repo.references()?.tags()?.peeled()? {
            let Ok(reference) = reference else { continue };
            if reference.try_id().map(|id| id.detach()) == Some(wanted) {
                names.push(reference.name().shorten().to_string());
            }
        }
        names.sort();
        Ok(names.into_iter().find_map(|name| protocol::Branch::new(name).ok()))
    })
    .await;
    match found {
        Ok(Ok(tag)) => tag,
        Ok(Err(err)) => {
            tracing::debug!(error = %format!("{err:#}"), "cannot list tags");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// A repository with two commits; the second adds an executable script
    /// and changes a file.
    fn make_repo(dir: &Path) -> (CommitId, CommitId) {
        git(dir, &["init", "-q"]);
        std::fs::write(dir.join("a.txt"), "one\n").unwrap();
        git(dir, &["add", "."]);
        git(dir, &["commit", "-q", "-m", "first"]);
        let first = CommitId::new(git(dir, &["rev-parse", "HEAD"])).unwrap();
        std::fs::write(dir.join("a.txt"), "two\n").unwrap();
        std::fs::create_dir(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(dir.join("bin/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        git(dir, &["add", "."]);
        git(dir, &["commit", "-q", "-m", "second"]);
        let second = CommitId::new(git(dir, &["rev-parse", "HEAD"])).unwrap();
        (first, second)
    }

    fn is_executable(path: &Path) -> bool {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o111 != 0
    }

    #[tokio::test]
    async fn fetches_and_checks_out_each_commit() {
        let origin = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let (first, second) = make_repo(origin.path());
        let repo = RepoUrl::new(origin.path().to_str().unwrap()).unwrap();
        let cache = GitCache::new(work.path().to_path_buf());
        let interrupt = Arc::new(AtomicBool::new(false));

        let mirror = cache.fetch(&repo, &second, interrupt.clone()).await.unwrap().unwrap();
        let tree = work.path().join("tree");
        checkout(mirror.clone(), &second, tree.clone(), interrupt.clone()).await.unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("a.txt")).unwrap(), "two\n");
        assert!(is_executable(&tree.join("bin/run.sh")));
        assert!(!is_executable(&tree.join("a.txt")));
        assert!(!tree.join(".git").exists());

        // The first commit is already cached; its tree replaces the second's
        // completely.
        let mirror = cache.fetch(&repo, &first, interrupt.clone()).await.unwrap().unwrap();
        std::fs::write(tree.join("leftover"), "x").unwrap();
        checkout(mirror, &first, tree.clone(), interrupt).await.unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("a.txt")).unwrap(), "one\n");
        assert!(!tree.join("bin").exists());
        assert!(!tree.join("leftover").exists());
    }

    #[tokio::test]
    async fn fetches_new_commits_into_an_existing_mirror() {
        let origin = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let (first, _) = make_repo(origin.path());
        let repo = RepoUrl::new(origin.path().to_str().unwrap()).unwrap();
        let cache = GitCache::new(work.path().to_path_buf());
        let interrupt = Arc::new(AtomicBool::new(false));
        assert!(cache.fetch(&repo, &first, interrupt.clone()).await.unwrap().is_some());
        std::fs::write(origin.path().join("a.txt"), "three\n").unwrap();
        git(origin.path(), &["commit", "-q", "-am", "third"]);
        let third = CommitId::new(git(origin.path(), &["rev-parse", "HEAD"])).unwrap();
        let mirror = cache.fetch(&repo, &third, interrupt.clone()).await.unwrap().unwrap();
        let tree = work.path().join("tree");
        checkout(mirror, &third, tree.clone(), interrupt).await.unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("a.txt")).unwrap(), "three\n");
    }

    #[tokio::test]
    async fn a_missing_commit_is_none() {
        let origin = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        make_repo(origin.path());
        let repo = RepoUrl::new(origin.path().to_str().unwrap()).unwrap();
        let cache = GitCache::new(work.path().to_path_buf());
        let missing = CommitId::new("0123456789abcdef0123456789abcdef01234567").unwrap();
        let found = cache.fetch(&repo, &missing, Arc::new(AtomicBool::new(false))).await.unwrap();
        assert_eq!(found, None);
    }

    #[tokio::test]
    async fn an_unreachable_repository_is_an_error() {
        let work = tempfile::tempdir().unwrap();
        let repo = RepoUrl::new(work.path().join("nope").to_str().unwrap()).unwrap();
        let cache = GitCache::new(work.path().to_path_buf());
        let commit = CommitId::new("0123456789abcdef0123456789abcdef01234567").unwrap();
        let err = cache.fetch(&repo, &commit, Arc::new(AtomicBool::new(false))).await.unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }
}
