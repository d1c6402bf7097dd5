//! `baton-observer` as a library: watches git repositories and submits their
//! new commits to a Baton dispatcher ("main as a library", so tests and
//! benchmarks can start it in-process).
//!
//! The pieces: [`config`] resolves the settings; one scan loop per repository
//! (`scan`) reads branches with gix (`git`), woken by a poll interval or by
//! filesystem notifications (`watch`), and queues what is new in the ledger
//! (`queue`); the link (`link`) submits the queue over one persistent
//! connection and moves the cursors (`cursor`, saved in the state file) only
//! on the dispatcher's answers.
//!
//! Two more things wake a scan loop: a forge's push through the webhook
//! receiver (`webhook`, with `--webhook`), and a schedule (`schedule`), whose
//! firing also submits a branch's tip as a new task.
//!
//! The observer never exits because a repository or the dispatcher misbehaves:
//! those are logged and retried. Only bad settings, an unreadable state file
//! or token file at start-up, and the shutdown token end [`run`].

pub mod cli;
pub mod config;
mod cursor;
mod git;
mod link;
mod queue;
mod scan;
mod schedule;
mod watch;
pub mod webhook;

#[cfg(test)]
mod test_repo;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::peer::Credentials;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::Config;

/// How long the tasks may take to stop once the token fires: the link's
/// grace for answers in flight, plus time for a scan thread to notice.
const STOP_TIMEOUT: Duration = link::SHUTDOWN_GRACE.saturating_add(Duration::from_secs(2));

/// The webhook receiver, bound and with its secret read, before [`run`]
/// serves it.
#[derive(Debug)]
pub struct Webhook {
    listener: TcpListener,
    secret: webhook::Secret,
}

impl Webhook {
    /// The bound address (the port, when `--webhook` asked for port 0).
    ///
    /// # Errors
    /// As `TcpListener::local_addr`.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// Reads the webhook secret and binds the receiver's address, when
/// `--webhook` is given, so `main` can refuse to start (and print the bound
/// address) before [`run`] serves it.
///
/// # Errors
/// An unreadable, empty or oversized secret file; an address that cannot be
/// bound (taken, or not this host's).
pub async fn bind_webhook(config: &Config) -> anyhow::Result<Option<Webhook>> {
    let Some(webhook) = &config.webhook else { return Ok(None) };
    let secret = webhook::Secret::load(&webhook.secret_file)?;
    let listener = TcpListener::bind(webhook.addr)
        .await
        .with_context(|| format!("binding the webhook address {}", webhook.addr))?;
    Ok(Some(Webhook { listener, secret }))
}

/// Observes the configured repositories until `shutdown` is cancelled, then
/// saves the cursors and returns. `webhook` is what [`bind_webhook`]
/// returned, served when given.
///
/// # Errors
/// Only at start-up: an unreadable token or CA file, a state
/// file that cannot be read (corrupt) or whose folder cannot be created.
/// Afterwards, failing repositories and an unreachable dispatcher are logged
/// and retried; a final save that fails is returned.
pub async fn run(
    config: Config,
    webhook: Option<Webhook>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let credentials = Credentials::load(
        config.token_file.as_deref(),
        config.tls_ca.as_deref(),
        config.tls_server_name.as_deref(),
    )
    .context("loading the dispatcher credentials")?;
    if let Some(dir) = config.state_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating state folder {}", dir.display()))?;
    }
    // Two observers on one state file would each advance the cursors the
    // other relies on: the second one refuses to start. The lock lives as
    // long as this function, and the kernel drops it with the process.
    let _lock = cursor::lock(&config.state_file)?;
    let cursors = cursor::Cursors::load(&config.state_file)?;
    tracing::info!(
        dispatcher = %config.dispatcher,
        trigger = %config.trigger,
        state_file = %config.state_file.display(),
        "baton-observer starting"
    );
    let ledger = Arc::new(queue::Ledger::new(cursors, config.state_file.clone()));

