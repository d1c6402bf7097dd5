//! The dispatcher's files beside the database: `logs/<task>.log` (console
//! output of a task's current attempt; earlier attempts are kept as
//! `logs/<task>.attempt<N>.log`) and `test_results/<commit>` (the latest
//! result for a commit, in the spirit of the original's result files).
//!
//! Paths are built only from checked values (`TaskId`, `CommitId`), never
//! from raw network input.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};

use anyhow::Context;
use protocol::message::{DeploymentInfo, ReleaseInfo, TaskInfo};
/// A release as JSON: the shape of `baton releases --json`, of the files in
/// `releases/` (without `state`) and of release notifications.
pub use protocol::view::release as release_json;
use protocol::view::{now_ms, rfc3339};
use protocol::{RepoUrl, TaskId};

use crate::store::{Finish, LiveTask, Store};

/// The data directory's layout.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
    /// Bytes under `root`, as last measured ([`DataDir::measure`]).
    size: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
        Ok(DataDir { root: root.to_path_buf(), size: Default::default() })
    }

    /// Bytes under the data dir when last measured (0 before the first
    /// measurement, which the pruner makes at start-up).
    pub fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Walks the data dir and notes its size in bytes (files' lengths; the
    /// database's WAL included). Blocking: call it off the async runtime.
    pub fn measure(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else { return 0 };
            entries
                .flatten()
                .map(|entry| match entry.file_type() {
                    Ok(kind) if kind.is_dir() => walk(&entry.path()),
                    Ok(kind) if kind.is_file() => entry.metadata().map(|meta| meta.len()).unwrap_or(0),
                    _ => 0,
                })
                .sum()
        }
        let bytes = walk(&self.root);
        self.size.store(bytes, std::sync::atomic::Ordering::Relaxed);
        bytes
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
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

    /// Appends output bytes to a task's log, as they are, through `log`:
    /// the log's open handle, opened on first use and kept by the caller so
    /// that a stream of output chunks costs one write each, not an open.
    ///
    /// # Errors
    /// I/O errors (disk full).
    pub fn append_log(&self, log: &mut Option<File>, task_id: TaskId, data: &[u8]) -> anyhow::Result<()> {
        let path = self.log_path(task_id);
        let file = match log.take() {
            Some(file) => file,
            None => OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?,
        };
        log.insert(file).write_all(data).with_context(|| format!("writing {}", path.display()))
    }

    /// Writes `test_results/<commit>`: a short header, then the console
    /// output. Written to a temporary file and renamed, so readers never see
    /// half a report. Not synced: the database is the record, and a crash
    /// is repaired by [`catch_up`].
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_result(&self, task: &TaskInfo) -> anyhow::Result<()> {
        let dir = self.root.join("test_results");
        let path = dir.join(task.commit.as_str());
        let tmp = dir.join(format!(".{}.tmp", task.commit));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut file = BufWriter::new(file);
        let summary = task
            .summary
            .map(|s| format!("{} passed, {} failed, {} skipped", s.passed, s.failed, s.skipped))
            .unwrap_or_else(|| "-".into());
        let exit_code = task.exit_code.map(|code| code.to_string()).unwrap_or_else(|| "-".into());
        writeln!(file, "task: {}", task.id)?;
        writeln!(file, "repo: {}", task.repo)?;
        writeln!(file, "branch: {}", task.branch)?;
        writeln!(file, "commit: {}", task.commit)?;
        writeln!(file, "state: {}", task.state)?;
        writeln!(file, "attempts: {}", task.attempts)?;
        writeln!(file, "exit_code: {exit_code}")?;
        writeln!(file, "summary: {summary}")?;
        writeln!(file, "reason: {}", task.reason.as_deref().unwrap_or("-"))?;
        writeln!(file)?;
        // Plain, or compressed already when a restart catches up.
        if let Some(mut log) = crate::logs::open(self, task.id).context("opening the log")? {
            std::io::copy(&mut log, &mut file).context("copying the log into the result")?;
        }
        file.into_inner().map_err(|err| err.into_error())?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// When the file writer last caught up: files of everything that
    /// finished before this moment are written.
    fn read_watermark(&self) -> Option<i64> {
        fs::read_to_string(self.root.join(WATERMARK)).ok()?.trim().parse().ok()
    }

    fn write_watermark(&self, at_ms: i64) -> anyhow::Result<()> {
        let tmp = self.root.join(format!("{WATERMARK}.tmp"));
        fs::write(&tmp, at_ms.to_string())?;
        fs::rename(&tmp, self.root.join(WATERMARK))?;
        Ok(())
    }

    /// Writes `releases/<repository>/r<version>.json`, the record as it was
    /// made (its changing state lives in the database), atomically.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_release(&self, release: &ReleaseInfo) -> anyhow::Result<()> {
        let dir = self.root.join("releases").join(repo_dir_name(&release.repo));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut record = release_json(release);
        if let Some(object) = record.as_object_mut() {
            object.remove("state");
        }
        let path = dir.join(format!("r{}.json", release.version));
        let tmp = dir.join(format!(".r{}.json.tmp", release.version));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut file = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut file, &record)?;
        file.write_all(b"\n")?;
        file.into_inner().map_err(|err| err.into_error())?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// Writes `releases/<repository>/deployments/d<id>.json`, the deployment
    /// as it is now (rewritten on every change), atomically.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_deployment(&self, deployment: &DeploymentInfo) -> anyhow::Result<()> {
        let dir = self.root.join("releases").join(repo_dir_name(&deployment.repo)).join("deployments");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("d{}.json", deployment.id));
        let tmp = dir.join(format!(".d{}.json.tmp", deployment.id));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut file = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut file, &protocol::view::deployment(deployment))?;
        file.write_all(b"\n")?;
        file.into_inner().map_err(|err| err.into_error())?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }
}

