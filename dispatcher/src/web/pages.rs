//! The server-rendered pages (SPEC §10): they read completely without
//! JavaScript; `assets/app.js` makes them live. maud checks the templates at
//! compile time and escapes every value.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use protocol::message::{ReleaseInfo, RunnerInfo, TaskInfo};
use protocol::{CommitPrefix, TaskState};

use super::api::{self, TaskFilter};
use super::{parse_task_id, ApiError, Web};
use crate::time::rfc3339;

/// Console output rendered into a page at most (its tail); the API serves
/// all of it.
const MAX_RENDERED_LOG: u64 = 1024 * 1024;
/// Pending tasks listed in the overview's queue.
const QUEUE_SHOWN: u32 = 20;

/// A page, or a page that explains what went wrong with the right status.
pub(super) type PageResult = Result<Html<String>, PageError>;

/// An error shown as a page.
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(err: ApiError) -> PageError {
        PageError(err)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = layout(
            "Error",
            html! { h1 { "Error" } p.error { (self.0.message) } p { a href="/" { "Back to the overview" } } },
        );
        (self.0.status, Html(body.into_string())).into_response()
    }
}

/// A 404 page.
pub fn not_found(message: &str) -> impl IntoResponse {
    PageError(ApiError::new(StatusCode::NOT_FOUND, message))
}

pub(super) fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Baton" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Baton" }
                    nav {
                        a href="/" { "Overview" }
                        a href="/runners" { "Runners" }
                        a href="/releases" { "Releases" }
                        a href="/flaky" { "Flaky tests" }
                        a href="/metrics" { "Metrics" }
                    }
                    span #live-status title="live updates" { "" }
                }
                main #main { (body) }
            }
        }
    }
}

/// A state as colour, icon and word.
pub(super) fn state_badge(state: &str) -> Markup {
    let icon = match state {
        "pending" | "waiting" => "◷",
        "running" => "▶",
        "passed" | "deployed" | "idle" => "✓",
        "failed" => "✗",
        "error" | "dead" => "!",
        "aborted" | "rolled_back" | "rejected" => "■",
        "busy" | "deploying" | "canary" => "▶",
        _ => "•",
    };
    html! { span class={ "state state-" (state) } data-state=(state) { span.icon aria-hidden="true" { (icon) } " " span.word { (state) } } }
}

pub(super) fn time(ms: Option<i64>) -> Markup {
    match ms.and_then(rfc3339) {
        Some(text) => html! { time datetime=(text) { (text) } },
        None => html! { span.muted { "—" } },
    }
}

fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "—".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m {}s", ms / 60_000, ms / 1000 % 60),
    }
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

fn summary(task: &TaskInfo) -> String {
    match &task.summary {
        Some(summary) => {
            format!("{} passed, {} failed, {} skipped", summary.passed, summary.failed, summary.skipped)
        }
        None => "—".into(),
    }
}

fn task_rows(tasks: &[TaskInfo]) -> Markup {
    html! {
        table.tasks {
            thead { tr { th { "Task" } th { "State" } th { "Repository" } th { "Branch" } th { "Commit" } th { "Runner" } th { "Created" } th { "Duration" } th { "Summary" } } }
            tbody {
                @for task in tasks {
                    tr data-task-id=(task.id.get()) {
                        td { a href={ "/tasks/" (task.id.get()) } { "#" (task.id.get()) } }
                        td.js-state { (state_badge(task.state.as_str())) }
                        td { (task.repo.as_str()) }
                        td { (task.branch.as_str()) }
                        td { a.commit href={ "/commits/" (task.commit.as_str()) } { code { (short(task.commit.as_str())) } } }
                        td { (task.runner.as_ref().map(|name| name.as_str()).unwrap_or("—")) }
                        td { (time(Some(task.created_at_ms))) }
                        td { (duration(task.duration_ms)) }
                        td { (summary(task)) }
                    }
                }
                @if tasks.is_empty() { tr { td colspan="9" .muted { "No tasks." } } }
            }
        }
    }
}

