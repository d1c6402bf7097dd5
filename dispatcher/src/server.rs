//! The accept loop: one port for observers, runners and clients. Each
//! connection gets a task that runs the handshake, then the handler of the
//! peer's role. A panic in a connection task ends that task only.
//!
//! Unauthenticated sockets cannot starve authenticated peers: connections
//! still in the handshake have their own small budget ([`MAX_HANDSHAKES`],
//! and [`MAX_HANDSHAKES_PER_SOURCE`] per source address) apart from the
//! admitted ones, and a short deadline ([`HANDSHAKE_DEADLINE`]).
//! When the budget is full, a new connection is not refused: the *oldest*
//! one still in the handshake (of the same source, if that source is over its
//! share) is closed to make room, so a flood of silent sockets only ever
//! evicts itself, while a real peer, which completes its handshake in
//! milliseconds, gets in. Those closings are counted and reported in one
//! warning per [`REPORT_EVERY`], not one line per connection.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::handshake::{self, Role, Secret};
use protocol::message::{ClientToDispatcher, DispatcherToClient};
use protocol::tls::ServerTls;
use protocol::Transport;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::files::DataDir;
use crate::handler;
use crate::readers::Readers;
use crate::scheduler::Handle;
use crate::users::{Principal, Users, Via};

/// Admitted connections at most: 1,000 runners plus observers and clients,
/// with room to spare. A peer admitted beyond it is closed.
const MAX_CONNECTIONS: usize = 4096;

/// Connections still in the handshake at most. Kept apart from the admitted
/// ones, so peers that connect and say nothing cannot take the slots of
/// real peers; beyond it, the oldest one in the handshake is closed.
pub const MAX_HANDSHAKES: usize = 256;

/// Connections in the handshake from one source address at most; beyond it,
/// that source's oldest is closed.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 64;

/// How long a new connection may take to finish TLS and the hello exchange
/// (a real peer needs milliseconds); short, and with eviction a flood does
/// not depend on it.
pub const HANDSHAKE_DEADLINE: Duration = protocol::HANDSHAKE_TIMEOUT;

/// How often refused and failed handshakes are summed up in one warning.
const REPORT_EVERY: Duration = Duration::from_secs(10);

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
    /// The heartbeat observers are kept alive by (runners learn it from
    /// `Registered`).
    pub heartbeat: handler::observer::Heartbeat,
    /// The `[[user]]` tables (empty: none configured).
    pub users: Arc<Users>,
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
            heartbeat: handler::observer::Heartbeat::default(),
            users: Arc::new(Users::default()),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Sets the users whose keys clients may prove.
    pub fn with_users(mut self, users: Arc<Users>) -> Shared {
        self.users = users;
        self
    }

    /// Sets the heartbeat observers are pinged with.
    pub fn with_heartbeat(mut self, interval: Duration, misses: u32) -> Shared {
        self.heartbeat = handler::observer::Heartbeat { interval, misses };
        self
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts connections until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, tracker: &TaskTracker) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pending = Arc::new(Pending::default());
    let report = {
        let pending = Arc::clone(&pending);
        let shutdown = shared.shutdown.clone();
        tracker.spawn(async move {
            let mut ticker = tokio::time::interval(REPORT_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => pending.report(),
                }
            }
        })
    };
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let entry = pending.enter(peer.ip(), shared.next_conn_id());
                tracker.spawn(connection(stream, peer, Arc::clone(&shared), entry, Arc::clone(&slots)));
            }
            Err(err) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %err, delay = ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    report.abort();
}

/// The connections still in the handshake, oldest first, and the counts of
/// those that never finished it.
#[derive(Default)]
struct Pending {
    /// Small (at most [`MAX_HANDSHAKES`] entries), and touched only for a
    /// moment per connection, never across an `.await`: a std `Mutex`.
    queue: Mutex<VecDeque<PendingEntry>>,
    n_evicted: AtomicU64,
    n_timed_out: AtomicU64,
    n_failed: AtomicU64,
}

struct PendingEntry {
    id: u64,
    source: IpAddr,
    /// Cancelled to close this connection to make room for a newer one.
    evict: CancellationToken,
}

/// A connection's place among those in the handshake; it leaves when this
/// is dropped.
struct PendingGuard {
    pending: Arc<Pending>,
    id: u64,
    evict: CancellationToken,
}

