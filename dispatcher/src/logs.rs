//! A finished task's log at rest: compressed with zstd into
//! `logs/<task>.log.zst`, read back transparently, and removed by retention.
//!
//! While a task runs, the scheduler appends to `logs/<task>.log` (`files`).
//! Once its final result is committed, the file writer hands the task to the
//! one thread here ("logs"), which compresses the log off the scheduler's
//! path: it writes `<task>.log.zst.tmp`, syncs it, renames it to
//! `<task>.log.zst`, syncs the directory, and only then removes the plain
//! file. A crash therefore leaves the plain log whole, or both files whole
//! (the plain one is then removed), plus at most a stale `.tmp`; the thread
//! cleans that up when it starts and compresses what a crash left plain.
//! The same thread removes pruned logs (`retention`), so a log is never
//! compressed and removed at once.
//!
//! Readers ([`open`]) try the plain file first and then the compressed one:
//! the plain file is removed only after the compressed one is complete, so
//! a reader always finds one of them, and a handle opened on the plain file
//! keeps reading it to its end after it is removed.
//!
//! Deliberately not here: appending output (the scheduler, through `files`)
//! and deciding what to prune (`retention`).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use anyhow::Context;
use protocol::TaskId;

use crate::files::DataDir;
use crate::readers::Readers;

/// zstd's default level: on test output about as fast as the disk and a
/// ratio near level 19's for text this repetitive.
const LEVEL: i32 = zstd::DEFAULT_COMPRESSION_LEVEL;

/// Jobs queued for the logs thread. A burst of finishing tasks beyond this
/// leaves their logs plain until the next start-up sweep compresses them;
/// nothing waits for the compressor.
const LOG_QUEUE: usize = 65_536;

/// Work for the logs thread.
#[derive(Debug)]
pub enum LogJob {
    /// The task has ended: compress its log.
    Compress(TaskId),
    /// Retention pruned these logs (or their tasks): remove every file of
    /// their logs.
    Remove(Vec<TaskId>),
}

/// The path of a task's compressed log.
pub fn compressed_path(files: &DataDir, task_id: TaskId) -> PathBuf {
    files.root().join("logs").join(format!("{task_id}.log.zst"))
}

fn temporary_path(files: &DataDir, task_id: TaskId) -> PathBuf {
    files.root().join("logs").join(format!("{task_id}.log.zst.tmp"))
}

