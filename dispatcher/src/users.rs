//! People (SPEC §12): the `[[user]]` tables of the config file, the check of
//! a client's user proof against them, and the one authorization rule every
//! steering path goes through ([`authorize`]).
//!
//! The dispatcher holds only public keys: a client proves a user by signing
//! the handshake's fresh nonce with the private key
//! (`protocol::handshake::UserProof`). Without `[[user]]` tables nothing here
//! changes what a peer may do: the shared secret (or loopback) steers
//! everything, as before.
//!
//! What it deliberately does not do: filter reads by repository (every
//! admitted peer reads everything), or decide deployment rules such as
//! `approval = "other"` (the deployments code does, with the user named here).

use std::collections::BTreeSet;
use std::fmt;

use anyhow::Context;
use serde::Deserialize;

use protocol::handshake::{Identify, Role, UserProof};
use protocol::{Name, RepoUrl};

/// What a user may do; each role is limited by the user's `repos` and
/// `environments` when those are given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UserRole {
    /// Read what the dispatcher knows (every role includes it).
    Read,
    /// Submit, rerun and abort tasks.
    Trigger,
    /// Approve, reject and roll back deployments.
    Approve,
    /// Everything.
    Admin,
}

impl UserRole {
    /// The spelling in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Read => "read",
            UserRole::Trigger => "trigger",
            UserRole::Approve => "approve",
            UserRole::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<UserRole> {
        [UserRole::Read, UserRole::Trigger, UserRole::Approve, UserRole::Admin]
            .into_iter()
            .find(|role| role.as_str() == text)
    }
}

/// A `[[user]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFile {
    name: String,
    /// An OpenSSH public key line: `ssh-ed25519 AAAA… comment`.
    public_key: String,
    roles: Vec<String>,
    repos: Option<Vec<String>>,
    environments: Option<Vec<String>>,
}

/// One person.
#[derive(Clone, Debug)]
pub struct User {
    pub name: Name,
    key: ed25519_dalek::VerifyingKey,
    /// `SHA256:…`, as `ssh-keygen -l` prints it, for messages and logs.
    pub fingerprint: String,
    roles: BTreeSet<UserRole>,
    /// The repositories the roles apply to (`None`: all).
    repos: Option<Vec<RepoUrl>>,
    /// The environments `approve` applies to (`None`: all).
    environments: Option<Vec<String>>,
}

impl User {
    /// Whether the user has `role`, directly or through `admin`.
    pub fn has(&self, role: UserRole) -> bool {
        self.roles.contains(&role) || self.roles.contains(&UserRole::Admin)
    }

    fn covers_repo(&self, repo: &RepoUrl) -> bool {
        self.repos.as_ref().is_none_or(|repos| repos.contains(repo))
    }

    /// A user limited to environments acts only where one is named.
    fn covers_environment(&self, environment: Option<&str>) -> bool {
        match (&self.environments, environment) {
            (None, _) => true,
            (Some(allowed), Some(environment)) => allowed.iter().any(|allowed| allowed == environment),
            (Some(_), None) => false,
        }
    }
}

/// The configured users; empty when the config file has no `[[user]]`.
#[derive(Clone, Debug, Default)]
pub struct Users {
    users: Vec<User>,
}

impl Users {
    /// Validates the `[[user]]` tables.
    ///
    /// # Errors
    /// A bad name, key line or role, a key that is not Ed25519, or a name or
    /// key given twice; the message names the user.
    pub fn from_files(files: Vec<UserFile>) -> anyhow::Result<Users> {
        let mut users: Vec<User> = Vec::with_capacity(files.len());
        for file in files {
            let user = user(file)?;
            anyhow::ensure!(
                users.iter().all(|other| other.name != user.name),
                "[[user]] {}: the name is given twice",
                user.name
            );
            if let Some(other) = users.iter().find(|other| other.key == user.key) {
                anyhow::bail!(
                    "[[user]] {}: the key {} is also user {}'s; each person needs their own key",
                    user.name,
                    user.fingerprint,
                    other.name
                );
            }
            users.push(user);
        }
        Ok(Users { users })
    }

