//! A dispatcher database of a million tasks, made through the dispatcher's
//! own `store` API (`Store::open`, `begin`, `Tx::insert_task`,
//! `start_attempt`, `requeue`, `finish`): the bench writes no SQL, so the
//! rows are exactly what a dispatcher would have written.
//!
//! Seeding takes a while, so the result is cached in the system temp dir
//! (never in the repository) and copied into each run's data dir.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use dispatcher::store::{Finish, NewTask, Store, Sync, TaskKind, Trigger};
use protocol::message::Summary;
use protocol::{Branch, Label, Name, RepoUrl, TaskState};

/// Tasks per transaction while seeding.
const BATCH: usize = 10_000;
/// The newest tasks are left pending, as a live queue would be.
const PENDING_TAIL: usize = 100;
/// Bump when the mix below changes, so an old cache is not reused.
const MIX_VERSION: u32 = 1;

/// The path of a database holding `n` tasks, seeding it first if no valid
/// cached copy exists.
///
/// # Errors
/// When the cache dir or the database cannot be written.
pub fn cached(n: usize) -> anyhow::Result<PathBuf> {
    let cache_dir = std::env::temp_dir().join("baton-bench-cache");
    std::fs::create_dir_all(&cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let path = cache_dir.join(format!("tasks-{n}-mix{MIX_VERSION}.db"));
    if path.exists() {
        match count(&path) {
            Ok(found) if found == n as u64 => {
                eprintln!("#   reusing the seeded database {}", path.display());
                return Ok(path);
            }
            Ok(found) => eprintln!("#   cached database has {found} tasks, not {n}: seeding again"),
            Err(err) => eprintln!("#   cached database unusable ({err:#}): seeding again"),
        }
    }
    let partial = cache_dir.join(format!("tasks-{n}-mix{MIX_VERSION}.{}.partial", std::process::id()));
    remove_database(&partial)?;
    let started = Instant::now();
    seed(&partial, n).with_context(|| format!("seeding {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("renaming to {}", path.display()))?;
    eprintln!("#   seeded {n} tasks in {:.1} s into {}", started.elapsed().as_secs_f64(), path.display());
    Ok(path)
}

/// Copies a (closed) database to `to`, with its WAL if one was left.
///
/// # Errors
/// I/O errors.
pub fn copy_database(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    let wal = sidecar(from, "-wal");
    if wal.exists() {
        std::fs::copy(&wal, sidecar(to, "-wal")).with_context(|| format!("copying {}", wal.display()))?;
    }
    Ok(())
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_database(path: &Path) -> anyhow::Result<()> {
    for file in [path.to_path_buf(), sidecar(path, "-wal"), sidecar(path, "-shm")] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", file.display())),
        }
    }
    Ok(())
}

fn count(path: &Path) -> anyhow::Result<u64> {
    let store = Store::open(path, Sync::Normal)?;
    Ok(store.count_by_state()?.iter().map(|(_, n)| n).sum())
}

/// Writes `n` tasks: 20 repositories, mostly `main`, 5 % manual triggers, a
/// few second attempts, 89 % passed, 7 % failed, 2 % error, 1 % aborted, 1 %
/// passed after a retry, and the newest [`PENDING_TAIL`] pending.
fn seed(path: &Path, n: usize) -> anyhow::Result<()> {
    let mut store = Store::open(path, Sync::Normal)?;
    let repos: Vec<RepoUrl> =
        (0..20).map(|k| checked(RepoUrl::new(format!("/srv/git/project-{k}.git")))).collect();
    let branches: Vec<Branch> =
        ["main", "feature-a", "feature-b", "release-1"].map(|b| checked(Branch::new(b))).into();
    let runners: Vec<Name> = (0..8).map(|k| checked(Name::new(format!("runner-{k}")))).collect();
    let linux = vec![checked(Label::new("linux"))];
    let commits = crate::sim::fake_commits(n, 0xbead_5eed);
    let start_ms: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    for batch_start in (0..n).step_by(BATCH) {
        let tx = store.begin()?;
        for idx in batch_start..(batch_start + BATCH).min(n) {
            let created = start_ms + idx as i64 * 600;
            let task = NewTask {
                repo: repos[idx % repos.len()].clone(),
                branch: branches[if idx % 5 == 0 { 1 + idx % 3 } else { 0 }].clone(),
                commit: commits[idx].clone(),
                labels: if idx % 10 == 0 { linux.clone() } else { Vec::new() },
                trigger: if idx % 20 == 7 { Trigger::Manual } else { Trigger::Observer },
                kind: TaskKind::Test,
                release_id: None,
                requested_by: None,
                host: None,
                deployment_id: None,
            };
            let (task_id, inserted) = tx.insert_task(&task, created)?;
            anyhow::ensure!(inserted, "fake commit {} was not unique", task.commit);
            if idx + PENDING_TAIL >= n {
                continue;
            }
            let runner = &runners[idx % runners.len()];
            let bucket = idx % 100;
            let mut attempt = 1;
            tx.start_attempt(task_id, attempt, runner, created + 150)?;
            if bucket == 99 {
                tx.requeue(task_id, "runner runner-x lost: connection closed")?;
                attempt = 2;
                tx.start_attempt(task_id, attempt, &runners[(idx + 1) % runners.len()], created + 900)?;
            }
            let (state, exit_code, failed) = match bucket {
                0..=88 | 99 => (TaskState::Passed, Some(0), 0),
                89..=95 => (TaskState::Failed, Some(1), 1 + (idx % 3) as u32),
                96..=97 => (TaskState::Error, None, 0),
                _ => (TaskState::Aborted, None, 0),
            };
            let summary =
                exit_code.map(|_| Summary { passed: 40 - failed, failed, skipped: (idx % 2) as u32 });
            let reason = match state {
                TaskState::Error => Some("checkout failed: commit not found".to_string()),
                TaskState::Aborted => Some("aborted by a client".to_string()),
                _ => None,
            };
            let duration_ms = 2_000 + (idx % 7_000) as u64;
            let finish = Finish {
                state,
                exit_code,
                duration_ms: Some(duration_ms),
                summary,
                reason,
                at_ms: created + 150 + duration_ms as i64,
                // Fields only deploy tasks and tagged commits use.
                ..Finish::ended(state)
            };
            tx.finish(task_id, &finish)?;
        }
        tx.commit()?;
        if (batch_start / BATCH) % 10 == 9 {
            eprintln!("#   seeded {} of {n} tasks", batch_start + BATCH);
        }
    }
    Ok(())
}

/// Unwraps a value the bench itself made valid.
fn checked<T>(value: Result<T, String>) -> T {
    // Every call passes a literal or a formatted string that satisfies the
    // type's rules, so this cannot fire.
    value.unwrap_or_else(|reason| panic!("invalid fixed value: {reason}"))
}
