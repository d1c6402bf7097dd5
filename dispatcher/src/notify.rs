//! The notifier worker: delivers the outbox's events to the configured
//! notifiers, a command (the event as JSON on stdin, run as an argument
//! vector, never through a shell) or a URL (HTTP POST of the JSON).
//!
//! It reads the outbox through a read-only connection and reports each
//! delivery to the scheduler, which deletes the entry or schedules a retry
//! (capped exponential back-off) in its own transaction. A notifier that
//! fails keeps its events, in order, and never delays scheduling.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use protocol::view::now_ms;
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

/// Runs until `shutdown`.
pub async fn run(
    notifiers: Arc<Vec<Notifier>>,
    readers: Arc<Readers>,
    scheduler: Handle,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    if notifiers.is_empty() {
        return;
    }
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(DELIVERY_TIMEOUT)).build().into();
    loop {
        let due = match readers.query(|reader| reader.due_notifications(now_ms())).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "cannot read the outbox");
                Vec::new()
            }
        };
        for outgoing in due {
            let delivery = match notifiers.get(outgoing.notifier) {
                Some(notifier) => deliver(&agent, notifier, &outgoing).await,
                // The configuration changed since the event was queued.
                None => Ok(()),
            };
            match &delivery {
                Ok(()) => {
                    tracing::debug!(id = outgoing.id, notifier = outgoing.notifier, "notification delivered")
                }
                Err(error) => {
                    tracing::warn!(id = outgoing.id, notifier = outgoing.notifier, attempts = outgoing.attempts + 1,
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

async fn deliver(agent: &ureq::Agent, notifier: &Notifier, outgoing: &Outgoing) -> Result<(), String> {
    match &notifier.target {
        NotifierTarget::Command(argv) => run_command(argv, &outgoing.event).await,
        NotifierTarget::Url(url) => {
            let agent = agent.clone();
            let url = url.clone();
            let body = outgoing.event.clone();
            tokio::task::spawn_blocking(move || {
                agent
                    .post(&url)
                    .header("content-type", "application/json")
                    .send(body.as_bytes())
                    .map(|_| ())
                    .map_err(|err| format!("POST {url}: {err}"))
            })
            .await
            .map_err(|err| err.to_string())?
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
