//! Everything the observer asks of git, through gix: fetching a remote
//! repository into its bare mirror, reading branch tips (loose or packed refs)
//! and listing the commits that are new on a branch.
//!
//! This file reads branches and applies the rules for what is new (first
//! sight, every, latest); `walk` finds and orders the commits, `mirror` fetches
//! remote repositories.
//!
//! All of it blocks; callers run [`scan`] in `spawn_blocking`. Nothing here
//! decides about queues or cursors: a scan takes the commits already seen per
//! branch and returns what is new. A repository is opened afresh on every
//! scan, so a repository that is replaced, repacked or garbage-collected
//! between scans is simply read as it now is.

mod mirror;
mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use gix::ObjectId;
use protocol::{Branch, CommitId};

use crate::config::{BranchPattern, Location, Mode};

/// What one scan of a repository needs to know.
#[derive(Debug, Clone)]
pub struct ScanInput {
    /// Where the repository is read.
    pub location: Location,
    /// The branches to observe; empty means the HEAD branch.
    pub patterns: Vec<BranchPattern>,
    /// Which commits are new.
    pub mode: Mode,
    /// At most this many commits on first sight of a branch.
    pub initial: usize,
    /// At most this many commits per branch otherwise (the newest).
    pub max_new: usize,
    /// Per branch, the commits already seen: acknowledged (the cursor's heads)
    /// or queued for submission.
    pub seen: BTreeMap<Branch, Vec<CommitId>>,
    /// Every branch the previous scan of this process found, or `None` before
    /// the first scan. A branch missing from it was created while observed,
    /// so all its commits are new, not history to skip with `initial`.
    pub known: Option<BTreeSet<Branch>>,
    /// Branches whose tips a schedule submits, observed or not.
    pub tips_of: Vec<Branch>,
}

/// What one scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOutput {
    /// Each observed branch that exists, with what is new on it.
    pub branches: Vec<BranchScan>,
    /// Branches with seen commits whose ref no longer exists.
    pub vanished: Vec<Branch>,
    /// Every branch of the repository, observed or not: the next scan's `known`.
    pub present: BTreeSet<Branch>,
    /// The tip of each branch of `tips_of` that exists, with the runner
    /// labels its `.baton.toml` requires.
    pub tips: BTreeMap<Branch, NewCommit>,
}

/// One observed branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchScan {
    /// The branch's name under `refs/heads/`.
    pub branch: Branch,
    /// Its tip.
    pub tip: CommitId,
    /// Commits to submit, oldest first, parents before children.
    pub new: Vec<NewCommit>,
    /// New commits left out by `max_new`.
    pub skipped: usize,
    /// The branch had seen commits but none is in the repository any more
    /// (garbage-collected after a force-push), so the first-sight rule applied.
    pub lost_cursor: bool,
}

/// A commit to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommit {
    /// The commit.
    pub commit: CommitId,
    /// All its parents, which the cursor needs to fold its heads.
    pub parents: Vec<CommitId>,
    /// Runner labels its `.baton.toml` requires.
    pub labels: Vec<protocol::Label>,
}

