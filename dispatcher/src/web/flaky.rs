//! What the web shows of SPEC §14: the flaky tests (`/flaky`,
//! `/api/v1/flaky?repo=R`) and a task's flaky and culprit fields on its page.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use maud::{html, Markup};
use protocol::message::{FlakyTest, TaskInfo};
use protocol::RepoUrl;

use super::api::{query_error, TaskFilter};
use super::pages::{layout, time, PageResult};
use super::{ApiError, Web};

/// Tests listed.
const MAX_FLAKY: u32 = 200;

async fn read(web: &Web, repo: Option<RepoUrl>) -> Result<Vec<FlakyTest>, ApiError> {
    Ok(web.readers.query(move |reader| reader.flaky_tests(repo.as_ref(), MAX_FLAKY)).await?)
}

fn repo_of(filter: Result<Query<TaskFilter>, QueryRejection>) -> Result<Option<RepoUrl>, ApiError> {
    let filter = filter.map_err(query_error)?;
    Ok(TaskFilter { repo: filter.0.repo, ..TaskFilter::default() }.validate()?.repo)
}

/// `GET /api/v1/flaky`: the objects of `baton flaky --json`.
pub async fn api(
    State(web): State<Arc<Web>>,
    filter: Result<Query<TaskFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tests = read(&web, repo_of(filter)?).await?;
    Ok(Json(tests.iter().map(protocol::view::flaky_test).collect::<Vec<_>>()).into_response())
}

/// `GET /flaky`: tests that failed at least once, by flip rate.
pub async fn page(
    State(web): State<Arc<Web>>,
    filter: Result<Query<TaskFilter>, QueryRejection>,
) -> PageResult {
    let tests = read(&web, repo_of(filter)?).await?;
    let body = html! {
        h1 { "Flaky tests" }
        p.muted { "Tests that failed at least once; a flip is a commit on which a test both failed and passed." }
        @if tests.is_empty() { p.muted { "No test has failed." } }
        @else {
            table.flaky {
                thead { tr { th { "Test" } th { "Repository" } th { "Runs" } th { "Failures" } th { "Flips" } th { "Flip rate" } th { "Last seen" } } }
                tbody {
                    @for test in &tests {
                        tr {
                            td { code { (test.name) } }
                            td { (test.repo.as_str()) }
                            td { (test.runs) }
                            td { (test.failures) }
                            td { (test.flips) }
                            td { (format!("{:.0} %", 100.0 * test.flip_rate())) }
                            td { (time(Some(test.last_seen_ms))) }
                        }
                    }
                }
            }
        }
    };
    Ok(Html(layout("Flaky tests", body).into_string()))
}

/// The task page's `Flaky` and `Culprit` fields, when they apply.
pub fn task_fields(task: &TaskInfo) -> Markup {
    html! {
        @if task.flaky {
            dt { "Flaky" }
            dd { "passed on a retry; failed before: "
                @if task.flaky_tests.is_empty() { "—" }
                @for (idx, name) in task.flaky_tests.iter().enumerate() { @if idx > 0 { ", " } code { (name) } } }
        }
        @if let Some(culprit) = &task.culprit {
            dt { "Culprit" }
            dd { "first failing commit: "
                a href={ "/commits/" (culprit.commit.as_str()) } { code { (culprit.commit.as_str()) } }
                " (found by bisection in " (culprit.steps) " steps)" }
        }
    }
}
