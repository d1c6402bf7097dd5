//! The link to the dispatcher: one persistent connection that submits the
//! ledger's queued commits in order and moves cursors on the answers.
//!
//! Submissions go out in batches of up to [`MAX_IN_FLIGHT`] (the dispatcher
//! answers each `Submit` in order), and the state file is saved once per batch,
//! so a push of many commits costs a few round trips and fsyncs, not one each.
//! A commit leaves the queue only with its answer: when the connection breaks
//! or an answer does not come, the link reconnects with back-off and sends
//! the same commits again (the dispatcher recognises duplicates). It never
//! gives up; only the shutdown token ends it, after the batch in flight is
//! answered or [`SHUTDOWN_GRACE`] has passed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use protocol::message::{DispatcherToObserver, ObserverToDispatcher};
use protocol::peer::{Backoff, Credentials};
use protocol::{Name, Receiver, Role, Sender};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::queue::{Ledger, Pending};

/// Submissions sent before waiting for their answers: enough to make a big
/// push a handful of round trips, small enough that a lost connection resends
/// little.
pub const MAX_IN_FLIGHT: usize = 64;

/// How long the dispatcher may take to answer one submission (it commits to
/// its database first) or to take our frames, before the link reconnects.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long, once stopping, the link still waits for answers in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A connection that lasted this long was healthy: after it breaks, the
/// back-off starts again from its shortest delay.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// While the dispatcher stays unreachable, how often that is logged at warn
/// (every attempt is logged at debug).
const UNREACHABLE_WARN_EVERY: Duration = Duration::from_secs(60);

/// Where and as whom the link connects.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The dispatcher's `host:port`.
    pub dispatcher: String,
    /// This observer's name.
    pub name: Name,
    /// The shared secret and TLS settings.
    pub credentials: Credentials,
}

/// An open connection, split so the idle wait can watch for its closing.
struct Link {
    receiver: Receiver<DispatcherToObserver>,
    sender: Sender<ObserverToDispatcher>,
}