    /// Whether any user is configured; without, roles are not checked.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// How many users are configured.
    pub fn count(&self) -> usize {
        self.users.len()
    }

    /// The user of this name.
    pub fn get(&self, name: &Name) -> Option<&User> {
        self.users.iter().find(|user| &user.name == name)
    }

    fn by_key(&self, key: &[u8]) -> Option<&User> {
        self.users.iter().find(|user| user.key.as_bytes() == key)
    }
}

impl Identify for Users {
    fn enabled(&self) -> bool {
        Users::enabled(self)
    }

    fn identify(&self, proof: &UserProof, nonce: &[u8; 32], role: Role, name: &Name) -> Result<Name, String> {
        let fingerprint = fingerprint_of(&proof.public_key);
        let user = match &proof.user {
            Some(claimed) => {
                let user = self.get(claimed).ok_or_else(|| format!("no user named {claimed}"))?;
                if user.key.as_bytes() != proof.public_key.as_slice() {
                    return Err(format!(
                        "the key {fingerprint} is not user {claimed}'s (theirs is {})",
                        user.fingerprint
                    ));
                }
                user
            }
            None => self
                .by_key(&proof.public_key)
                .ok_or_else(|| format!("no user has the key {fingerprint}; add it to a [[user]] table"))?,
        };
        if proof.verify(&user.key, nonce, role, name) {
            tracing::debug!(user = %user.name, key = %user.fingerprint, "user proven");
            Ok(user.name.clone())
        } else {
            tracing::warn!(user = %user.name, key = %user.fingerprint, "a user proof did not verify");
            Err(format!("the signature for user {} does not verify", user.name))
        }
    }
}

/// How a peer came to be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// It proved the shared secret (protocol HMAC or the web's Bearer token).
    Secret,
    /// The dispatcher has no token file and the peer is on loopback.
    Loopback,
    /// Only through a user's key (with users configured).
    Key,
    /// Nothing: a remote web client without the token.
    Nothing,
}

/// Who is asking: the proven user, if any, and how the connection is
/// trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user: Option<Name>,
    pub via: Via,
}

impl Principal {
    /// The name steering records give the actor: the user, or else the
    /// peer's own name (a client's handshake name, `web` for HTTP).
    pub fn actor(&self, peer_name: &str) -> String {
        match &self.user {
            Some(user) => user.to_string(),
            None => peer_name.to_string(),
        }
    }
}

/// What a principal wants to do.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// Status, tasks, logs, releases.
    Read,
    /// Submit, rerun, abort.
    Trigger { repo: &'a RepoUrl },
    /// Approve, reject, roll back (`environment` is `None` for a repository
    /// without environments).
    Approve { repo: &'a RepoUrl, environment: Option<&'a str> },
    /// Everything else that changes the dispatcher.
    Admin,
}

/// Why an action is refused; the text goes to the client as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The steering rule of the client port and the web API.
///
/// Without users: anyone admitted reads; the shared secret or loopback
/// steers, as before users existed. With users: the shared secret or
/// loopback still reads, and so does any proven user; every other action
/// needs a proven user with the role, for that repository (and
/// environment); the shared secret alone no longer steers.
///
/// # Errors
/// A [`Refusal`] saying what is missing.
pub fn authorize(users: &Users, principal: &Principal, action: Action<'_>) -> Result<(), Refusal> {
    if !users.enabled() {
        return match (action, principal.via) {
            (Action::Read, _) | (_, Via::Secret | Via::Loopback) => Ok(()),
            _ => Err(Refusal("not allowed: this command needs an authenticated client".into())),
        };
    }
    let user = principal.user.as_ref().and_then(|name| users.get(name));
    let Some(user) = user else {
        return match (action, principal.via) {
            (Action::Read, Via::Secret | Via::Loopback) => Ok(()),
            _ => Err(Refusal(
                "not allowed: this dispatcher has users; prove one with your key (baton --key-file, \
                 default ~/.ssh/id_ed25519)"
                    .into(),
            )),
        };
    };
    let refuse = |what: String| Err(Refusal(format!("not allowed: user {} {what}", user.name)));
    match action {
        Action::Read => Ok(()),
        Action::Trigger { .. } if !user.has(UserRole::Trigger) => refuse("lacks the trigger role".into()),
        Action::Trigger { repo } if !user.covers_repo(repo) => refuse(format!("may not trigger in {repo}")),
        Action::Trigger { .. } => Ok(()),
        Action::Approve { .. } if !user.has(UserRole::Approve) => refuse("lacks the approve role".into()),
        Action::Approve { repo, .. } if !user.covers_repo(repo) => {
            refuse(format!("may not approve in {repo}"))
        }
        Action::Approve { environment, .. } if !user.covers_environment(environment) => match environment {
            Some(environment) => refuse(format!("may not approve in environment {environment}")),
            None => refuse("is limited to environments and this repository has none".into()),
        },
        Action::Approve { .. } => Ok(()),
        Action::Admin if user.has(UserRole::Admin) && user.repos.is_none() => Ok(()),
        Action::Admin => refuse("lacks the admin role for every repository".into()),
    }
}

