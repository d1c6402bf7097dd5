//! The handshake that opens every connection, and the shared-secret proof.
//!
//! 1. The peer sends [`Hello`] (protocol version, role, name).
//! 2. The dispatcher answers [`DispatcherHandshake::Challenge`] with a fresh
//!    random nonce, or `Reject` (version mismatch, peer not allowed).
//! 3. The peer sends [`Proof`]: HMAC-SHA256(secret, nonce ‖ role ‖ name), or
//!    no MAC when it has no secret, and a nonce of its own.
//! 4. The dispatcher answers `Welcome` or `Reject` and, on reject, closes.
//!    With a secret, `Welcome` carries the dispatcher's own proof over both
//!    nonces, so a peer that has the secret also knows it reached the real
//!    dispatcher (and refuses one that does not ask for the secret).
//!
//! The secret never crosses the wire; the nonces make a recorded proof
//! worthless on another connection. Handshake frames are limited to
//! [`HANDSHAKE_MAX_FRAME`] bytes until the peer is admitted. Both sides give
//! up after [`crate::HANDSHAKE_TIMEOUT`].

use std::fmt;
use std::path::Path;

use crate::connection::{Connection, IntoTransport};
use crate::types::Name;
use crate::{Error, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a peer is; decides which messages it may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Observer,
    Runner,
    Client,
    /// `baton-runner-manager`: watches the load, starts and stops runners.
    Manager,
}

impl Role {
    fn tag(self) -> u8 {
        match self {
            Role::Observer => 1,
            Role::Runner => 2,
            Role::Client => 3,
            Role::Manager => 4,
        }
    }

    /// Lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Observer => "observer",
            Role::Runner => "runner",
            Role::Client => "client",
            Role::Manager => "manager",
        }
    }
}

/// The first frame of every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub role: Role,
    pub name: Name,
}

/// The dispatcher's handshake frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DispatcherHandshake {
    Challenge(Challenge),
    Welcome(Welcome),
    Reject(Reject),
}

/// A fresh nonce to prove the secret against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub nonce: [u8; 32],
    /// Whether the dispatcher has a secret and will check the proof.
    pub auth_required: bool,
}

/// The largest handshake frame: a hello, a challenge or a proof is a few
/// hundred bytes, so nobody gets to announce megabytes before being admitted.
pub const HANDSHAKE_MAX_FRAME: usize = 4096;

/// The peer's answer to a [`Challenge`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub mac: Option<Vec<u8>>,
    /// The peer's nonce, for the dispatcher's proof in [`Welcome`].
    pub nonce: [u8; 32],
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proof").field("mac", &self.mac.as_ref().map(|_| "<hidden>")).finish()
    }
}

/// The handshake succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub dispatcher_version: String,
    /// With a secret: HMAC-SHA256(secret, "dispatcher" ‖ peer nonce ‖
    /// dispatcher nonce ‖ role ‖ name).
    pub proof: Option<Vec<u8>>,
}

/// The handshake failed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub reason: String,
}

/// A shared secret read from a token file.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

impl Secret {
    /// Wraps secret bytes.
    ///
    /// # Errors
    /// An empty secret is refused.
    pub fn new(bytes: Vec<u8>) -> Result<Secret, String> {
        if bytes.is_empty() {
            Err("the token is empty".into())
        } else {
            Ok(Secret(bytes))
        }
    }

    /// Reads a token file; surrounding whitespace is ignored.
    ///
    /// # Returns
    /// The secret, and whether the file is readable by group or others (the
    /// caller should warn).
    ///
    /// # Errors
    /// An unreadable or empty file.
    pub fn from_file(path: &Path) -> std::io::Result<(Secret, bool)> {
        use std::os::unix::fs::PermissionsExt;
        let text = std::fs::read(path)?;
        let mode = std::fs::metadata(path)?.permissions().mode();
        let trimmed = text.trim_ascii().to_vec();
        let secret =
            Secret::new(trimmed).map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
        Ok((secret, mode & 0o077 != 0))
    }

    fn mac(&self, nonce: &[u8; 32], role: Role, name: &Name) -> Hmac<Sha256> {
        // Hmac accepts keys of any length; the expect cannot fire.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac takes any key length");
        mac.update(nonce);
        mac.update(&[role.tag()]);
        mac.update(name.as_str().as_bytes());
        mac
    }

    fn dispatcher_mac(
        &self,
        peer_nonce: &[u8; 32],
        nonce: &[u8; 32],
        role: Role,
        name: &Name,
    ) -> Hmac<Sha256> {
        // Hmac accepts keys of any length; the expect cannot fire.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac takes any key length");
        mac.update(b"dispatcher");
        mac.update(peer_nonce);
        mac.update(nonce);
        mac.update(&[role.tag()]);
        mac.update(name.as_str().as_bytes());
        mac
    }

    /// The dispatcher's proof that it knows the secret too.
    pub fn prove_dispatcher(
        &self,
        peer_nonce: &[u8; 32],
        nonce: &[u8; 32],
        role: Role,
        name: &Name,
    ) -> Vec<u8> {
        self.dispatcher_mac(peer_nonce, nonce, role, name).finalize().into_bytes().to_vec()
    }

    /// Checks the dispatcher's proof in constant time.
    pub fn verify_dispatcher(
        &self,
        peer_nonce: &[u8; 32],
        nonce: &[u8; 32],
        role: Role,
        name: &Name,
        proof: &[u8],
    ) -> bool {
        self.dispatcher_mac(peer_nonce, nonce, role, name).verify_slice(proof).is_ok()
    }

