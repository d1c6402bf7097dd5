//! The repository cache and the task's checkout.
//!
//! Each repository is fetched with gix into a bare mirror `DIR/cache/<sha256
//! of the url>.git`, with explicit refspecs (a bare mirror has none
//! configured), and only when the wanted commit is not already there.
//! Fetches of one mirror are serialised by a per-url async mutex; different
//! repositories fetch in parallel.
//!
//! A task's tree is written in process: gix writes the files of exactly the
//! assigned commit into a fresh directory, and the runner writes a `.git`
//! beside them by hand, as `git clone --shared` of the mirror would leave it
//! (the objects borrowed through `objects/info/alternates`, so it costs the
//! refs and the checked-out files, not a copy of the history), with HEAD
//! detached at the commit, a local branch of the task's branch name at that
//! commit, the mirror's tags, and an index of the files just written. The
//! test therefore runs in a working tree git recognises: `git rev-parse
//! HEAD`, `git describe --tags` and tools built on them (setuptools-scm,
//! build scripts) work, and nothing of an earlier task can leak in because
//! the directory is made anew. No git process runs between assignment and
//! test (issue 11: the three that `git clone --shared`, `git checkout` and
//! `git update-ref` took cost about 100 ms per attempt).
//!
//! gix is blocking, so every call into it runs in `spawn_blocking`. This
//! module never runs the test and never decides an outcome; it reports a
//! missing commit as `None` and everything else as an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use protocol::{Branch, CommitId, RepoUrl};
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

    /// Fetches the tags of `repo` into its mirror, so that a tag pushed after
    /// its commit (`git push origin main && git tag v1 && git push origin
    /// v1`) is seen when the result is reported, not only at the next fetch
    /// of a missing commit.
    ///
    /// # Errors
    /// Opening the mirror or the fetch.
    pub async fn refresh_tags(&self, repo: &RepoUrl, interrupt: Arc<AtomicBool>) -> anyhow::Result<PathBuf> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(repo.as_str().to_string()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        let mirror = self.mirror_path(repo);
        let repo = repo.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let _span = span.enter();
            let opened = open_mirror(&mirror)?;
            receive(&opened, &repo, &[REFSPECS[1]], &interrupt)?;
            Ok(mirror)
        })
        .await
        .context("tag fetch task panicked")?
    }
}

/// Makes `dest` a fresh working tree of `commit` from `mirror`, with a
/// `.git` that git recognises: HEAD detached at the commit, a local branch
/// `branch` at the commit, the mirror's tags and (as
/// `refs/remotes/origin/*`) branches, the mirror's objects borrowed through
/// alternates, and an index matching the files. `dest` is removed first if
/// it exists. Nothing is spawned: the tree is written with gix and the
/// `.git` by hand (see `write_git_dir`).
///
/// `interrupt` stops writing the tree when set.
///
/// # Errors
/// Removing the old tree, reading the commit from the mirror, or writing
/// the tree, the index or the `.git` files.
pub async fn checkout(
    mirror: &Path,
    commit: &CommitId,
    branch: &Branch,
    dest: &Path,
    interrupt: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (mirror, commit, branch, dest) =
        (mirror.to_path_buf(), commit.clone(), branch.clone(), dest.to_path_buf());
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _span = span.enter();
        checkout_blocking(&mirror, &commit, &branch, &dest, &interrupt)
    })
    .await
    .context("checkout task panicked")?
}

