//! The manager's one connection to the dispatcher, kept up forever: it
//! reports the pools (on connect and on change), forwards drain requests,
//! and hands loads and drain answers to the manager's loop.
//!
//! When the connection drops the loop is told (`Disconnected`), so that it
//! stops draining: a dispatcher that is away never makes the manager stop
//! runners. Drain requests queued while disconnected are dropped.

use protocol::handshake::Role;
use protocol::message::{DispatcherToManager, ManagerToDispatcher, PoolReport};
use protocol::peer::{Backoff, Credentials};
use protocol::Name;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What the link tells the manager's loop.
#[derive(Debug)]
pub enum LinkEvent {
    Connected,
    Message(DispatcherToManager),
    Disconnected,
}

/// How the loop talks to the link.
pub struct LinkInput {
    pub pools: watch::Receiver<Vec<PoolReport>>,
    pub drains: mpsc::Receiver<Name>,
}

/// Keeps the manager connected until `stop` is cancelled.
pub async fn run(
    address: String,
    name: Name,
    credentials: Credentials,
    mut input: LinkInput,
    events: mpsc::Sender<LinkEvent>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let dialled = tokio::select! {
            _ = stop.cancelled() => return,
            dialled = protocol::peer::dial_with::<DispatcherToManager, ManagerToDispatcher>(
                &address, Role::Manager, &name, &credentials, protocol::MAX_FRAME,
            ) => dialled,
        };
        match dialled {
            Ok((connection, welcome)) => {
                tracing::info!(dispatcher_version = %welcome.dispatcher_version, "connected to the dispatcher");
                backoff.reset();
                while input.drains.try_recv().is_ok() {}
                if events.send(LinkEvent::Connected).await.is_err() {
                    return;
                }
                let (mut receiver, mut sender) = connection.split();
                let ended: anyhow::Result<()> = async {
                    let pools = input.pools.borrow_and_update().clone();
                    sender.send(&ManagerToDispatcher::Pools(pools)).await?;
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(()),
                            changed = input.pools.changed() => {
                                if changed.is_err() {
                                    return Ok(());
                                }
                                let pools = input.pools.borrow_and_update().clone();
                                sender.send(&ManagerToDispatcher::Pools(pools)).await?;
                            }
                            drain = input.drains.recv() => match drain {
                                Some(runner) => sender.send(&ManagerToDispatcher::Drain(runner)).await?,
                                None => return Ok(()),
                            },
                            message = receiver.recv() => match message? {
                                Some(message) => {
                                    if events.send(LinkEvent::Message(message)).await.is_err() {
                                        return Ok(());
                                    }
                                }
                                None => anyhow::bail!("the dispatcher closed the connection"),
                            },
                        }
                    }
                }
                .await;
                if events.send(LinkEvent::Disconnected).await.is_err() || stop.is_cancelled() {
                    return;
                }
                if let Err(err) = ended {
                    tracing::warn!(error = %format!("{err:#}"), "connection to the dispatcher lost");
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot reach the dispatcher"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
