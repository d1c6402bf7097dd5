//! Baton's wire protocol, shared by every binary and owned by no daemon.
//!
//! A connection carries frames: a 4-byte big-endian length, then a bincode
//! payload (see [`codec`]). The first frames are the handshake ([`handshake`]):
//! the peer's hello, the dispatcher's challenge, the peer's proof and the
//! dispatcher's verdict. After the handshake the connection is re-typed for the
//! peer's role and carries that role's messages ([`message`]).
//!
//! The wire modules (`codec`, `connection`, `handshake`, `message`, `types`,
//! `tls`) have no I/O policy of their own: no retries, no timeouts beyond the
//! handshake deadline, no logging of message contents. Two modules are here
//! only because every binary shares them and binaries must not depend on each
//! other: [`peer`] is the daemons' common ground around a connection (dialling
//! with reconnect back-off, tracing set-up, the stop signal), so it does log
//! and retry; [`view`] is how the protocol's values look to scripts and people
//! (`--json` shapes, RFC 3339 times).

pub mod codec;
pub mod connection;
pub mod error;
pub mod handshake;
pub mod message;
pub mod peer;
pub mod tls;
pub mod types;
pub mod view;

pub use connection::{Connection, IntoTransport, Receiver, Sender, Transport};
pub use error::Error;
pub use handshake::{Role, Secret};
pub use types::{
    Branch, CommitId, CommitPrefix, DeploymentState, HostState, Label, Name, NotificationEvent, ReleaseKind,
    ReleaseState, RepoUrl, TaskId, TaskState,
};

/// Version of the wire format; bump it on any change to a message type.
pub const PROTOCOL_VERSION: u32 = 7;

/// The largest frame either side accepts unless configured lower (8 MiB).
///
/// It is also the ceiling: bincode's decode limit is this constant, so a
/// configured maximum can only lower it.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;

/// How long a peer may take to complete the handshake before it is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Version string of the Baton binaries, reported in `baton status`.
pub const BATON_VERSION: &str = env!("CARGO_PKG_VERSION");