/// Opens a task's log for reading, plain or compressed; `None` when it has
/// none (no output yet, or pruned).
///
/// # Errors
/// I/O errors other than a missing file; a corrupt compressed log fails
/// while reading.
pub fn open(files: &DataDir, task_id: TaskId) -> io::Result<Option<Box<dyn Read + Send>>> {
    match File::open(files.log_path(task_id)) {
        Ok(file) => return Ok(Some(Box::new(file))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    // The plain file is removed only once this one is whole.
    match File::open(compressed_path(files, task_id)) {
        Ok(file) => Ok(Some(Box::new(zstd::stream::read::Decoder::new(file)?))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Whether the task has a log file, plain or compressed.
pub fn exists(files: &DataDir, task_id: TaskId) -> bool {
    files.log_path(task_id).exists() || compressed_path(files, task_id).exists()
}

/// Whether retention removed the task's log (and it is not there).
///
/// # Errors
/// The store cannot be read.
pub async fn pruned(files: &DataDir, readers: &Arc<Readers>, task_id: TaskId) -> anyhow::Result<bool> {
    if exists(files, task_id) {
        return Ok(false);
    }
    readers.query(move |reader| reader.log_pruned(task_id)).await
}

/// Reads the last `max` bytes of a task's log: the bytes, the offset they
/// start at, and whether the task has a log at all.
///
/// # Errors
/// I/O errors.
pub fn tail(files: &DataDir, task_id: TaskId, max: u64) -> io::Result<Option<(Vec<u8>, u64)>> {
    use io::Seek;
    if let Ok(mut file) = File::open(files.log_path(task_id)) {
        let len = file.metadata()?.len();
        let start = len.saturating_sub(max);
        file.seek(io::SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.take(len - start).read_to_end(&mut bytes)?;
        return Ok(Some((bytes, start)));
    }
    let Some(mut log) = open(files, task_id)? else { return Ok(None) };
    // A compressed log is decoded from its start; only the tail is kept
    // (two windows of `max`, so memory stays bounded).
    let window = usize::try_from(max).unwrap_or(usize::MAX).max(1);
    let mut kept: Vec<u8> = Vec::new();
    let mut dropped = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = log.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        kept.extend_from_slice(&buffer[..read]);
        if kept.len() > 2 * window {
            let cut = kept.len() - window;
            dropped += cut as u64;
            kept.drain(..cut);
        }
    }
    if kept.len() > window {
        let cut = kept.len() - window;
        dropped += cut as u64;
        kept.drain(..cut);
    }
    Ok(Some((kept, dropped)))
}

/// Compresses a finished task's log, crash-safely (see the module docs).
/// Returns the plain and compressed sizes, or `None` when there was no
/// plain log (none written, or already compressed).
///
/// # Errors
/// I/O errors; the plain log is then left as it was.
pub fn compress(files: &DataDir, task_id: TaskId) -> anyhow::Result<Option<(u64, u64)>> {
    let plain_path = files.log_path(task_id);
    let mut plain = match File::open(&plain_path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(anyhow::Error::new(err).context(format!("opening {}", plain_path.display()))),
    };
    let tmp = temporary_path(files, task_id);
    let written = (|| -> anyhow::Result<(u64, u64)> {
        let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut encoder = zstd::stream::write::Encoder::new(out, LEVEL)?;
        let plain_len = io::copy(&mut plain, &mut encoder).context("compressing")?;
        let out = encoder.finish().context("finishing the compressed log")?;
        out.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        Ok((plain_len, out.metadata()?.len()))
    })();
    let sizes = match written {
        Ok(sizes) => sizes,
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
    };
    let path = compressed_path(files, task_id);
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    // The rename must be durable before the only other copy goes.
    File::open(files.root().join("logs"))
        .and_then(|dir| dir.sync_all())
        .context("syncing the logs directory")?;
    fs::remove_file(&plain_path).with_context(|| format!("removing {}", plain_path.display()))?;
    Ok(Some(sizes))
}

/// Removes every file of these tasks' logs: plain, compressed, a temporary
/// one, and the logs of their earlier attempts (`<task>.attempt<N>.log`,
/// found in one listing of `logs/` per batch).
fn remove(files: &DataDir, task_ids: &[TaskId]) {
    let ids: std::collections::HashSet<TaskId> = task_ids.iter().copied().collect();
    let mut paths: Vec<(TaskId, PathBuf)> = task_ids
        .iter()
        .flat_map(|&id| {
            [files.log_path(id), compressed_path(files, id), temporary_path(files, id)].map(|path| (id, path))
        })
        .collect();
    if let Ok(entries) = fs::read_dir(files.root().join("logs")) {
        for entry in entries.flatten() {
            let owner = entry
                .file_name()
                .to_str()
                .and_then(|name| name.split_once(".attempt"))
                .and_then(|(id, _)| id.parse::<i64>().ok())
                .and_then(|id| TaskId::new(id).ok());
            if let Some(id) = owner.filter(|id| ids.contains(id)) {
                paths.push((id, entry.path()));
            }
        }
    }
    for (task_id, path) in paths {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(task_id = %task_id, path = %path.display(), error = %err, "cannot remove a pruned log")
            }
        }
    }
}

/// The queue to the logs thread.
#[derive(Clone)]
pub struct Logs {
    jobs: SyncSender<LogJob>,
}

impl Logs {
    /// Asks for a finished task's log to be compressed; never waits (a full
    /// queue leaves it for the next start-up).
    pub fn compress(&self, task_id: TaskId) {
        match self.jobs.try_send(LogJob::Compress(task_id)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!(task_id = %task_id, "log compression queue full; compressed at the next start")
            }
        }
    }

    /// Asks for pruned logs to be removed, waiting for room in the queue.
    pub async fn remove(&self, task_ids: Vec<TaskId>) {
        let jobs = self.jobs.clone();
        let _ = tokio::task::spawn_blocking(move || jobs.send(LogJob::Remove(task_ids))).await;
    }
}

/// Starts the logs thread. It first finishes what a crash left (stale
/// temporary files, plain logs beside their compressed copies, plain logs
/// of tasks that ended), then serves jobs until every [`Logs`] is dropped.
///
/// # Errors
/// When the thread cannot be started.
pub fn start(files: DataDir, readers: Arc<Readers>) -> anyhow::Result<(Logs, std::thread::JoinHandle<()>)> {
    let (jobs, queue) = sync_channel::<LogJob>(LOG_QUEUE);
    let thread = std::thread::Builder::new().name("logs".into()).spawn(move || {
        recover(&files, &readers);
        serve(&files, &queue);
    })?;
    Ok((Logs { jobs }, thread))
}

fn serve(files: &DataDir, queue: &Receiver<LogJob>) {
    while let Ok(job) = queue.recv() {
        match job {
            LogJob::Compress(task_id) => compress_logged(files, task_id),
            LogJob::Remove(task_ids) => remove(files, &task_ids),
        }
    }
}

fn compress_logged(files: &DataDir, task_id: TaskId) {
    match compress(files, task_id) {
        Ok(Some((plain, compressed))) => {
            tracing::debug!(task_id = %task_id, plain, compressed, "log compressed")
        }
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(task_id = %task_id, error = %format!("{err:#}"), "cannot compress a log; kept plain")
        }
    }
}

/// What a crash (or a full queue) left in `logs/`.
fn recover(files: &DataDir, readers: &Readers) {
    let dir = files.root().join("logs");
    let Ok(entries) = fs::read_dir(&dir) else { return };
    let mut plain = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".log.zst.tmp") {
            tracing::info!(file = name, "removing a log compression a crash interrupted");
            let _ = fs::remove_file(entry.path());
        } else if let Some(task_id) = name.strip_suffix(".log").and_then(|id| id.parse::<i64>().ok()) {
            if let Ok(task_id) = TaskId::new(task_id) {
                plain.push(task_id);
            }
        }
    }
    for task_id in plain {
        if compressed_path(files, task_id).exists() {
            // The compressed copy was renamed into place (after its sync):
            // the crash came before the plain file was removed.
            tracing::info!(task_id = %task_id, "removing a log already compressed");
            if let Err(err) = fs::remove_file(files.log_path(task_id)) {
                tracing::warn!(task_id = %task_id, error = %err, "cannot remove a log already compressed");
            }
            continue;
        }
        let ended = readers
            .query_blocking(|reader| reader.task(task_id))
            .ok()
            .flatten()
            .is_some_and(|task| task.state.is_final());
        if ended {
            compress_logged(files, task_id);
        }
    }
}
