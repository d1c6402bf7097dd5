//! Commit statuses: turns a `task_started` or `task_finished` outbox entry
//! into the request each forge documents, and judges its answer.
//!
//! - GitHub: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, `Authorization:
//!   Bearer TOKEN`, body `{state, target_url, description, context}` with
//!   `state` pending, success, failure or error.
//! - Gitea and Forgejo: the same path and body, `Authorization: token TOKEN`.
//! - GitLab: `POST {api}/projects/{id}/statuses/{sha}`, `PRIVATE-TOKEN:
//!   TOKEN`, body `{state, ref, name, target_url, description}` with `state`
//!   running, success, failed or canceled; `{id}` is the numeric id or the
//!   URL-encoded path.
//!
//! Which repository on the forge: the `[[repo]]` table's `forge_repo`, or
//! the path of Baton's repository URL (`https://github.com/o/r.git`,
//! `git@github.com:o/r.git`, `ssh://git@host/o/r`) without `.git`; resolved
//! when the event is queued (`forge_repo` in the entry), so an entry that can
//! never be delivered is never queued.
//!
//! Deliberately not here: the outbox, retries and their order (`notify`).

use protocol::CommitId;
use serde_json::{json, Value};

use crate::config::{Forge, StatusTarget};

/// GitHub cuts descriptions longer than this.
const MAX_DESCRIPTION: usize = 140;

