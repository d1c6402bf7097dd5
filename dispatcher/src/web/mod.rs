//! The web report service of SPEC §10: server-rendered pages, the JSON API
//! under `/api/v1/`, server-sent events and Prometheus metrics, served by
//! axum on a tokio runtime of its own whose threads run at a lower priority
//! (nice 10) than the rest of the dispatcher.
//!
//! Why it cannot slow scheduling: its requests run on their own threads, so
//! 200 dashboards polling never queue in front of a runner's frame on the
//! protocol runtime, and when the cores are busy the kernel runs the
//! scheduler and the connections first (issue 14: `web_polled` in the
//! README). It reads tasks, logs and releases through the read-only SQLite
//! pool (`readers`, on the web's blocking threads) and the log files; it
//! asks the scheduler only for status and runners, through a snapshot cache
//! that sends at most a few events per second however many clients poll;
//! live updates come from the scheduler's state changes, a
//! `tokio::sync::broadcast` published after each commit, whose slow
//! subscribers lag (and are told so) instead of making the scheduler wait;
//! a followed log reads the file at the follower's own pace, woken by a
//! `watch` channel that holds only the latest length. Requests are bounded
//! (body size, time, concurrency, streams), and a panic in a handler becomes
//! a 500 for that request only.
//!
//! Deliberately not here: SQL (`store::web`), the JSON shapes' contract with
//! the client (`web::json` mirrors `baton --json`).

mod api;
mod assets;
mod auth;
mod deployments;
mod events;
mod flaky;
mod json;
mod lists;
mod log;
mod metrics;
mod pages;
mod snapshot;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::files::DataDir;
use crate::readers::Readers;
use crate::scheduler::Handle;

/// Largest request body (steering requests are a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;
/// How long a non-streaming request may take before it is answered 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Non-streaming requests served at once; more wait their turn, so a flood
/// of clients costs memory for their sockets, not CPU for their queries.
const MAX_REQUESTS: usize = 64;
/// Open streams (followed logs, event streams) at most; more are answered
/// 503 at once.
const MAX_STREAMS: usize = 256;
/// Worker threads of the web's runtime (its blocking threads, for SQLite
/// reads and log files, come on top).
const WORKERS: usize = 2;
/// The nice value of every web thread: under contention the kernel gives
/// them about a tenth of what a thread at 0 gets, and all the idle time.
const NICENESS: i32 = 10;

/// What every handler shares.
pub struct Web {
    pub(crate) scheduler: Handle,
    pub(crate) readers: Arc<Readers>,
    pub(crate) files: DataDir,
    pub(crate) auth: auth::Auth,
    pub(crate) snapshot: snapshot::Snapshot,
    pub(crate) lists: lists::Lists,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) streams: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
}

/// What the web service is built from.
pub struct Parts {
    pub scheduler: Handle,
    pub readers: Arc<Readers>,
    pub files: DataDir,
    /// The token file's content (trimmed), when there is one: the Bearer
    /// token steering requests must carry.
    pub secret: Option<Vec<u8>>,
    pub users: Arc<crate::users::Users>,
    pub shutdown: CancellationToken,
}

/// Builds the web service's shared state, on the web's runtime (it spawns
/// the metrics' follower).
fn state(parts: Parts) -> Arc<Web> {
    let Parts { scheduler, readers, files, secret, users, shutdown } = parts;
    let metrics = metrics::Metrics::new();
    metrics.follow(scheduler.subscribe(), shutdown.clone());
    Arc::new(Web {
        snapshot: snapshot::Snapshot::new(scheduler.clone()),
        lists: lists::Lists::new(scheduler.clone(), Arc::clone(&readers)),
        scheduler,
        readers,
        files,
        auth: auth::Auth::new(secret).with_users(users),
        metrics,
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        shutdown,
    })
}

