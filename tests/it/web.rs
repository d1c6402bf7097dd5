//! The web report service (issue 14, SPEC §10) through real HTTP against the
//! real dispatcher and runners: every API endpoint and error status, steering
//! with and without a token (and from a non-loopback peer), server-sent
//! events, the followed log byte for byte, the pages, and `/metrics` against
//! `baton status --json`.

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, baton_json, wait_for, Daemon, Dispatcher, Repo, PATIENCE};

/// An HTTP answer: status, content type and body.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("not JSON ({err}), status {}: {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a 4xx with a JSON `{"error": "..."}` body.
    #[track_caller]
    pub fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert!(self.content_type.starts_with("application/json"), "{}: {}", self.content_type, self.text());
        assert!(self.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", self.text());
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(PATIENCE)).build().into()
}

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = response.expect("an HTTP answer (never a dropped connection)");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let status = response.status().as_u16();
    let mut body = Vec::new();
    response.body_mut().as_reader().read_to_end(&mut body).expect("reading the body");
    Answer { status, content_type, body }
}

/// `GET http://ADDR/PATH`.
pub fn get(http: &str, path: &str) -> Answer {
    answer(agent().get(format!("http://{http}{path}")).call())
}

/// `POST http://ADDR/PATH` with a body and an optional Bearer token.
pub fn post(http: &str, path: &str, body: &[u8], token: Option<&str>) -> Answer {
    let mut request = agent().post(format!("http://{http}{path}")).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    answer(request.send(body))
}

/// `POST http://ADDR/PATH` as a page's form without JavaScript sends it:
/// the status and the `Location` answered, redirects not followed.
fn post_form(http: &str, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(PATIENCE))
        .build()
        .into();
    let response = agent
        .post(format!("http://{http}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", format!("http://{http}"))
        .send(&b""[..])
        .expect("an HTTP answer");
    let location =
        response.headers().get("location").and_then(|value| value.to_str().ok()).unwrap_or_default();
    (response.status().as_u16(), location.to_string())
}

/// A repository whose test prints a line, waits until `gate` exists, prints
/// a coloured line and passes.
pub fn gated_repo(root: &Path, gate: &Path) -> (Repo, String) {
    let command = format!(
        "echo first line; while [ ! -e '{}' ]; do sleep 0.02; done; echo after the gate; printf '\\033[32mgreen\\033[0m ok\\n'",
        gate.display()
    );
    let repo = Repo::init(&root.join("repo"));
    let commit =
        repo.commit(&[(".baton.toml", &format!("[test]\ncommand = '''{command}'''\n"))], "gated test");
    (repo, commit)
}

/// A dispatcher with the web service and one runner.
pub fn start(root: &Path, args: &[&str]) -> (Dispatcher, Daemon, String) {
    let dispatcher = Dispatcher::start(&root.join("data"), args);
    let http = dispatcher.http.clone().expect("the dispatcher printed `http: ADDR`");
    let runner = support::runner(root, &dispatcher.addr, "r1", args_for_runner(args).as_slice());
    (dispatcher, runner, http)
}

fn args_for_runner<'a>(args: &[&'a str]) -> Vec<&'a str> {
    args.windows(2)
        .find(|pair| pair[0] == "--token-file")
        .map(|pair| vec![pair[0], pair[1]])
        .unwrap_or_default()
}

/// Waits until the API shows task `id` in `state`.
pub fn wait_state(http: &str, id: i64, state: &str) -> Value {
    wait_for(&format!("task {id} to be {state}"), || {
        let task = get(http, &format!("/api/v1/tasks/{id}")).json();
        (task["state"] == state).then_some(task)
    })
}

fn submit(http: &str, repo: &Repo, commit: &str, token: Option<&str>) -> i64 {
    let body =
        serde_json::json!({ "repo": repo.path.display().to_string(), "commit": commit, "branch": "main" });
    let accepted = post(http, "/api/v1/tasks", body.to_string().as_bytes(), token);
    assert_eq!(accepted.status, 201, "{}", accepted.text());
    accepted.json()["id"].as_i64().expect("an id")
}

