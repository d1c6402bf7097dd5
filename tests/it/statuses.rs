//! Commit statuses (issue 16, item 3; SPEC §13): a local HTTP server stands
//! in for GitHub, Gitea and GitLab; the dispatcher's status notifiers must
//! send each forge's documented request (method, path, auth header, JSON
//! body with state, context, description and the task page as
//! `target_url`), `pending` (GitLab: `running`) before the final state, and
//! retry, in order, what a failing forge refused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde_json::Value;

use crate::support::{self, baton_json, wait_final, wait_for, Dispatcher, Repo};

/// One request the forge received.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    /// As sent (percent-encoding kept).
    path: String,
    headers: HashMap<String, String>,
    body: Value,
    /// Answered 201 (otherwise 503).
    taken: bool,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    /// Requests to answer 503 before taking any.
    fail_first: AtomicUsize,
}

/// The stand-in forge: records every request, answers 503 to the first
/// `fail_first` and 201 to the rest.
struct Forge {
    addr: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl Forge {
    fn start(fail_first: usize) -> Forge {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let shared = Arc::new(Shared { fail_first: AtomicUsize::new(fail_first), ..Shared::default() });
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().fallback(record).with_state(Arc::clone(&shared));
        runtime.spawn(async move { axum::serve(listener, app).await });
        Forge { addr, shared, _runtime: runtime }
    }

    fn taken(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().iter().filter(|r| r.taken).cloned().collect()
    }

    fn all(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

async fn record(State(shared): State<Arc<Shared>>, request: Request) -> StatusCode {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.to_str().unwrap_or("?").to_string()))
        .collect();
    let taken =
        shared.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err();
    shared.received.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        taken,
    });
    if taken {
        StatusCode::CREATED
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// A dispatcher config with one `[[repo]]` naming its forge repository and
/// the given `[[notifier]]` tables.
fn config(dir: &Path, repo: &Repo, forge_repo: &str, notifiers: &str) -> String {
    let path = dir.join("dispatcher.toml");
    let text =
        format!("[[repo]]\nurl = \"{}\"\nforge_repo = \"{forge_repo}\"\n\n{notifiers}", repo.path.display());
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn token_file(dir: &Path, name: &str, token: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path.display().to_string()
}

fn submit(addr: &str, repo: &Repo, commit: &str) -> i64 {
    let accepted = baton_json(addr, &["submit", &repo.path.display().to_string(), commit]);
    accepted["id"].as_i64().expect("a numeric id")
}

#[track_caller]
fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received
        .headers
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no {name} header: {received:#?}"))
}

#[test]
fn each_forge_gets_its_documented_request_pending_then_final() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let passing = repo.commit(&[("tests/test_one.py", &support::unittest(true))], "passes");
    let failing = repo.commit(&[("tests/test_one.py", &support::unittest(false))], "fails");
    let forge = Forge::start(0);
    let notifiers = format!(
        "[[notifier]]\nname = \"gh\"\nstatus = \"github\"\napi = \"http://{a}/gh/\"\ntoken_file = \"{t1}\"\n\n\
         [[notifier]]\nname = \"tea\"\nstatus = \"gitea\"\napi = \"http://{a}/tea/api/v1\"\ntoken_file = \"{t2}\"\n\
         context = \"ci/baton\"\n\n\
         [[notifier]]\nname = \"lab\"\nstatus = \"gitlab\"\napi = \"http://{a}/lab/api/v4\"\ntoken_file = \"{t3}\"\n",
        a = forge.addr,
        t1 = token_file(tmp.path(), "gh.token", "tok-gh"),
        t2 = token_file(tmp.path(), "tea.token", "tok-tea"),
        t3 = token_file(tmp.path(), "lab.token", "tok-lab"),
    );
    let config = config(tmp.path(), &repo, "owner/app", &notifiers);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--config", &config]);
    let http = dispatcher.http.clone().expect("the web service runs");
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let pass_id = submit(&dispatcher.addr, &repo, &passing);
    assert_eq!(wait_final(&dispatcher.addr, &pass_id.to_string())["state"], "passed");
    let fail_id = submit(&dispatcher.addr, &repo, &failing);
    assert_eq!(wait_final(&dispatcher.addr, &fail_id.to_string())["state"], "failed");
    // Two tasks, a start and an end each, to three forges.
    wait_for("12 statuses", || (forge.taken().len() >= 12).then_some(()));
    let received = forge.taken();
    assert_eq!(received.len(), 12, "{received:#?}");

    for (prefix, pending, states) in [
        ("/gh/repos/owner/app/statuses/", "pending", ["success", "failure"]),
        ("/tea/api/v1/repos/owner/app/statuses/", "pending", ["success", "failure"]),
        ("/lab/api/v4/projects/owner%2Fapp/statuses/", "running", ["success", "failed"]),
    ] {
        for ((id, commit), final_state) in [(pass_id, &passing), (fail_id, &failing)].into_iter().zip(states)
        {
            let path = format!("{prefix}{commit}");
            let sent: Vec<&Received> = received.iter().filter(|r| r.path == path).collect();
            let got: Vec<&str> = sent.iter().map(|r| r.body["state"].as_str().unwrap_or("?")).collect();
            assert_eq!(got, [pending, final_state], "states sent to {path}: {sent:#?}");
            for request in &sent {
                assert_eq!(request.method, "POST");
                assert!(header(request, "content-type").starts_with("application/json"));
                assert!(header(request, "user-agent").starts_with("baton/"));
                assert_eq!(request.body["target_url"], format!("http://{http}/tasks/{id}"), "{request:#?}");
                let description = request.body["description"].as_str().unwrap_or_default();
                assert!(description.starts_with(&format!("Baton task #{id} ")), "{description}");
            }
        }
    }
    for request in &received {
        let body = &request.body;
        if request.path.starts_with("/gh/") {
            assert_eq!(header(request, "authorization"), "Bearer tok-gh");
            assert_eq!(header(request, "accept"), "application/vnd.github+json");
            assert_eq!(header(request, "x-github-api-version"), "2022-11-28");
            assert_eq!(body["context"], "baton", "{request:#?}");
        } else if request.path.starts_with("/tea/") {
            assert_eq!(header(request, "authorization"), "token tok-tea");
            assert_eq!(body["context"], "ci/baton", "{request:#?}");
        } else {
            assert!(request.path.starts_with("/lab/"), "{request:#?}");
            assert_eq!(header(request, "private-token"), "tok-lab");
            assert!(!request.headers.contains_key("authorization"));
            assert_eq!(body["name"], "baton", "{request:#?}");
            assert_eq!(body["ref"], "main", "{request:#?}");
        }
    }
}

#[test]
fn a_failing_forge_gets_the_statuses_again_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[("tests/test_one.py", &support::unittest(true))], "passes");
    // The pending status is refused three times: the final one, queued
    // meanwhile, must wait behind it.
    let forge = Forge::start(3);
    let notifiers = format!(
        "[[notifier]]\nstatus = \"github\"\napi = \"http://{}\"\ntoken_file = \"{}\"\n",
        forge.addr,
        token_file(tmp.path(), "token", "tok")
    );
    let config = config(tmp.path(), &repo, "owner/app", &notifiers);
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--config", &config]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &repo, &commit);
    assert_eq!(wait_final(&dispatcher.addr, &id.to_string())["state"], "passed");
    wait_for("both statuses taken", || (forge.taken().len() >= 2).then_some(()));
    let all = forge.all();
    let states: Vec<(&str, bool)> =
        all.iter().map(|r| (r.body["state"].as_str().unwrap_or("?"), r.taken)).collect();
    assert_eq!(
        states,
        [("pending", false), ("pending", false), ("pending", false), ("pending", true), ("success", true)],
        "{all:#?}"
    );
    for request in &all {
        assert_eq!(request.path, format!("/repos/owner/app/statuses/{commit}"));
    }
}
