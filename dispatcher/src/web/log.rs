//! `GET /api/v1/tasks/ID/log`: a task's console output as raw bytes; with
//! `?follow=1`, streamed until the task ends, through the same follow path as
//! `baton log --follow` (the scheduler's `Event::Follow` progress, then the
//! log file up to the length it reports).
//!
//! Bounded per follower: the producer reads the file only as fast as the
//! HTTP client takes it (a channel of [`QUEUED_CHUNKS`]), and what wakes it is
//! a `watch` of the latest length, so a slow follower costs neither memory
//! nor the scheduler's time: it simply reads later from the file.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::TaskId;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{parse_task_id, ApiError, Web};
use crate::scheduler::Event;

/// Bytes per chunk read from the log.
const CHUNK: usize = 64 * 1024;
/// Chunks queued for one follower's socket.
const QUEUED_CHUNKS: usize = 4;

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    follow: Option<String>,
}

pub async fn serve(
    State(web): State<Arc<Web>>,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let task_id = parse_task_id(&id)?;
    let query = query.map_err(|err| ApiError::bad_request(format!("bad query: {}", err.body_text())))?;
    let follow = match query.follow.as_deref() {
        None | Some("0" | "false" | "") => false,
        Some("1" | "true") => true,
        Some(other) => return Err(ApiError::bad_request(format!("bad follow {other:?}: expected 1 or 0"))),
    };
    let task = super::api::read_task(&web, task_id).await?;
    let permit = Arc::clone(&web.streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many open streams; try again"))?;
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUED_CHUNKS);
    let follow = follow && !task.state.is_final();
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(err) = produce(&web, task_id, follow, &sender).await {
            tracing::debug!(task_id = %task_id, error = %format!("{err:#}"), "log follower ended");
            let _ = sender.send(Err(std::io::Error::other(err.to_string()))).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("x-content-type-options"), "nosniff"),
        ],
        body,
    )
        .into_response())
}

/// The follower went away (its body was dropped).
#[derive(Debug)]
struct Gone;

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the follower went away")
    }
}

impl std::error::Error for Gone {}

type Chunks = mpsc::Sender<Result<Bytes, std::io::Error>>;

async fn produce(web: &Web, task_id: TaskId, follow: bool, sender: &Chunks) -> anyhow::Result<()> {
    let progress = if follow {
        web.scheduler.ask(|reply| Event::Follow { task_id, reply }).await.ok().flatten()
    } else {
        None
    };
    let path = web.files.log_path(task_id);
    let mut log = AttemptLog::default();
    if let Some(mut progress) = progress {
        let mut attempt = progress.borrow().attempt;
        loop {
            let now = *progress.borrow_and_update();
            if now.attempt != attempt {
                // The earlier attempt's log is complete (its open handle still
                // reads it after it is renamed): send the rest, then say that
                // a new attempt starts.
                log.send(sender, &path, None).await?;
                // Attempt 0 is a task that had not started: no restart.
                let restarted = attempt > 0;
                attempt = now.attempt;
                log = AttemptLog::default();
                if restarted {
                    let marker = format!("\n[baton: task restarted as attempt {attempt}]\n");
                    send(sender, Bytes::from(marker)).await?;
                }
            }
            log.send(sender, &path, Some(now.len)).await?;
            if now.ended {
                break;
            }
            tokio::select! {
                _ = web.shutdown.cancelled() => return Ok(()),
                _ = sender.closed() => return Ok(()),
                changed = progress.changed() => if changed.is_err() { break },
            }
        }
    }
    log.send(sender, &path, None).await?;
    Ok(())
}

async fn send(sender: &Chunks, chunk: Bytes) -> anyhow::Result<()> {
    sender.send(Ok(chunk)).await.map_err(|_| anyhow::Error::new(Gone))
}

/// One attempt's log as a follower reads it: opened once (a missing log is
/// an empty one until it appears), read in order, as `baton log --follow`.
#[derive(Default)]
struct AttemptLog {
    file: Option<tokio::fs::File>,
    /// Bytes sent so far.
    offset: u64,
}

impl AttemptLog {
    /// Sends the log from where the last call stopped up to `end` (or its
    /// current end).
    async fn send(
        &mut self,
        sender: &Chunks,
        path: &std::path::Path,
        end: Option<u64>,
    ) -> anyhow::Result<()> {
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
                Some(end) => CHUNK.min((end - self.offset) as usize),
                None => CHUNK,
            };
            let mut buffer = vec![0u8; want];
            let read = file.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            buffer.truncate(read);
            self.offset += read as u64;
            send(sender, Bytes::from(buffer)).await?;
        }
        Ok(())
    }
}