/// Polls of the task list share one answer per commit (`web::lists`); none
/// may be older than what a client was already told: a submission answered,
/// an abort answered, each is in the very next list.
#[test]
fn the_task_list_is_never_older_than_an_answer() {
    let tmp = tempfile::tempdir().unwrap();
    // No runner: the tasks stay queued until aborted.
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let http = dispatcher.http.clone().expect("the dispatcher printed `http: ADDR`");
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[("a.txt", "a")], "a commit");
    let newest = |http: &str| {
        let list = get(http, "/api/v1/tasks?limit=50").json();
        let first = &list.as_array().expect("a list")[0];
        (first["id"].as_i64().expect("an id"), first["state"].as_str().expect("a state").to_string())
    };
    for _ in 0..5 {
        // Asked before each change, so a cached list of the previous commit exists.
        get(&http, "/api/v1/tasks?limit=50");
        let id = submit(&http, &repo, &commit, None);
        assert_eq!(newest(&http), (id, "pending".to_string()), "the list right after task {id} was accepted");
        let aborted = post(&http, &format!("/api/v1/tasks/{id}/abort"), b"", None);
        assert_eq!(aborted.status, 200, "{}", aborted.text());
        assert_eq!(newest(&http), (id, "aborted".to_string()), "the list right after task {id} was aborted");
        // Unchanged since: the same answer again.
        assert_eq!(get(&http, "/api/v1/tasks?limit=50").body, get(&http, "/api/v1/tasks?limit=50").body);
    }
    let listed = get(&http, "/api/v1/tasks?limit=50").json();
    assert_eq!(listed, baton_json(&dispatcher.addr, &["tasks", "--limit", "50"]));
}