/// Starts the web service on `listener` on its own runtime and threads (see
/// the module's doc); it serves until `parts.shutdown` is cancelled, then
/// the returned thread ends.
///
/// # Errors
/// The runtime or its thread cannot be started.
pub fn start(listener: TcpListener, parts: Parts) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use anyhow::Context;

    // A listener belongs to the runtime that made it: hand the socket over.
    let listener = listener.into_std().context("handing the web listener to its runtime")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name("web")
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
        .context("starting the web's runtime")?;
    let thread = std::thread::Builder::new().name("web".into());
    let thread = thread
        .spawn(move || {
            lower_priority();
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::error!(error = %err, "web service cannot listen");
                        return;
                    }
                };
                let web = state(parts);
                serve(listener, web).await;
            });
            // Streams still open end with their runtime.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .context("starting the web's thread")?;
    Ok(thread)
}

/// Lowers the calling thread's scheduling priority to [`NICENESS`]. On
/// Linux the nice value is a thread's own; failing is harmless (the web
/// then competes as an equal) and logged.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take and return plain integers and
        // touch no memory of ours; `who` is this thread's id.
        let changed =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICENESS) };
        if changed != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a web thread's priority");
        }
    }
}

/// Serves HTTP on `listener` until `shutdown` is cancelled.
async fn serve(listener: TcpListener, web: Arc<Web>) {
    let shutdown = web.shutdown.clone();
    let app = router(web).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(err) = served.await {
        tracing::error!(error = %err, "web service stopped");
    }
}

/// The whole application, with its limits.
pub fn router(web: Arc<Web>) -> Router {
    use axum::routing::{get, post};
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::timeout::TimeoutLayer;

    let bounded = Router::new()
        .route("/", get(pages::overview))
        .route("/tasks/{id}", get(pages::task))
        .route("/tasks/{id}/log.html", get(pages::log_fragment))
        .route("/commits/{commit}", get(pages::commit))
        .route("/runners", get(pages::runners))
        .route("/releases", get(pages::releases))
        .route("/flaky", get(flaky::page))
        .route("/api/v1/flaky", get(flaky::api))
        .route("/assets/{name}", get(assets::serve))
        .route("/metrics", get(metrics::serve))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/tasks", get(api::tasks).post(api::submit))
        .route("/api/v1/tasks/{id}", get(api::task))
        .route("/api/v1/tasks/{id}/rerun", post(api::rerun))
        .route("/api/v1/tasks/{id}/abort", post(api::abort))
        .route("/api/v1/runners", get(api::runners))
        .route("/api/v1/releases", get(api::releases))
        .route("/api/v1/releases/{*repo}", post(api::rollback))
        .route("/api/v1/deployments", get(deployments::list).post(deployments::deploy))
        .route("/api/v1/deployments/rollback", post(deployments::rollback))
        .route("/api/v1/deployments/{id}/{action}", post(deployments::act))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(MAX_REQUESTS))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT));
    let streams = Router::new()
        .route("/api/v1/tasks/{id}/log", get(log::serve))
        .route("/api/v1/events", get(events::serve));
    bounded
        .merge(streams)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(CatchPanicLayer::custom(panicked))
        .with_state(web)
}

/// An API error: a 4xx (or 5xx when the dispatcher itself failed) with a
/// JSON `{"error": "..."}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// The dispatcher could not answer (storage failed, stopping).
    fn unavailable(err: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %err, "web request failed");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        ApiError::unavailable(format!("{err:#}"))
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        ApiError::not_found(format!("no such endpoint: {}", uri.path())).into_response()
    } else {
        pages::not_found("No such page.").into_response()
    }
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a web handler panicked; the request failed, the daemon goes on");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

/// Parses a task id from a path segment.
fn parse_task_id(text: &str) -> Result<protocol::TaskId, ApiError> {
    text.parse::<i64>()
        .ok()
        .and_then(|id| protocol::TaskId::new(id).ok())
        .ok_or_else(|| ApiError::bad_request(format!("bad task id {text:?}: expected a positive integer")))
}
