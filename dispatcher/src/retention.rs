//! Retention: the background pruner behind `--keep-tasks N` (each
//! repository keeps its newest N tasks) and `--keep-logs DUR` (logs of tasks
//! that ended longer ago are removed; the tasks stay, and `baton log` says
//! the log was pruned). It also measures the data dir for `baton status`.
//!
//! It never blocks scheduling: candidates are found on a read-only
//! connection, then removed in small batches ([`BATCH`]), each one event in
//! the scheduler's queue and so a few rows in one of its transactions; the
//! scheduler checks again that each task may go (ended, no release's task,
//! no deploy task). Files go after the commit: logs through the logs thread
//! (so a log is never compressed and removed at once), a commit's
//! `test_results/` file once no task of that commit is left. Nothing here
//! runs `VACUUM`: SQLite reuses the freed pages.
//!
//! Deliberately not here: SQL (`store::prune`) and removing log files
//! (`logs`).

use std::sync::Arc;
use std::time::Duration;

use protocol::TaskId;
use tokio_util::sync::CancellationToken;

use crate::files::DataDir;
use crate::logs::Logs;
use crate::readers::Readers;
use crate::scheduler::{Event, Handle, Pruned};
use crate::time::now_ms;

/// Tasks or logs removed per scheduler event: a few milliseconds of the
/// writer's time.
const BATCH: u32 = 200;

/// A pause between two batches, so a large backlog (a first run with
/// `--keep-tasks` on a big database) is worked off without crowding the
/// scheduler's queue.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// What to prune, and how often to look.
#[derive(Clone, Debug)]
pub struct Retention {
    pub keep_logs: Option<Duration>,
    pub keep_tasks: Option<u32>,
    /// Time between two rounds (and between two measurements of the data dir).
    pub interval: Duration,
}

impl Default for Retention {
    /// Keep everything; measure the data dir every minute.
    fn default() -> Retention {
        Retention { keep_logs: None, keep_tasks: None, interval: Duration::from_secs(60) }
    }
}

/// Runs rounds until `shutdown`: the first at once, then one per interval.
pub async fn run(
    retention: Retention,
    readers: Arc<Readers>,
    scheduler: Handle,
    files: DataDir,
    logs: Logs,
    shutdown: CancellationToken,
) {
    if retention.keep_logs.is_some() || retention.keep_tasks.is_some() {
        tracing::info!(keep_logs = ?retention.keep_logs, keep_tasks = ?retention.keep_tasks, "retention on");
    }
    loop {
        let round = async {
            if let Err(err) = prune(&retention, &readers, &scheduler, &files, &logs, &shutdown).await {
                tracing::warn!(error = %format!("{err:#}"), "pruning failed; trying again next round");
            }
            let measured = files.clone();
            let _ = tokio::task::spawn_blocking(move || measured.measure()).await;
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = round => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(retention.interval) => {}
        }
    }
}

/// One round: batches until nothing is left to prune.
async fn prune(
    retention: &Retention,
    readers: &Arc<Readers>,
    scheduler: &Handle,
    files: &DataDir,
    logs: &Logs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (mut n_tasks, mut n_logs) = (0usize, 0usize);
    loop {
        let keep_tasks = retention.keep_tasks;
        let logs_before = retention.keep_logs.map(|keep| now_ms() - keep.as_millis() as i64);
        let (tasks, old_logs) = readers
            .query(move |reader| {
                let tasks = match keep_tasks {
                    Some(keep) => reader.tasks_beyond(keep, BATCH)?,
                    None => Vec::new(),
                };
                let logs = match logs_before {
                    Some(before) => reader.logs_before(before, BATCH)?,
                    None => Vec::new(),
                };
                Ok((tasks, logs))
            })
            .await?;
        if tasks.is_empty() && old_logs.is_empty() {
            break;
        }
        let Ok(pruned) = scheduler.ask(move |reply| Event::Prune { tasks, logs: old_logs, reply }).await
        else {
            return Ok(());
        };
        let Pruned { tasks: gone, logs: logs_gone } = pruned;
        if gone.is_empty() && logs_gone.is_empty() {
            // Candidates that may not go after all (a release recorded in
            // between): the next round finds others.
            break;
        }
        n_tasks += gone.len();
        n_logs += logs_gone.len();
        let mut remove: Vec<TaskId> = logs_gone;
        remove.extend(gone.iter().map(|task| task.id));
        logs.remove(remove).await;
        // A commit's result file goes with its last task.
        let mut commits: Vec<_> = gone.into_iter().map(|task| task.commit).collect();
        commits.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        commits.dedup();
        let results = files.root().join("test_results");
        readers
            .query(move |reader| {
                for commit in commits {
                    if !reader.commit_has_tasks(&commit)? {
                        let _ = std::fs::remove_file(results.join(commit.as_str()));
                    }
                }
                Ok(())
            })
            .await?;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            () = tokio::time::sleep(BETWEEN_BATCHES) => {}
        }
    }
    if n_tasks + n_logs > 0 {
        tracing::info!(tasks = n_tasks, logs = n_logs, "pruned");
    }
    Ok(())
}