#[test]
fn the_api_serves_what_the_client_shows_and_refuses_bad_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = tmp.path().join("gate");
    std::fs::write(&gate, "open").unwrap();
    let (dispatcher, _runner, http) = start(tmp.path(), &[]);
    let addr = dispatcher.addr.clone();
    let (repo, commit) = gated_repo(tmp.path(), &gate);
    let id = submit(&http, &repo, &commit, None);
    let task = wait_state(&http, id, "passed");

    // The same objects as `baton --json`.
    assert_eq!(task, baton_json(&addr, &["show", &id.to_string()]));
    assert_eq!(get(&http, "/api/v1/tasks").json(), baton_json(&addr, &["tasks"]));
    assert_eq!(
        get(&http, "/api/v1/tasks?state=passed&limit=1").json(),
        baton_json(&addr, &["tasks", "--state", "passed", "--limit", "1"])
    );
    let repo_query = format!("/api/v1/tasks?repo={}", repo.path.display());
    assert_eq!(get(&http, &repo_query).json().as_array().unwrap().len(), 1);
    let status = get(&http, "/api/v1/status").json();
    let client_status = baton_json(&addr, &["status"]);
    assert_eq!(status["tasks"], client_status["tasks"]);
    assert_eq!(status["runners"], client_status["runners"]);
    let runners = get(&http, "/api/v1/runners").json();
    let client_runners = baton_json(&addr, &["runners"]);
    assert_eq!(runners[0]["name"], client_runners[0]["name"]);
    assert_eq!(runners[0]["labels"], client_runners[0]["labels"]);
    let releases = wait_for("the release record", || {
        let releases = get(&http, "/api/v1/releases").json();
        (!releases.as_array()?.is_empty()).then_some(releases)
    });
    assert_eq!(releases, baton_json(&addr, &["releases"]));
    // A rollback names its release as the deployments API does (`"r1"`), or
    // by number.
    let rollback = format!("/api/v1/releases/{}/rollback", repo.path.display());
    for (body, version) in [(&br#"{"to": "r1"}"#[..], "r2"), (br#"{"to": 1}"#, "r3")] {
        let answer = post(&http, &rollback, body, None);
        assert_eq!(answer.status, 201, "{}", answer.text());
        let release = answer.json();
        assert_eq!(
            (release["version"].as_str(), release["rollback_to"].as_str()),
            (Some(version), Some("r1"))
        );
    }

    // The raw log is the stored log.
    let log = get(&http, &format!("/api/v1/tasks/{id}/log"));
    assert_eq!(log.status, 200);
    let stored = support::stored_log(&dispatcher.data_dir, id);
    assert_eq!(log.body, stored);
    assert!(log.text().contains("\x1b[32mgreen"), "{}", log.text());

    // Pages render, with the task's fields and colour for ANSI output.
    for (path, shows) in [
        ("/", format!("/tasks/{id}")),
        ("/?state=passed", format!("/tasks/{id}")),
        ("/releases", format!("/tasks/{id}")),
        (&format!("/commits/{commit}"), format!("/tasks/{id}")),
        ("/runners", "r1".to_string()),
    ] {
        let page = get(&http, path);
        assert_eq!(page.status, 200, "{path}: {}", page.text());
        assert!(page.content_type.starts_with("text/html"), "{path}");
        assert!(page.text().contains(&shows), "{path} lacks {shows}: {}", page.text());
    }
    let page = get(&http, &format!("/tasks/{id}")).text();
    for field in [commit.as_str(), "passed", "Attempts", "after the gate", "green</span>"] {
        assert!(page.contains(field), "task page lacks {field:?}:\n{page}");
    }
    assert!(!page.contains("[32m"), "an ANSI code reached the page:\n{page}");
    assert_eq!(get(&http, "/assets/app.js").status, 200);
    assert_eq!(get(&http, "/tasks/999999").status, 404);

    // Every bad request: a 4xx with a JSON error, never a 500 or a drop.
    get(&http, "/api/v1/tasks/abc").assert_error(400);
    get(&http, "/api/v1/tasks/0").assert_error(400);
    get(&http, "/api/v1/tasks/-4").assert_error(400);
    get(&http, "/api/v1/tasks/99999999999999999999999").assert_error(400);
    get(&http, "/api/v1/tasks/424242").assert_error(404);
    get(&http, "/api/v1/tasks/424242/log").assert_error(404);
    get(&http, &format!("/api/v1/tasks/{id}/log?follow=maybe")).assert_error(400);
    get(&http, "/api/v1/tasks?state=exploded").assert_error(400);
    get(&http, "/api/v1/tasks?limit=-1").assert_error(400);
    get(&http, "/api/v1/tasks?limit=many").assert_error(400);
    get(&http, "/api/v1/tasks?repo=;rm%20-rf%20/").assert_error(400);
    get(&http, "/api/v1/tasks?before=x").assert_error(400);
    get(&http, "/api/v1/nothing").assert_error(404);
    post(&http, "/api/v1/status", b"", None).assert_error(405);
    post(&http, "/api/v1/tasks", b"{not json", None).assert_error(400);
    post(&http, "/api/v1/tasks", b"[]", None).assert_error(400);
    post(&http, "/api/v1/tasks", br#"{"repo":"/x","commit":"nothex"}"#, None).assert_error(400);
    post(
        &http,
        "/api/v1/tasks",
        br#"{"repo":"../etc","commit":"0123456789abcdef0123456789abcdef01234567"}"#,
        None,
    )
    .assert_error(400);
    post(&http, "/api/v1/tasks", &vec![b' '; 20 * 1024], None).assert_error(413);
    post(&http, "/api/v1/tasks/424242/rerun", b"", None).assert_error(404);
    post(&http, &format!("/api/v1/tasks/{id}/abort"), b"", None).assert_error(409);
    post(&http, "/api/v1/tasks/x/abort", b"", None).assert_error(400);
    post(&http, "/api/v1/releases/srv/none.git/rollback", b"", None).assert_error(409);
    post(&http, &format!("/api/v1/releases/{}/rollback", repo.path.display()), b"{\"to\": \"one\"}", None)
        .assert_error(400);

    // Steering from loopback without a token file works.
    let rerun = post(&http, &format!("/api/v1/tasks/{id}/rerun"), b"", None);
    assert_eq!(rerun.status, 201, "{}", rerun.text());
    let again = rerun.json()["id"].as_i64().unwrap();
    assert!(again > id);
    wait_state(&http, again, "passed");
    // The task page's form, posted by a browser without JavaScript, lands
    // on the new task's page, not on JSON.
    let (status, location) = post_form(&http, &format!("/api/v1/tasks/{again}/rerun"));
    assert_eq!(status, 303);
    let third = location.strip_prefix("/tasks/").and_then(|id| id.parse::<i64>().ok()).expect("/tasks/ID");
    assert!(third > again, "{location}");
    wait_state(&http, third, "passed");
    // The daemon still serves after all of that.
    assert_eq!(get(&http, "/api/v1/status").status, 200);
    assert!(!dispatcher.daemon.log().contains("panicked"), "{}", dispatcher.daemon.log());
}

/// This host's address on its default route: not loopback.
fn non_loopback_ip() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // connect() on UDP only picks a route; nothing is sent.
    socket.connect("192.0.2.1:9").expect("this test needs a non-loopback route (CI machines have one)");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "no non-loopback address");
    ip
}