    let tracker = TaskTracker::new();
    let link_config =
        link::LinkConfig { dispatcher: config.dispatcher.clone(), name: config.name.clone(), credentials };
    tracker.spawn(link::run(Arc::clone(&ledger), link_config, shutdown.child_token()));
    let settings =
        scan::ScanSettings { trigger: config.trigger, initial: config.initial, max_new: config.max_new };
    let mut targets = Vec::new();
    for repo in config.repos {
        tracing::info!(repo = %repo.id, mode = repo.mode.as_str(), "observing");
        let wake = Arc::new(scan::Wake::default());
        for schedule in config.schedules.iter().filter(|schedule| schedule.repo == repo.id) {
            tracing::info!(schedule = %schedule.key, branch = %schedule.branch, "scheduled");
            let ledger = Arc::clone(&ledger);
            tracker.spawn(schedule::run(schedule.clone(), ledger, Arc::clone(&wake), shutdown.child_token()));
        }
        let target = webhook::Target {
            id: repo.id.to_string(),
            webhook_name: repo.webhook_name.clone(),
            wake: Arc::clone(&wake),
        };
        targets.push(target);
        tracker.spawn(scan::observe(repo, settings, Arc::clone(&ledger), wake, shutdown.child_token()));
    }
    if let Some(Webhook { listener, secret }) = webhook {
        let addr = listener.local_addr().context("reading the webhook address")?;
        tracing::info!(%addr, "receiving webhooks");
        tracker.spawn(webhook::serve(listener, secret, targets, shutdown.child_token()));
    }
    tracker.close();

    shutdown.cancelled().await;
    if tokio::time::timeout(STOP_TIMEOUT, tracker.wait()).await.is_err() {
        tracing::warn!("some tasks did not stop in time");
    }
    let n_queued = ledger.len();
    ledger.save().await.context("saving the state file")?;
    tracing::info!(n_queued, "stopped; queued commits are found again at the next start");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Location, Mode, RepoConfig, Trigger};
    use crate::test_repo::TestRepo;

    fn config(repo: &TestRepo, state_dir: &std::path::Path, dispatcher: String) -> Config {
        let id = protocol::RepoUrl::new(repo.canonical().to_str().unwrap()).unwrap();
        Config {
            dispatcher,
            trigger: Trigger::Watch { safety_poll: Duration::from_secs(60) },
            repos: vec![RepoConfig {
                location: Location::Local(repo.canonical()),
                id,
                branches: Vec::new(),
                mode: Mode::Every,
                webhook_name: None,
            }],
            state_file: state_dir.join("state.json"),
            initial: 1,
            max_new: 1000,
            token_file: None,
            tls_ca: None,
            tls_server_name: None,
            name: protocol::Name::new("observer-test").unwrap(),
            log_json: false,
            webhook: None,
            schedules: Vec::new(),
        }
    }

    /// A loopback address where nothing listens.
    async fn dead_address() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn an_unreachable_dispatcher_is_no_reason_to_exit_or_move_cursors() {
        let repo = TestRepo::new();
        repo.commit("c1");
        let state_dir = tempfile::tempdir().unwrap();
        let config = config(&repo, state_dir.path(), dead_address().await);
        let shutdown = CancellationToken::new();
        let observer = tokio::spawn(run(config, None, shutdown.clone()));
        repo.commit("c2");
        assert!(!observer.is_finished());
        shutdown.cancel();
        let res = tokio::time::timeout(STOP_TIMEOUT, observer).await.expect("run stops in time").unwrap();
        res.unwrap();
        let cursors = cursor::Cursors::load(&state_dir.path().join("state.json")).unwrap();
        assert_eq!(cursors, cursor::Cursors::default(), "nothing was acknowledged");
    }

    #[tokio::test]
    async fn a_corrupt_state_file_stops_the_start() {
        let repo = TestRepo::new();
        let state_dir = tempfile::tempdir().unwrap();
        std::fs::write(state_dir.path().join("state.json"), "{ half a file").unwrap();
        let config = config(&repo, state_dir.path(), dead_address().await);
        let err = run(config, None, CancellationToken::new()).await.unwrap_err();
        assert!(format!("{err:#}").contains("is corrupt"), "{err:#}");
    }
}