fn checkout_blocking(
    mirror: &Path,
    commit: &CommitId,
    branch: &Branch,
    dest: &Path,
    interrupt: &AtomicBool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let repo = gix::open(mirror).with_context(|| format!("opening cache {}", mirror.display()))?;
    let id = object_id(commit)?;
    let tree_id = repo
        .find_commit(id)
        .with_context(|| format!("reading commit {commit}"))?
        .tree_id()
        .with_context(|| format!("reading the tree of {commit}"))?;
    let mut index =
        repo.index_from_tree(&tree_id).with_context(|| format!("reading the tree of {commit}"))?;
    // gix returns Ok when interrupted: an aborted attempt's tree must not be
    // written on (nor its `.git`) after the attempt was discarded.
    let interrupted = || -> anyhow::Result<()> {
        anyhow::ensure!(!interrupt.load(Ordering::Relaxed), "checkout interrupted");
        Ok(())
    };
    interrupted()?;
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
    interrupted()?;
    if let Some(collision) = outcome.collisions.first() {
        anyhow::bail!("checkout of {commit} collided on {:?}", collision.path);
    }
    if let Some(failure) = outcome.errors.first() {
        anyhow::bail!("checkout of {commit} failed on {:?}: {}", failure.path, failure.error);
    }
    let files_written = started.elapsed();
    let git_dir = dest.join(".git");
    write_git_dir(&repo, mirror, id, branch, &git_dir)?;
    // The entries carry the stat of the files just written, so `git status`
    // finds the tree clean without hashing it again.
    index.set_path(git_dir.join("index"));
    index.write(Default::default()).context("writing the checkout's index")?;
    tracing::debug!(
        files = index.entries().len(),
        files_ms = files_written.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "checked out"
    );
    Ok(())
}

