//! The ledger that scans and the link share: the cursors (what the
//! dispatcher acknowledged) and the FIFO of commits waiting to be submitted.
//!
//! A scan asks the ledger what each branch has already seen (cursor heads plus
//! queued commits), lets git find what is new, and records the result here; the
//! link takes commits from the front, and only its answers move cursors. So a
//! commit is in exactly one place (unseen, queued, or behind a cursor), and a
//! restart rebuilds the queue from the repositories and the saved cursors.
//!
//! The queue lives in memory only and is bounded by [`MAX_QUEUED`]: when it is
//! full, a scan queues what fits and the rest stays unseen until a later scan.
//!
//! A schedule's submission ([`Fire`]) waits in the same queue but stands
//! apart from the cursors: it does not count as seen, and its answer records
//! the schedule's fire time instead of moving a cursor.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::Context;
use chrono::{DateTime, Utc};
use protocol::message::Submit;
use protocol::{Branch, CommitId, Label, RepoUrl};
use tokio::sync::Notify;

use crate::cursor::Cursors;
use crate::git::{NewCommit, ScanOutput};

/// The most commits waiting for the dispatcher, across all repositories. Ten
/// pushes of a thousand commits fit; each entry is a few hundred bytes, so the
/// bound also caps the observer's memory while the dispatcher is away.
pub const MAX_QUEUED: usize = 10_000;

/// A commit waiting for the dispatcher's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Identifies the entry across the link's batches.
    pub seq: u64,
    /// What is sent.
    pub submit: Submit,
    /// The commit's parents, to fold the cursor's heads once it is acknowledged.
    pub parents: Vec<CommitId>,
    /// The schedule firing this submission is for; `None` for a new commit.
    pub fire: Option<Fire>,
}

/// One firing of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// The schedule's key in the state file.
    pub key: String,
    /// The time this firing stands for (a time the cron expression names).
    pub at: DateTime<Utc>,
}

/// Cursors and queue, behind one lock that is never held across an await.
pub struct Ledger {
    inner: Mutex<Inner>,
    /// Wakes the link when commits are queued (one waiter: `notify_one`
    /// keeps a permit, so no wake-up is lost).
    queued: Notify,
    /// Orders saves, so a slow older snapshot never overwrites a newer one.
    save_lock: tokio::sync::Mutex<()>,
    state_file: PathBuf,
}

struct Inner {
    cursors: Cursors,
    pending: VecDeque<Pending>,
    next_seq: u64,
    /// Whether the cursors changed since the last save.
    dirty: bool,
}