#[test]
fn steering_needs_the_token_or_a_loopback_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "web s3cret\n").unwrap();
    let token_arg = token.display().to_string();
    let gate = tmp.path().join("gate");
    std::fs::write(&gate, "open").unwrap();
    let (_dispatcher, _runner, http) = start(tmp.path(), &["--token-file", &token_arg]);
    let (repo, commit) = gated_repo(tmp.path(), &gate);
    let body = serde_json::json!({ "repo": repo.path.display().to_string(), "commit": commit }).to_string();
    post(&http, "/api/v1/tasks", body.as_bytes(), None).assert_error(401);
    post(&http, "/api/v1/tasks", body.as_bytes(), Some("web s3cre")).assert_error(401);
    post(&http, "/api/v1/tasks", body.as_bytes(), Some("web s3cret!")).assert_error(401);
    let id = submit(&http, &repo, &commit, Some("web s3cret"));
    wait_state(&http, id, "passed");
    post(&http, &format!("/api/v1/tasks/{id}/rerun"), b"", None).assert_error(401);
    assert_eq!(post(&http, &format!("/api/v1/tasks/{id}/rerun"), b"", Some("web s3cret")).status, 201);
    // Reads need no token.
    assert_eq!(get(&http, &format!("/api/v1/tasks/{id}")).status, 200);

    // Without a token file, a peer that is not on loopback may read, not steer.
    let open = tmp.path().join("open");
    let ip = non_loopback_ip();
    let listen = format!("{ip}:0");
    let dispatcher = Dispatcher::start(&open.join("data"), &["--http", &listen]);
    let remote = dispatcher.http.clone().expect("http address");
    assert!(remote.starts_with(&ip.to_string()), "{remote}");
    assert_eq!(get(&remote, "/api/v1/status").status, 200);
    post(&remote, "/api/v1/tasks", body.as_bytes(), None).assert_error(403);
}