/// Runs the link until `shutdown`.
pub async fn run(ledger: Arc<Ledger>, config: LinkConfig, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    let mut n_failed_dials: u64 = 0;
    let mut last_warned: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let dialled = tokio::select! {
            res = protocol::peer::dial_with(&config.dispatcher, Role::Observer, &config.name, &config.credentials, protocol::MAX_FRAME) => res,
            () = shutdown.cancelled() => break,
        };
        let delay = match dialled {
            Ok((connection, welcome)) => {
                tracing::info!(dispatcher = %config.dispatcher, version = %welcome.dispatcher_version, "connected to the dispatcher");
                n_failed_dials = 0;
                last_warned = None;
                let (receiver, sender) = connection.split();
                let connected_at = Instant::now();
                let Err(err) = serve(Link { receiver, sender }, &ledger, &shutdown).await else { break };
                // Back off from scratch only after a connection that lasted,
                // so a dispatcher that accepts and drops at once is not hammered.
                if connected_at.elapsed() >= STABLE_CONNECTION {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(dispatcher = %config.dispatcher, error = format!("{err:#}"), retry_in = ?delay, "connection lost, reconnecting");
                delay
            }
            Err(err) => {
                let delay = backoff.next_delay();
                n_failed_dials += 1;
                let n_queued = ledger.len();
                if last_warned.is_none_or(|at| at.elapsed() >= UNREACHABLE_WARN_EVERY) {
                    last_warned = Some(Instant::now());
                    tracing::warn!(dispatcher = %config.dispatcher, error = %err, n_attempts = n_failed_dials, n_queued, "dispatcher unreachable, retrying");
                } else {
                    tracing::debug!(dispatcher = %config.dispatcher, error = %err, retry_in = ?delay, n_queued, "dispatcher still unreachable");
                }
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

/// Submits the queue over one connection until it fails (the error says
/// why) or `shutdown` fires (`Ok`).
async fn serve(mut link: Link, ledger: &Ledger, shutdown: &CancellationToken) -> anyhow::Result<()> {
    while !shutdown.is_cancelled() {
        let batch = ledger.front(MAX_IN_FLIGHT);
        if batch.is_empty() {
            // Watching the connection while idle notices a dispatcher that
            // went away before the next commit needs it.
            tokio::select! {
                () = ledger.queued() => continue,
                res = link.receiver.recv() => match res {
                    Ok(Some(DispatcherToObserver::Ping(ping))) => {
                        answer_ping(&mut link, ping.seq).await?;
                        continue;
                    }
                    Ok(None) => return Err(anyhow!("the dispatcher closed the connection")),
                    Ok(Some(message)) => return Err(anyhow!("unexpected message {message:?}")),
                    Err(err) => return Err(err.into()),
                },
                () = shutdown.cancelled() => break,
            }
        }
        let res = submit(&mut link, ledger, &batch, shutdown).await;
        if let Err(err) = ledger.save().await {
            tracing::error!(error = format!("{err:#}"), "saving the state file failed");
        }
        res?;
    }
    Ok(())
}

/// Sends one batch and applies the answers as they come.
async fn submit(
    link: &mut Link,
    ledger: &Ledger,
    batch: &[Pending],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let send = async {
        for pending in batch {
            let message = match pending.fire {
                Some(_) => ObserverToDispatcher::SubmitScheduled(pending.submit.clone()),
                None => ObserverToDispatcher::Submit(pending.submit.clone()),
            };
            link.sender.feed(&message).await?;
        }
        link.sender.flush().await
    };
    timeout(ANSWER_TIMEOUT, send)
        .await
        .map_err(|_| anyhow!("the dispatcher takes no frames"))?
        .context("sending")?;

    let mut stopping = shutdown.is_cancelled();
    let mut deadline = Instant::now() + if stopping { SHUTDOWN_GRACE } else { ANSWER_TIMEOUT };
    for pending in batch {
        // Waiting on the shutdown token only shortens the deadline: recv is
        // cancel-safe, and the answers in flight are still worth having.
        let answer = loop {
            tokio::select! {
                res = timeout_at(deadline, link.receiver.recv()) => match res {
                    Ok(Ok(Some(DispatcherToObserver::Ping(ping)))) => answer_ping(link, ping.seq).await?,
                    res => break res,
                },
                () = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    deadline = deadline.min(Instant::now() + SHUTDOWN_GRACE);
                }
            }
        };
        let answer = answer.map_err(|_| anyhow!("no answer in time"))?.context("receiving")?;
        let submit = &pending.submit;
        match answer {
            None => return Err(anyhow!("the dispatcher closed the connection")),
            Some(DispatcherToObserver::Accepted(accepted)) => {
                ledger.answered(pending.seq);
                let schedule = pending.fire.as_ref().map(|fire| fire.key.as_str());
                tracing::info!(repo = %submit.repo, branch = %submit.branch, commit = %submit.commit, task_id = %accepted.task_id, duplicate = accepted.duplicate, schedule, "submission accepted");
            }
            Some(DispatcherToObserver::Refused(refused)) if refused.reason.starts_with("data dir full") => {
                // Acceptable later: reconnect with back-off and submit again.
                return Err(anyhow!("the dispatcher cannot take submissions now: {}", refused.reason));
            }
            Some(DispatcherToObserver::Refused(refused)) => {
                // Refused means never acceptable as it is: move on, or the
                // commit would be resubmitted forever.
                ledger.answered(pending.seq);
                tracing::error!(repo = %submit.repo, branch = %submit.branch, commit = %submit.commit, reason = %refused.reason, "submission refused");
            }
            // Pings are answered while waiting, above.
            Some(DispatcherToObserver::Ping(_)) => return Err(anyhow!("unexpected ping")),
        }
        if !stopping {
            deadline = Instant::now() + ANSWER_TIMEOUT;
        }
    }
    Ok(())
}

/// Answers a heartbeat; the dispatcher closes observers that do not.
async fn answer_ping(link: &mut Link, seq: u64) -> anyhow::Result<()> {
    let pong = ObserverToDispatcher::Pong(protocol::message::Pong { seq });
    timeout(ANSWER_TIMEOUT, link.sender.send(&pong))
        .await
        .map_err(|_| anyhow!("the dispatcher takes no frames"))?
        .context("answering a ping")
}

#[cfg(test)]
mod tests {
    use protocol::message::{Accepted, Refused, Submit};
    use protocol::{Branch, CommitId, RepoUrl, TaskId};
    use tokio::net::TcpListener;

    use super::*;
    use crate::cursor::Cursors;
    use crate::git::{BranchScan, NewCommit, ScanOutput};

    fn commit(digit: char) -> CommitId {
        CommitId::new(digit.to_string().repeat(40)).unwrap()
    }

    type FakeConnection = protocol::Connection<ObserverToDispatcher, DispatcherToObserver>;

    /// The dispatcher's side of one connection, handshake done.
    async fn accept(listener: &TcpListener) -> FakeConnection {
        let (stream, _) = listener.accept().await.unwrap();
        let (connection, admitted) =
            protocol::handshake::accept(stream, None, None, protocol::MAX_FRAME).await.unwrap();
        assert_eq!(admitted.role, Role::Observer);
        connection
    }

    async fn next_submit(connection: &mut FakeConnection) -> Submit {
        match connection.recv().await.unwrap().expect("a submission") {
            ObserverToDispatcher::Submit(submit) => submit,
            other => panic!("expected a submission, got {other:?}"),
        }
    }

    /// Pings and expects the pong, whatever the link is doing.
    async fn ping(connection: &mut FakeConnection, seq: u64) {
        connection.send(&DispatcherToObserver::Ping(protocol::message::Ping { seq })).await.unwrap();
        let answer = connection.recv().await.unwrap().expect("a pong");
        assert_eq!(answer, ObserverToDispatcher::Pong(protocol::message::Pong { seq }));
    }

    fn accepted(task_id: i64) -> DispatcherToObserver {
        DispatcherToObserver::Accepted(Accepted { task_id: TaskId::new(task_id).unwrap(), duplicate: false })
    }

    #[tokio::test]
    async fn only_answers_move_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let state_file = dir.path().join("state.json");
        let ledger = Arc::new(Ledger::new(Cursors::default(), state_file.clone()));
        let repo = RepoUrl::new("/srv/app.git").unwrap();
        let main = Branch::new("main").unwrap();
        let new = ['1', '2', '3']
            .into_iter()
            .map(|digit| NewCommit { commit: commit(digit), parents: Vec::new(), labels: Vec::new() })
            .collect();
        let scanned =
            BranchScan { branch: main.clone(), tip: commit('3'), new, skipped: 0, lost_cursor: false };
        ledger.record(&repo, ScanOutput { branches: vec![scanned], ..Default::default() });

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = LinkConfig {
            dispatcher: listener.local_addr().unwrap().to_string(),
            name: Name::new("observer-test").unwrap(),
            credentials: Credentials::default(),
        };
        let shutdown = CancellationToken::new();
        let link = tokio::spawn(run(Arc::clone(&ledger), config, shutdown.clone()));
        let cursor = |ledger: &Ledger| ledger.cursors().get(&repo, &main).map(|cursor| cursor.commit.clone());

        // First connection: the first commit is accepted, the second gets no
        // answer before the connection drops.
        let mut connection = accept(&listener).await;
        assert_eq!(next_submit(&mut connection).await.commit, commit('1'));
        connection.send(&accepted(1)).await.unwrap();
        assert_eq!(next_submit(&mut connection).await.commit, commit('2'));
        drop(connection);

        // Second connection: the unanswered commit comes again, and nothing
        // moved past the accepted one meanwhile, in memory or on disk.
        let mut connection = accept(&listener).await;
        assert_eq!(next_submit(&mut connection).await.commit, commit('2'));
        assert_eq!(cursor(&ledger), Some(commit('1')));
        assert_eq!(Cursors::load(&state_file).unwrap().get(&repo, &main).unwrap().commit, commit('1'));
        connection.send(&accepted(2)).await.unwrap();
        assert_eq!(next_submit(&mut connection).await.commit, commit('3'));

        // A full data dir refuses for now only (issue 12): the link
        // reconnects and submits the commit again, the cursor stays.
        let full = Refused { reason: "data dir full: 0 bytes free; try again later".into() };
        connection.send(&DispatcherToObserver::Refused(full)).await.unwrap();
        let mut connection = accept(&listener).await;
        assert_eq!(next_submit(&mut connection).await.commit, commit('3'));
        assert_eq!(cursor(&ledger), Some(commit('2')));
        // A heartbeat between the last submission and its answer is answered.
        ping(&mut connection, 5).await;
        let refused = DispatcherToObserver::Refused(Refused { reason: "not today".into() });
        connection.send(&refused).await.unwrap();

        // A refused commit is skipped for good: the cursor moves past it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while cursor(&ledger) != Some(commit('3')) {
            assert!(Instant::now() < deadline, "cursor stuck at {:?}", cursor(&ledger));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // An idle link answers heartbeats too.
        ping(&mut connection, 6).await;
        shutdown.cancel();
        link.await.unwrap();
        assert_eq!(ledger.len(), 0);
        assert_eq!(Cursors::load(&state_file).unwrap().get(&repo, &main).unwrap().commit, commit('3'));
    }
}
