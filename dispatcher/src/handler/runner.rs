//! Runner connections: the first message must be `Register`; then every
//! message goes to the scheduler, and a writer task sends what the scheduler
//! queues for this runner, and a ping every heartbeat interval. The
//! connection closing is how a dead runner is
//! noticed at once; every frame read is noted in the connection's
//! [`LastHeard`] before it joins the scheduler's queue, so a runner busy
//! sending output is never taken for a silent one.

use std::sync::Arc;

use protocol::message::{DispatcherToRunner, Ping, RunnerToDispatcher};
use protocol::{Connection, Name};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::scheduler::{Event, LastHeard, RUNNER_OUTBOX};
use crate::server::Shared;

/// Labels a runner may advertise.
const MAX_LABELS: usize = 64;
/// Slots a runner may advertise.
const MAX_SLOTS: u32 = 256;

/// Serves one runner until it disconnects, is dropped by the scheduler, or
/// the dispatcher stops.
pub async fn serve(
    conn: Connection<RunnerToDispatcher, DispatcherToRunner>,
    shared: &Shared,
    name: Name,
    token: CancellationToken,
) {
    let address = conn.peer().to_string();
    let (mut receiver, mut sender) = conn.split();
    let first = tokio::time::timeout(protocol::HANDSHAKE_TIMEOUT, receiver.recv()).await;
    let mut register = match first {
        Ok(Ok(Some(RunnerToDispatcher::Register(register)))) => register,
        Ok(Ok(None)) => return,
        Ok(Ok(Some(other))) => {
            tracing::warn!(message = ?other, "runner did not register first; closing");
            return;
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "bad frame from runner; closing");
            return;
        }
        Err(_) => {
            tracing::warn!("runner did not register in time; closing");
            return;
        }
    };
    register.labels.truncate(MAX_LABELS);
    register.slots = register.slots.clamp(1, MAX_SLOTS);
    let conn_id = shared.next_conn_id();
    let (outbox, mut queued) = mpsc::channel(RUNNER_OUTBOX);
    let kill = token.child_token();
    let heard = Arc::new(LastHeard::new());
    let event = Event::RunnerUp {
        conn: conn_id,
        name,
        address,
        register,
        outbox,
        kill: kill.clone(),
        heard: Arc::clone(&heard),
    };
    if shared.scheduler.send(event).await.is_err() {
        return;
    }
    let writer_kill = kill.clone();
    let wire = Arc::clone(&heard);
    let interval = shared.heartbeat.interval;
    let writer = async move {
        // Pings come from here, every interval, not from the scheduler: a
        // busy scheduler never makes them late (see `scheduler::liveness`).
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0;
        loop {
            let (message, pinged) = tokio::select! {
                _ = writer_kill.cancelled() => break,
                _ = pings.tick() => {
                    seq += 1;
                    (DispatcherToRunner::Ping(Ping { seq }), true)
                }
                message = queued.recv() => match message {
                    Some(message) => (message, false),
                    None => break,
                },
            };
            // Feed everything already queued, then flush once.
            let mut result = sender.feed(&message).await;
            while let (Ok(()), Ok(more)) = (&result, queued.try_recv()) {
                result = sender.feed(&more).await;
            }
            if let Err(err) = result.and(sender.flush().await) {
                tracing::debug!(error = %err, "cannot write to runner");
                writer_kill.cancel();
                break;
            }
            if pinged {
                // On the socket now: the runner owes an answer from here.
                wire.pinged();
            }
        }
    };
    let mut limiter = super::limit::Limiter::new(super::limit::RUNNER);
    let reader = async {
        let reason = loop {
            let message = tokio::select! {
                _ = kill.cancelled() => break "dropped by the dispatcher".to_string(),
                message = receiver.recv() => message,
            };
            if let Ok(Some(_)) = &message {
                heard.note();
            }
            match message {
                Ok(Some(_)) if !limiter.allow() => break "flooding: too many messages per second".into(),
                Ok(Some(message)) => {
                    // Waiting here for room in the scheduler's queue is our
                    // time, not the runner's silence.
                    let _delivering = heard.delivering();
                    if shared.scheduler.send(Event::FromRunner { conn: conn_id, message }).await.is_err() {
                        break "dispatcher stopping".into();
                    }
                }
                Ok(None) => break "connection closed".into(),
                Err(err) => break format!("connection failed: {err}"),
            }
        };
        // Stops the writer too, which closes the socket.
        kill.cancel();
        reason
    };
    let (reason, ()) = tokio::join!(reader, writer);
    // On a graceful stop the runner is not lost: it re-adopts its task when
    // the dispatcher is back, so nothing is requeued now.
    if !shared.shutdown.is_cancelled() {
        let _ = shared.scheduler.send(Event::RunnerDown { conn: conn_id, reason }).await;
    }
}