/// Scans one repository: fetches it if it is remote, reads its branches and
/// lists what is new on each observed one.
///
/// # Errors
/// A repository that cannot be opened or fetched, unreadable refs or objects,
/// or a detached HEAD when no branch was named.
pub fn scan(input: &ScanInput, interrupt: &AtomicBool) -> anyhow::Result<ScanOutput> {
    let repo = match &input.location {
        Location::Local(path) => open(path)?,
        Location::Remote { url, cache } => mirror::fetch(url, cache, interrupt)?,
    };
    let all = branches(&repo)?;
    let observed: Vec<&Branch> = if input.patterns.is_empty() {
        head_branch(&repo)?
            .and_then(|head| all.get_key_value(&head))
            .map(|(name, _)| name)
            .into_iter()
            .collect()
    } else {
        all.keys()
            .filter(|name| input.patterns.iter().any(|pattern| pattern.matches(name.as_str())))
            .collect()
    };
    let mut output = ScanOutput {
        vanished: input.seen.keys().filter(|name| !all.contains_key(*name)).cloned().collect(),
        present: all.keys().cloned().collect(),
        ..ScanOutput::default()
    };
    for branch in &input.tips_of {
        let Some(tip) = all.get(branch) else { continue };
        let commit = repo.find_commit(*tip).with_context(|| format!("reading the tip of {branch}"))?;
        let parents = commit.parent_ids().map(|id| commit_id(id.detach())).collect();
        let labels = walk::required_labels(&repo, *tip);
        output.tips.insert(branch.clone(), NewCommit { commit: commit_id(*tip), parents, labels });
    }
    for branch in observed {
        let tip = all[branch];
        let scanned =
            scan_branch(&repo, input, branch, tip).with_context(|| format!("scanning branch {branch}"))?;
        output.branches.push(scanned);
    }
    Ok(output)
}

/// Opens a local repository (bare or not) and returns the folder whose `refs/`
/// and `packed-refs` change when a branch moves.
///
/// # Errors
/// When the path is not a git repository.
pub fn refs_dir(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(open(path)?.common_dir().to_path_buf())
}

fn open(path: &Path) -> anyhow::Result<gix::Repository> {
    gix::open(path).with_context(|| format!("opening repository {}", path.display()))
}

fn branches(repo: &gix::Repository) -> anyhow::Result<BTreeMap<Branch, ObjectId>> {
    let mut found = BTreeMap::new();
    let platform = repo.references().context("reading refs")?;
    for reference in
        platform.local_branches().context("reading branches")?.peeled().context("peeling refs")?
    {
        let reference = reference.context("reading a branch")?;
        let name = reference.name().shorten().to_string();
        let Some(id) = reference.try_id() else { continue };
        // Git accepts a few names Baton refuses (such as ones with spaces
        // after manual editing); such a branch cannot be submitted anyway.
        match Branch::new(name) {
            Ok(branch) => {
                found.insert(branch, id.detach());
            }
            Err(reason) => tracing::debug!(%reason, "ignoring branch"),
        }
    }
    Ok(found)
}

/// The branch HEAD names, or `None` when HEAD points outside `refs/heads/`.
fn head_branch(repo: &gix::Repository) -> anyhow::Result<Option<Branch>> {
    let Some(name) = repo.head_name().context("reading HEAD")? else {
        bail!("HEAD is detached: name the branches to observe with --branch");
    };
    let Some(short) = name.as_bstr().to_string().strip_prefix("refs/heads/").map(str::to_string) else {
        return Ok(None);
    };
    Ok(Branch::new(short).ok())
}

