//! Deployments on the web (SPEC §12): `GET /api/v1/deployments`, the
//! steering POSTs behind [`super::auth`], and the deployments section of the
//! releases page with approve and reject buttons.
//!
//! `POST /api/v1/deployments` (`{"repo", "version", "env"}`) asks for a
//! deployment; `POST /api/v1/deployments/rollback` (`{"repo", "env", "to"}`)
//! rolls an environment back; `POST /api/v1/deployments/ID/approve` and
//! `.../ID/reject` (optional `{"reason"}`) act on a waiting one, so the
//! page's buttons need no body. The web has no user of its own: the record
//! names `web <peer address>` as who asked or approved.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use maud::{html, Markup};
use protocol::message::{DeploymentInfo, DeploymentRequest, EnvRollbackRequest, RejectRequest};
use protocol::{DeploymentState, Name, RepoUrl};
use serde::Deserialize;

use super::{ApiError, Web};
use crate::scheduler::{Event, Steer};
use crate::users::Action;

type ApiResult = Result<Response, ApiError>;

/// The filters of `GET deployments`.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    repo: Option<String>,
    env: Option<String>,
}

pub async fn list(State(web): State<Arc<Web>>, filter: Result<Query<Filter>, QueryRejection>) -> ApiResult {
    let Query(filter) = filter.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let given = |field: Option<String>| field.filter(|text| !text.is_empty());
    let repo = given(filter.repo).map(|repo| parse_repo(&repo)).transpose()?;
    let env = given(filter.env).map(|env| parse_env(&env)).transpose()?;
    let deployments =
        web.readers.query(move |reader| reader.deployments(repo.as_ref(), env.as_ref())).await?;
    Ok(Json(deployments.iter().map(protocol::view::deployment).collect::<Vec<_>>()).into_response())
}

/// The body of `POST deployments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    repo: String,
    version: Version,
    env: String,
}

/// The body of `POST deployments/rollback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    repo: String,
    env: String,
    to: Option<Version>,
}

/// The optional body of `POST deployments/ID/reject`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    reason: Option<String>,
}

pub async fn deploy(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    web.auth.check(peer, &headers)?;
    let body: DeployBody = parse_body(body)?;
    let request = DeploymentRequest {
        repo: parse_repo(&body.repo)?,
        version: body.version.number()?,
        env: parse_env(&body.env)?,
    };
    let by = steerer(&web, peer, &headers, &request.repo, &request.env)?;
    steer_ok(&web, peer, Steer::Deploy(request), by, StatusCode::CREATED).await
}

pub async fn rollback(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    web.auth.check(peer, &headers)?;
    let body: RollbackBody = parse_body(body)?;
    let request = EnvRollbackRequest {
        repo: parse_repo(&body.repo)?,
        env: parse_env(&body.env)?,
        to: body.to.map(Version::number).transpose()?,
    };
    let by = steerer(&web, peer, &headers, &request.repo, &request.env)?;
    steer_ok(&web, peer, Steer::Rollback(request), by, StatusCode::CREATED).await
}

/// `POST deployments/ID/approve` and `POST deployments/ID/reject`.
pub async fn act(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request(format!("bad deployment id {id:?}")))?;
    if action != "approve" && action != "reject" {
        return Err(ApiError::not_found("expected /api/v1/deployments/ID/approve or /reject"));
    }
    web.auth.check(peer, &headers)?;
    let reject: RejectBody = match &body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => RejectBody::default(),
        _ => parse_body(body)?,
    };
    let Some(deployment) = web.readers.query(move |reader| reader.deployment(id)).await? else {
        return Err(ApiError::not_found(format!("no deployment {id}")));
    };
    let by = steerer(&web, peer, &headers, &deployment.repo, &deployment.environment)?;
    let steer = if action == "approve" {
        Steer::Approve(DeploymentRequest {
            repo: deployment.repo,
            version: deployment.version,
            env: deployment.environment,
        })
    } else {
        Steer::Reject(RejectRequest {
            repo: deployment.repo,
            version: deployment.version,
            env: deployment.environment,
            reason: reject.reason.unwrap_or_else(|| "rejected on the web page".into()),
        })
    };
    let answer = steer_ok(&web, peer, steer, by, StatusCode::OK).await?;
    if super::api::posted_form(&headers) {
        return Ok(Redirect::to("/releases").into_response());
    }
    Ok(answer)
}