    /// The proof a peer sends for this nonce, role and name.
    pub fn prove(&self, nonce: &[u8; 32], role: Role, name: &Name) -> Vec<u8> {
        self.mac(nonce, role, name).finalize().into_bytes().to_vec()
    }

    /// Checks a proof in constant time.
    pub fn verify(&self, nonce: &[u8; 32], role: Role, name: &Name, proof: &[u8]) -> bool {
        self.mac(nonce, role, name).verify_slice(proof).is_ok()
    }
}

/// Peer side: sends the hello, answers the challenge, awaits the verdict.
///
/// # Errors
/// [`Error::Rejected`] with the dispatcher's reason, [`Error::Timeout`], or
/// any connection error.
pub async fn connect<In, Out>(
    stream: impl IntoTransport,
    role: Role,
    name: &Name,
    secret: Option<&Secret>,
    max_frame: usize,
) -> Result<(Connection<In, Out>, Welcome), Error>
where
    In: serde::de::DeserializeOwned,
    Out: Serialize,
{
    let handshake = async {
        let mut conn: Connection<DispatcherHandshake, Hello> = Connection::new(stream, HANDSHAKE_MAX_FRAME)?;
        conn.send(&Hello { version: PROTOCOL_VERSION, role, name: name.clone() }).await?;
        let challenge = match conn.recv().await?.ok_or(Error::ClosedEarly)? {
            DispatcherHandshake::Challenge(challenge) => challenge,
            DispatcherHandshake::Reject(reject) => return Err(Error::Rejected { reason: reject.reason }),
            DispatcherHandshake::Welcome(_) => return Err(Error::Handshake("welcome before proof")),
        };
        if secret.is_some() && !challenge.auth_required {
            return Err(Error::Handshake("the dispatcher does not ask for the shared secret we have"));
        }
        let mut conn: Connection<DispatcherHandshake, Proof> = conn.retype();
        let mac = secret.map(|secret| secret.prove(&challenge.nonce, role, name));
        let mut own_nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut own_nonce);
        conn.send(&Proof { mac, nonce: own_nonce }).await?;
        match conn.recv().await?.ok_or(Error::ClosedEarly)? {
            DispatcherHandshake::Welcome(welcome) => {
                if let Some(secret) = secret {
                    let proven = welcome.proof.as_deref().is_some_and(|proof| {
                        secret.verify_dispatcher(&own_nonce, &challenge.nonce, role, name, proof)
                    });
                    if !proven {
                        return Err(Error::Handshake("the dispatcher could not prove the shared secret"));
                    }
                }
                let mut conn = conn.retype();
                conn.set_max_frame(max_frame);
                Ok((conn, welcome))
            }
            DispatcherHandshake::Reject(reject) => Err(Error::Rejected { reason: reject.reason }),
            DispatcherHandshake::Challenge(_) => Err(Error::Handshake("second challenge")),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await.map_err(|_| Error::Timeout)?
}

/// What the dispatcher learned from a successful handshake.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub role: Role,
    pub name: Name,
    /// True when the peer proved the shared secret.
    pub authenticated: bool,
}

/// Dispatcher side: reads the hello, challenges, checks the proof.
///
/// `refuse` is a reason to reject every peer on this connection (for example
/// a non-loopback peer of a dispatcher without a token file).
///
/// # Errors
/// Any handshake failure; a reject frame has already been sent when one was
/// due.
pub async fn accept<In, Out>(
    stream: impl IntoTransport,
    secret: Option<&Secret>,
    refuse: Option<&str>,
    max_frame: usize,
) -> Result<(Connection<In, Out>, Admitted), Error>
where
    In: serde::de::DeserializeOwned,
    Out: Serialize,
{
    let handshake = async {
        let mut conn: Connection<Hello, DispatcherHandshake> = Connection::new(stream, HANDSHAKE_MAX_FRAME)?;
        let hello = conn.recv().await?.ok_or(Error::ClosedEarly)?;
        if hello.version != PROTOCOL_VERSION {
            let reason = format!(
                "protocol version mismatch: dispatcher speaks {PROTOCOL_VERSION}, peer {}",
                hello.version
            );
            let _ = conn.send(&DispatcherHandshake::Reject(Reject { reason })).await;
            return Err(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: hello.version });
        }
        if let Some(reason) = refuse {
            let _ = conn.send(&DispatcherHandshake::Reject(Reject { reason: reason.into() })).await;
            return Err(Error::Rejected { reason: reason.into() });
        }
        let mut nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce);
        conn.send(&DispatcherHandshake::Challenge(Challenge { nonce, auth_required: secret.is_some() }))
            .await?;
        let mut conn: Connection<Proof, DispatcherHandshake> = conn.retype();
        let proof = conn.recv().await?.ok_or(Error::ClosedEarly)?;
        let authenticated = match (secret, proof.mac) {
            (None, _) => false,
            (Some(secret), Some(mac)) if secret.verify(&nonce, hello.role, &hello.name, &mac) => true,
            (Some(_), _) => {
                let reason = "authentication failed".to_string();
                let _ = conn.send(&DispatcherHandshake::Reject(Reject { reason: reason.clone() })).await;
                return Err(Error::Rejected { reason });
            }
        };
        let proof =
            secret.map(|secret| secret.prove_dispatcher(&proof.nonce, &nonce, hello.role, &hello.name));
        conn.send(&DispatcherHandshake::Welcome(Welcome {
            dispatcher_version: crate::BATON_VERSION.to_string(),
            proof,
        }))
        .await?;
        let mut conn = conn.retype();
        conn.set_max_frame(max_frame);
        Ok((conn, Admitted { role: hello.role, name: hello.name, authenticated }))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await.map_err(|_| Error::Timeout)?
}
