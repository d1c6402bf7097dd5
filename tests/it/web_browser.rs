//! The web pages in a real browser (issue 14): headless Chromium driven
//! through chromedriver with fantoccini. It opens the overview and a running
//! task's page and sees, without a reload, the state turn from running to
//! passed and a line printed after the page opened; then it gives the page's
//! token prompt the token and reruns the task from the page.
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver`
//! (`.ci/run` installs them); without them this test fails, it never skips.
//! Screenshots of a failure go to `$TMPDIR/baton-web-screenshots/`; with
//! `BATON_SCREENSHOTS=DIR` the overview and the task page are also saved to
//! `DIR` (how the README's pictures are made).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::{self, Dispatcher, PATIENCE};
use crate::web::{gated_repo, get, post, wait_state};

/// chromedriver, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(names: &[&str]) -> PathBuf {
    for name in names {
        for dir in
            std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/lib/chromium"])
        {
            let path = Path::new(dir).join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!("{} not found: install Debian's chromium and chromium-driver (.ci/run does)", names.join(" or "));
}

fn start_driver(log: &Path) -> Driver {
    let program = find_program(&["chromedriver"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(program)
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let driver = Driver { child, port };
    support::wait_for("chromedriver to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    assert_eq!(get(&format!("127.0.0.1:{port}"), "/status").status, 200);
    driver
}

async fn connect(driver: &Driver, profile: &Path) -> Client {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ];
    let mut all: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    all.push(format!("--user-data-dir={}", profile.display()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": all }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// Evaluates `script` in the page until it returns something truthy.
async fn until(client: &Client, what: &str, script: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value = client.execute(script, vec![]).await?;
        let truthy = match &value {
            Value::Null | Value::Bool(false) => false,
            Value::String(text) => !text.is_empty(),
            _ => true,
        };
        if truthy {
            return Ok(value);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn screenshot(client: &Client, path: &Path) {
    match client.screenshot().await {
        Ok(png) => {
            let _ = std::fs::write(path, png);
            eprintln!("screenshot: {}", path.display());
        }
        Err(err) => eprintln!("no screenshot ({err})"),
    }
}

fn state_is(id: i64, state: &str) -> String {
    format!(
        "return document.querySelector('.js-state[data-task-id=\"{id}\"] .word')?.textContent === '{state}'"
    )
}

async fn scenario(
    client: &Client,
    http: &str,
    root: &Path,
    token: &str,
    shots: Option<&Path>,
) -> anyhow::Result<()> {
    let gate = root.join("gate");
    let (repo, commit) = gated_repo(root, &gate);
    let body = json!({ "repo": repo.path.display().to_string(), "commit": commit }).to_string();
    let accepted = post(http, "/api/v1/tasks", body.as_bytes(), Some(token));
    anyhow::ensure!(accepted.status == 201, "submit: {}", accepted.text());
    let id = accepted.json()["id"].as_i64().unwrap();
    wait_state(http, id, "running");

    // The overview shows the running task; it turns passed later, live.
    client.goto(&format!("http://{http}/")).await?;
    until(client, "the overview's running task", &format!(
        "return document.querySelector('tr[data-task-id=\"{id}\"] .js-state .word')?.textContent === 'running'"
    ))
    .await?;
    until(
        client,
        "the live mark",
        "return document.getElementById('live-status').textContent.includes('live')",
    )
    .await?;
    if let Some(dir) = shots {
        screenshot(client, &dir.join("overview.png")).await;
    }

    // The task page while it runs.
    client.goto(&format!("http://{http}/tasks/{id}")).await?;
    until(client, "the running state", &state_is(id, "running")).await?;
    until(
        client,
        "the first line",
        "return document.getElementById('log').textContent.includes('first line')",
    )
    .await?;
    until(
        client,
        "the live mark",
        "return document.getElementById('live-status').textContent.includes('live')",
    )
    .await?;
    client.execute("window.batonNoReload = true; return true", vec![]).await?;
    std::fs::write(&gate, "open")?;
    until(
        client,
        "the line printed after the page opened",
        "return document.getElementById('log').textContent.includes('after the gate')",
    )
    .await?;
    until(client, "the passed state", &state_is(id, "passed")).await?;
    // The page re-renders its details and buttons once the task ended.
    until(client, "the abort button to be disabled", "return document.getElementById('abort').disabled")
        .await?;
    let still = client.execute("return window.batonNoReload === true", vec![]).await?;
    anyhow::ensure!(still == Value::Bool(true), "the page was reloaded");
    // Once the log ended, the page shows its colours.
    until(
        client,
        "the coloured log",
        "return document.querySelector('#log span[style]')?.textContent.includes('green')",
    )
    .await?;
    if let Some(dir) = shots {
        screenshot(client, &dir.join("task.png")).await;
    }

    // Rerun needs the token: the prompt is shown, the request refused until
    // it is given.
    until(client, "the token prompt", "return !document.getElementById('token-form').hidden").await?;
    client.find(Locator::Id("rerun")).await?.click().await?;
    until(
        client,
        "the ask for a token",
        "return document.getElementById('steer-result').textContent.includes('token')",
    )
    .await?;
    client.find(Locator::Id("token")).await?.send_keys(token).await?;
    client.find(Locator::Id("token-save")).await?.click().await?;
    client.find(Locator::Id("rerun")).await?.click().await?;
    let href = until(
        client,
        "the new task's link",
        "return document.getElementById('new-task')?.getAttribute('href')",
    )
    .await?;
    let new_id: i64 = href
        .as_str()
        .and_then(|href| href.strip_prefix("/tasks/"))
        .and_then(|id| id.parse().ok())
        .unwrap_or(0);
    anyhow::ensure!(new_id > id, "rerun link {href}");
    let task = get(http, &format!("/api/v1/tasks/{new_id}")).json();
    anyhow::ensure!(task["commit"] == commit.as_str() && task["trigger"] == "rerun", "{task}");
    client.find(Locator::Id("new-task")).await?.click().await?;
    until(client, "the new task's page", &format!("return location.pathname === '/tasks/{new_id}'")).await?;
    Ok(())
}

#[test]
fn the_pages_update_live_in_a_real_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let token_path = tmp.path().join("token");
    let token = "browser s3cret";
    std::fs::write(&token_path, token).unwrap();
    let token_arg = token_path.display().to_string();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--token-file", &token_arg]);
    let http = dispatcher.http.clone().expect("http address");
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &["--token-file", &token_arg]);
    let driver = start_driver(&tmp.path().join("chromedriver.log"));
    let shots = std::env::var_os("BATON_SCREENSHOTS").map(PathBuf::from);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = connect(&driver, &tmp.path().join("profile")).await;
        let result = scenario(&client, &http, tmp.path(), token, shots.as_deref()).await;
        if let Err(err) = &result {
            let dir = std::env::temp_dir().join("baton-web-screenshots");
            let _ = std::fs::create_dir_all(&dir);
            screenshot(&client, &dir.join(format!("failure-{}.png", std::process::id()))).await;
            eprintln!("browser scenario failed: {err:#}");
        }
        let _ = client.close().await;
        if let Err(err) = result {
            panic!("{err:#}\nchromedriver log: {}", tmp.path().join("chromedriver.log").display());
        }
    });
}
