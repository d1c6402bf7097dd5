//! The on-disk state of every attempt this runner holds, the source of truth
//! for what it still owes the dispatcher.
//!
//! `DIR/spool/<task_id>-<attempt>/` holds `assign.json` (written before the
//! attempt starts), `output.log` (the test's console output, byte for byte, up
//! to the cap), `pgid` (the test's process group while it runs) and
//! `result.json` (written atomically when the attempt ends). The checkout
//! lives beside it in `DIR/tasks/<task_id>-<attempt>/`. Both go when the
//! dispatcher acknowledges or forgets the attempt.
//!
//! The JSON files have their own serde types, converted by hand: protocol
//! types are for the wire only. This module does no networking and decides
//! nothing about attempts beyond repairing what a crash left.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use protocol::message::{Assign, Job, Outcome, Summary, TaskResult, TestCase, TestStatus};
use protocol::{Branch, CommitId, RepoUrl, TaskId};
use serde::{Deserialize, Serialize};

/// The reason recorded for an attempt whose runner process died under it.
pub const RESTARTED_REASON: &str = "runner restarted during the test";

/// One attempt of one task: the unit the runner holds and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    /// The task.
    pub task_id: TaskId,
    /// The attempt number the dispatcher gave.
    pub attempt: u32,
}

impl AttemptKey {
    /// The key of an assignment.
    pub fn of(assign: &Assign) -> AttemptKey {
        AttemptKey { task_id: assign.task_id, attempt: assign.attempt }
    }

    /// Parses a directory name written by [`fmt::Display`].
    pub fn from_dir_name(name: &str) -> Option<AttemptKey> {
        let (task_id, attempt) = name.split_once('-')?;
        let task_id = TaskId::new(task_id.parse().ok()?).ok()?;
        // Reject forms such as `+1` or `01` that would not round-trip.
        let key = AttemptKey { task_id, attempt: attempt.parse().ok()? };
        (key.to_string() == name).then_some(key)
    }
}

impl fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.task_id, self.attempt)
    }
}

/// How an attempt ended, as reported to the dispatcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Passed, failed, error or aborted.
    pub outcome: Outcome,
    /// The test's exit code when it exited by itself.
    pub exit_code: Option<i32>,
    /// Wall time of the attempt, fetch and checkout included.
    pub duration_ms: u64,
    /// Test counts recognised in the output.
    pub summary: Option<Summary>,
    /// Why, when it was not the test's own verdict.
    pub reason: Option<String>,
    /// Length of `output.log`, marker included.
    pub output_len: u64,
    /// A tag pointing at the tested commit.
    pub tag: Option<Branch>,
    /// The deploy step that failed, for a deploy job.
    pub failed_step: Option<String>,
    /// Per-test outcomes, already bounded (see `outcomes`).
    pub tests: Vec<TestCase>,
}

impl Finished {
    /// An infrastructure error, before or instead of running the test.
    pub fn error(reason: impl Into<String>, duration_ms: u64, output_len: u64) -> Finished {
        Finished {
            outcome: Outcome::Error,
            exit_code: None,
            duration_ms,
            summary: None,
            reason: Some(reason.into()),
            output_len,
            tag: None,
            failed_step: None,
            tests: Vec::new(),
        }
    }

    /// The wire message for this result.
    pub fn to_message(&self, key: AttemptKey) -> TaskResult {
        TaskResult {
            task_id: key.task_id,
            attempt: key.attempt,
            outcome: self.outcome,
            exit_code: self.exit_code,
            duration_ms: self.duration_ms,
            summary: self.summary,
            reason: self.reason.clone(),
            output_len: self.output_len,
            tag: self.tag.clone(),
            failed_step: self.failed_step.clone(),
            tests: self.tests.clone(),
        }
    }
}

