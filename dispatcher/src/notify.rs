//! The notifier worker: delivers the outbox's events to the configured
//! notifiers, a command (the event as JSON on stdin, run as an argument
//! vector, never through a shell), a URL (HTTP POST of the JSON) or a
//! forge's commit status API (`status`).
//!
//! It reads the outbox through a read-only connection and reports each
//! delivery to the scheduler, which deletes the entry or schedules a retry
//! (capped exponential back-off) in its own transaction. A notifier that
//! fails keeps its events, in order, and never delays scheduling. Order per
//! notifier is what keeps commit statuses right: a task's `pending` is
//! queued before its end, so it can never land after it.

pub mod status;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use protocol::view::now_ms;
use protocol::Name;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Notifier, NotifierTarget};
use crate::readers::Readers;
use crate::scheduler::{Event, Handle};
use crate::store::Outgoing;

/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Checked at least this often, for retries that came due.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Longest wait between two tries of one event.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Runs until `shutdown`. `public_url` is the web report's base URL, for
/// the links of commit statuses.
pub async fn run(
    notifiers: Arc<Vec<Notifier>>,
    public_url: Option<String>,
    readers: Arc<Readers>,
    scheduler: Handle,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    if notifiers.is_empty() {
        return;
    }
    // Statuses judge the HTTP status themselves (`status::answer`).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(DELIVERY_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    loop {
        let due = match readers.query(|reader| reader.due_notifications(now_ms())).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "cannot read the outbox");
                Vec::new()
            }
        };
        for outgoing in due {
            let delivery = match notifiers.iter().find(|notifier| notifier.name.as_str() == outgoing.notifier)
            {
                Some(notifier) => deliver(&agent, notifier, &outgoing, public_url.as_deref()).await,
                // The configuration changed since the event was queued.
                None => Ok(()),
            };
            match &delivery {
                Ok(()) => {
                    tracing::debug!(id = outgoing.id, notifier = %outgoing.notifier, "notification delivered")
                }
                Err(error) => {
                    tracing::warn!(id = outgoing.id, notifier = %outgoing.notifier, attempts = outgoing.attempts + 1,
                    error = %error, "notification failed; will retry")
                }
            }
            let retry = Duration::from_millis(250 << outgoing.attempts.min(10)).min(MAX_RETRY);
            let retry_at_ms = now_ms() + retry.as_millis() as i64;
            let id = outgoing.id;
            if scheduler.ask(|reply| Event::Notified { id, delivery, retry_at_ms, reply }).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(IDLE_CHECK) => {}
        }
    }
}

async fn deliver(
    agent: &ureq::Agent,
    notifier: &Notifier,
    outgoing: &Outgoing,
    public_url: Option<&str>,
) -> Result<(), String> {
    match &notifier.target {
        NotifierTarget::Status(target) => {
            let event: serde_json::Value = serde_json::from_str(&outgoing.event).unwrap_or_default();
            let request = match status::request(target, &event, public_url) {
                Ok(request) => request,
                Err(why) => {
                    // It can never be delivered; keeping it would block the
                    // notifier's later statuses.
                    tracing::warn!(id = outgoing.id, notifier = %notifier.name, why, "dropping a status that cannot be posted");
                    return Ok(());
                }
            };
            let agent = agent.clone();
            let notifier = notifier.name.clone();
            let id = outgoing.id;
            tokio::task::spawn_blocking(move || post_status(&agent, &notifier, id, request))
                .await
                .map_err(|err| err.to_string())?
        }
        NotifierTarget::Command(argv) => run_command(argv, &outgoing.event).await,
        NotifierTarget::Url(url) => {
            let agent = agent.clone();
            let url = url.clone();
            let body = outgoing.event.clone();
            tokio::task::spawn_blocking(move || {
                let response = agent
                    .post(&url)
                    .header("content-type", "application/json")
                    .send(body.as_bytes())
                    .map_err(|err| format!("POST {url}: {err}"))?;
                let code = response.status();
                if code.is_success() {
                    Ok(())
                } else {
                    Err(format!("POST {url}: HTTP {}", code.as_u16()))
                }
            })
            .await
            .map_err(|err| err.to_string())?
        }
    }
}

/// Posts one commit status; `Ok` when the forge took it or refused it for
/// good (logged), `Err` to retry.
fn post_status(
    agent: &ureq::Agent,
    notifier: &Name,
    id: i64,
    request: status::Request,
) -> Result<(), String> {
    let mut post = agent
        .post(&request.url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("baton/", env!("CARGO_PKG_VERSION")));
    for (name, value) in &request.headers {
        post = post.header(*name, value);
    }
    let response = post
        .send(request.body.to_string().as_bytes())
        .map_err(|err| format!("POST {}: {err}", request.url))?;
    let code = response.status().as_u16();
    match status::answer(code) {
        status::Answer::Delivered => Ok(()),
        status::Answer::Retry => Err(format!("POST {}: HTTP {code}", request.url)),
        status::Answer::Refused => {
            tracing::warn!(id, notifier = %notifier, url = %request.url, status = code,
                "the forge refused a commit status; dropped (check the token and forge_repo)");
            Ok(())
        }
    }
}

async fn run_command(argv: &[String], event: &str) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty notifier command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("starting {program}: {err}"))?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(event.as_bytes()).await.map_err(|err| format!("writing to {program}: {err}"))?;
            stdin.write_all(b"\n").await.map_err(|err| format!("writing to {program}: {err}"))?;
        }
        let status = child.wait().await.map_err(|err| format!("waiting for {program}: {err}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{program} exited with {status}"))
        }
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, run).await.map_err(|_| format!("{program} timed out"))?
}
