//! The handshake that opens every connection, and the shared-secret proof.
//!
//! 1. The peer sends [`Hello`] (protocol version, role, name).
//! 2. The dispatcher answers [`DispatcherHandshake::Challenge`] with a fresh
//!    random nonce, or `Reject` (version mismatch, peer not allowed).
//! 3. The peer sends [`Proof`]: HMAC-SHA256(secret, nonce ‖ role ‖ name), or
//!    no MAC when it has no secret, and a nonce of its own; a client may add
//!    a [`UserProof`]: an Ed25519 signature of a person's key over the same
//!    nonce ([`user_message`]), saying who it is.
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
    /// Who the person behind a client is, proven with their key.
    pub user: Option<UserProof>,
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proof")
            .field("mac", &self.mac.as_ref().map(|_| "<hidden>"))
            .field("user", &self.user)
            .finish()
    }
}

/// A person's proof of who they are: their Ed25519 key's signature over
/// [`user_message`] for this connection's nonce.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProof {
    /// The user the client says it is (`baton --user`); `None` lets the
    /// dispatcher find the user by the key.
    pub user: Option<Name>,
    /// The Ed25519 public key, 32 bytes.
    pub public_key: Vec<u8>,
    /// The Ed25519 signature, 64 bytes.
    pub signature: Vec<u8>,
}

impl fmt::Debug for UserProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserProof").field("user", &self.user).finish_non_exhaustive()
    }
}

/// What a user's key signs: a context string that no other protocol uses,
/// then the dispatcher's fresh nonce, the peer's role and hello name, the
/// claimed user and the public key, each length-prefixed, so a signature is
/// worthless on another connection, for another role or user, or anywhere
/// outside Baton's handshake.
pub fn user_message(
    nonce: &[u8; 32],
    role: Role,
    name: &Name,
    user: Option<&Name>,
    public_key: &[u8],
) -> Vec<u8> {
    const CONTEXT: &[u8] = b"baton user proof v1\0";
    let mut message = Vec::with_capacity(CONTEXT.len() + 32 + 1 + 4 * 3 + 64 + 64 + 32);
    message.extend_from_slice(CONTEXT);
    message.extend_from_slice(nonce);
    message.push(role.tag());
    for part in [name.as_str().as_bytes(), user.map_or(&[][..], |user| user.as_str().as_bytes()), public_key]
    {
        // Parts are at most 64 bytes (names) or 32 (keys); the cast is exact.
        message.extend_from_slice(&(part.len() as u32).to_be_bytes());
        message.extend_from_slice(part);
    }
    message
}

/// A person's Ed25519 key, ready to prove who they are.
#[derive(Clone)]
pub struct UserKey {
    /// The user to claim (`None`: whoever the dispatcher finds for the key).
    pub user: Option<Name>,
    pub key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKey").field("user", &self.user).finish_non_exhaustive()
    }
}

impl UserKey {
    /// Signs this connection's nonce for `role` and `name`.
    pub fn prove(&self, nonce: &[u8; 32], role: Role, name: &Name) -> UserProof {
        use ed25519_dalek::Signer;
        let public_key = self.key.verifying_key().to_bytes().to_vec();
        let message = user_message(nonce, role, name, self.user.as_ref(), &public_key);
        let signature = self.key.sign(&message).to_bytes().to_vec();
        UserProof { user: self.user.clone(), public_key, signature }
    }
}

impl UserProof {
    /// Checks the signature against `key`, which the caller found for this
    /// proof (by its user or its public key).
    pub fn verify(
        &self,
        key: &ed25519_dalek::VerifyingKey,
        nonce: &[u8; 32],
        role: Role,
        name: &Name,
    ) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&self.signature) else { return false };
        if self.public_key != key.as_bytes() {
            return false;
        }
        let message = user_message(nonce, role, name, self.user.as_ref(), &self.public_key);
        key.verify_strict(&message, &signature).is_ok()
    }
}

/// The dispatcher's side of user proofs: who a proof names, if anyone.
pub trait Identify: Sync {
    /// Whether users are configured at all. When not, proofs are ignored.
    fn enabled(&self) -> bool;

    /// The user a proof proves, or why it proves nothing (sent to the peer).
    ///
    /// # Errors
    /// An unknown key or user, or a signature that does not verify.
    fn identify(&self, proof: &UserProof, nonce: &[u8; 32], role: Role, name: &Name) -> Result<Name, String>;
}

/// No users: every proof is ignored.
struct NoUsers;

impl Identify for NoUsers {
    fn enabled(&self) -> bool {
        false
    }