/// An attempt found in the spool at start-up.
#[derive(Debug)]
pub struct Recovered {
    /// Which attempt.
    pub key: AttemptKey,
    /// What was assigned.
    pub assign: Assign,
    /// Its result: the recorded one, or the error written now for an attempt
    /// whose runner died.
    pub finished: Finished,
    /// The process group of a test that was running when the runner died.
    pub orphan_pgid: Option<i32>,
}

/// Paths of the spool and the task trees under the work directory.
#[derive(Clone, Debug)]
pub struct Spool {
    spool_dir: PathBuf,
    tasks_dir: PathBuf,
}

impl Spool {
    /// Opens (creating) `work_dir/spool` and `work_dir/tasks`.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn open(work_dir: &Path) -> anyhow::Result<Spool> {
        let spool = Spool { spool_dir: work_dir.join("spool"), tasks_dir: work_dir.join("tasks") };
        for dir in [&spool.spool_dir, &spool.tasks_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(spool)
    }

    /// The attempt's spool directory.
    pub fn dir(&self, key: AttemptKey) -> PathBuf {
        self.spool_dir.join(key.to_string())
    }

    /// The attempt's work tree.
    pub fn tree(&self, key: AttemptKey) -> PathBuf {
        self.tasks_dir.join(key.to_string())
    }

    /// The attempt's console output.
    pub fn output_path(&self, key: AttemptKey) -> PathBuf {
        self.dir(key).join("output.log")
    }

