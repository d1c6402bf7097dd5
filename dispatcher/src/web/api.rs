//! The JSON API under `/api/v1/` (SPEC §10): reads, and steering behind
//! [`super::auth`]. Every bad request is a 4xx with `{"error": "..."}`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use protocol::message::{RunnerState, TaskInfo};
use protocol::{Branch, CommitId, RepoUrl, TaskId, TaskState};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::{json, parse_task_id, ApiError, Web};
use crate::scheduler::Event;
use crate::store::Trigger;
use crate::users::Action;

/// Tasks one list returns when the request does not say.
pub const DEFAULT_LIMIT: u32 = 50;
/// Most tasks one list returns.
pub const MAX_LIMIT: u32 = 1000;

type ApiResult = Result<Response, ApiError>;

/// The filters of `GET tasks` (and of the overview page).
#[derive(Debug, Default, Deserialize)]
pub struct TaskFilter {
    pub repo: Option<String>,
    pub state: Option<String>,
    pub limit: Option<String>,
    /// Pagination: only tasks with a smaller id.
    pub before: Option<String>,
}

/// A validated [`TaskFilter`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskQuery {
    pub repo: Option<RepoUrl>,
    pub state: Option<TaskState>,
    pub limit: u32,
    pub before: Option<TaskId>,
}

impl TaskFilter {
    /// Checks every field; empty strings (a form's blank choice) mean "any".
    ///
    /// # Errors
    /// A 400 naming the bad field.
    pub fn validate(&self) -> Result<TaskQuery, ApiError> {
        let given =
            |field: &Option<String>| field.as_deref().filter(|text| !text.is_empty()).map(str::to_owned);
        let repo = given(&self.repo)
            .map(|repo| RepoUrl::new(repo).map_err(|err| ApiError::bad_request(format!("bad repo: {err}"))))
            .transpose()?;
        let state = given(&self.state)
            .map(|state| {
                state.parse::<TaskState>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "unknown state {state:?}: expected one of pending, running, passed, failed, error, aborted"
                    ))
                })
            })
            .transpose()?;
        let limit = match given(&self.limit) {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<u32>() {
                Ok(limit) if limit >= 1 => limit.min(MAX_LIMIT),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "bad limit {text:?}: expected a positive integer"
                    )))
                }
            },
        };
        let before = given(&self.before).map(|text| parse_task_id(&text)).transpose()?;
        Ok(TaskQuery { repo, state, limit, before })
    }
}

pub(super) fn query_error(err: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query: {}", err.body_text()))
}

pub async fn status(State(web): State<Arc<Web>>) -> ApiResult {
    let view = web.snapshot.get().await.map_err(ApiError::unavailable)?;
    Ok(Json(json::status(&view.status)).into_response())
}

pub async fn runners(State(web): State<Arc<Web>>) -> ApiResult {
    let view = web.snapshot.get().await.map_err(ApiError::unavailable)?;
    Ok(Json(view.runners.iter().map(json::runner).collect::<Vec<_>>()).into_response())
}

pub async fn tasks(
    State(web): State<Arc<Web>>,
    filter: Result<Query<TaskFilter>, QueryRejection>,
) -> ApiResult {
    let query = filter.map_err(query_error)?.validate()?;
    let list = web.lists.get(query).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], list.json()).into_response())
}

/// Tasks newest first, as the filter says (through the cache of `lists`).
pub async fn list_tasks(web: &Web, query: TaskQuery) -> Result<Arc<super::lists::List>, ApiError> {
    web.lists.get(query).await
}

pub async fn task(State(web): State<Arc<Web>>, Path(id): Path<String>) -> ApiResult {
    let task = read_task(&web, parse_task_id(&id)?).await?;
    Ok(Json(json::task(&task)).into_response())
}

