//! One repository's scan loop: wait for a trigger (the poll interval, a ref
//! change seen by the watcher, the safety poll, or a [`Wake`] from a webhook
//! or a schedule), scan with gix on a blocking thread, record what is new in
//! the ledger, queue the tips that schedules asked for, save the cursors if
//! they moved.
//!
//! Each repository has its own loop, so a slow fetch or a broken repository
//! delays no other. A failing scan is logged (at warn when the failure is new,
//! at debug while it repeats) and retried at the next trigger; the loop only
//! ends with the shutdown token.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use protocol::{Branch, Label};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Location, RepoConfig, Trigger};
use crate::git::{self, ScanInput};
use crate::queue::{Fire, Ledger};
use crate::watch::RefWatcher;

/// How soon to scan again after a folder appeared under `refs/`, whose first
/// ref's event the watcher may have missed (see the `watch` module).
const NEW_FOLDER_RESCAN: Duration = Duration::from_millis(50);

/// The settings every scan loop shares.
#[derive(Debug, Clone, Copy)]
pub struct ScanSettings {
    /// What makes the loop scan.
    pub trigger: Trigger,
    /// At most this many commits on first sight of a branch.
    pub initial: usize,
    /// At most this many commits per branch and scan.
    pub max_new: usize,
}

/// The most schedule firings one repository keeps while its scans fail; a
/// schedule fires at most once a second, and a few per repository is normal.
const MAX_WAITING_FIRES: usize = 64;

/// Asks one repository's scan loop to scan at once: a webhook's push, or a
/// schedule that wants a branch's tip.
#[derive(Debug, Default)]
pub struct Wake {
    /// Wakes the loop (`notify_one` keeps a permit, so none is lost).
    notify: Notify,
    /// Schedule firings waiting for the next successful scan.
    fires: Mutex<Vec<ScheduledTip>>,
}

/// A schedule's request for a branch's tip.
#[derive(Debug, Clone)]
pub struct ScheduledTip {
    /// The branch whose tip is submitted.
    pub branch: Branch,
    /// Labels the schedule adds to the commit's own.
    pub labels: Vec<Label>,
    /// The firing.
    pub fire: Fire,
}

impl Wake {
    /// Scans the repository as soon as the loop is free.
    pub fn scan(&self) {
        self.notify.notify_one();
    }

    /// Scans the repository and submits the tip of a branch for a schedule.
    pub fn fire(&self, tip: ScheduledTip) {
        let mut fires = self.fires.lock().unwrap_or_else(PoisonError::into_inner);
        if fires.len() >= MAX_WAITING_FIRES {
            tracing::warn!(schedule = %tip.fire.key, "too many schedule firings wait for a readable repository, skipping this one");
        } else {
            fires.push(tip);
        }
        drop(fires);
        self.notify.notify_one();
    }

