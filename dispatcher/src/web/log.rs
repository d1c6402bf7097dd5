//! `GET /api/v1/tasks/ID/log`: a task's console output as raw bytes; with
//! `?follow=1`, streamed until the task ends, through the same follow path as
//! `baton log --follow` (`crate::follow`).
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
use tokio::sync::mpsc;

use super::{parse_task_id, ApiError, Web};

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
    if task.state.is_final() && crate::logs::pruned(&web.files, &web.readers, task_id).await? {
        return Err(ApiError::new(
            StatusCode::GONE,
            format!("the log of task {task_id} was pruned (--keep-logs)"),
        ));
    }
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
    let stop = async {
        tokio::select! {
            () = web.shutdown.cancelled() => {}
            () = sender.closed() => {}
        }
    };
    crate::follow::read_log(&web.scheduler, &web.files, task_id, follow, stop, &mut Feed(sender)).await?;
    Ok(())
}

/// An HTTP body fed through a bounded channel.
struct Feed<'a>(&'a Chunks);

impl crate::follow::Sink for Feed<'_> {
    async fn chunk(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.0.send(Ok(Bytes::from(bytes))).await.map_err(|_| anyhow::Error::new(Gone))
    }
}
