//! The accept loop: one port for observers, runners and clients. Each
//! connection gets a task that runs the handshake, then the handler of the
//! peer's role. A panic in a connection task ends that task only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::handshake::{self, Role, Secret};
use protocol::message::{ClientToDispatcher, DispatcherToClient};
use protocol::tls::ServerTls;
use protocol::Transport;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::files::DataDir;
use crate::handler;
use crate::readers::Readers;
use crate::scheduler::Handle;

/// Admitted connections at most: 1,000 runners plus observers and clients,
/// with room to spare. A peer admitted beyond it is closed.
const MAX_CONNECTIONS: usize = 4096;

/// Connections still in the handshake at most. Kept apart from the admitted
/// ones, so peers that connect and say nothing (for up to the handshake
/// deadline) cannot take the slots of real peers; beyond it, new connections
/// are closed at once instead of making accepting wait.
const MAX_HANDSHAKES: usize = 256;

/// What every connection task shares.
pub struct Shared {
    pub scheduler: Handle,
    pub readers: Arc<Readers>,
    pub files: DataDir,
    pub secret: Option<Secret>,
    pub tls: Option<ServerTls>,
    pub max_frame: usize,
    /// The daemon's stop signal (connection tokens are its children).
    pub shutdown: CancellationToken,
    /// Pools reported by connected runner managers.
    pub pools: handler::manager::Pools,
    next_conn: AtomicU64,
}

impl Shared {
    /// Bundles what connection tasks need.
    pub fn new(
        scheduler: Handle,
        readers: Arc<Readers>,
        files: DataDir,
        secret: Option<Secret>,
        tls: Option<ServerTls>,
        shutdown: CancellationToken,
    ) -> Shared {
        Shared {
            scheduler,
            readers,
            files,
            secret,
            tls,
            max_frame: protocol::MAX_FRAME,
            shutdown,
            pools: handler::manager::Pools::default(),
            next_conn: AtomicU64::new(1),
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts connections until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, tracker: &TaskTracker) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
                    tracing::warn!(peer = %peer, "too many connections in the handshake; closing this one");
                    continue;
                };
                tracker.spawn(connection(stream, peer, Arc::clone(&shared), handshake, Arc::clone(&slots)));
            }
            Err(err) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %err, delay = ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    handshake: OwnedSemaphorePermit,
    slots: Arc<Semaphore>,
) {
    let refuse = (shared.secret.is_none() && !peer.ip().is_loopback())
        .then_some("this dispatcher has no token file and accepts only loopback peers");
    let transport = match &shared.tls {
        Some(tls) => tokio::time::timeout(protocol::HANDSHAKE_TIMEOUT, tls.accept(stream))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => Transport::plain(stream),
    };
    let transport = match transport {
        Ok(transport) => transport,
        Err(err) => {
            tracing::warn!(peer = %peer, error = %err, "tls handshake failed");
            return;
        }
    };
    let accepted = handshake::accept::<ClientToDispatcher, DispatcherToClient>(
        transport,
        shared.secret.as_ref(),
        refuse,
        shared.max_frame,
    )
    .await;
    let (conn, admitted) = match accepted {
        Ok(accepted) => accepted,
        Err(err) => {
            tracing::warn!(peer = %peer, error = %err, "handshake failed");
            return;
        }
    };
    drop(handshake);
    let Ok(_slot) = slots.try_acquire_owned() else {
        tracing::warn!(peer = %peer, "too many connections; closing an admitted one");
        return;
    };
    let span =
        tracing::info_span!("conn", peer = %peer, role = admitted.role.as_str(), name = %admitted.name);
    let token = shared.shutdown.child_token();
    let name = admitted.name.clone();
    let work = async move {
        tracing::debug!("peer admitted");
        match admitted.role {
            Role::Observer => handler::observer::serve(conn.retype(), &shared, token).await,
            Role::Runner => handler::runner::serve(conn.retype(), &shared, name, token).await,
            Role::Client => handler::client::serve(conn, &shared, admitted.authenticated, token).await,
            Role::Manager => {
                handler::manager::serve(conn.retype(), &shared, admitted.authenticated, token).await
            }
        }
    };
    tracing::Instrument::instrument(work, span).await;
}