/// Reads a streaming body on a thread, handing over what arrives.
fn stream(http: &str, path: &str) -> mpsc::Receiver<Vec<u8>> {
    let url = format!("http://{http}{path}");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let response = agent.get(&url).call().expect("stream");
        assert_eq!(response.status().as_u16(), 200);
        let mut reader = response.into_body().into_reader();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if sender.send(buffer[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    receiver
}

/// Reads a streaming response over a raw socket (status line, headers and
/// chunk framing included), handing over what arrives.
fn raw_stream(http: &str, path: &str) -> mpsc::Receiver<Vec<u8>> {
    use std::io::Write;
    let mut socket = std::net::TcpStream::connect(http).expect("connecting");
    write!(socket, "GET {path} HTTP/1.1\r\nHost: {http}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match socket.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if sender.send(buffer[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    receiver
}

/// Collects a stream until `done` says so or the stream ends.
fn collect_until(
    receiver: &mpsc::Receiver<Vec<u8>>,
    what: &str,
    done: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    loop {
        if done(&got) {
            return (got, false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}; got: {}", String::from_utf8_lossy(&got));
        match receiver.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(chunk) => got.extend(chunk),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return (got, true),
        }
    }
}

#[test]
fn events_and_the_followed_log_are_live_and_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = tmp.path().join("gate");
    let (dispatcher, _runner, http) = start(tmp.path(), &[]);
    let events = raw_stream(&http, "/api/v1/events");
    let (ready, _) = collect_until(&events, "the ready event", |got| {
        String::from_utf8_lossy(got).contains("event: ready")
    });
    let (repo, commit) = gated_repo(tmp.path(), &gate);
    let id = submit(&http, &repo, &commit, None);
    wait_state(&http, id, "running");
    let follow = stream(&http, &format!("/api/v1/tasks/{id}/log?follow=1"));
    let (early, _) = collect_until(&follow, "the first line", |got| got.ends_with(b"first line\n"));
    assert_eq!(early, b"first line\n");
    std::fs::write(&gate, "open").unwrap();
    let (rest, ended) = collect_until(&follow, "the end of the followed log", |_| false);
    assert!(ended);
    let followed = [early, rest].concat();
    let stored = support::stored_log(&dispatcher.data_dir, id);
    assert_eq!(String::from_utf8_lossy(&followed), String::from_utf8_lossy(&stored));
    assert_eq!(followed, stored);

    let passed = format!("\"id\":{id},\"runner\":\"r1\",\"state\":\"passed\"");
    let (seen, _) =
        collect_until(&events, "the passed event", |got| String::from_utf8_lossy(got).contains(&passed));
    let seen = String::from_utf8_lossy(&[ready, seen].concat()).into_owned();
    let data: Vec<Value> = seen
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter(|event| event["id"] == id)
        .collect();
    let states: Vec<&str> = data.iter().filter_map(|event| event["state"].as_str()).collect();
    assert_eq!(states, ["pending", "running", "passed"], "{seen}");
    assert_eq!(data[1]["runner"], "r1");
    assert_eq!(data[1]["attempt"], 1);
    assert!(seen.contains("event: task"), "{seen}");
}

/// Parses Prometheus text into (series with labels, value).
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) =
                line.rsplit_once(' ').unwrap_or_else(|| panic!("bad metrics line {line:?}"));
            (series.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}")))
        })
        .collect()
}

#[test]
fn metrics_parse_and_agree_with_status() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = tmp.path().join("gate");
    std::fs::write(&gate, "open").unwrap();
    let (dispatcher, _runner, http) = start(tmp.path(), &[]);
    let (repo, commit) = gated_repo(tmp.path(), &gate);
    let id = submit(&http, &repo, &commit, None);
    wait_state(&http, id, "passed");
    // A task for a label nobody has stays pending.
    let pending = baton_json(
        &dispatcher.addr,
        &["submit", &repo.path.display().to_string(), &commit, "--branch", "other", "--label", "gpu"],
    );
    assert_eq!(pending["duplicate"], false);
    // Wait out the status snapshot, so both reads see the same moment.
    let status = wait_for("metrics to catch up", || {
        let status = baton_json(&dispatcher.addr, &["status"]);
        let answer = get(&http, "/metrics");
        let metrics = parse_metrics(&answer.text());
        let value = |series: &str| metrics.iter().find(|(name, _)| name == series).map(|(_, value)| *value);
        let agrees = ["pending", "running", "passed", "failed", "error", "aborted"].iter().all(|state| {
            value(&format!("baton_tasks{{state=\"{state}\"}}")) == status["tasks"][state].as_f64()
        }) && ["idle", "busy", "dead"].iter().all(|state| {
            value(&format!("baton_runners{{state=\"{state}\"}}")) == status["runners"][state].as_f64()
        }) && value("baton_queue_depth") == status["tasks"]["pending"].as_f64();
        agrees.then_some((answer, metrics))
    });
    let (answer, metrics) = status;
    let text = answer.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let value = |series: &str| metrics.iter().find(|(name, _)| name == series).map(|(_, value)| *value);
    assert_eq!(value("baton_tasks_finished_total{state=\"passed\"}"), Some(1.0), "{text}");
    assert_eq!(value("baton_submit_to_running_seconds_count"), Some(1.0), "{text}");
    assert_eq!(value("baton_task_duration_seconds_count"), Some(1.0), "{text}");
    assert_eq!(value("baton_runners_lost_total"), Some(0.0), "{text}");
    assert_eq!(value("baton_build_info{version=\"0.1.0\"}"), Some(1.0), "{text}");
    for kind in ["gauge", "counter", "histogram", "info"] {
        assert!(text.contains(&format!(" {kind}\n")), "no {kind} in {text}");
    }
}
