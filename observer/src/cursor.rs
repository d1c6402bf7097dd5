//! The cursors (the last commits the dispatcher acknowledged, per repository
//! and branch), each schedule's last fire time, and the state file that keeps
//! them across restarts.
//!
//! A cursor is normally one commit: the branch's last acknowledged commit.
//! While the side branch of a merge is half submitted, the acknowledged
//! commits can have more than one head (the merge's parents are on different
//! lines of history), so a cursor also keeps those other heads; they fold back
//! into one commit once the branch's tip is acknowledged. Everything reachable
//! from a cursor's heads counts as seen.
//!
//! The file is JSON with types of its own (not the wire types), written to
//! `F.tmp`, synced and renamed over `F`, so a crash leaves the old or the new
//! file, never half of one. A file that exists but cannot be read is an error:
//! starting over silently would resubmit or skip commits.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use protocol::{Branch, CommitId, RepoUrl};
use serde::{Deserialize, Serialize};

/// Version of the state file's format.
const FORMAT_VERSION: u32 = 1;

/// The most heads one cursor keeps. More can only come from many merges
/// acknowledged in a pathological order; forgetting the oldest heads at worst
/// resubmits commits, which the dispatcher recognises as duplicates.
const MAX_HEADS: usize = 64;

/// The acknowledged commits of one branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last acknowledged commit.
    pub commit: CommitId,
    /// Other heads of the acknowledged history, usually none.
    pub also: Vec<CommitId>,
}

impl Cursor {
    /// The cursor's heads: `commit` and `also`.
    pub fn heads(&self) -> impl Iterator<Item = &CommitId> {
        std::iter::once(&self.commit).chain(&self.also)
    }
}

/// Every cursor, by repository and branch, and the schedules' last fire times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors {
    repos: BTreeMap<RepoUrl, BTreeMap<Branch, Cursor>>,
    /// By schedule key: the last time the schedule fired (its submission was
    /// acknowledged), or when it was first seen.
    fired: BTreeMap<String, DateTime<Utc>>,
}

impl Cursors {
    /// When the schedule `key` last fired, if it ever did (or was first seen).
    pub fn last_fired(&self, key: &str) -> Option<DateTime<Utc>> {
        self.fired.get(key).copied()
    }

    /// Records that the schedule `key` fired at `at`; an older time than the
    /// one recorded is ignored. Returns whether anything changed.
    pub fn fired(&mut self, key: &str, at: DateTime<Utc>) -> bool {
        match self.fired.get(key) {
            Some(recorded) if *recorded >= at => false,
            _ => {
                self.fired.insert(key.to_string(), at);
                true
            }
        }
    }

    /// The cursor of one branch, if it has one.
    pub fn get(&self, repo: &RepoUrl, branch: &Branch) -> Option<&Cursor> {
        self.repos.get(repo)?.get(branch)
    }

    /// The cursors of one repository's branches.
    pub fn repo(&self, repo: &RepoUrl) -> impl Iterator<Item = (&Branch, &Cursor)> {
        self.repos.get(repo).into_iter().flatten()
    }

    /// Records that `commit`, whose parents are `parents`, was acknowledged.
    ///
    /// Commits are submitted parents first, so every parent that is a head
    /// stops being one.
    pub fn acknowledge(&mut self, repo: &RepoUrl, branch: &Branch, commit: &CommitId, parents: &[CommitId]) {
        let branches = self.repos.entry(repo.clone()).or_default();
        // Oldest first, so the cap below forgets the oldest heads.
        let mut also: Vec<CommitId> = match branches.remove(branch) {
            Some(old) => old.also.into_iter().chain(std::iter::once(old.commit)).collect(),
            None => Vec::new(),
        };
        also.retain(|head| head != commit && !parents.contains(head));
        if also.len() > MAX_HEADS {
            also.drain(..also.len() - MAX_HEADS);
        }
        branches.insert(branch.clone(), Cursor { commit: commit.clone(), also });
    }

    /// Moves a branch's cursor to `commit` alone (its history is all seen).
    pub fn reset(&mut self, repo: &RepoUrl, branch: &Branch, commit: &CommitId) {
        let cursor = Cursor { commit: commit.clone(), also: Vec::new() };
        self.repos.entry(repo.clone()).or_default().insert(branch.clone(), cursor);
    }