impl Pending {
    /// Registers a new connection, closing the oldest from the same source
    /// or overall when the budget is spent.
    fn enter(self: &Arc<Self>, source: IpAddr, id: u64) -> PendingGuard {
        let evict = CancellationToken::new();
        // The lock is never held across a panic-prone call, so a poisoned
        // lock cannot happen; recover the data anyway rather than panic.
        let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let n_same = queue.iter().filter(|entry| entry.source == source).count();
        let victim = if n_same >= MAX_HANDSHAKES_PER_SOURCE {
            queue.iter().position(|entry| entry.source == source)
        } else if queue.len() >= MAX_HANDSHAKES {
            Some(0)
        } else {
            None
        };
        if let Some(victim) = victim.and_then(|idx| queue.remove(idx)) {
            victim.evict.cancel();
            self.n_evicted.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(PendingEntry { id, source, evict: evict.clone() });
        PendingGuard { pending: Arc::clone(self), id, evict }
    }

    fn leave(&self, id: u64) {
        let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(idx) = queue.iter().position(|entry| entry.id == id) {
            queue.remove(idx);
        }
    }

    /// One warning for everything that went wrong since the last one.
    fn report(&self) {
        let n_evicted = self.n_evicted.swap(0, Ordering::Relaxed);
        let n_timed_out = self.n_timed_out.swap(0, Ordering::Relaxed);
        let n_failed = self.n_failed.swap(0, Ordering::Relaxed);
        if n_evicted + n_timed_out + n_failed > 0 {
            tracing::warn!(
                n_evicted,
                n_timed_out,
                n_failed,
                every = ?REPORT_EVERY,
                "connections closed before completing the handshake"
            );
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending.leave(self.id);
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    pending: PendingGuard,
    slots: Arc<Semaphore>,
) {
    let refuse = (shared.secret.is_none() && !peer.ip().is_loopback())
        .then_some("this dispatcher has no token file and accepts only loopback peers");
    let handshake = async {
        let transport = match &shared.tls {
            Some(tls) => tls.accept(stream).await.map_err(protocol::Error::Io)?,
            None => Transport::plain(stream).map_err(protocol::Error::Io)?,
        };
        handshake::accept_users::<ClientToDispatcher, DispatcherToClient>(
            transport,
            shared.secret.as_ref(),
            &*shared.users,
            refuse,
            shared.max_frame,
        )
        .await
    };
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(HANDSHAKE_DEADLINE, handshake) => accepted,
        _ = pending.evict.cancelled() => {
            tracing::debug!(peer = %peer, "closed in the handshake to make room for a newer connection");
            return;
        }
    };
    let (conn, admitted) = match accepted {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(err)) => {
            pending.pending.n_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %peer, error = %err, "handshake failed");
            return;
        }
        Err(_) => {
            pending.pending.n_timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %peer, "no handshake before the deadline");
            return;
        }
    };
    drop(pending);
    let Ok(_slot) = slots.try_acquire_owned() else {
        tracing::warn!(peer = %peer, "too many connections; closing an admitted one");
        return;
    };
    let span = tracing::info_span!(
        "conn",
        peer = %peer,
        role = admitted.role.as_str(),
        name = %admitted.name,
        user = admitted.user.as_ref().map(tracing::field::display),
    );
    let token = shared.shutdown.child_token();
    let name = admitted.name.clone();
    let work = async move {
        tracing::debug!("peer admitted");
        match admitted.role {
            Role::Observer => handler::observer::serve(conn.retype(), &shared, token).await,
            Role::Runner => handler::runner::serve(conn.retype(), &shared, name, token).await,
            Role::Client => {
                // Without a token file only loopback peers get this far.
                let via = match (admitted.authenticated, &shared.secret) {
                    (true, _) => Via::Secret,
                    (false, None) => Via::Loopback,
                    (false, Some(_)) => Via::Key,
                };
                let principal = Principal { user: admitted.user, via };
                let client = handler::client::Peer { principal, name };
                handler::client::serve(conn, &shared, client, token).await
            }
            Role::Manager => {
                handler::manager::serve(conn.retype(), &shared, admitted.authenticated, token).await
            }
        }
    };
    tracing::Instrument::instrument(work, span).await;
}