/// Writes the `.git` of a checkout of `commit` as `git clone --shared
/// --no-checkout` followed by `git checkout --detach` and `git update-ref`
/// would leave it, without running git (three processes cost about
/// 100 ms per attempt, more than everything else between assignment and
/// test; issue 11): `objects/info/alternates` names the mirror's objects,
/// HEAD holds the commit id (detached), and every ref is one sorted,
/// fully peeled `packed-refs` file, so `git describe --tags` needs no
/// object lookups beyond the commit graph.
///
/// # Errors
/// Reading the mirror's refs or writing a file.
fn write_git_dir(
    mirror_repo: &gix::Repository,
    mirror: &Path,
    commit: gix::ObjectId,
    branch: &Branch,
    git_dir: &Path,
) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;

    let mirror = std::path::absolute(mirror).with_context(|| format!("resolving {}", mirror.display()))?;
    for dir in ["objects/info", "objects/pack", "refs/heads", "refs/tags"] {
        let path = git_dir.join(dir);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    let write = |name: &str, contents: &[u8]| -> anyhow::Result<()> {
        let path = git_dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    let objects = mirror.join("objects");
    anyhow::ensure!(
        !objects.as_os_str().as_bytes().contains(&b'\n'),
        "the cache path {} holds a newline",
        mirror.display()
    );
    let mut alternates = objects.as_os_str().as_bytes().to_vec();
    alternates.push(b'\n');
    write("objects/info/alternates", &alternates)?;
    write("HEAD", format!("{commit}\n").as_bytes())?;
    write("config", git_config(&mirror).as_bytes())?;
    write("packed-refs", &packed_refs(mirror_repo, commit, branch)?)?;
    Ok(())
}

/// The checkout's `.git/config`: a non-bare repository whose `origin` is the
/// mirror, as a clone of it would have.
fn git_config(mirror: &Path) -> String {
    let mut config = String::from(
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n",
    );
    // A path git config cannot hold as a quoted value (a newline, or not
    // UTF-8) leaves the checkout without a remote; nothing needs it to test.
    if let Some(url) = mirror.to_str().filter(|url| !url.contains('\n')) {
        let url = url.replace('\\', "\\\\").replace('"', "\\\"");
        config.push_str(&format!(
            "[remote \"origin\"]\n\turl = \"{url}\"\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
        ));
    }
    config
}

/// A `packed-refs` file holding `refs/heads/BRANCH` at `commit`, the
/// mirror's tags, and its branches as `refs/remotes/origin/*`, sorted, each
/// annotated tag followed by the commit it peels to.
///
/// # Errors
/// Reading the mirror's refs or peeling one of them.
fn packed_refs(mirror: &gix::Repository, commit: gix::ObjectId, branch: &Branch) -> anyhow::Result<Vec<u8>> {
    // (name, target, what an annotated tag peels to)
    let mut refs: Vec<(String, gix::ObjectId, Option<gix::ObjectId>)> = Vec::new();
    let branch_ref = format!("refs/heads/{branch}");
    // The branch only names the commit for tools that want a branch; a name
    // git refuses (the protocol's check is looser) leaves HEAD detached.
    match gix::refs::FullName::try_from(branch_ref.as_str()) {
        Ok(_) => refs.push((branch_ref, commit, None)),
        Err(err) => {
            tracing::warn!(%branch, error = %err, "cannot create the task's branch in its checkout")
        }
    }
    let platform = mirror.references().context("reading the cache's refs")?;
    let tags = platform.tags().context("listing the cache's tags")?;
    let branches = platform.local_branches().context("listing the cache's branches")?;
    for reference in tags.chain(branches) {
        let mut reference =
            reference.map_err(|err| anyhow::anyhow!("{err}")).context("reading a ref of the cache")?;
        let Some(target) = reference.try_id().map(|id| id.detach()) else { continue };
        let name = reference.name().as_bstr().to_string();
        let name = match name.strip_prefix("refs/heads/") {
            Some(short) => format!("refs/remotes/origin/{short}"),
            None => name,
        };
        let peeled = reference.peel_to_id().with_context(|| format!("peeling {name} in the cache"))?.detach();
        refs.push((name, target, (peeled != target).then_some(peeled)));
    }
    refs.sort_by(|a, b| a.0.cmp(&b.0));
    refs.dedup_by(|a, b| a.0 == b.0);
    let mut text = String::from("# pack-refs with: peeled fully-peeled sorted \n");
    for (name, target, peeled) in refs {
        text.push_str(&format!("{target} {name}\n"));
        if let Some(peeled) = peeled {
            text.push_str(&format!("^{peeled}\n"));
        }
    }
    Ok(text.into_bytes())
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
    receive(&repo, repo_url, &REFSPECS, interrupt)?;
    // The fetch wrote new packs; a freshly opened object store sees them.
    let repo = gix::open(mirror).with_context(|| format!("reopening cache {}", mirror.display()))?;
    Ok(has_commit(&repo, id))
}

/// Fetches `refspecs` from `repo_url` into the mirror `repo`.
fn receive(
    repo: &gix::Repository,
    repo_url: &RepoUrl,
    refspecs: &[&str],
    interrupt: &AtomicBool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let remote = repo
        .remote_at(repo_url.as_str())
        .with_context(|| format!("parsing repository location {repo_url}"))?
        .with_refspecs(refspecs.iter().copied(), gix::remote::Direction::Fetch)
        .context("setting fetch refspecs")?;
    let connection =
        remote.connect(gix::remote::Direction::Fetch).with_context(|| format!("connecting to {repo_url}"))?;
    let prepared = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .with_context(|| format!("listing refs of {repo_url}"))?;
    prepared.receive(gix::progress::Discard, interrupt).with_context(|| format!("fetching {repo_url}"))?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, refspecs = ?refspecs, "fetched repository");
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
        git(dir, &["tag", "v2"]);
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
        let main = Branch::new("main").unwrap();
        checkout(&mirror, &second, &main, &tree, interrupt.clone()).await.unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("a.txt")).unwrap(), "two\n");
        assert!(is_executable(&tree.join("bin/run.sh")));
        assert!(!is_executable(&tree.join("a.txt")));
        // A working tree git recognises, clean, at exactly the commit, with
        // the tag and the branch, sharing the mirror's objects.
        assert_eq!(git(&tree, &["rev-parse", "HEAD"]), second.as_str());
        assert_eq!(git(&tree, &["describe", "--tags"]), "v2");
        assert_eq!(git(&tree, &["rev-parse", "refs/heads/main"]), second.as_str());
        assert_eq!(git(&tree, &["status", "--porcelain"]), "");
        assert_eq!(git(&tree, &["rev-parse", "--abbrev-ref", "HEAD"]), "HEAD", "HEAD is detached");
        let alternates = std::fs::read_to_string(tree.join(".git/objects/info/alternates")).unwrap();
        assert!(alternates.trim_end().ends_with("objects"), "{alternates}");

        // The first commit is already cached; its tree replaces the second's
        // completely.
        let mirror = cache.fetch(&repo, &first, interrupt.clone()).await.unwrap().unwrap();
        std::fs::write(tree.join("leftover"), "x").unwrap();
        checkout(&mirror, &first, &main, &tree, interrupt.clone()).await.unwrap();
        assert_eq!(git(&tree, &["rev-parse", "HEAD"]), first.as_str());
        assert_eq!(std::fs::read_to_string(tree.join("a.txt")).unwrap(), "one\n");
        assert!(!tree.join("bin").exists());
        assert!(!tree.join("leftover").exists());
    }

    /// The `.git` written in process is one the git CLI takes as its own:
    /// an annotated tag two commits back and a lightweight tag on the
    /// commit, a branch name with a slash, a symlink, the mirror's other
    /// branches as `origin`'s, and a repository git can keep working in.
    #[tokio::test]
    async fn the_checkout_is_a_repository_git_can_use() {
        let origin = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let (first, _) = make_repo(origin.path());
        let dir = origin.path();
        git(dir, &["tag", "-a", "-m", "release one", "v1.0", first.as_str()]);
        git(dir, &["checkout", "-q", "-b", "feature/x"]);
        std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
        git(dir, &["add", "."]);
        git(dir, &["commit", "-q", "-m", "third"]);
        git(dir, &["tag", "light"]);
        let third = CommitId::new(git(dir, &["rev-parse", "HEAD"])).unwrap();
        let repo = RepoUrl::new(dir.to_str().unwrap()).unwrap();
        let cache = GitCache::new(work.path().to_path_buf());
        let interrupt = Arc::new(AtomicBool::new(false));
        let mirror = cache.fetch(&repo, &third, interrupt.clone()).await.unwrap().unwrap();
        let tree = work.path().join("tree");
        let branch = Branch::new("feature/x").unwrap();
        checkout(&mirror, &third, &branch, &tree, interrupt).await.unwrap();

        assert_eq!(std::fs::read_link(tree.join("link")).unwrap(), Path::new("a.txt"));
        assert_eq!(git(&tree, &["rev-parse", "HEAD"]), third.as_str());
        assert_eq!(git(&tree, &["rev-parse", "refs/heads/feature/x"]), third.as_str());
        assert_eq!(git(&tree, &["status", "--porcelain"]), "");
        assert_eq!(git(&tree, &["describe", "--tags"]), "light");
        assert_eq!(git(&tree, &["describe"]), format!("v1.0-2-g{}", &third.as_str()[..7]));
        assert_eq!(git(&tree, &["rev-parse", "v1.0^{commit}"]), first.as_str());
        assert_eq!(git(&tree, &["rev-parse", "refs/remotes/origin/main"]), git(dir, &["rev-parse", "main"]));
        assert_eq!(git(&tree, &["config", "remote.origin.url"]), mirror.to_str().unwrap());
        let symbolic =
            Command::new("git").args(["symbolic-ref", "-q", "HEAD"]).current_dir(&tree).output().unwrap();
        assert!(!symbolic.status.success(), "HEAD is detached");
        git(&tree, &["fsck", "--no-dangling"]);
        assert_eq!(git(&tree, &["log", "--format=%s"]), "third\nsecond\nfirst");

        // git can work on in it: a new commit on the branch, then a switch.
        std::fs::write(tree.join("a.txt"), "changed\n").unwrap();
        assert_eq!(git(&tree, &["status", "--porcelain"]), "M a.txt");
        git(&tree, &["commit", "-q", "-am", "fourth"]);
        git(&tree, &["checkout", "-q", "v1.0"]);
        assert_eq!(std::fs::read_to_string(tree.join("a.txt")).unwrap(), "one\n");
        assert_eq!(git(&tree, &["status", "--porcelain"]), "");
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
        checkout(&mirror, &third, &Branch::new("main").unwrap(), &tree, interrupt).await.unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("a.txt")).unwrap(), "three\n");
    }

    #[tokio::test]
    async fn a_tag_pushed_after_its_commit_is_seen_after_refreshing_tags() {
        let origin = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let (first, _) = make_repo(origin.path());
        let repo = RepoUrl::new(origin.path().to_str().unwrap()).unwrap();
        let cache = GitCache::new(work.path().to_path_buf());
        let interrupt = Arc::new(AtomicBool::new(false));
        let mirror = cache.fetch(&repo, &first, interrupt.clone()).await.unwrap().unwrap();
        assert_eq!(tag_of(mirror.clone(), &first).await, None);
        git(origin.path(), &["tag", "v1.0", first.as_str()]);
        assert_eq!(tag_of(mirror.clone(), &first).await, None, "the cache is stale until refreshed");
        cache.refresh_tags(&repo, interrupt).await.unwrap();
        assert_eq!(tag_of(mirror, &first).await.map(|tag| tag.to_string()), Some("v1.0".to_string()));
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
