//! `GET /api/v1/events`: server-sent events, one per committed change the
//! scheduler publishes: a task's state (`task`), a release record made or
//! changed (`release`), a runner declared lost (`runner_lost`).
//!
//! A client too slow for the feed loses the oldest changes and gets a
//! `lagged` event saying how many it missed (the page then reloads what it
//! shows); it never makes the scheduler wait.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::{json, ApiError, Web};

/// Comment lines that keep idle connections (and proxies) from timing out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn serve(State(web): State<Arc<Web>>) -> Result<Response, ApiError> {
    let permit = Arc::clone(&web.streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many open streams; try again"))?;
    let shutdown = web.shutdown.clone();
    let changes = BroadcastStream::new(web.scheduler.subscribe()).map(move |change| {
        // The permit lives as long as the stream.
        let _ = &permit;
        let event = match change {
            Ok(change) => {
                let (name, data) = json::change(&change);
                Event::default().event(name).data(data.to_string())
            }
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                Event::default().event("lagged").data(serde_json::json!({ "missed": missed }).to_string())
            }
        };
        Ok::<Event, Infallible>(event)
    });
    let ready = futures_util::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let stream = ready.chain(changes).take_until(async move { shutdown.cancelled_owned().await });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
}