    /// Forgets a branch; returns whether it had a cursor.
    pub fn remove(&mut self, repo: &RepoUrl, branch: &Branch) -> bool {
        let Some(branches) = self.repos.get_mut(repo) else { return false };
        let removed = branches.remove(branch).is_some();
        if branches.is_empty() {
            self.repos.remove(repo);
        }
        removed
    }

    /// Reads the state file; a missing file means no cursor yet.
    ///
    /// # Errors
    /// A file that exists but cannot be read, parsed or validated.
    pub fn load(path: &Path) -> anyhow::Result<Cursors> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Cursors::default()),
            Err(err) => return Err(err).with_context(|| format!("reading state file {}", path.display())),
        };
        Cursors::parse(&text).with_context(|| {
            format!(
                "state file {} is corrupt; repair it, or move it away to start over \
                 (every branch is then seen for the first time)",
                path.display()
            )
        })
    }

    fn parse(text: &[u8]) -> anyhow::Result<Cursors> {
        let file: StateFile = serde_json::from_slice(text)?;
        if file.version != FORMAT_VERSION {
            anyhow::bail!(
                "unsupported format version {} (this observer reads {FORMAT_VERSION})",
                file.version
            );
        }
        let mut cursors = Cursors::default();
        for (repo, branches) in file.repositories {
            let repo = RepoUrl::new(repo).map_err(anyhow::Error::msg)?;
            for (branch, cursor) in branches {
                let branch = Branch::new(branch).map_err(anyhow::Error::msg)?;
                let commit = CommitId::new(cursor.commit).map_err(anyhow::Error::msg)?;
                let also = cursor.also.into_iter().map(CommitId::new).collect::<Result<_, _>>();
                let cursor = Cursor { commit, also: also.map_err(anyhow::Error::msg)? };
                cursors.repos.entry(repo.clone()).or_default().insert(branch, cursor);
            }
        }
        for (key, at) in file.schedules {
            let at = DateTime::parse_from_rfc3339(&at)
                .with_context(|| format!("schedule {key:?}: invalid time {at:?}"))?;
            cursors.fired.insert(key, at.with_timezone(&Utc));
        }
        Ok(cursors)
    }

    /// Writes the state file atomically: `F.tmp`, fsync, rename, fsync of the folder.
    ///
    /// # Errors
    /// Any I/O error; the old file is then left as it was.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let file = StateFile {
            version: FORMAT_VERSION,
            repositories: self
                .repos
                .iter()
                .map(|(repo, branches)| {
                    let branches = branches
                        .iter()
                        .map(|(branch, cursor)| {
                            let also = cursor.also.iter().map(|commit| commit.to_string()).collect();
                            (branch.to_string(), FileCursor { commit: cursor.commit.to_string(), also })
                        })
                        .collect();
                    (repo.to_string(), branches)
                })
                .collect(),
            schedules: self
                .fired
                .iter()
                .map(|(key, at)| (key.clone(), at.to_rfc3339_opts(SecondsFormat::Millis, true)))
                .collect(),
        };
        // Serialising maps of strings cannot fail.
        let mut text = serde_json::to_vec_pretty(&file).expect("state file serialises");
        text.push(b'\n');
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut out = std::fs::File::create(&tmp)?;
            out.write_all(&text)?;
            out.sync_all()?;
            std::fs::rename(&tmp, path)?;
            // The rename is durable only once the folder is synced.
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().with_context(|| format!("writing state file {}", path.display()))
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// The state file, as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    /// Repository, then branch, then cursor.
    repositories: BTreeMap<String, BTreeMap<String, FileCursor>>,
    /// Schedule key, then its last fire time (RFC 3339). Files without it
    /// (written before schedules existed) read as no schedule ever fired.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    schedules: BTreeMap<String, String>,
}

/// One cursor, as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCursor {
    commit: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    also: Vec<String>,
}