fn scan_branch(
    repo: &gix::Repository,
    input: &ScanInput,
    branch: &Branch,
    tip: ObjectId,
) -> anyhow::Result<BranchScan> {
    let tip_id = commit_id(tip);
    let seen = input.seen.get(branch).map(Vec::as_slice).unwrap_or_default();
    let mut scanned = BranchScan {
        branch: branch.clone(),
        tip: tip_id.clone(),
        new: Vec::new(),
        skipped: 0,
        lost_cursor: false,
    };
    if seen.contains(&tip_id) {
        return Ok(scanned);
    }
    let present = |commits: &[CommitId]| -> Vec<ObjectId> {
        commits.iter().filter_map(object_id).filter(|id| repo.has_object(id)).collect()
    };
    let mut hidden = present(seen);
    let born = seen.is_empty() && input.known.as_ref().is_some_and(|known| !known.contains(branch));
    // First sight (or every seen commit is gone) of a branch that existed
    // before the observer looked: its history is old news, so only the
    // newest `initial` commits are submitted.
    let first_sight = hidden.is_empty() && !born;
    if hidden.is_empty() {
        // What other branches have seen is not new on this one either.
        scanned.lost_cursor = !seen.is_empty();
        let others: Vec<CommitId> = input
            .seen
            .iter()
            .filter(|(name, _)| *name != branch)
            .flat_map(|(_, commits)| commits.clone())
            .collect();
        hidden = present(&others);
    }
    let limit = match (input.mode, first_sight) {
        (Mode::Every, true) => input.initial.min(input.max_new),
        (Mode::Every, false) => input.max_new,
        (Mode::Latest, true) => input.initial.min(1),
        (Mode::Latest, false) => 1,
    };
    let count_all = input.mode == Mode::Every && !first_sight;
    let (new, total) = walk::new_commits(repo, tip, &hidden, limit, count_all)?;
    if count_all {
        scanned.skipped = total - new.len();
    }
    scanned.new = match input.mode {
        Mode::Latest if !new.is_empty() => {
            // Something is new, so the tip is; it alone is submitted.
            let commit = repo.find_commit(tip).context("reading the tip")?;
            let parents = commit.parent_ids().map(|id| commit_id(id.detach())).collect();
            vec![NewCommit { commit: tip_id, parents, labels: walk::required_labels(repo, tip) }]
        }
        _ => new,
    };
    Ok(scanned)
}

fn commit_id(id: ObjectId) -> CommitId {
    // gix hashes are 40 or 64 lowercase hex digits, exactly what CommitId takes.
    CommitId::new(id.to_hex().to_string()).expect("object ids are lowercase hex")
}