    /// Creates a fresh entry for `assign` (replacing any stale one) and opens
    /// its output log.
    ///
    /// # Errors
    /// Any file-system failure (a full disk, permissions).
    pub fn create(&self, assign: &Assign, output_cap: u64) -> anyhow::Result<OutputLog> {
        let key = AttemptKey::of(assign);
        let dir = self.dir(key);
        remove_dir_if_present(&dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let record = AssignFile {
            task_id: assign.task_id.get(),
            attempt: assign.attempt,
            repo: assign.repo.to_string(),
            branch: assign.branch.to_string(),
            commit: assign.commit.to_string(),
        };
        write_atomically(&dir.join("assign.json"), &serde_json::to_vec_pretty(&record)?)?;
        let path = self.output_path(key);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(OutputLog { file, written: 0, cap: output_cap, truncated: false })
    }

    /// Records the running test's process group, for clean-up after a crash.
    ///
    /// # Errors
    /// Any file-system failure.
    pub fn write_pgid(&self, key: AttemptKey, pgid: i32) -> anyhow::Result<()> {
        // Not synced: it only matters if the runner dies while the host stays
        // up, and a torn file is ignored on recovery.
        let path = self.dir(key).join("pgid");
        std::fs::write(&path, pgid.to_string()).with_context(|| format!("writing {}", path.display()))
    }

    /// Writes `result.json` atomically (temporary file, then rename).
    ///
    /// # Errors
    /// Any file-system failure.
    pub fn write_result(&self, key: AttemptKey, finished: &Finished) -> anyhow::Result<()> {
        let record = ResultFile {
            outcome: match finished.outcome {
                Outcome::Passed => OutcomeFile::Passed,
                Outcome::Failed => OutcomeFile::Failed,
                Outcome::Error => OutcomeFile::Error,
                Outcome::Aborted => OutcomeFile::Aborted,
                Outcome::Refused => OutcomeFile::Refused,
            },
            exit_code: finished.exit_code,
            duration_ms: finished.duration_ms,
            summary: finished.summary.map(|summary| SummaryFile {
                passed: summary.passed,
                failed: summary.failed,
                skipped: summary.skipped,
            }),
            reason: finished.reason.clone(),
            output_len: finished.output_len,
            tag: finished.tag.as_ref().map(|tag| tag.to_string()),
            failed_step: finished.failed_step.clone(),
            tests: finished
                .tests
                .iter()
                .map(|test| TestFile { name: test.name.clone(), outcome: test.status.as_str().to_string() })
                .collect(),
        };
        write_atomically(&self.dir(key).join("result.json"), &serde_json::to_vec_pretty(&record)?)
    }

    /// Deletes the attempt's spool entry and work tree.
    ///
    /// # Errors
    /// When either exists and cannot be removed.
    pub fn remove(&self, key: AttemptKey) -> anyhow::Result<()> {
        remove_dir_if_present(&self.tree(key))?;
        remove_dir_if_present(&self.dir(key))
    }

    /// Scans the spool after a start: every entry with an assignment is
    /// returned; one without a result gets an error result written now;
    /// entries that cannot be read are deleted, as are work trees that no
    /// entry owns.
    ///
    /// # Errors
    /// When the spool cannot be listed or a repair cannot be written.
    pub fn recover(&self) -> anyhow::Result<Vec<Recovered>> {
        let mut recovered = Vec::new();
        let entries = std::fs::read_dir(&self.spool_dir)
            .with_context(|| format!("listing {}", self.spool_dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", self.spool_dir.display()))?;
            let name = entry.file_name();
            let key = name.to_str().and_then(AttemptKey::from_dir_name);
            let assign =
                key.and_then(|key| self.read_assign(key).filter(|assign| AttemptKey::of(assign) == key));
            let (Some(key), Some(assign)) = (key, assign) else {
                // A crash between creating the directory and writing the
                // assignment, or something that is not ours: the dispatcher
                // does not hear of it and requeues the attempt as lost.
                tracing::warn!(entry = ?name, "removing unreadable spool entry");
                remove_any(&entry.path())?;
                continue;
            };
            recovered.push(self.recover_one(key, assign)?);
        }
        recovered.sort_by_key(|recovered| recovered.key);
        let keep: HashSet<String> = recovered.iter().map(|recovered| recovered.key.to_string()).collect();
        let trees = std::fs::read_dir(&self.tasks_dir)
            .with_context(|| format!("listing {}", self.tasks_dir.display()))?;
        for tree in trees {
            let tree = tree.with_context(|| format!("listing {}", self.tasks_dir.display()))?;
            if !tree.file_name().to_str().is_some_and(|name| keep.contains(name)) {
                tracing::debug!(tree = %tree.path().display(), "removing work tree of a forgotten attempt");
                remove_any(&tree.path())?;
            }
        }
        Ok(recovered)
    }

    fn recover_one(&self, key: AttemptKey, assign: Assign) -> anyhow::Result<Recovered> {
        let dir = self.dir(key);
        let output_path = self.output_path(key);
        let output_len = match std::fs::metadata(&output_path) {
            Ok(metadata) => metadata.len(),
            Err(_) => {
                File::create(&output_path).with_context(|| format!("creating {}", output_path.display()))?;
                0
            }
        };
        if let Some(finished) = read_result(&dir.join("result.json")) {
            return Ok(Recovered { key, assign, finished, orphan_pgid: None });
        }
        let orphan_pgid =
            std::fs::read_to_string(dir.join("pgid")).ok().and_then(|text| text.trim().parse().ok());
        let finished = Finished::error(RESTARTED_REASON, 0, output_len);
        self.write_result(key, &finished)?;
        Ok(Recovered { key, assign, finished, orphan_pgid })
    }

    fn read_assign(&self, key: AttemptKey) -> Option<Assign> {
        let text = std::fs::read(self.dir(key).join("assign.json")).ok()?;
        let record: AssignFile = serde_json::from_slice(&text).ok()?;
        Some(Assign {
            task_id: TaskId::new(record.task_id).ok()?,
            attempt: record.attempt,
            repo: RepoUrl::new(record.repo).ok()?,
            branch: Branch::new(record.branch).ok()?,
            commit: CommitId::new(record.commit).ok()?,
            // A recovered attempt is never run again (its result is "runner
            // restarted"), so which job it was does not matter.
            job: Job::Test,
        })
    }
}

/// The console output of a running attempt, with the cap applied.
#[derive(Debug)]
pub struct OutputLog {
    file: File,
    written: u64,
    cap: u64,
    truncated: bool,
}

impl OutputLog {
    /// Appends `data`, or as much of it as fits under the cap; the first time
    /// the cap is reached a marker line is appended instead of the rest.
    ///
    /// A plain blocking write: it lands in the page cache in microseconds, and
    /// the shipper reading the same file sees it at once.
    ///
    /// # Errors
    /// A failed write (a full disk).
    pub fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.truncated {
            return Ok(());
        }
        let room = self.cap.saturating_sub(self.written);
        let keep = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.file.write_all(&data[..keep])?;
        self.written += keep as u64;
        if keep < data.len() {
            let marker = format!("\n[baton: output truncated at {} bytes]\n", self.cap);
            self.file.write_all(marker.as_bytes())?;
            self.written += marker.len() as u64;
            self.truncated = true;
        }
        Ok(())
    }

    /// Bytes in the file so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignFile {
    task_id: i64,
    attempt: u32,
    repo: String,
    branch: String,
    commit: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OutcomeFile {
    Passed,
    Failed,
    Error,
    Aborted,
    Refused,
}

#[derive(Serialize, Deserialize)]
struct SummaryFile {
    passed: u32,
    failed: u32,
    skipped: u32,
}

#[derive(Serialize, Deserialize)]
struct ResultFile {
    outcome: OutcomeFile,
    exit_code: Option<i32>,
    duration_ms: u64,
    summary: Option<SummaryFile>,
    reason: Option<String>,
    output_len: u64,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    failed_step: Option<String>,
    #[serde(default)]
    tests: Vec<TestFile>,
}

#[derive(Serialize, Deserialize)]
struct TestFile {
    name: String,
    outcome: String,
}

fn read_result(path: &Path) -> Option<Finished> {
    let text = std::fs::read(path).ok()?;
    let record: ResultFile = serde_json::from_slice(&text).ok()?;
    Some(Finished {
        outcome: match record.outcome {
            OutcomeFile::Passed => Outcome::Passed,
            OutcomeFile::Failed => Outcome::Failed,
            OutcomeFile::Error => Outcome::Error,
            OutcomeFile::Aborted => Outcome::Aborted,
            OutcomeFile::Refused => Outcome::Refused,
        },
        exit_code: record.exit_code,
        duration_ms: record.duration_ms,
        summary: record.summary.map(|summary| Summary {
            passed: summary.passed,
            failed: summary.failed,
            skipped: summary.skipped,
        }),
        reason: record.reason,
        output_len: record.output_len,
        tag: record.tag.and_then(|tag| Branch::new(tag).ok()),
        failed_step: record.failed_step,
        tests: record
            .tests
            .into_iter()
            .filter_map(|test| Some(TestCase { status: TestStatus::parse(&test.outcome)?, name: test.name }))
            .collect(),
    })
}

/// Writes `path` through a synced temporary file and a rename, so a reader
/// (or a restart) sees the old content or the new, never a torn file.
fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let mut file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", partial.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("renaming into {}", path.display()))
}

fn remove_dir_if_present(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Removes a directory tree or a file, whichever `path` is.
fn remove_any(path: &Path) -> anyhow::Result<()> {
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_dir());
    if is_dir {
        remove_dir_if_present(path)
    } else {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(task_id: i64, attempt: u32) -> Assign {
        Assign {
            task_id: TaskId::new(task_id).unwrap(),
            attempt,
            repo: RepoUrl::new("/srv/app.git").unwrap(),
            branch: Branch::new("main").unwrap(),
            commit: CommitId::new("0123456789abcdef0123456789abcdef01234567").unwrap(),
            job: Job::Test,
        }
    }

    #[test]
    fn keys_round_trip_through_directory_names() {
        let key = AttemptKey::of(&assign(12, 3));
        assert_eq!(key.to_string(), "12-3");
        assert_eq!(AttemptKey::from_dir_name("12-3"), Some(key));
        for bad in ["", "12", "0-1", "-1-2", "12-", "12-x", "+12-3", "012-3", "12-03", "12-3.partial"] {
            assert_eq!(AttemptKey::from_dir_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn output_is_kept_byte_for_byte_up_to_the_cap() {
        let work = tempfile::tempdir().unwrap();
        let spool = Spool::open(work.path()).unwrap();
        let key = AttemptKey::of(&assign(1, 1));
        let mut log = spool.create(&assign(1, 1), 10).unwrap();
        log.append(b"a:\0\xff\n").unwrap();
        log.append(b"123456789").unwrap();
        log.append(b"more").unwrap();
        let marker = b"\n[baton: output truncated at 10 bytes]\n";
        let mut expected = b"a:\0\xff\n12345".to_vec();
        expected.extend_from_slice(marker);
        assert_eq!(std::fs::read(spool.output_path(key)).unwrap(), expected);
        assert_eq!(log.written(), expected.len() as u64);
    }

    #[test]
    fn results_round_trip_and_are_recovered() {
        let work = tempfile::tempdir().unwrap();
        let spool = Spool::open(work.path()).unwrap();
        let key = AttemptKey::of(&assign(5, 2));
        let mut log = spool.create(&assign(5, 2), 1024).unwrap();
        log.append(b"hello\n").unwrap();
        let finished = Finished {
            outcome: Outcome::Failed,
            exit_code: Some(3),
            duration_ms: 120,
            summary: Some(Summary { passed: 1, failed: 2, skipped: 0 }),
            reason: None,
            output_len: 6,
            tag: Some(Branch::new("v1.0").unwrap()),
            failed_step: Some("deploy".into()),
            tests: vec![
                TestCase { name: "t.T.test_a".into(), status: TestStatus::Failed },
                TestCase { name: "t.T.test_b".into(), status: TestStatus::Passed },
            ],
        };
        spool.write_result(key, &finished).unwrap();
        std::fs::create_dir_all(spool.tree(key)).unwrap();

        let recovered = spool.recover().unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].key, key);
        assert_eq!(recovered[0].assign, assign(5, 2));
        assert_eq!(recovered[0].finished, finished);
        assert_eq!(recovered[0].orphan_pgid, None);
        assert!(spool.tree(key).exists(), "a held attempt keeps its tree until acknowledged");

        spool.remove(key).unwrap();
        assert!(!spool.dir(key).exists() && !spool.tree(key).exists());
        assert!(spool.recover().unwrap().is_empty());
    }

    #[test]
    fn recovery_finishes_interrupted_attempts_and_cleans_up() {
        let work = tempfile::tempdir().unwrap();
        let spool = Spool::open(work.path()).unwrap();
        let running = AttemptKey::of(&assign(7, 1));
        let mut log = spool.create(&assign(7, 1), 1024).unwrap();
        log.append(b"partial output").unwrap();
        spool.write_pgid(running, 4242).unwrap();
        // Debris: a directory without an assignment, a stray file, and a tree
        // no entry owns.
        std::fs::create_dir_all(work.path().join("spool/8-1")).unwrap();
        std::fs::write(work.path().join("spool/junk"), "x").unwrap();
        std::fs::create_dir_all(work.path().join("tasks/9-1/sub")).unwrap();

        let recovered = spool.recover().unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].key, running);
        assert_eq!(recovered[0].orphan_pgid, Some(4242));
        assert_eq!(recovered[0].finished, Finished::error(RESTARTED_REASON, 0, 14));
        assert!(!work.path().join("spool/8-1").exists());
        assert!(!work.path().join("spool/junk").exists());
        assert!(!work.path().join("tasks/9-1").exists());

        // The repair is durable: a second start sees a finished attempt.
        let again = spool.recover().unwrap();
        assert_eq!(again[0].finished, Finished::error(RESTARTED_REASON, 0, 14));
        assert_eq!(again[0].orphan_pgid, None);
    }
}
