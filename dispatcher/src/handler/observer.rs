//! Observer connections: submissions in, one answer per submission out, in
//! order. Submissions are pipelined: the reader queues each pending answer
//! and a writer sends them as the scheduler commits.
//!
//! Liveness: the writer pings an observer it has sent nothing to for a
//! heartbeat interval, and the observer answers with a pong; an observer
//! that sends no frame at all for the heartbeat window (`interval × misses`)
//! is closed, so idle sockets cannot pile up.

use std::time::Duration;

use protocol::message::{DispatcherToObserver, ObserverToDispatcher, Ping, Refused};
use protocol::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::scheduler::Event;
use crate::server::Shared;
use crate::store::Trigger;

/// Submissions one observer may have in flight.
const PIPELINE: usize = 256;

type Answer = oneshot::Receiver<Result<protocol::message::Accepted, String>>;

/// Serves one observer until it disconnects or the dispatcher stops.
pub async fn serve(
    conn: Connection<ObserverToDispatcher, DispatcherToObserver>,
    shared: &Shared,
    token: CancellationToken,
) {
    let (mut receiver, mut sender) = conn.split();
    let (answers, mut queued) = mpsc::channel::<Answer>(PIPELINE);
    let mut limiter = super::limit::Limiter::new(super::limit::OBSERVER);
    let interval = shared.heartbeat.interval;
    let window = shared.heartbeat.window();
    let reader = async move {
        loop {
            let message = tokio::select! {
                _ = token.cancelled() => break,
                message = tokio::time::timeout(window, receiver.recv()) => match message {
                    Ok(message) => message,
                    Err(_) => {
                        tracing::info!(silent_for = ?window, "observer answered no ping; closing");
                        break;
                    }
                },
            };
            let (submit, trigger) = match message {
                Ok(Some(ObserverToDispatcher::Pong(_))) => continue,
                Ok(Some(_)) if !limiter.allow() => {
                    tracing::warn!("observer is flooding; closing");
                    break;
                }
                Ok(Some(ObserverToDispatcher::Submit(submit))) => (submit, Trigger::Observer),
                Ok(Some(ObserverToDispatcher::SubmitScheduled(submit))) => (submit, Trigger::Schedule),
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "bad frame from observer; closing");
                    break;
                }
            };
            let (reply, answer) = oneshot::channel();
            let task =
                super::new_task(submit.repo, submit.branch, submit.commit, submit.labels, trigger, None);
            if shared.scheduler.send(Event::Submit { task, reply }).await.is_err()
                || answers.send(answer).await.is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        let mut current: Option<Answer> = None;
        let mut last_sent = Instant::now();
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut seq: u64 = 0;
        loop {
            let message = tokio::select! {
                next = queued.recv(), if current.is_none() => match next {
                    Some(answer) => {
                        current = Some(answer);
                        continue;
                    }
                    None => break,
                },
                result = wait_answer(&mut current), if current.is_some() => {
                    current = None;
                    // A dropped reply means the scheduler stopped before
                    // committing: say nothing, so the observer resubmits
                    // after reconnecting.
                    let Ok(result) = result else { break };
                    match result {
                        Ok(accepted) => DispatcherToObserver::Accepted(accepted),
                        Err(reason) => DispatcherToObserver::Refused(Refused { reason }),
                    }
                }
                _ = ticker.tick() => {
                    if last_sent.elapsed() < interval {
                        continue;
                    }
                    seq += 1;
                    DispatcherToObserver::Ping(Ping { seq })
                }
            };
            if let Err(err) = sender.send(&message).await {
                tracing::debug!(error = %err, "observer went away");
                break;
            }
            last_sent = Instant::now();
        }
    };
    tokio::join!(reader, writer);
}

/// The next answer, once the scheduler gives it.
async fn wait_answer(
    current: &mut Option<Answer>,
) -> Result<Result<protocol::message::Accepted, String>, oneshot::error::RecvError> {
    match current {
        Some(answer) => answer.await,
        None => std::future::pending().await,
    }
}

/// The dispatcher's heartbeat, which observers are kept alive by too.
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat {
    /// How often an idle peer is pinged.
    pub interval: Duration,
    /// Pings a peer may miss before it is judged gone.
    pub misses: u32,
}

impl Heartbeat {
    /// How long a peer may stay silent.
    pub fn window(&self) -> Duration {
        self.interval * self.misses.max(1)
    }
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat { interval: Duration::from_secs(1), misses: 3 }
    }
}