fn object_id(commit: &CommitId) -> Option<ObjectId> {
    ObjectId::from_hex(commit.as_str().as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_repo::TestRepo;

    struct Check {
        location: Location,
        patterns: Vec<BranchPattern>,
        mode: Mode,
        initial: usize,
        max_new: usize,
        seen: BTreeMap<Branch, Vec<CommitId>>,
        known: Option<BTreeSet<Branch>>,
    }

    impl Check {
        fn new(repo: &TestRepo) -> Check {
            Check {
                location: Location::Local(repo.canonical()),
                patterns: Vec::new(),
                mode: Mode::Every,
                initial: 1,
                max_new: 1000,
                seen: BTreeMap::new(),
                known: None,
            }
        }

        fn branches(mut self, patterns: &[&str]) -> Check {
            self.patterns = patterns.iter().map(|pattern| BranchPattern::new(pattern).unwrap()).collect();
            self
        }

        fn seen(mut self, branch: &str, commits: &[&CommitId]) -> Check {
            let commits = commits.iter().map(|commit| (*commit).clone()).collect();
            self.seen.insert(Branch::new(branch).unwrap(), commits);
            self
        }

        fn run(&self) -> ScanOutput {
            let input = ScanInput {
                location: self.location.clone(),
                patterns: self.patterns.clone(),
                mode: self.mode,
                initial: self.initial,
                max_new: self.max_new,
                seen: self.seen.clone(),
                known: self.known.clone(),
                tips_of: Vec::new(),
            };
            scan(&input, &AtomicBool::new(false)).unwrap()
        }

        /// The new commits of the only scanned branch.
        fn fresh(&self) -> Vec<CommitId> {
            let output = self.run();
            assert_eq!(output.branches.len(), 1, "{output:?}");
            output.branches[0].new.iter().map(|new| new.commit.clone()).collect()
        }
    }

    #[test]
    fn linear_history_every_and_latest() {
        let repo = TestRepo::new();
        let commits: Vec<CommitId> = (1..=5).map(|n| repo.commit(&format!("c{n}"))).collect();
        let mut check = Check::new(&repo).seen("main", &[&commits[1]]);
        assert_eq!(check.fresh(), commits[2..]);
        // Packed refs read the same as loose ones.
        repo.git(&["pack-refs", "--all"]);
        assert_eq!(check.fresh(), commits[2..]);
        check.mode = Mode::Latest;
        assert_eq!(check.fresh(), [commits[4].clone()]);
        let check = Check::new(&repo).seen("main", &[&commits[4]]);
        assert_eq!(check.fresh(), Vec::<CommitId>::new(), "same tip: nothing");
        let output = check.run();
        assert_eq!(output.branches[0].tip, commits[4]);
    }

    #[test]
    fn max_new_keeps_the_newest() {
        let repo = TestRepo::new();
        let commits: Vec<CommitId> = (1..=6).map(|n| repo.commit(&format!("c{n}"))).collect();
        let mut check = Check::new(&repo).seen("main", &[&commits[0]]);
        check.max_new = 2;
        let output = check.run();
        let new: Vec<CommitId> = output.branches[0].new.iter().map(|new| new.commit.clone()).collect();
        assert_eq!(new, commits[4..]);
        assert_eq!(output.branches[0].skipped, 3);
        assert_eq!(output.branches[0].new[0].parents, [commits[3].clone()]);
    }

    #[test]
    fn first_sight_submits_the_newest_initial_commits() {
        let repo = TestRepo::new();
        let commits: Vec<CommitId> = (1..=5).map(|n| repo.commit(&format!("c{n}"))).collect();
        let mut check = Check::new(&repo);
        assert_eq!(check.fresh(), [commits[4].clone()]);
        check.initial = 3;
        assert_eq!(check.fresh(), commits[2..]);
        check.initial = 0;
        assert_eq!(check.fresh(), Vec::<CommitId>::new());

        // A new branch off an observed one: only its own commits are new.
        repo.git(&["checkout", "-q", "-b", "feature"]);
        let feature = repo.commit("f1");
        let mut check = Check::new(&repo).branches(&["feature"]).seen("main", &[&commits[4]]);
        check.initial = 3;
        assert_eq!(check.fresh(), [feature]);
    }

    #[test]
    fn a_branch_born_while_observed_is_new_from_its_first_commit() {
        let repo = TestRepo::new();
        let mut check = Check::new(&repo);
        let output = check.run();
        assert!(output.branches.is_empty(), "main is unborn");
        check.known = Some(output.present);
        let commits = [repo.commit("c1"), repo.commit("c2"), repo.commit("c3")];
        assert_eq!(check.fresh(), commits, "every commit, not just the newest `initial`");

        // A branch forked from an observed one: only its own commits.
        repo.git(&["checkout", "-q", "-b", "topic", "HEAD~1"]);
        let topic = [repo.commit("t1"), repo.commit("t2")];
        let mut check = Check::new(&repo).branches(&["*"]).seen("main", &[&commits[2]]);
        check.known = Some(BTreeSet::from([Branch::new("main").unwrap()]));
        let output = check.run();
        let new: Vec<CommitId> = output.branches[1].new.iter().map(|new| new.commit.clone()).collect();
        assert_eq!((output.branches[1].branch.as_str(), new.as_slice()), ("topic", &topic[..]));
    }

    #[test]
    fn a_merged_side_branch_is_submitted_once_parents_first() {
        let repo = TestRepo::new();
        let base = repo.commit("base");
        let cursor = repo.commit("cursor");
        repo.git(&["checkout", "-q", "-b", "side", "HEAD~1"]);
        repo.commit("a1");
        repo.commit("a2");
        repo.git(&["checkout", "-q", "main"]);
        repo.commit("b1");
        repo.git(&["merge", "-q", "--no-ff", "-m", "merge", "side"]);
        repo.commit("after");
        let check = Check::new(&repo).seen("main", &[&cursor]);
        let new = check.fresh();
        let expected: Vec<CommitId> = repo
            .git(&["rev-list", "--topo-order", "--reverse", &format!("{cursor}..main")])
            .lines()
            .map(|line| CommitId::new(line).unwrap())
            .collect();
        assert_eq!(new, expected);
        assert_eq!(new.len(), 5, "a1 a2 b1 merge after");
        assert!(!new.contains(&base) && !new.contains(&cursor));
        let position = |rev: &str| new.iter().position(|commit| *commit == repo.rev(rev)).unwrap();
        assert!(position("side~1") < position("side") && position("side") < position("main~1"));
        assert!(position("main~1^1") < position("main~1"));
    }

    #[test]
    fn a_force_push_submits_only_the_new_commits() {
        let repo = TestRepo::new();
        let c1 = repo.commit("c1");
        repo.commit("c2");
        let old_tip = repo.commit("c3");
        repo.git(&["reset", "-q", "--hard", c1.as_str()]);
        let new = [repo.commit("d1"), repo.commit("d2")];
        assert_eq!(Check::new(&repo).seen("main", &[&old_tip]).fresh(), new);
    }

    #[test]
    fn a_cursor_gone_from_the_repository_falls_back_to_first_sight() {
        let repo = TestRepo::new();
        repo.commit("c1");
        let c2 = repo.commit("c2");
        let lost = repo.commit("lost");
        repo.git(&["reset", "-q", "--hard", c2.as_str()]);
        repo.git(&["reflog", "expire", "--expire=now", "--all"]);
        repo.git(&["gc", "-q", "--prune=now"]);
        let tip = repo.commit("c3");
        let output = Check::new(&repo).seen("main", &[&lost]).run();
        assert!(output.branches[0].lost_cursor);
        let new: Vec<CommitId> = output.branches[0].new.iter().map(|new| new.commit.clone()).collect();
        assert_eq!(new, [tip]);
    }

    #[test]
    fn deleted_branches_vanish_and_globs_select() {
        let repo = TestRepo::new();
        let main = repo.commit("c1");
        for branch in ["release/1.0", "release/2.0", "feature"] {
            repo.git(&["branch", branch]);
        }
        let output = Check::new(&repo).branches(&["release/*"]).run();
        let names: Vec<&str> = output.branches.iter().map(|scan| scan.branch.as_str()).collect();
        assert_eq!(names, ["release/1.0", "release/2.0"]);
        repo.git(&["branch", "-D", "feature"]);
        let output = Check::new(&repo).branches(&["release/*"]).seen("feature", &[&main]).run();
        assert_eq!(output.vanished, [Branch::new("feature").unwrap()]);
    }

    #[test]
    fn a_bare_repository_defaults_to_its_head_branch() {
        let origin = TestRepo::bare("trunk");
        let work = TestRepo::new();
        let commit = work.commit("c1");
        work.git(&["push", "-q", origin.path.to_str().unwrap(), "main:trunk", "main:other"]);
        let output = Check::new(&origin).run();
        assert_eq!(output.branches.len(), 1);
        assert_eq!((output.branches[0].branch.as_str(), &output.branches[0].tip), ("trunk", &commit));
    }

    #[test]
    fn a_remote_repository_is_mirrored_into_the_cache() {
        let origin = TestRepo::bare("dev");
        let work = TestRepo::new();
        let first = work.commit("c1");
        let url = format!("file://{}", origin.canonical().display());
        work.git(&["push", "-q", &url, "main:dev", "main:gone"]);
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = cache_dir.path().join("cache").join("mirror.git");
        let mut check = Check::new(&origin);
        check.location = Location::Remote { url: url.clone(), cache: cache.clone() };
        assert_eq!(check.fresh(), std::slice::from_ref(&first));

        let second = work.commit("c2");
        work.git(&["push", "-q", &url, "main:dev", ":gone"]);
        let check = check.seen("dev", &[&first]).seen("gone", &[&first]);
        let output = check.run();
        let new: Vec<CommitId> = output.branches[0].new.iter().map(|new| new.commit.clone()).collect();
        assert_eq!(new, [second]);
        assert_eq!(output.branches[0].branch.as_str(), "dev", "the remote's HEAD names the default branch");
        assert_eq!(output.vanished, [Branch::new("gone").unwrap()]);
    }
}
