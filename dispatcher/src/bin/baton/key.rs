//! The person using `baton`: their OpenSSH Ed25519 private key, read to sign
//! the dispatcher's handshake nonce (SPEC §12 "People").
//!
//! `--key-file F` is read and must be an unencrypted `ssh-ed25519` key; any
//! problem with it is an error. Without the flag, `~/.ssh/id_ed25519` is used
//! when it exists and is such a key, and skipped silently otherwise: the
//! client cannot know whether the dispatcher has users, and a dispatcher
//! without them ignores the proof. Encrypted keys and ssh-agent are not
//! supported (no passphrase prompt, no agent protocol): the dispatcher's
//! refusal says how to give a usable key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use protocol::handshake::UserKey;
use protocol::Name;

/// The key to prove the user with, if any.
///
/// # Errors
/// An unreadable, encrypted, malformed or non-Ed25519 `--key-file`; a
/// `--user` that is not a valid name or has no key to go with it.
pub fn load(key_file: Option<&Path>, user: Option<&str>) -> anyhow::Result<Option<UserKey>> {
    let user =
        user.map(|user| Name::new(user).map_err(|err| anyhow::anyhow!("--user: {err}"))).transpose()?;
    let key = match key_file {
        Some(path) => Some(read(path)?),
        None => default_path().and_then(|path| read(&path).ok()),
    };
    match (key, user) {
        (Some(key), user) => Ok(Some(UserKey { user, key })),
        (None, Some(user)) => {
            anyhow::bail!(
                "--user {user} needs a key: give --key-file, or have ~/.ssh/id_ed25519 (unencrypted)"
            )
        }
        (None, None) => Ok(None),
    }
}

/// `~/.ssh/id_ed25519`, when there is a home directory.
fn default_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|home| !home.is_empty())?;
    Some(PathBuf::from(home).join(".ssh").join("id_ed25519"))
}

/// Reads an OpenSSH private key file.
///
/// # Errors
/// Unreadable, not an OpenSSH private key, encrypted, or not Ed25519.
pub fn read(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let shown = path.display();
    let text = std::fs::read(path).with_context(|| format!("reading key file {shown}"))?;
    let key = ssh_key::PrivateKey::from_openssh(&text).map_err(|err| {
        anyhow::anyhow!(
            "key file {shown} is not an OpenSSH private key ({err}); make one with ssh-keygen -t ed25519"
        )
    })?;
    anyhow::ensure!(
        !key.is_encrypted(),
        "key file {shown} is encrypted with a passphrase, which baton cannot ask for (nor use ssh-agent): \
         use an unencrypted key (ssh-keygen -t ed25519 -N '' -f FILE)"
    );
    let Some(keypair) = key.key_data().ed25519() else {
        anyhow::bail!("key file {shown} holds a {} key; only ssh-ed25519 keys are accepted", key.algorithm());
    };
    ed25519_dalek::SigningKey::try_from(keypair)
        .map_err(|err| anyhow::anyhow!("key file {shown} holds an invalid Ed25519 key ({err})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn an_openssh_ed25519_key_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let keypair = ssh_key::private::Ed25519Keypair::from_seed(&[4; 32]);
        let text = ssh_key::PrivateKey::from(keypair).to_openssh(ssh_key::LineEnding::LF).unwrap();
        let path = write(dir.path(), "id", &text);
        let key = read(&path).unwrap();
        assert_eq!(key.to_bytes(), [4; 32]);
        let loaded = load(Some(&path), Some("alice")).unwrap().unwrap();
        assert_eq!(loaded.user.unwrap().as_str(), "alice");
    }

    #[test]
    fn bad_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let message = format!("{:#}", read(&dir.path().join("missing")).unwrap_err());
        assert!(message.starts_with("reading key file"), "{message}");
        let path = write(dir.path(), "junk", "not a key\n");
        let message = format!("{:#}", read(&path).unwrap_err());
        assert!(message.contains("is not an OpenSSH private key"), "{message}");
        let message = format!("{:#}", load(None, Some("a b")).unwrap_err());
        assert!(message.starts_with("--user:"), "{message}");
    }
}