/// One task, with why it waits when it is pending; 404 when there is none.
pub async fn read_task(web: &Web, task_id: TaskId) -> Result<TaskInfo, ApiError> {
    let task = web.readers.query(move |reader| reader.task(task_id)).await?;
    let mut task = task.ok_or_else(|| ApiError::not_found(format!("no task {task_id}")))?;
    if task.state == TaskState::Pending && task.reason.is_none() {
        if let Ok(view) = web.snapshot.get().await {
            task.reason = Some(waits_for(&task, &view.runners));
        }
    }
    Ok(task)
}

/// What a pending task waits for, in words.
pub fn waits_for(task: &TaskInfo, runners: &[protocol::message::RunnerInfo]) -> String {
    let suitable: Vec<_> = runners
        .iter()
        .filter(|runner| runner.state != RunnerState::Dead)
        .filter(|runner| task.labels.iter().all(|label| runner.labels.contains(label)))
        .collect();
    if suitable.is_empty() {
        if task.labels.is_empty() {
            return "waiting for a runner to connect".into();
        }
        let labels: Vec<&str> = task.labels.iter().map(|label| label.as_str()).collect();
        return format!("waiting for a runner with labels: {}", labels.join(", "));
    }
    if suitable.iter().all(|runner| runner.tasks.len() as u32 >= runner.slots) {
        return format!("waiting for a free runner ({} suitable, all busy)", suitable.len());
    }
    "being handed to a runner".into()
}

pub async fn releases(
    State(web): State<Arc<Web>>,
    filter: Result<Query<TaskFilter>, QueryRejection>,
) -> ApiResult {
    let filter = filter.map_err(query_error)?;
    let repo = TaskFilter { repo: filter.0.repo, ..TaskFilter::default() }.validate()?.repo;
    let releases = web.readers.query(move |reader| reader.releases(repo.as_ref())).await?;
    Ok(Json(releases.iter().map(json::release).collect::<Vec<_>>()).into_response())
}

/// The body of `POST tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    repo: String,
    commit: String,
    branch: Option<String>,
}

fn parse_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|err| ApiError::new(err.status(), err.body_text()))?;
    serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(format!("bad JSON body: {err}")))
}

pub async fn submit(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    web.auth.check(peer, &headers)?;
    let body: SubmitBody = parse_body(body)?;
    let repo = RepoUrl::new(body.repo).map_err(|err| ApiError::bad_request(format!("bad repo: {err}")))?;
    let by = web.auth.steer(peer, &headers, Action::Trigger { repo: &repo })?;
    let commit =
        CommitId::new(body.commit).map_err(|err| ApiError::bad_request(format!("bad commit: {err}")))?;
    let branch = Branch::new(body.branch.unwrap_or_else(|| "main".into()))
        .map_err(|err| ApiError::bad_request(format!("bad branch: {err}")))?;
    let task = crate::handler::new_task(repo, branch, commit, Vec::new(), Trigger::Manual, Some(by));
    let accepted = web
        .scheduler
        .ask(|reply| Event::Submit { task, reply })
        .await
        .map_err(ApiError::unavailable)?
        .map_err(ApiError::bad_request)?;
    tracing::info!(peer = %peer, task_id = %accepted.task_id, "task submitted over http");
    let status = if accepted.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(json::accepted(&accepted))).into_response())
}

/// Checks a steering request on an existing task (the token or loopback,
/// then, with users, the roles on the task's repository).
///
/// # Returns
/// The actor steering records name.
///
/// # Errors
/// 401/403 as [`super::auth::Auth::steer`]; 404 for a task that does not
/// exist, once users make its repository matter.
async fn task_actor(
    web: &Web,
    peer: SocketAddr,
    headers: &HeaderMap,
    task_id: TaskId,
) -> Result<String, ApiError> {
    if !web.auth.users_enabled() {
        // Without users every steering action has the same rule.
        return web.auth.steer(peer, headers, Action::Admin);
    }
    web.auth.check(peer, headers)?;
    let task = read_task(web, task_id).await?;
    web.auth.steer(peer, headers, Action::Trigger { repo: &task.repo })
}

