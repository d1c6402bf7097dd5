//! A task's console output as a reader gets it: the whole stored log, or
//! followed live until the task ends. This is the one path behind
//! `baton log [--follow]` (`handler::client`) and the web service's
//! `GET /api/v1/tasks/ID/log[?follow=1]` (`web::log`), so both deliver
//! exactly the bytes of the stored log, in order.
//!
//! Following asks the scheduler for the task's progress (`Event::Follow`: a
//! `watch` of the current attempt and the length stored and committed), then
//! reads the log file up to that length through one open handle per attempt:
//! the file is renamed when a new attempt starts, and the open handle still
//! reads the old one to its end. A slow reader costs neither memory nor the
//! scheduler's time: it reads later, from the file.

use std::future::Future;
use std::path::{Path, PathBuf};

use protocol::TaskId;
use tokio::io::AsyncReadExt;

use crate::files::DataDir;
use crate::scheduler::{Event, Handle};

/// Where the bytes go: a client connection, an HTTP body.
pub trait Sink {
    /// Bytes read from the log at a time, at most.
    const CHUNK: usize = 64 * 1024;

    /// Delivers one chunk; an error ends the reading (the reader is gone).
    fn chunk(&mut self, bytes: Vec<u8>) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How a reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Everything stored was sent (when following: the task ended).
    Whole,
    /// `stop` completed first.
    Stopped,
}

/// Sends the task's log to `sink`: with `follow`, live until the task ends
/// or `stop` completes; without, what is stored now.
///
/// # Errors
/// Reading the log file, or the sink's error.
pub async fn read_log(
    scheduler: &Handle,
    files: &DataDir,
    task_id: TaskId,
    follow: bool,
    stop: impl Future<Output = ()>,
    sink: &mut impl Sink,
) -> anyhow::Result<Read> {
    let progress = if follow {
        scheduler.ask(|reply| Event::Follow { task_id, reply }).await.ok().flatten()
    } else {
        None
    };
    let path = files.log_path(task_id);
    let mut log = AttemptLog::default();
    if let Some(mut progress) = progress {
        tokio::pin!(stop);
        let mut attempt = progress.borrow().attempt;
        loop {
            let now = *progress.borrow_and_update();
            if now.attempt != attempt {
                // The earlier attempt's log is complete: send what is left
                // of it, then say that a new one starts.
                log.send(sink, &path, None).await?;
                // Attempt 0 is a task that had not started: no restart.
                let restarted = attempt > 0;
                attempt = now.attempt;
                log = AttemptLog::default();
                if restarted {
                    sink.chunk(format!("\n[baton: task restarted as attempt {attempt}]\n").into_bytes())
                        .await?;
                }
            }
            log.send(sink, &path, Some(now.len)).await?;
            if now.ended {
                break;
            }
            tokio::select! {
                () = &mut stop => return Ok(Read::Stopped),
                changed = progress.changed() => if changed.is_err() { break },
            }
        }
    }
    log.send(sink, &path, None).await?;
    Ok(Read::Whole)
}

/// One attempt's log as a reader reads it: opened once (a missing log is an
/// empty one until it appears), read in order.
#[derive(Default)]
struct AttemptLog {
    source: Option<Source>,
    /// Bytes sent so far.
    offset: u64,
}

/// Where an attempt's bytes come from.
enum Source {
    /// The plain log, still growing or not yet compressed.
    Plain(tokio::fs::File),
    /// A finished task's compressed log, decoded by a blocking thread
    /// (zstd's decoder is synchronous) into a small bounded queue.
    Compressed(tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>),
}

/// Decoded chunks queued ahead of a slow reader of a compressed log.
const DECODED_CHUNKS: usize = 4;

impl AttemptLog {
    /// Sends the log from where the last call stopped up to `end` (or its
    /// current end).
    async fn send<S: Sink>(&mut self, sink: &mut S, path: &Path, end: Option<u64>) -> anyhow::Result<()> {
        if end.is_some_and(|end| self.offset >= end) {
            return Ok(());
        }
        let source = match &mut self.source {
            Some(source) => source,
            None => match tokio::fs::File::open(path).await {
                Ok(file) => self.source.insert(Source::Plain(file)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    // Compressed once the task ended; the plain file goes
                    // only after the compressed one is whole.
                    match decode(path.with_extension("log.zst"), self.offset, S::CHUNK) {
                        Some(queue) => self.source.insert(Source::Compressed(queue)),
                        None => return Ok(()),
                    }
                }
                Err(err) => return Err(err.into()),
            },
        };
        match source {
            Source::Plain(file) => loop {
                let want = match end {
                    Some(end) if self.offset >= end => break,
                    Some(end) => S::CHUNK.min(usize::try_from(end - self.offset).unwrap_or(S::CHUNK)),
                    None => S::CHUNK,
                };
                let mut buffer = vec![0u8; want];
                let read = file.read(&mut buffer).await?;
                if read == 0 {
                    break;
                }
                buffer.truncate(read);
                self.offset += read as u64;
                sink.chunk(buffer).await?;
            },
            // A compressed log is complete: `end` never cuts it.
            Source::Compressed(queue) => {
                while let Some(chunk) = queue.recv().await {
                    let chunk = chunk?;
                    self.offset += chunk.len() as u64;
                    sink.chunk(chunk).await?;
                }
            }
        }
        Ok(())
    }
}

/// Starts decoding the compressed log at `path` from byte `skip`, in chunks
/// of `chunk` bytes; `None` when there is no such file.
fn decode(
    path: PathBuf,
    skip: u64,
    chunk: usize,
) -> Option<tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>> {
    use std::io::Read;
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            let (sender, queue) = tokio::sync::mpsc::channel(1);
            let _ = sender.try_send(Err(err));
            return Some(queue);
        }
    };
    let (sender, queue) = tokio::sync::mpsc::channel(DECODED_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let mut decoder = match zstd::stream::read::Decoder::new(file) {
            Ok(decoder) => decoder,
            Err(err) => {
                let _ = sender.blocking_send(Err(err));
                return;
            }
        };
        if skip > 0 {
            if let Err(err) = std::io::copy(&mut (&mut decoder).take(skip), &mut std::io::sink()) {
                let _ = sender.blocking_send(Err(err));
                return;
            }
        }
        loop {
            let mut buffer = vec![0u8; chunk];
            match read_full(&mut decoder, &mut buffer) {
                Ok(0) => return,
                Ok(read) => {
                    buffer.truncate(read);
                    // The reader went away: stop decoding.
                    if sender.blocking_send(Ok(buffer)).is_err() {
                        return;
                    }
                }
                Err(err) => {
                    let _ = sender.blocking_send(Err(err));
                    return;
                }
            }
        }
    });
    Some(queue)
}

/// Fills `buffer` as far as the stream allows (a decoder returns short
/// reads at frame boundaries; whole chunks keep per-chunk costs low).
fn read_full(reader: &mut impl std::io::Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}
