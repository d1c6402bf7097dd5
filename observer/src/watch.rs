//! Filesystem notifications on a local repository's refs (notify, inotify on
//! Linux), turned into "scan now" wake-ups for one repository's scan loop.
//!
//! The repository's `refs/` folder is watched recursively and its git folder
//! non-recursively (for `packed-refs` and `HEAD`). Only creations,
//! modifications and removals count; reads (`Access`) and `*.lock` files, which
//! git writes before every ref update, do not. Debouncing needs no timer: the
//! callback `try_send`s into a channel of one slot, so the first event wakes
//! the scan at once, and everything that arrives while it runs collapses into
//! the one wake-up already waiting (a full slot already means "scan needed").
//! A push of a hundred commits, or a `git gc`, thus costs one or two scans.
//!
//! One race needs help: a push of the first branch under a new folder
//! (`release/1.0`) creates the folder, and inotify watches it only once
//! notify has seen it, so the ref's own event may come too early to be
//! caught. The wake-up for the folder still comes, but its scan may run before
//! the ref is in place; [`RefWatcher::take_new_folders`] tells the scan loop
//! to look again shortly.
//!
//! This module decides nothing about what changed; the scan reads the refs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use notify::event::CreateKind;
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Pending wake-ups: one, as a second would only repeat "scan needed".
const WAKE_SLOTS: usize = 1;

/// Watches one repository's refs.
pub struct RefWatcher {
    /// Stops watching when dropped.
    _watcher: notify::RecommendedWatcher,
    /// Set when a scan is due; see [`WAKE_SLOTS`].
    wakeups: mpsc::Receiver<()>,
    /// Relevant events seen so far, for debug logs and tests.
    n_events: Arc<AtomicU64>,
    /// Whether a folder appeared under `refs/` since the last check.
    new_folders: Arc<AtomicBool>,
}

impl RefWatcher {
    /// Starts watching the repository whose git folder (the common dir: the
    /// repository itself when bare, `.git/` otherwise; see
    /// [`crate::git::refs_dir`]) is `git_dir`.
    ///
    /// # Errors
    /// When the folders cannot be watched (missing, or out of inotify watches).
    pub fn new(git_dir: &Path) -> anyhow::Result<RefWatcher> {
        let (sender, wakeups) = mpsc::channel(WAKE_SLOTS);
        let n_events = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&n_events);
        let new_folders = Arc::new(AtomicBool::new(false));
        let folder_flag = Arc::clone(&new_folders);
        let root = git_dir.to_path_buf();
        let handler = move |res: notify::Result<Event>| match res {
            Ok(event) => {
                if is_ref_change(&event, &root) {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if event.kind == EventKind::Create(CreateKind::Folder) {
                        folder_flag.store(true, Ordering::Relaxed);
                    }
                    // A full slot means a scan is already due.
                    let _ = sender.try_send(());
                }
            }
            Err(err) => {
                // Events may have been lost (queue overflow): scan to be safe.
                tracing::warn!(path = %root.display(), error = %err, "watch error");
                let _ = sender.try_send(());
            }
        };
        let mut watcher = notify::recommended_watcher(handler).context("creating a filesystem watcher")?;
        let refs = git_dir.join("refs");
        watcher
            .watch(&refs, RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", refs.display()))?;
        watcher
            .watch(git_dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", git_dir.display()))?;
        Ok(RefWatcher { _watcher: watcher, wakeups, n_events, new_folders })
    }

    /// Waits until refs changed since the last wake-up was taken.
    ///
    /// # Returns
    /// `false` if the watcher stopped (its thread ended); it should be recreated.
    pub async fn changed(&mut self) -> bool {
        self.wakeups.recv().await.is_some()
    }

    /// Whether a folder appeared under `refs/` since the last call: events
    /// inside it may have been missed, so the caller should scan again soon.
    pub fn take_new_folders(&self) -> bool {
        self.new_folders.swap(false, Ordering::Relaxed)
    }

    /// How many relevant events arrived so far.
    pub fn n_events(&self) -> u64 {
        self.n_events.load(Ordering::Relaxed)
    }
}

/// A change to a ref, `packed-refs` or `HEAD`, not to a lock file.
fn is_ref_change(event: &Event, git_dir: &Path) -> bool {
    let mutating = matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_));
    mutating && event.paths.iter().any(|path| is_ref_path(path, git_dir))
}