/// A scheduler's refusal: "no task N" is a 404, anything else (already
/// ended, nothing to roll back) a 409.
fn refused(reason: String) -> ApiError {
    if reason.starts_with("no task") {
        ApiError::not_found(reason)
    } else {
        ApiError::new(StatusCode::CONFLICT, reason)
    }
}

/// Steering of one task by id (rerun, abort): the id checked, then the
/// peer's right to steer that task, then the scheduler's answer on behalf
/// of the actor [`task_actor`] names.
async fn steer_task<T>(
    web: &Web,
    peer: SocketAddr,
    headers: &HeaderMap,
    id: &str,
    make: impl FnOnce(TaskId, String, oneshot::Sender<Result<T, String>>) -> Event,
) -> Result<(TaskId, T), ApiError> {
    let task_id = parse_task_id(id)?;
    let by = task_actor(web, peer, headers, task_id).await?;
    let answer = web
        .scheduler
        .ask(|reply| make(task_id, by, reply))
        .await
        .map_err(ApiError::unavailable)?
        .map_err(refused)?;
    Ok((task_id, answer))
}

pub async fn rerun(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let (task_id, accepted) =
        steer_task(&web, peer, &headers, &id, |task_id, by, reply| Event::Rerun { task_id, by, reply })
            .await?;
    tracing::info!(peer = %peer, task_id = %task_id, new_task = %accepted.task_id, "rerun over http");
    if posted_form(&headers) {
        return Ok(Redirect::to(&format!("/tasks/{}", accepted.task_id)).into_response());
    }
    Ok((StatusCode::CREATED, Json(json::accepted(&accepted))).into_response())
}

pub async fn abort(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let (task_id, task) =
        steer_task(&web, peer, &headers, &id, |task_id, by, reply| Event::Abort { task_id, by, reply })
            .await?;
    tracing::info!(peer = %peer, task_id = %task_id, "abort over http");
    if posted_form(&headers) {
        return Ok(Redirect::to(&format!("/tasks/{task_id}")).into_response());
    }
    Ok(Json(json::task(&task)).into_response())
}

/// Whether a browser without JavaScript posted one of the pages' forms
/// (the script sends no form body): such a request is answered with a
/// redirect to the page that shows the outcome, not with JSON.
pub(super) fn posted_form(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"))
}

/// The body of `POST releases/REPO/rollback` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// `"r3"` as in the deployments API, or `3`.
    to: Option<super::deployments::Version>,
}

/// `POST /api/v1/releases/REPO/rollback`; REPO is the repository's location,
/// percent-encoded or not (`/srv/git/app.git` may be written as is).
pub async fn rollback(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(rest): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let Some(repo) = rest.strip_suffix("/rollback") else {
        return Err(ApiError::not_found("expected /api/v1/releases/REPO/rollback"));
    };
    let repo = RepoUrl::new(repo.to_string())
        .or_else(|err| if repo.starts_with('/') { Err(err) } else { RepoUrl::new(format!("/{repo}")) })
        .map_err(|err| ApiError::bad_request(format!("bad repo: {err}")))?;
    web.auth.steer(peer, &headers, Action::Approve { repo: &repo, environment: None })?;
    let body: RollbackBody = match &body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => RollbackBody::default(),
        _ => parse_body(body)?,
    };
    let to = body.to.map(super::deployments::Version::number).transpose()?;
    let release = web
        .scheduler
        .ask(|reply| Event::Rollback { repo, to, by: None, reply })
        .await
        .map_err(ApiError::unavailable)?
        .map_err(refused)?;
    tracing::info!(peer = %peer, repo = %release.repo, release = release.version, "rollback over http");
    let value: Value = json::release(&release);
    Ok((StatusCode::CREATED, Json(value)).into_response())
}