    fn identify(&self, _: &UserProof, _: &[u8; 32], _: Role, _: &Name) -> Result<Name, String> {
        Err("this dispatcher has no users".into())
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
    connect_as(stream, role, name, secret, None, max_frame).await
}

/// [`connect`], also proving a user with their key.
///
/// # Errors
/// As [`connect`]; a dispatcher that does not accept the user rejects the
/// handshake and says why.
pub async fn connect_as<In, Out>(
    stream: impl IntoTransport,
    role: Role,
    name: &Name,
    secret: Option<&Secret>,
    user: Option<&UserKey>,
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
        let user = user.map(|user| user.prove(&challenge.nonce, role, name));
        conn.send(&Proof { mac, nonce: own_nonce, user }).await?;
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
    /// The user a client proved with their key (only with users configured).
    pub user: Option<Name>,
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
    accept_users(stream, secret, &NoUsers, refuse, max_frame).await
}

/// [`accept`], also checking user proofs against `users`.
///
/// With users configured, a client that proves a user is admitted without
/// the shared secret (its requests are then checked against the user's
/// roles), and a user proof that fails is rejected with the reason, even
/// when the shared secret is right: a client that presents a key means to
/// act as that user. Peers of other roles still need the secret.
///
/// # Errors
/// As [`accept`].
pub async fn accept_users<In, Out>(
    stream: impl IntoTransport,
    secret: Option<&Secret>,
    users: &dyn Identify,
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
        let user = match &proof.user {
            Some(user_proof) if users.enabled() && hello.role == Role::Client => {
                match users.identify(user_proof, &nonce, hello.role, &hello.name) {
                    Ok(user) => Some(user),
                    Err(reason) => {
                        let _ =
                            conn.send(&DispatcherHandshake::Reject(Reject { reason: reason.clone() })).await;
                        return Err(Error::Rejected { reason });
                    }
                }
            }
            _ => None,
        };
        let authenticated = match (secret, proof.mac) {
            (None, _) => false,
            (Some(secret), Some(mac)) if secret.verify(&nonce, hello.role, &hello.name, &mac) => true,
            // A proven user needs no shared secret; their roles decide.
            (Some(_), None) if user.is_some() => false,
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
        Ok((conn, Admitted { role: hello.role, name: hello.name, authenticated, user }))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await.map_err(|_| Error::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ClientToDispatcher, DispatcherToClient};
    use tokio::net::{TcpListener, TcpStream};

    fn key(seed: u8) -> UserKey {
        UserKey { user: None, key: ed25519_dalek::SigningKey::from_bytes(&[seed; 32]) }
    }

    fn name(text: &str) -> Name {
        Name::new(text).unwrap()
    }

    #[test]
    fn a_user_proof_holds_only_for_its_nonce_role_name_and_key() {
        let alice = key(1);
        let verifying = alice.key.verifying_key();
        let nonce = [9; 32];
        let proof = alice.prove(&nonce, Role::Client, &name("baton"));
        assert!(proof.verify(&verifying, &nonce, Role::Client, &name("baton")));
        assert!(!proof.verify(&verifying, &[8; 32], Role::Client, &name("baton")));
        assert!(!proof.verify(&verifying, &nonce, Role::Observer, &name("baton")));
        assert!(!proof.verify(&verifying, &nonce, Role::Client, &name("other")));
        assert!(!proof.verify(&key(2).key.verifying_key(), &nonce, Role::Client, &name("baton")));
        // Claiming another user than the one signed for breaks the signature.
        let claimed = UserProof { user: Some(name("bob")), ..proof.clone() };
        assert!(!claimed.verify(&verifying, &nonce, Role::Client, &name("baton")));
        let truncated = UserProof { signature: proof.signature[..63].to_vec(), ..proof };
        assert!(!truncated.verify(&verifying, &nonce, Role::Client, &name("baton")));
    }

    #[test]
    fn the_signed_message_is_domain_separated_and_unambiguous() {
        let message = user_message(&[0; 32], Role::Client, &name("ab"), None, &[1; 32]);
        assert!(message.starts_with(b"baton user proof v1\0"));
        // Moving a byte from the hello name to the user changes the message.
        let split = user_message(&[0; 32], Role::Client, &name("a"), Some(&name("b")), &[1; 32]);
        assert_ne!(message, split);
    }

    /// One user, alice, with key seed 1.
    struct Alice;

    impl Identify for Alice {
        fn enabled(&self) -> bool {
            true
        }

        fn identify(
            &self,
            proof: &UserProof,
            nonce: &[u8; 32],
            role: Role,
            name: &Name,
        ) -> Result<Name, String> {
            if proof.verify(&key(1).key.verifying_key(), nonce, role, name) {
                Ok(Name::new("alice").unwrap())
            } else {
                Err("no user has this key".into())
            }
        }
    }

    async fn handshake(
        secret: Option<&Secret>,
        client_secret: Option<&Secret>,
        user: Option<&UserKey>,
    ) -> (Result<Admitted, Error>, Result<Welcome, Error>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_secret = secret.cloned();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            accept_users::<ClientToDispatcher, DispatcherToClient>(
                stream,
                server_secret.as_ref(),
                &Alice,
                None,
                1024,
            )
            .await
            .map(|(_, admitted)| admitted)
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let client = connect_as::<DispatcherToClient, ClientToDispatcher>(
            stream,
            Role::Client,
            &name("baton"),
            client_secret,
            user,
            1024,
        )
        .await
        .map(|(_, welcome)| welcome);
        (server.await.unwrap(), client)
    }

    #[tokio::test]
    async fn a_proven_user_is_admitted_with_or_without_the_secret() {
        let secret = Secret::new(b"s".to_vec()).unwrap();
        let (admitted, client) = handshake(Some(&secret), None, Some(&key(1))).await;
        let admitted = admitted.unwrap();
        assert!(client.is_ok());
        assert_eq!(admitted.user, Some(name("alice")));
        assert!(!admitted.authenticated);
        let (admitted, _) = handshake(Some(&secret), Some(&secret), Some(&key(1))).await;
        let admitted = admitted.unwrap();
        assert_eq!(admitted.user, Some(name("alice")));
        assert!(admitted.authenticated);
    }

    #[tokio::test]
    async fn an_unknown_key_is_rejected_with_the_reason() {
        let secret = Secret::new(b"s".to_vec()).unwrap();
        // Even with the right secret: the client meant to act as someone.
        let (admitted, client) = handshake(Some(&secret), Some(&secret), Some(&key(2))).await;
        assert!(admitted.is_err());
        assert!(
            matches!(client, Err(Error::Rejected { ref reason }) if reason == "no user has this key"),
            "{client:?}"
        );
        // Neither a key nor the secret: refused as before.
        let (admitted, _) = handshake(Some(&secret), None, None).await;
        assert!(admitted.is_err());
    }
}