    /// Resolves once the loop was asked to wake.
    #[cfg(test)]
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    fn take_fires(&self) -> Vec<ScheduledTip> {
        std::mem::take(&mut *self.fires.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts back firings a failed scan could not serve, ahead of newer ones.
    fn put_back(&self, mut fires: Vec<ScheduledTip>) {
        let mut waiting = self.fires.lock().unwrap_or_else(PoisonError::into_inner);
        fires.append(&mut waiting);
        fires.truncate(MAX_WAITING_FIRES);
        *waiting = fires;
    }
}

/// Observes one repository until `shutdown`.
pub async fn observe(
    repo: RepoConfig,
    settings: ScanSettings,
    ledger: Arc<Ledger>,
    wake: Arc<Wake>,
    shutdown: CancellationToken,
) {
    let (interval, watch) = match settings.trigger {
        Trigger::Poll(interval) => (interval, false),
        Trigger::Watch { safety_poll } => (safety_poll, true),
    };
    let interrupt = Arc::new(AtomicBool::new(false));
    let mut watcher: Option<RefWatcher> = None;
    let mut failing: Option<String> = None;
    let mut known = None;
    loop {
        if let (true, None, Location::Local(path)) = (watch, &watcher, &repo.location) {
            // Watch before scanning, so nothing that lands during the scan is missed.
            match start_watch(path).await {
                Ok(started) => watcher = Some(started),
                Err(err) => {
                    tracing::warn!(repo = %repo.id, error = format!("{err:#}"), "cannot watch the repository, relying on the safety poll")
                }
            }
        }
        let fires = wake.take_fires();
        let input = ScanInput {
            location: repo.location.clone(),
            patterns: repo.branches.clone(),
            mode: repo.mode,
            initial: settings.initial,
            max_new: settings.max_new,
            seen: ledger.seen(&repo.id),
            known: known.clone(),
            tips_of: fires.iter().map(|tip| tip.branch.clone()).collect(),
        };
        let flag = Arc::clone(&interrupt);
        let mut scan = tokio::task::spawn_blocking(move || git::scan(&input, &flag));
        let res = tokio::select! {
            res = &mut scan => res.context("scan thread").and_then(|res| res),
            () = shutdown.cancelled() => {
                // Ask a running fetch to stop, and let the thread end.
                interrupt.store(true, Ordering::Relaxed);
                let _ = scan.await;
                return;
            }
        };
        match res {
            Ok(output) => {
                if failing.take().is_some() {
                    tracing::info!(repo = %repo.id, "repository readable again");
                }
                known = Some(output.present.clone());
                let mut changed = false;
                for tip in fires {
                    changed |= queue_tip(&ledger, &repo, &output, tip);
                }
                if ledger.record(&repo.id, output) | changed {
                    if let Err(err) = ledger.save().await {
                        tracing::error!(error = format!("{err:#}"), "saving the state file failed");
                    }
                }
            }
            Err(err) => {
                let message = format!("{err:#}");
                if failing.as_ref() != Some(&message) {
                    tracing::warn!(repo = %repo.id, error = %message, "scan failed, retrying at the next scan");
                } else {
                    tracing::debug!(repo = %repo.id, error = %message, "scan failed again");
                }
                failing = Some(message);
                wake.put_back(fires);
                // The watched folders may be gone with the repository; watch afresh.
                watcher = None;
            }
        }
        let wait = match &watcher {
            Some(started) if started.take_new_folders() => NEW_FOLDER_RESCAN,
            _ => interval,
        };
        tokio::select! {
            woke = changed(&mut watcher) => {
                match &watcher {
                    Some(started) if woke => tracing::debug!(repo = %repo.id, n_events = started.n_events(), "refs changed"),
                    _ => watcher = None,
                }
            }
            () = tokio::time::sleep(wait) => {}
            () = wake.notify.notified() => tracing::debug!(repo = %repo.id, "woken to scan"),
            () = shutdown.cancelled() => return,
        }
    }
}

/// Queues a schedule's tip from a scan's output; a branch that does not
/// exist is logged and counts as fired. Returns whether the state changed.
fn queue_tip(ledger: &Ledger, repo: &RepoConfig, output: &crate::git::ScanOutput, tip: ScheduledTip) -> bool {
    match output.tips.get(&tip.branch) {
        Some(commit) => {
            tracing::info!(repo = %repo.id, branch = %tip.branch, commit = %commit.commit, schedule = %tip.fire.key, "schedule fired, submitting the tip");
            ledger.schedule(&repo.id, &tip.branch, commit.clone(), &tip.labels, tip.fire);
            false
        }
        None => {
            tracing::warn!(repo = %repo.id, branch = %tip.branch, schedule = %tip.fire.key, "schedule fired, but the branch does not exist");
            ledger.fired(&tip.fire)
        }
    }
}

async fn start_watch(path: &Path) -> anyhow::Result<RefWatcher> {
    let path = path.to_path_buf();
    let git_dir =
        tokio::task::spawn_blocking(move || git::refs_dir(&path)).await.context("git dir thread")??;
    RefWatcher::new(&git_dir)
}

/// Waits for the watcher, or forever when there is none.
async fn changed(watcher: &mut Option<RefWatcher>) -> bool {
    match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    }
}