fn runner_rows(runners: &[RunnerInfo], detailed: bool) -> Markup {
    html! {
        table.runners {
            thead { tr {
                th { "Runner" } th { "State" } th { "Labels" } th { "Current task" }
                @if detailed { th { "Address" } th { "Host" } th { "Slots" } th { "Last seen" } }
            } }
            tbody {
                @for runner in runners {
                    tr {
                        td { (runner.name.as_str()) }
                        td { (state_badge(runner.state.as_str())) }
                        td { @for label in &runner.labels { span.label { (label.as_str()) } " " } }
                        td { @for id in &runner.tasks { a href={ "/tasks/" (id.get()) } { "#" (id.get()) } " " } @if runner.tasks.is_empty() { span.muted { "—" } } }
                        @if detailed {
                            td { (runner.address) }
                            td { (runner.host.os) " " (runner.host.arch) ", " (runner.host.cpus) " CPUs" }
                            td { (runner.slots) }
                            td { (time(Some(runner.last_seen_ms))) }
                        }
                    }
                }
                @if runners.is_empty() { tr { td colspan="8" .muted { "No runner has connected." } } }
            }
        }
    }
}

/// `/`: runners, the queue, recent tasks with filters and pagination.
pub async fn overview(
    State(web): State<Arc<Web>>,
    filter: Result<Query<TaskFilter>, QueryRejection>,
) -> PageResult {
    let Query(filter) = filter.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let query = filter.validate()?;
    let limit = query.limit;
    let view = web.snapshot.get().await.map_err(ApiError::unavailable)?;
    let pending = api::list_tasks(
        &web,
        api::TaskQuery { repo: None, state: Some(TaskState::Pending), limit: QUEUE_SHOWN, before: None },
    )
    .await?;
    let pending = &pending.tasks;
    let paged = query.before.is_some();
    let tasks = api::list_tasks(&web, query).await?;
    let tasks = &tasks.tasks;
    let n_pending = super::json::count(&view.status, TaskState::Pending);
    let repo_value = filter.repo.clone().unwrap_or_default();
    let state_value = filter.state.clone().unwrap_or_default();
    let older = (tasks.len() as u32 == limit).then(|| tasks.last().map(|task| task.id.get())).flatten();
    let link = |before: Option<i64>| {
        let mut params = vec![];
        if !repo_value.is_empty() {
            params.push(format!("repo={}", urlencode(&repo_value)));
        }
        if !state_value.is_empty() {
            params.push(format!("state={}", urlencode(&state_value)));
        }
        if let Some(before) = before {
            params.push(format!("before={before}"));
        }
        format!("/?{}", params.join("&"))
    };
    let body = html! {
        section.counts {
            @for state in TaskState::ALL {
                a.count href={ "/?state=" (state.as_str()) } { (state_badge(state.as_str())) " " strong { (super::json::count(&view.status, state)) } }
            }
        }
        section {
            h2 { "Runners" }
            (runner_rows(&view.runners, false))
        }
        section {
            h2 { "Queue " span.muted { "(" (n_pending) " pending)" } }
            @if pending.is_empty() { p.muted { "Nothing is waiting." } } @else {
                table.queue {
                    thead { tr { th { "Task" } th { "Repository" } th { "Commit" } th { "Waits for" } } }
                    tbody {
                        @for task in pending {
                            tr data-task-id=(task.id.get()) {
                                td { a href={ "/tasks/" (task.id.get()) } { "#" (task.id.get()) } }
                                td { (task.repo.as_str()) }
                                td { code { (short(task.commit.as_str())) } }
                                td { (task.reason.clone().unwrap_or_else(|| api::waits_for(task, &view.runners))) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Recent tasks" }
            form.filters method="get" action="/" {
                label { "Repository " input type="text" name="repo" value=(repo_value) placeholder="any"; }
                label { "State "
                    select name="state" {
                        option value="" selected[state_value.is_empty()] { "any" }
                        @for state in TaskState::ALL {
                            option value=(state.as_str()) selected[state_value == state.as_str()] { (state.as_str()) }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            (task_rows(tasks))
            nav.pages {
                @if paged { a href=(link(None)) { "← Newest" } }
                @if let Some(before) = older { a href=(link(Some(before))) { "Older →" } }
            }
        }
    };
    Ok(Html(layout("Overview", body).into_string()))
}

fn urlencode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `/tasks/ID`: every field of `show`, the console output, steering.
pub async fn task(State(web): State<Arc<Web>>, Path(id): Path<String>) -> PageResult {
    let task = api::read_task(&web, parse_task_id(&id)?).await?;
    let log = rendered_log(&web, &task).await?;
    let id = task.id.get();
    let body = html! {
        h1 { "Task #" (id) " " span.js-state data-task-id=(id) { (state_badge(task.state.as_str())) } }
        section #details data-task-id=(id) data-final=(task.state.is_final()) {
            dl.fields {
                dt { "Repository" } dd { (task.repo.as_str()) }
                dt { "Branch" } dd { (task.branch.as_str()) }
                dt { "Commit" } dd { a href={ "/commits/" (task.commit.as_str()) } { code { (task.commit.as_str()) } } }
                dt { "State" } dd.js-state data-task-id=(id) { (state_badge(task.state.as_str())) }
                dt { "Attempts" } dd { (task.attempts) }
                dt { "Runner" } dd { (task.runner.as_ref().map(|name| name.as_str()).unwrap_or("—")) }
                dt { "Exit code" } dd { @if let Some(code) = task.exit_code { (code) } @else { "—" } }
                dt { "Created" } dd { (time(Some(task.created_at_ms))) }
                dt { "Started" } dd { (time(task.started_at_ms)) }
                dt { "Finished" } dd { (time(task.finished_at_ms)) }
                dt { "Duration" } dd { (duration(task.duration_ms)) }
                dt { "Summary" } dd { (summary(&task)) }
                dt { "Reason" } dd { (task.reason.as_deref().unwrap_or("—")) }
                dt { "Labels" } dd { @for label in &task.labels { span.label { (label.as_str()) } " " } @if task.labels.is_empty() { "—" } }
                dt { "Trigger" } dd { (task.trigger) }
                dt { "Kind" } dd { (task.kind) }
                (super::flaky::task_fields(&task))
            }
        }
        section.steer data-needs-token=(web.auth.needs_token()) {
            form #token-form hidden {
                label { "Token " input #token type="password" autocomplete="off"; }
                button #token-save type="submit" { "Use token" }
                span.muted { " kept in this tab only (sessionStorage)" }
            }
            form method="post" action={ "/api/v1/tasks/" (id) "/rerun" } {
                button #rerun.js-steer type="submit" { "Rerun" }
            }
            form method="post" action={ "/api/v1/tasks/" (id) "/abort" } {
                button #abort.js-steer type="submit" disabled[task.state.is_final()] { "Abort" }
            }
            span #steer-result role="status" {}
        }
        section {
            h2 { "Console output" }
            pre #log.console data-task-id=(id) data-offset=(log.offset) data-final=(task.state.is_final()) { (PreEscaped(log.html)) }
        }
    };
    Ok(Html(layout(&format!("Task #{id}"), body).into_string()))
}

/// A log's tail, as HTML with ANSI colours.
struct RenderedLog {
    html: String,
    /// Bytes of the log the HTML covers (from the start of the file).
    offset: u64,
}

async fn rendered_log(web: &Web, task: &TaskInfo) -> Result<RenderedLog, ApiError> {
    let files = web.files.clone();
    let task_id = task.id;
    let rendered = tokio::task::spawn_blocking(move || -> std::io::Result<RenderedLog> {
        // Plain or compressed alike.
        let Some((bytes, start)) = crate::logs::tail(&files, task_id, MAX_RENDERED_LOG)? else {
            return Ok(RenderedLog { html: String::new(), offset: 0 });
        };
        let text = String::from_utf8_lossy(&bytes);
        let html = ansi_to_html::convert(&text).unwrap_or_else(|_| maud::html! { (text) }.into_string());
        let html = if start > 0 {
            format!("<span class=\"muted\">[{start} earlier bytes: see the raw log]</span>\n{html}")
        } else {
            html
        };
        Ok(RenderedLog { html, offset: start + bytes.len() as u64 })
    })
    .await
    .map_err(|err| ApiError::unavailable(err.to_string()))?
    .map_err(|err| ApiError::unavailable(format!("reading the log: {err}")))?;
    Ok(rendered)
}

/// `/tasks/ID/log.html`: the console output as HTML (the page swaps it in
/// when a followed task ends, so colours show).
pub async fn log_fragment(
    State(web): State<Arc<Web>>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let task = api::read_task(&web, parse_task_id(&id)?).await?;
    let log = rendered_log(&web, &task).await?;
    Ok(Html(log.html).into_response())
}

/// `/commits/COMMIT`: the commit's tasks, newest first.
pub async fn commit(State(web): State<Arc<Web>>, Path(commit): Path<String>) -> PageResult {
    let prefix = CommitPrefix::new(commit.clone())
        .map_err(|err| ApiError::bad_request(format!("bad commit {commit:?}: {err}")))?;
    let shown = prefix.as_str().to_string();
    let tasks = web
        .readers
        .query(move |reader| reader.tasks_of_commit(&prefix, 200))
        .await
        .map_err(ApiError::from)?;
    if tasks.is_empty() {
        return Err(ApiError::not_found(format!("no task for commit {shown}")).into());
    }
    let body = html! {
        h1 { "Commit " code { (shown) } }
        (task_rows(&tasks))
    };
    Ok(Html(layout(&format!("Commit {}", short(&shown)), body).into_string()))
}

/// `/runners`.
pub async fn runners(State(web): State<Arc<Web>>) -> PageResult {
    let view = web.snapshot.get().await.map_err(ApiError::unavailable)?;
    let body = html! { h1 { "Runners" } (runner_rows(&view.runners, true)) };
    Ok(Html(layout("Runners", body).into_string()))
}

/// `/releases`: per repository, newest first.
pub async fn releases(State(web): State<Arc<Web>>) -> PageResult {
    let releases = web.readers.query(|reader| reader.releases(None)).await.map_err(ApiError::from)?;
    let deployments =
        web.readers.query(|reader| reader.deployments(None, None)).await.map_err(ApiError::from)?;
    let mut repos: Vec<(String, Vec<ReleaseInfo>)> = Vec::new();
    for release in releases {
        let repo = release.repo.as_str().to_string();
        match repos.iter_mut().find(|(name, _)| *name == repo) {
            Some((_, list)) => list.push(release),
            None => repos.push((repo, vec![release])),
        }
    }
    let body = html! {
        h1 { "Releases" }
        (super::deployments::section(&deployments, web.auth.needs_token()))
        @if repos.is_empty() { p.muted { "No release yet: a passed task on a release branch records one." } }
        @for (repo, list) in &repos {
            section {
                h2 { (repo) }
                table.releases {
                    thead { tr { th { "Version" } th { "State" } th { "Kind" } th { "Branch" } th { "Commit" } th { "Task" } th { "Recorded" } th { "Previous" } } }
                    tbody {
                        @for release in list.iter().rev() {
                            tr {
                                td { "r" (release.version) }
                                td { (state_badge(release.state.as_str())) }
                                td { (release.kind.as_str()) @if let Some(to) = release.rollback_to { " to r" (to) } }
                                td { (release.branch.as_str()) }
                                td { a href={ "/commits/" (release.commit.as_str()) } { code { (short(release.commit.as_str())) } } }
                                td { @if let Some(id) = release.task_id { a href={ "/tasks/" (id.get()) } { "#" (id.get()) } } @else { "—" } }
                                td { (time(Some(release.created_at_ms))) }
                                td { @if let Some(previous) = release.previous { "r" (previous) } @else { "—" } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(Html(layout("Releases", body).into_string()))
}
