//! One repository's scan loop: wait for a trigger (the poll interval, a ref
//! change seen by the watcher, or the safety poll), scan with gix on a
//! blocking thread, record what is new in the ledger, save the cursors if
//! they moved.
//!
//! Each repository has its own loop, so a slow fetch or a broken repository
//! delays no other. A failing scan is logged (at warn when the failure is new,
//! at debug while it repeats) and retried at the next trigger; the loop only
//! ends with the shutdown token.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{Location, RepoConfig, Trigger};
use crate::git::{self, ScanInput};
use crate::queue::Ledger;
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

/// Observes one repository until `shutdown`.
pub async fn observe(
    repo: RepoConfig,
    settings: ScanSettings,
    ledger: Arc<Ledger>,
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
        let input = ScanInput {
            location: repo.location.clone(),
            patterns: repo.branches.clone(),
            mode: repo.mode,
            initial: settings.initial,
            max_new: settings.max_new,
            seen: ledger.seen(&repo.id),
            known: known.clone(),
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
                if ledger.record(&repo.id, output) {
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
            () = shutdown.cancelled() => return,
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
