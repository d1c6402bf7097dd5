//! The dispatcher's files beside the database: `logs/<task>.log` (console
//! output of a task's current attempt; earlier attempts are kept as
//! `logs/<task>.attempt<N>.log`) and `test_results/<commit>` (the latest
//! result for a commit, in the spirit of the original's result files).
//!
//! Paths are built only from checked values (`TaskId`, `CommitId`), never
//! from raw network input.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use protocol::TaskId;

use crate::store::{Finish, LiveTask};

/// The data directory's layout.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the layout under `root` if missing.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn create(root: &Path) -> anyhow::Result<DataDir> {
        for sub in ["logs", "test_results", "releases"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(DataDir { root: root.to_path_buf() })
    }

    /// The SQLite database file.
    pub fn database(&self) -> PathBuf {
        self.root.join("baton.db")
    }

    /// The current attempt's console output of a task.
    pub fn log_path(&self, task_id: TaskId) -> PathBuf {
        self.root.join("logs").join(format!("{task_id}.log"))
    }

    /// The size of a task's log, 0 if it has none.
    pub fn log_len(&self, task_id: TaskId) -> u64 {
        fs::metadata(self.log_path(task_id)).map(|meta| meta.len()).unwrap_or(0)
    }

    /// Keeps the previous attempt's log under its own name, so the new
    /// attempt starts an empty `logs/<task>.log`.
    pub fn start_attempt(&self, task_id: TaskId, attempt: u32) {
        let current = self.log_path(task_id);
        if attempt > 1 && current.exists() {
            let previous = self.root.join("logs").join(format!("{task_id}.attempt{}.log", attempt - 1));
            if let Err(err) = fs::rename(&current, &previous) {
                tracing::warn!(task_id = %task_id, error = %err, "cannot keep the previous attempt's log");
            }
        }
    }

    /// Appends output bytes to a task's log, as they are.
    ///
    /// # Errors
    /// I/O errors (disk full).
    pub fn append_log(&self, task_id: TaskId, data: &[u8]) -> anyhow::Result<()> {
        let path = self.log_path(task_id);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(data).with_context(|| format!("writing {}", path.display()))
    }

    /// Writes `test_results/<commit>`: a short header, then the console
    /// output. Written to a temporary file and renamed, so readers never see
    /// half a report.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_result(&self, task: &LiveTask, finish: &Finish) -> anyhow::Result<()> {
        let dir = self.root.join("test_results");
        let path = dir.join(task.commit.as_str());
        let tmp = dir.join(format!(".{}.tmp", task.commit));
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let summary = finish
            .summary
            .map(|s| format!("{} passed, {} failed, {} skipped", s.passed, s.failed, s.skipped))
            .unwrap_or_else(|| "-".into());
        let exit_code = finish.exit_code.map(|code| code.to_string()).unwrap_or_else(|| "-".into());
        writeln!(file, "task: {}", task.id)?;
        writeln!(file, "repo: {}", task.repo)?;
        writeln!(file, "branch: {}", task.branch)?;
        writeln!(file, "commit: {}", task.commit)?;
        writeln!(file, "state: {}", finish.state)?;
        writeln!(file, "attempts: {}", task.attempts)?;
        writeln!(file, "exit_code: {exit_code}")?;
        writeln!(file, "summary: {summary}")?;
        writeln!(file, "reason: {}", finish.reason.as_deref().unwrap_or("-"))?;
        writeln!(file)?;
        if let Ok(mut log) = File::open(self.log_path(task.id)) {
            std::io::copy(&mut log, &mut file).context("copying the log into the result")?;
        }
        file.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }
}