fn user(file: UserFile) -> anyhow::Result<User> {
    let name = Name::new(file.name.as_str()).map_err(|err| anyhow::anyhow!("[[user]] name: {err}"))?;
    let context = || format!("[[user]] {name}");
    let key = public_key(&file.public_key).with_context(context)?;
    anyhow::ensure!(
        !file.roles.is_empty(),
        "[[user]] {name}: roles is empty; give some of read, trigger, approve, admin"
    );
    let mut roles = BTreeSet::new();
    for role in &file.roles {
        let role = UserRole::parse(role).with_context(|| {
            format!("[[user]] {name}: unknown role {role:?}; expected read, trigger, approve or admin")
        })?;
        roles.insert(role);
    }
    let repos = file
        .repos
        .map(|repos| repos.into_iter().map(RepoUrl::new).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(|err| anyhow::anyhow!("[[user]] {name}: repos: {err}"))?;
    if let Some(environments) = &file.environments {
        anyhow::ensure!(
            environments.iter().all(|environment| Name::new(environment.as_str()).is_ok()),
            "[[user]] {name}: environments must be names"
        );
    }
    let fingerprint = fingerprint_of(key.as_bytes());
    Ok(User { name, key, fingerprint, roles, repos, environments: file.environments })
}

/// Parses an OpenSSH public key line; only Ed25519 keys are accepted.
///
/// # Errors
/// A line that is not an OpenSSH public key, or a key of another kind.
pub fn public_key(line: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    // Other kinds of key are not even parsed (the crate is built for
    // Ed25519 only), so name the kind from the line itself.
    match line.split_whitespace().next() {
        Some("ssh-ed25519") => {}
        Some(kind) if kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-") => {
            anyhow::bail!(
                "public_key is a {kind} key; only ssh-ed25519 keys are accepted (ssh-keygen -t ed25519)"
            )
        }
        _ => anyhow::bail!(
            "public_key is not an OpenSSH public key line (expected \"ssh-ed25519 AAAA... comment\")"
        ),
    }
    let key = ssh_key::PublicKey::from_openssh(line.trim())
        .map_err(|err| anyhow::anyhow!("public_key is not an OpenSSH public key line ({err})"))?;
    let Some(ed25519) = key.key_data().ed25519() else {
        anyhow::bail!(
            "public_key is a {} key; only ssh-ed25519 keys are accepted (ssh-keygen -t ed25519)",
            key.algorithm()
        );
    };
    ed25519_dalek::VerifyingKey::try_from(ed25519)
        .map_err(|err| anyhow::anyhow!("public_key is not a valid Ed25519 point ({err})"))
}

/// `SHA256:…` of an Ed25519 public key, as `ssh-keygen -l` prints it; the
/// raw bytes (hex) when they are not a key.
fn fingerprint_of(key: &[u8]) -> String {
    match <[u8; 32]>::try_from(key) {
        Ok(bytes) => {
            let data = ssh_key::public::KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(bytes));
            data.fingerprint(ssh_key::HashAlg::Sha256).to_string()
        }
        Err(_) => format!("of {} bytes (not an Ed25519 key)", key.len()),
    }
}

#[cfg(test)]
mod tests;