fn is_ref_path(path: &Path, git_dir: &Path) -> bool {
    if path.extension().is_some_and(|extension| extension == "lock") {
        return false;
    }
    let Ok(relative) = path.strip_prefix(git_dir) else { return false };
    relative.starts_with("refs") || relative == Path::new("packed-refs") || relative == Path::new("HEAD")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::{timeout_at, Instant};

    use super::*;
    use crate::config::{BranchPattern, Location, Mode};
    use crate::git::{self, ScanInput};
    use crate::test_repo::TestRepo;

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    #[test]
    fn only_ref_changes_count() {
        let root = Path::new("/srv/app.git");
        let event = |kind: EventKind, path: &str| Event::new(kind).add_path(root.join(path));
        let modify = EventKind::Modify(notify::event::ModifyKind::Any);
        let access = EventKind::Access(notify::event::AccessKind::Any);
        assert!(is_ref_change(&event(modify, "refs/heads/main"), root));
        assert!(is_ref_change(&event(modify, "packed-refs"), root));
        assert!(!is_ref_change(&event(modify, "refs/heads/main.lock"), root));
        assert!(!is_ref_change(&event(modify, "index"), root));
        assert!(!is_ref_change(&event(access, "refs/heads/main"), root));
    }

    #[tokio::test]
    async fn a_push_into_a_bare_repository_wakes_the_watcher() {
        let origin = TestRepo::bare("main");
        let work = TestRepo::new();
        let commit = work.commit("c1");
        let mut watcher = RefWatcher::new(&git::refs_dir(&origin.canonical()).unwrap()).unwrap();
        work.git(&["push", "-q", origin.path.to_str().unwrap(), "main"]);
        assert!(timeout_at(deadline(), watcher.changed()).await.expect("a wake-up before the deadline"));
        assert_eq!(origin.rev("main"), commit);
    }

    #[tokio::test]
    async fn a_burst_of_ref_updates_costs_few_scans() {
        const N_REFS: usize = 50;
        let origin = TestRepo::bare("main");
        let work = TestRepo::new();
        work.commit("c1");
        let mut watcher = RefWatcher::new(&git::refs_dir(&origin.canonical()).unwrap()).unwrap();
        let refspecs: Vec<String> = (0..N_REFS).map(|idx| format!("main:b{idx}")).collect();
        let mut args = vec!["push", "-q", origin.path.to_str().unwrap()];
        args.extend(refspecs.iter().map(String::as_str));
        work.git(&args);

        // The observer's loop: wake, scan for real, until the scan sees every ref.
        let input = ScanInput {
            location: Location::Local(origin.canonical()),
            patterns: vec![BranchPattern::new("b*").unwrap()],
            mode: Mode::Every,
            initial: 1,
            max_new: 1000,
            seen: Default::default(),
            known: None,
            tips_of: Vec::new(),
        };
        let mut n_scans = 0;
        loop {
            assert!(timeout_at(deadline(), watcher.changed()).await.expect("a wake-up before the deadline"));
            n_scans += 1;
            let output = git::scan(&input, &Default::default()).unwrap();
            if output.branches.len() == N_REFS {
                break;
            }
        }
        let until = deadline();
        while watcher.n_events() < N_REFS as u64 {
            assert!(Instant::now() < until, "only {} events arrived", watcher.n_events());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A wake-up left over from the burst would cost one more scan.
        n_scans += usize::from(watcher.wakeups.try_recv().is_ok());
        assert!(n_scans <= 5, "{n_scans} scans for {} events", watcher.n_events());
    }
}
