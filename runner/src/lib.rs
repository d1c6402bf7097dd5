//! `baton-runner` as a library: [`run`] is the whole runner, so tests and
//! benchmarks can start it in-process.
//!
//! Code map: `link` keeps the connection to the dispatcher; `attempts` holds
//! every attempt and the task that owns it; `task` takes one attempt from
//! assignment to result, with `git` for the checkout, `command` for the test
//! command, `exec` for the test process and `summary` for the test counts;
//! `supervise` is the hidden `--supervise` mode every test runs under;
//! `spool` is the on-disk state that survives restarts; `cli` and `config`
//! turn flags into a [`Config`].
//!
//! **Invariant:** nothing received from the network reaches a command line;
//! the attempt's identity reaches the test only as environment variables.
//! **Invariant:** an attempt's files are deleted only by the task that owns
//! the attempt, after the dispatcher acknowledged or forgot it.

mod attempts;
mod bounded;
pub mod cli;
mod command;
pub mod config;
mod exec;
mod git;
mod link;
pub mod manager;
mod outcomes;
mod spool;
mod summary;
pub mod supervise;
mod task;
#[cfg(test)]
mod tests;

use std::time::Duration;

use anyhow::Context;
use protocol::peer::Credentials;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use crate::config::Config;

use crate::attempts::Shared;
use crate::git::GitCache;
use crate::spool::Spool;

/// How long a stopping runner waits for the dispatcher to acknowledge the
/// results of its last tests; what is not acknowledged by then stays in the
/// spool and is delivered after the next start.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// How long abandoned tests may take to die after SIGKILL.
const ABANDON_WAIT: Duration = Duration::from_secs(10);

/// Runs the runner until `shutdown` is cancelled, then drains: no new work,
/// running tests finish (or, past `drain_timeout`, are killed and dropped),
/// their results are delivered, and it returns.
///
/// Must run on a multi-threaded tokio runtime that outlives every test it
/// starts (tests die with the thread that started them).
///
/// # Errors
/// Only start-up failures: the work directory cannot be prepared, the spool
/// cannot be recovered, or the token file cannot be read. A missing
/// dispatcher is never an error; the runner keeps trying.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let credentials = Credentials::load(
        config.token_file.as_deref(),
        config.tls_ca.as_deref(),
        config.tls_server_name.as_deref(),
    )?;
    let spool = Spool::open(&config.work_dir)?;
    let cache_dir = config.work_dir.join("cache");
    std::fs::create_dir_all(&cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let recovered = spool.recover().context("recovering the spool")?;
    tracing::info!(
        name = %config.name,
        work_dir = %config.work_dir.display(),
        slots = config.slots,
        held = recovered.len(),
        "runner starting"
    );
    let link_span = tracing::info_span!("link", dispatcher = %config.dispatcher);
    let tracker = TaskTracker::new();
    let shared = Shared::new(config, spool, GitCache::new(cache_dir), tracker.clone());
    for recovered in recovered {
        shared.adopt(recovered);
    }
    let link_stop = CancellationToken::new();
    let link = tracker.spawn(link::run(shared.clone(), credentials, link_stop.clone()).instrument(link_span));

    shutdown.cancelled().await;
    drain(&shared).await;
    link_stop.cancel();
    if let Err(err) = link.await {
        tracing::error!(error = %err, "connection task failed");
    }
    // Attempts still waiting for an acknowledgement are dropped with the
    // runtime; their spool entries stay for the next start.
    tracker.close();
    tracing::info!("runner stopped");
    Ok(())
}

/// Stops taking work and waits for running tests, within the drain timeout.
async fn drain(shared: &Shared) {
    tracing::info!("stopping: taking no new work, waiting for running tests");
    shared.start_draining();
    let finished = match shared.config.drain_timeout {
        Some(limit) => tokio::time::timeout(limit, shared.wait_idle()).await.is_ok(),
        None => {
            shared.wait_idle().await;
            true
        }
    };
    if !finished {
        tracing::warn!("drain timeout reached, abandoning running tests without a result");
        shared.abandon_running();
        if tokio::time::timeout(ABANDON_WAIT, shared.wait_idle()).await.is_err() {
            tracing::error!("abandoned tests did not stop in time");
        }
        return;
    }
    if tokio::time::timeout(ACK_WAIT, shared.wait_delivered()).await.is_err() {
        tracing::info!("results not acknowledged yet are kept for the next start");
    }
}
