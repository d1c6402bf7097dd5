//! Observer connections: submissions in, one answer per submission out, in
//! order. Submissions are pipelined: the reader queues each pending answer
//! and a writer sends them as the scheduler commits.

use protocol::message::{DispatcherToObserver, ObserverToDispatcher, Refused};
use protocol::Connection;
use tokio::sync::{mpsc, oneshot};
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
    let reader = async move {
        loop {
            let message = tokio::select! {
                _ = token.cancelled() => break,
                message = receiver.recv() => message,
            };
            match message {
                Ok(Some(_)) if !limiter.allow() => {
                    tracing::warn!("observer is flooding; closing");
                    break;
                }
                Ok(Some(ObserverToDispatcher::Submit(submit))) => {
                    let (reply, answer) = oneshot::channel();
                    let task = super::new_task(
                        submit.repo,
                        submit.branch,
                        submit.commit,
                        submit.labels,
                        Trigger::Observer,
                    );
                    if shared.scheduler.send(Event::Submit { task, reply }).await.is_err()
                        || answers.send(answer).await.is_err()
                    {
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "bad frame from observer; closing");
                    break;
                }
            }
        }
    };
    let writer = async move {
        while let Some(answer) = queued.recv().await {
            // A dropped reply means the scheduler stopped before committing:
            // say nothing, so the observer resubmits after reconnecting.
            let Ok(result) = answer.await else { break };
            let message = match result {
                Ok(accepted) => DispatcherToObserver::Accepted(accepted),
                Err(reason) => DispatcherToObserver::Refused(Refused { reason }),
            };
            if let Err(err) = sender.send(&message).await {
                tracing::debug!(error = %err, "observer went away");
                break;
            }
        }
    };
    tokio::join!(reader, writer);
}