/// The actor of a deployment request, once the peer may steer deployments
/// of `repo` in `env`.
fn steerer(
    web: &Web,
    peer: SocketAddr,
    headers: &HeaderMap,
    repo: &RepoUrl,
    env: &Name,
) -> Result<String, ApiError> {
    web.auth.steer(peer, headers, Action::Approve { repo, environment: Some(env.as_str()) })
}

async fn steer_ok(web: &Web, peer: SocketAddr, steer: Steer, by: String, status: StatusCode) -> ApiResult {
    let deployment = web
        .scheduler
        .ask(|reply| Event::Deployment { steer, by, reply })
        .await
        .map_err(ApiError::unavailable)?
        .map_err(|why| ApiError::new(StatusCode::CONFLICT, why))?;
    tracing::info!(peer = %peer, repo = %deployment.repo, release = deployment.version,
        environment = %deployment.environment, state = %deployment.state, "deployment steered over http");
    Ok((status, Json(protocol::view::deployment(&deployment))).into_response())
}

fn parse_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|err| ApiError::new(err.status(), err.body_text()))?;
    serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(format!("bad JSON body: {err}")))
}

fn parse_repo(text: &str) -> Result<RepoUrl, ApiError> {
    RepoUrl::new(text).map_err(|err| ApiError::bad_request(format!("bad repo: {err}")))
}

fn parse_env(text: &str) -> Result<Name, ApiError> {
    Name::new(text).map_err(|err| ApiError::bad_request(format!("bad env: {err}")))
}

/// A release version in a request body: `"r3"` or `3`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Version {
    Number(u32),
    Text(String),
}

impl Version {
    /// The version's number.
    ///
    /// # Errors
    /// 400 for 0 or a text that is not `rN`/`N`.
    pub(super) fn number(self) -> Result<u32, ApiError> {
        match self {
            Version::Number(0) => Err(ApiError::bad_request("bad version 0: expected r1, r2, ...")),
            Version::Number(number) => Ok(number),
            Version::Text(text) => parse_version(&text),
        }
    }
}

fn parse_version(text: &str) -> Result<u32, ApiError> {
    match text.strip_prefix('r').unwrap_or(text).parse::<u32>() {
        Ok(version) if version > 0 => Ok(version),
        _ => Err(ApiError::bad_request(format!("bad version {text:?}: expected r1, r2, ..."))),
    }
}

/// The deployments section of the releases page: newest first, with
/// approve and reject buttons on waiting ones.
pub fn section(deployments: &[DeploymentInfo], needs_token: bool) -> Markup {
    html! {
        section.steer data-needs-token=(needs_token) {
            h2 { "Deployments" }
            form #token-form hidden {
                label { "Token " input #token type="password" autocomplete="off"; }
                button #token-save type="submit" { "Use token" }
            }
            span #steer-result role="status" {}
            @if deployments.is_empty() { p.muted { "No deployment yet." } }
            @else {
                table.deployments {
                    thead { tr { th { "#" } th { "Repository" } th { "Version" } th { "Environment" } th { "State" } th { "Hosts" } th { "Requested by" } th { "Approved by" } th { "Note" } th {} } }
                    tbody {
                        @for deployment in deployments {
                            tr data-deployment-id=(deployment.id) {
                                td { (deployment.id) }
                                td { (deployment.repo.as_str()) }
                                td { "r" (deployment.version) @if deployment.kind == protocol::ReleaseKind::Rollback { " (rollback)" } }
                                td { (deployment.environment.as_str()) }
                                td { (super::pages::state_badge(deployment.state.as_str())) }
                                td { @for host in &deployment.hosts { code { (host.name.as_str()) @if host.canary { "*" } } " " (host.state.as_str()) " " } }
                                td { (deployment.requested_by) }
                                td { (deployment.approved_by.as_deref().unwrap_or("—")) }
                                td { @if let Some(waiting_for) = &deployment.waiting_for { "waiting for " (waiting_for) } @else if let Some(reason) = &deployment.reason { (reason) } }
                                td {
                                    @if deployment.state == DeploymentState::Waiting {
                                        form method="post" action={ "/api/v1/deployments/" (deployment.id) "/approve" } {
                                            button.js-steer type="submit" data-done="Approved." { "Approve" }
                                        }
                                        form method="post" action={ "/api/v1/deployments/" (deployment.id) "/reject" } {
                                            button.js-steer type="submit" data-done="Rejected." { "Reject" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                p.muted { "* a canary host" }
            }
        }
    }
}