impl Ledger {
    /// A ledger starting from saved cursors, saving to `state_file`.
    pub fn new(cursors: Cursors, state_file: PathBuf) -> Ledger {
        let inner = Inner { cursors, pending: VecDeque::new(), next_seq: 1, dirty: false };
        Ledger { inner: Mutex::new(inner), queued: Notify::new(), save_lock: Default::default(), state_file }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the data consistent before anything
        // that could panic, so a poisoned lock still guards valid data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Per branch of `repo`, the commits already seen: cursor heads and queued commits.
    pub fn seen(&self, repo: &RepoUrl) -> BTreeMap<Branch, Vec<CommitId>> {
        let inner = self.lock();
        let mut seen: BTreeMap<Branch, Vec<CommitId>> = BTreeMap::new();
        for (branch, cursor) in inner.cursors.repo(repo) {
            seen.entry(branch.clone()).or_default().extend(cursor.heads().cloned());
        }
        for pending in
            inner.pending.iter().filter(|pending| pending.submit.repo == *repo && pending.fire.is_none())
        {
            seen.entry(pending.submit.branch.clone()).or_default().push(pending.submit.commit.clone());
        }
        seen
    }

    /// Applies what a scan of `repo` found: queues new commits, drops the
    /// cursors of vanished branches, and moves cursors that need no
    /// submission. Returns whether the cursors have unsaved changes (the
    /// caller saves).
    pub fn record(&self, repo: &RepoUrl, output: ScanOutput) -> bool {
        let mut inner = self.lock();
        for branch in output.vanished {
            let had_cursor = inner.cursors.remove(repo, &branch);
            let n_queued = inner.pending.len();
            inner.pending.retain(|pending| pending.submit.repo != *repo || pending.submit.branch != branch);
            let n_dropped = n_queued - inner.pending.len();
            inner.dirty |= had_cursor;
            tracing::info!(repo = %repo, branch = %branch, n_dropped, "branch disappeared, dropping its cursor");
        }
        let mut n_added = 0;
        for scanned in output.branches {
            let branch = &scanned.branch;
            if scanned.lost_cursor {
                tracing::warn!(repo = %repo, branch = %branch, "the cursor's commits are gone from the repository, seeing the branch anew");
                inner.dirty |= inner.cursors.remove(repo, branch);
            }
            if scanned.skipped > 0 {
                tracing::warn!(repo = %repo, branch = %branch, skipped = scanned.skipped, kept = scanned.new.len(), "too many new commits, submitting only the newest");
            }
            let has_pending = inner.pending.iter().any(|pending| {
                pending.submit.repo == *repo && pending.submit.branch == *branch && pending.fire.is_none()
            });
            if scanned.new.is_empty() {
                // Nothing to submit and nothing in flight: the tip's history
                // is all seen, so the cursor may rest on it.
                let settled = inner
                    .cursors
                    .get(repo, branch)
                    .is_some_and(|cursor| cursor.commit == scanned.tip && cursor.also.is_empty());
                if !has_pending && !settled {
                    inner.cursors.reset(repo, branch, &scanned.tip);
                    inner.dirty = true;
                }
                continue;
            }
            let room = MAX_QUEUED.saturating_sub(inner.pending.len());
            if room < scanned.new.len() {
                tracing::warn!(repo = %repo, branch = %branch, queued = room, waiting = scanned.new.len() - room, "submission queue full, the rest waits for a later scan");
            }
            for new in scanned.new.into_iter().take(room) {
                let seq = inner.next_seq;
                inner.next_seq += 1;
                tracing::debug!(repo = %repo, branch = %branch, commit = %new.commit, "commit queued");
                let submit = Submit {
                    repo: repo.clone(),
                    branch: branch.clone(),
                    commit: new.commit,
                    labels: new.labels,
                };
                inner.pending.push_back(Pending { seq, submit, parents: new.parents, fire: None });
                n_added += 1;
            }
        }
        let changed = inner.dirty;
        drop(inner);
        if n_added > 0 {
            self.queued.notify_one();
        }
        changed
    }

    /// Queues a schedule's submission of `tip`, the tip of `branch`, with the
    /// labels its `.baton.toml` requires plus the schedule's own.
    ///
    /// # Returns
    /// Whether it was queued: `false` when the queue is full (the firing is
    /// then lost, and logged).
    pub fn schedule(
        &self,
        repo: &RepoUrl,
        branch: &Branch,
        tip: NewCommit,
        labels: &[Label],
        fire: Fire,
    ) -> bool {
        let mut inner = self.lock();
        if inner.pending.len() >= MAX_QUEUED {
            drop(inner);
            tracing::warn!(repo = %repo, branch = %branch, schedule = %fire.key, "submission queue full, skipping this firing");
            return false;
        }
        let mut all_labels = tip.labels;
        for label in labels {
            if !all_labels.contains(label) {
                all_labels.push(label.clone());
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let submit =
            Submit { repo: repo.clone(), branch: branch.clone(), commit: tip.commit, labels: all_labels };
        inner.pending.push_back(Pending { seq, submit, parents: tip.parents, fire: Some(fire) });
        drop(inner);
        self.queued.notify_one();
        true
    }

    /// When the schedule `key` last fired (or was first seen), as saved.
    pub fn last_fired(&self, key: &str) -> Option<DateTime<Utc>> {
        self.lock().cursors.last_fired(key)
    }

    /// Records a firing that needs no submission (first sight of a schedule,
    /// or a branch that does not exist). Returns whether the state changed
    /// (the caller saves).
    pub fn fired(&self, fire: &Fire) -> bool {
        let mut inner = self.lock();
        let changed = inner.cursors.fired(&fire.key, fire.at);
        inner.dirty |= changed;
        changed
    }

    /// Up to `max` commits from the front of the queue, oldest first.
    pub fn front(&self, max: usize) -> Vec<Pending> {
        self.lock().pending.iter().take(max).cloned().collect()
    }

    /// How many commits wait.
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Resolves once commits were queued since the last call (or at once, if
    /// some were queued while nobody waited).
    pub async fn queued(&self) {
        self.queued.notified().await;
    }

    /// The dispatcher answered entry `seq` (accepted or refused): the entry
    /// leaves the queue and its branch's cursor moves to it (or, for a
    /// schedule's submission, the schedule's fire time).
    ///
    /// # Returns
    /// The entry, or `None` when it was dropped meanwhile (its branch vanished).
    pub fn answered(&self, seq: u64) -> Option<Pending> {
        let mut inner = self.lock();
        let idx = inner.pending.iter().position(|pending| pending.seq == seq)?;
        let pending = inner.pending.remove(idx)?;
        match &pending.fire {
            Some(fire) => {
                inner.cursors.fired(&fire.key, fire.at);
            }
            None => {
                let Submit { repo, branch, commit, .. } = &pending.submit;
                inner.cursors.acknowledge(repo, branch, commit, &pending.parents);
            }
        }
        inner.dirty = true;
        Some(pending)
    }

    /// A copy of the cursors.
    #[cfg(test)]
    pub fn cursors(&self) -> Cursors {
        self.lock().cursors.clone()
    }

    /// Writes the cursors to the state file if they changed since the last save.
    ///
    /// # Errors
    /// The write failed; the cursors stay marked unsaved, so the next save retries.
    pub async fn save(&self) -> anyhow::Result<()> {
        let _order = self.save_lock.lock().await;
        let snapshot = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            inner.cursors.clone()
        };
        let path = self.state_file.clone();
        let res =
            tokio::task::spawn_blocking(move || snapshot.save(&path)).await.context("state file writer")?;
        if res.is_err() {
            self.lock().dirty = true;
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::{BranchScan, NewCommit};

    fn commit(digit: char) -> CommitId {
        CommitId::new(digit.to_string().repeat(40)).unwrap()
    }

    fn scanned(branch: &str, tip: char, new: &[char]) -> BranchScan {
        let mut parent = None;
        let new = new
            .iter()
            .map(|digit| {
                let parents = parent.replace(commit(*digit)).into_iter().collect();
                NewCommit { commit: commit(*digit), parents, labels: Vec::new() }
            })
            .collect();
        BranchScan {
            branch: Branch::new(branch).unwrap(),
            tip: commit(tip),
            new,
            skipped: 0,
            lost_cursor: false,
        }
    }

    fn ledger() -> (Ledger, RepoUrl, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(Cursors::default(), dir.path().join("state.json"));
        (ledger, RepoUrl::new("/srv/app.git").unwrap(), dir)
    }

    #[test]
    fn queued_commits_count_as_seen_until_answered() {
        let (ledger, repo, _dir) = ledger();
        let output = ScanOutput {
            branches: vec![scanned("main", '3', &['1', '2', '3'])],
            vanished: vec![],
            ..Default::default()
        };
        assert!(!ledger.record(&repo, output));
        let main = Branch::new("main").unwrap();
        assert_eq!(ledger.seen(&repo)[&main], [commit('1'), commit('2'), commit('3')]);
        let front = ledger.front(2);
        assert_eq!(front.len(), 2);
        assert_eq!(ledger.answered(front[0].seq).unwrap().submit.commit, commit('1'));
        assert_eq!(ledger.seen(&repo)[&main], [commit('1'), commit('2'), commit('3')]);
        assert_eq!(ledger.cursors().get(&repo, &main).unwrap().commit, commit('1'));
        assert_eq!(ledger.answered(front[0].seq), None, "answered once");
        ledger.answered(front[1].seq);
        assert_eq!(ledger.cursors().get(&repo, &main).unwrap().also, [], "the parent folded");
    }

    #[tokio::test]
    async fn a_settled_branch_rests_its_cursor_on_the_tip() {
        let (ledger, repo, dir) = ledger();
        let output = ScanOutput { branches: vec![scanned("main", '5', &[])], ..Default::default() };
        assert!(ledger.record(&repo, output.clone()), "first sight with nothing new sets the cursor");
        ledger.save().await.unwrap();
        assert_eq!(Cursors::load(&dir.path().join("state.json")).unwrap(), ledger.cursors());
        assert!(!ledger.record(&repo, output), "and then nothing changes");
        let vanished = ScanOutput {
            branches: vec![],
            vanished: vec![Branch::new("main").unwrap()],
            ..Default::default()
        };
        assert!(ledger.record(&repo, vanished));
        assert_eq!(ledger.cursors(), Cursors::default());
    }

    #[test]
    fn a_scheduled_submission_is_not_seen_and_moves_no_cursor() {
        let (ledger, repo, _dir) = ledger();
        let main = Branch::new("main").unwrap();
        let at = DateTime::parse_from_rfc3339("2026-12-01T03:00:00Z").unwrap().with_timezone(&Utc);
        let fire = Fire { key: "nightly".into(), at };
        let tip = NewCommit { commit: commit('7'), parents: Vec::new(), labels: Vec::new() };
        let gpu = Label::new("gpu").unwrap();
        assert!(ledger.schedule(&repo, &main, tip, std::slice::from_ref(&gpu), fire.clone()));
        assert!(ledger.seen(&repo).is_empty(), "a scheduled tip may still be new to the branch");
        let front = ledger.front(10);
        assert_eq!((front[0].submit.labels.as_slice(), front[0].fire.as_ref()), (&[gpu][..], Some(&fire)));
        assert_eq!(ledger.last_fired("nightly"), None);
        ledger.answered(front[0].seq).unwrap();
        assert_eq!(ledger.last_fired("nightly"), Some(at));
        assert_eq!(ledger.cursors().get(&repo, &main), None);
    }

    #[test]
    fn a_full_queue_takes_what_fits() {
        let (ledger, repo, _dir) = ledger();
        let digits: Vec<char> = "0123456789abcdef".chars().collect();
        for _ in 0..MAX_QUEUED / digits.len() {
            ledger.record(
                &repo,
                ScanOutput {
                    branches: vec![scanned("main", 'f', &digits)],
                    vanished: vec![],
                    ..Default::default()
                },
            );
        }
        assert_eq!(ledger.len(), MAX_QUEUED);
        ledger.record(
            &repo,
            ScanOutput {
                branches: vec![scanned("other", 'f', &digits)],
                vanished: vec![],
                ..Default::default()
            },
        );
        assert_eq!(ledger.len(), MAX_QUEUED);
    }
}
