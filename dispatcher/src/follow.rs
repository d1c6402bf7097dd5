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
use std::path::Path;

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
    file: Option<tokio::fs::File>,
    /// Bytes sent so far.
    offset: u64,
}

impl AttemptLog {
    /// Sends the log from where the last call stopped up to `end` (or its
    /// current end).
    async fn send<S: Sink>(&mut self, sink: &mut S, path: &Path, end: Option<u64>) -> anyhow::Result<()> {
        if end.is_some_and(|end| self.offset >= end) {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => match tokio::fs::File::open(path).await {
                Ok(file) => self.file.insert(file),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(err) => return Err(err.into()),
            },
        };
        loop {
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
        }
        Ok(())
    }
}