/// One HTTP request to a forge.
#[derive(Debug)]
pub struct Request {
    pub url: String,
    /// Headers besides `content-type: application/json`.
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

/// Whether `path` can name a repository on a forge: segments of
/// `[A-Za-z0-9._-]` separated by `/`, none `.` or `..`, or a numeric id.
pub fn valid_forge_repo(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 255
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

/// The repository's path on its forge, from Baton's repository location:
/// the path after the host of a URL or an scp-like `user@host:path`,
/// without a trailing `.git`. `None` for a local path.
pub fn derive_forge_repo(location: &str) -> Option<String> {
    let path = if let Some((_, rest)) = location.split_once("://") {
        // scheme://[user@]host[:port]/path
        rest.split_once('/')?.1
    } else if let Some((host, path)) = location.split_once(':') {
        // user@host:path, but not a local path holding a colon.
        if host.contains('/') || !host.contains('@') {
            return None;
        }
        path
    } else {
        return None;
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    valid_forge_repo(path).then(|| path.to_string())
}

/// The request that reports `event` (an outbox entry's JSON) to the forge.
///
/// # Errors
/// An entry that is not a task start or end with a valid commit and forge
/// repository (it can never be delivered).
pub fn request(target: &StatusTarget, event: &Value, public_url: Option<&str>) -> Result<Request, String> {
    let started = match event["event"].as_str() {
        Some("task_started") => true,
        Some("task_finished") => false,
        other => return Err(format!("not a task start or end: {other:?}")),
    };
    let task = &event["task"];
    let id = task["id"].as_i64().ok_or("the event has no task id")?;
    let commit = CommitId::new(task["commit"].as_str().unwrap_or_default().to_string())
        .map_err(|err| format!("bad commit: {err}"))?;
    let branch = task["branch"].as_str().unwrap_or_default();
    let forge_repo =
        event["forge_repo"].as_str().filter(|path| valid_forge_repo(path)).ok_or("no forge_repo")?;
    let state = if started { "running" } else { task["state"].as_str().ok_or("the event has no state")? };
    let description = description(id, state, task);
    let target_url = public_url.map(|base| format!("{base}/tasks/{id}"));
    let api = &target.api;
    match target.forge {
        Forge::Github | Forge::Gitea => {
            let (owner, name) = forge_repo
                .split_once('/')
                .filter(|(_, name)| !name.contains('/'))
                .ok_or("forge_repo is not owner/name")?;
            let forge_state = match state {
                "running" => "pending",
                "passed" => "success",
                "failed" => "failure",
                _ => "error",
            };
            let mut body =
                json!({ "state": forge_state, "description": description, "context": target.context });
            if let Some(url) = target_url {
                body["target_url"] = url.into();
            }
            let authorization = match target.forge {
                Forge::Github => format!("Bearer {}", target.token),
                _ => format!("token {}", target.token),
            };
            let mut headers = vec![("authorization", authorization), ("accept", accept(target.forge).into())];
            if target.forge == Forge::Github {
                headers.push(("x-github-api-version", "2022-11-28".into()));
            }
            Ok(Request { url: format!("{api}/repos/{owner}/{name}/statuses/{commit}"), headers, body })
        }
        Forge::Gitlab => {
            let forge_state = match state {
                "running" => "running",
                "passed" => "success",
                "aborted" => "canceled",
                _ => "failed",
            };
            let mut body =
                json!({ "state": forge_state, "name": target.context, "description": description });
            if !branch.is_empty() {
                body["ref"] = branch.into();
            }
            if let Some(url) = target_url {
                body["target_url"] = url.into();
            }
            let project = forge_repo.replace('/', "%2F");
            Ok(Request {
                url: format!("{api}/projects/{project}/statuses/{commit}"),
                headers: vec![
                    ("private-token", target.token.clone()),
                    ("accept", accept(target.forge).into()),
                ],
                body,
            })
        }
    }
}

fn accept(forge: Forge) -> &'static str {
    match forge {
        Forge::Github => "application/vnd.github+json",
        Forge::Gitea | Forge::Gitlab => "application/json",
    }
}

/// "Baton task #12 passed: 3 passed, 0 failed", cut to what forges show.
fn description(id: i64, state: &str, task: &Value) -> String {
    let mut text = format!("Baton task #{id} {state}");
    if let Some(reason) = task["reason"].as_str().filter(|reason| !reason.is_empty()) {
        text.push_str(": ");
        text.push_str(reason);
    } else if let Some(code) = task["exit_code"].as_i64().filter(|code| *code != 0) {
        text.push_str(&format!(" (exit code {code})"));
    }
    if text.chars().count() > MAX_DESCRIPTION {
        text = text.chars().take(MAX_DESCRIPTION - 1).collect::<String>() + "…";
    }
    text
}

/// What an HTTP status from a forge means for the outbox entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Taken.
    Delivered,
    /// Try again later: the forge is down, overloaded or rate-limiting.
    Retry,
    /// Refused for good (a bad token, an unknown repository or commit):
    /// retrying would block every later status of this notifier.
    Refused,
}

/// Judges a forge's HTTP status.
pub fn answer(status: u16) -> Answer {
    match status {
        200..=299 => Answer::Delivered,
        408 | 429 => Answer::Retry,
        400..=499 => Answer::Refused,
        _ => Answer::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forge_repositories_come_from_forge_urls_only() {
        assert_eq!(derive_forge_repo("https://github.com/owner/app.git").as_deref(), Some("owner/app"));
        assert_eq!(derive_forge_repo("git@github.com:owner/app.git").as_deref(), Some("owner/app"));
        assert_eq!(derive_forge_repo("ssh://git@host:2222/g/sub/p").as_deref(), Some("g/sub/p"));
        assert_eq!(derive_forge_repo("/srv/git/app.git"), None);
        assert_eq!(derive_forge_repo("https://h/../etc"), None);
        assert_eq!(derive_forge_repo("https://h/o/r?x=1"), None);
        assert!(!valid_forge_repo("o//r") && !valid_forge_repo("o/r;rm") && valid_forge_repo("42"));
    }

    #[test]
    fn forge_answers_decide_retries() {
        assert_eq!(answer(201), Answer::Delivered);
        assert_eq!(answer(503), Answer::Retry);
        assert_eq!(answer(429), Answer::Retry);
        assert_eq!(answer(404), Answer::Refused);
    }
}