/// Where the file writer notes how far it got.
const WATERMARK: &str = "files-written-until";

/// Files the scheduler wants written once its batch is committed.
pub enum FileJob {
    /// `test_results/<commit>` of a finished task.
    Result(Box<TaskInfo>),
    /// `releases/<repository>/r<N>.json`.
    Release(Box<ReleaseInfo>),
    /// `releases/<repository>/deployments/d<N>.json`, stamped with the
    /// `updated_at` its change was committed with (the watermark compares
    /// the store's clock with the store's clock).
    Deployment { deployment: Box<DeploymentInfo>, at_ms: i64 },
}

impl FileJob {
    fn at_ms(&self) -> i64 {
        match self {
            FileJob::Result(task) => task.finished_at_ms.unwrap_or(0),
            FileJob::Release(release) => release.created_at_ms,
            FileJob::Deployment { at_ms, .. } => *at_ms,
        }
    }
}

/// Jobs the file writer may lag behind. Creating files is the slowest thing
/// the dispatcher does per task (a few thousand a second on ordinary
/// disks), so bursts are absorbed here instead of slowing scheduling; a
/// sustained overload fills it and then slows the scheduler to the disk's
/// pace.
const FILE_QUEUE: usize = 65_536;

/// Starts the thread that writes result and release files off the
/// scheduler's path, in the order the scheduler committed them, and then
/// hands each finished task's log to `logs` for compression.
///
/// # Errors
/// When the thread cannot be started.
pub fn start_writer(
    files: DataDir,
    logs: crate::logs::Logs,
) -> anyhow::Result<(SyncSender<FileJob>, std::thread::JoinHandle<()>)> {
    let (jobs, queue) = sync_channel::<FileJob>(FILE_QUEUE);
    let thread = std::thread::Builder::new().name("files".into()).spawn(move || {
        let mut written_until = None;
        while let Ok(job) = queue.recv() {
            let mut next = Some(job);
            while let Some(job) = next.take() {
                // Everything that finished before this job is written.
                written_until = Some(job.at_ms());
                let written = match &job {
                    FileJob::Result(task) => files.write_result(task),
                    FileJob::Release(release) => files.write_release(release),
                    FileJob::Deployment { deployment, .. } => files.write_deployment(deployment),
                };
                if let Err(err) = written {
                    tracing::error!(error = %format!("{err:#}"), "cannot write a result or release file");
                }
                // The result file holds a copy of the plain log: compress
                // only after it is written.
                if let FileJob::Result(task) = &job {
                    logs.compress(task.id);
                }
                next = queue.try_recv().ok();
            }
            // Idle for now: note how far the files are.
            if let Some(at_ms) = written_until {
                if let Err(err) = files.write_watermark(at_ms + 1) {
                    tracing::warn!(error = %format!("{err:#}"), "cannot note how far the files are written");
                }
            }
        }
    })?;
    Ok((jobs, thread))
}

/// At start-up: writes the files of whatever finished after the writer last
/// noted its progress (jobs a crash lost), from the database.
///
/// # Errors
/// Store errors.
pub fn catch_up(store: &Store, files: &DataDir) -> anyhow::Result<()> {
    let Some(since) = files.read_watermark() else {
        // A new data dir (or one from before the writer): nothing queued
        // was lost; start counting from now.
        return files.write_watermark(now_ms());
    };
    let (tasks, releases) = store.finished_since(since)?;
    let deployments = store.deployments_changed_since(since)?;
    if tasks.is_empty() && releases.is_empty() && deployments.is_empty() {
        return Ok(());
    }
    tracing::info!(
        tasks = tasks.len(),
        releases = releases.len(),
        deployments = deployments.len(),
        "writing files a crash left unwritten"
    );
    for deployment in &deployments {
        files.write_deployment(deployment)?;
    }
    for task in &tasks {
        files.write_result(task)?;
    }
    for release in &releases {
        files.write_release(release)?;
    }
    files.write_watermark(now_ms())
}

/// A directory name for a repository: its location with every character
/// outside `[A-Za-z0-9._-]` replaced, plus a hash of the whole location so
/// two locations never share a directory.
pub fn repo_dir_name(repo: &RepoUrl) -> String {
    let readable: String = repo
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect();
    let readable = readable.trim_start_matches(['_', '.']);
    let readable: String = readable.chars().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let hash = repo
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    format!("{readable}-{:08x}", hash as u32)
}

/// A finished task as notifications describe it.
pub fn task_event_json(task: &LiveTask, finish: &Finish) -> serde_json::Value {
    serde_json::json!({
        "id": task.id.get(),
        "repo": task.repo.as_str(),
        "branch": task.branch.as_str(),
        "commit": task.commit.as_str(),
        "state": finish.state.as_str(),
        "attempts": task.attempts,
        "runner": task.runner.as_ref().map(|name| name.as_str()),
        "exit_code": finish.exit_code,
        "reason": finish.reason,
        "finished_at": rfc3339(finish.at_ms),
    })
}