/// Takes an exclusive lock on `<state file>.lock`, held while the returned
/// file is open.
///
/// # Errors
/// When another observer holds it, or the lock file cannot be opened.
pub fn lock(state_file: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = state_file.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns; no memory is shared.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    anyhow::ensure!(
        locked,
        "another baton-observer is using the state file {} (lock {} is held)",
        state_file.display(),
        path.display()
    );
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(digit: char) -> CommitId {
        CommitId::new(digit.to_string().repeat(40)).unwrap()
    }

    fn sample() -> (Cursors, RepoUrl, Branch) {
        let repo = RepoUrl::new("/srv/git/app.git").unwrap();
        let branch = Branch::new("release/1.0").unwrap();
        let mut cursors = Cursors::default();
        cursors.acknowledge(&repo, &branch, &commit('a'), &[]);
        cursors.acknowledge(&repo, &Branch::new("main").unwrap(), &commit('b'), &[]);
        (cursors, repo, branch)
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(Cursors::load(&path).unwrap(), Cursors::default(), "a missing file is an empty state");
        let (mut cursors, repo, branch) = sample();
        cursors.acknowledge(&repo, &branch, &commit('c'), &[commit('9')]);
        cursors.save(&path).unwrap();
        let loaded = Cursors::load(&path).unwrap();
        assert_eq!(loaded, cursors);
        let cursor = loaded.get(&repo, &branch).unwrap();
        assert_eq!(cursor.commit, commit('c'));
        assert_eq!(cursor.also, [commit('a')], "a head that is not a parent stays");
        assert!(!tmp_path(&path).exists(), "the temporary file was renamed");
    }

    #[test]
    fn schedule_fire_times_round_trip_and_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut cursors, _, _) = sample();
        let early = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z").unwrap().with_timezone(&Utc);
        let late = early + chrono::Duration::hours(1);
        assert!(cursors.fired("nightly", late));
        assert!(!cursors.fired("nightly", early), "an older fire time is ignored");
        cursors.save(&path).unwrap();
        let loaded = Cursors::load(&path).unwrap();
        assert_eq!(loaded.last_fired("nightly"), Some(late));
        assert_eq!(loaded.last_fired("other"), None);
        std::fs::write(&path, r#"{"version": 1, "repositories": {}, "schedules": {"a": "yesterday"}}"#)
            .unwrap();
        assert!(format!("{:#}", Cursors::load(&path).unwrap_err()).contains("is corrupt"));
    }

    #[test]
    fn heads_fold_when_a_merge_is_acknowledged() {
        let (mut cursors, repo, branch) = sample();
        cursors.acknowledge(&repo, &branch, &commit('c'), &[commit('0')]);
        cursors.acknowledge(&repo, &branch, &commit('d'), &[commit('a'), commit('c')]);
        let cursor = cursors.get(&repo, &branch).unwrap();
        assert_eq!((&cursor.commit, cursor.also.len()), (&commit('d'), 0));
        assert!(cursors.remove(&repo, &branch));
        assert!(!cursors.remove(&repo, &branch));
    }

    #[test]
    fn atomic_write_keeps_the_old_file_when_writing_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (cursors, repo, branch) = sample();
        cursors.save(&path).unwrap();
        // A folder where the temporary file should go makes the write fail
        // before the rename.
        std::fs::create_dir(tmp_path(&path)).unwrap();
        let mut changed = cursors.clone();
        changed.reset(&repo, &branch, &commit('e'));
        assert!(changed.save(&path).is_err());
        assert_eq!(Cursors::load(&path).unwrap(), cursors);
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for corrupt in [
            &b"{\"version\": 1, \"repositories\": {"[..],
            b"not json",
            b"{\"version\": 2, \"repositories\": {}}",
            b"{\"version\": 1, \"repositories\": {\"/a\": {\"main\": {\"commit\": \";rm -rf /\"}}}}",
            b"{\"version\": 1, \"repositories\": {\"../a\": {}}}",
        ] {
            std::fs::write(&path, corrupt).unwrap();
            let err = Cursors::load(&path).unwrap_err();
            assert!(format!("{err:#}").contains("is corrupt"), "{err:#}");
        }
    }

    #[test]
    fn a_second_observer_on_one_state_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let first = lock(&state).unwrap();
        let err = lock(&state).unwrap_err();
        assert!(format!("{err:#}").contains("another baton-observer"), "{err:#}");
        drop(first);
        assert!(lock(&state).is_ok());
    }
}
