//! Checking that a webhook request comes from someone who knows the secret:
//! HMAC-SHA256 of the raw body (GitHub's `X-Hub-Signature-256: sha256=HEX`,
//! Gitea's and Forgejo's bare `HEX`, Baton's own `X-Baton-Signature-256`), or
//! GitLab's token sent as it is. Both compare in constant time (`hmac`'s
//! `verify_slice`, `subtle`), so timing tells an attacker nothing about how
//! much of a guess was right.

use std::path::Path;

use anyhow::{bail, Context};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The most bytes a secret file may hold; a secret is a line, not a document.
const MAX_SECRET: u64 = 4096;

/// The webhook secret, read once at start-up.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

/// Never prints the secret.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Reads the secret file; trailing whitespace (the file's newline) is not
    /// part of the secret.
    ///
    /// # Errors
    /// An unreadable, oversized or empty file.
    pub fn load(path: &Path) -> anyhow::Result<Secret> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading webhook secret file {}", path.display()))?
            .len();
        if size > MAX_SECRET {
            bail!("webhook secret file {} is over {MAX_SECRET} bytes", path.display());
        }
        let text =
            std::fs::read(path).with_context(|| format!("reading webhook secret file {}", path.display()))?;
        Secret::new(text.trim_ascii_end()).with_context(|| format!("webhook secret file {}", path.display()))
    }

    /// A secret from its bytes.
    ///
    /// # Errors
    /// When it is empty.
    pub fn new(bytes: &[u8]) -> anyhow::Result<Secret> {
        if bytes.is_empty() {
            bail!("the secret is empty");
        }
        Ok(Secret(bytes.to_vec()))
    }

    /// Whether `signature` (hex, with `prefix` such as `sha256=` when the
    /// forge writes one) is the HMAC-SHA256 of `body` under this secret.
    pub fn signed(&self, body: &[u8], signature: &str, prefix: &str) -> bool {
        let Some(hex) = signature.trim().strip_prefix(prefix) else { return false };
        let Some(tag) = decode_hex(hex) else { return false };
        // HMAC accepts keys of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else { return false };
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    }

    /// Whether `token` is the secret itself (GitLab's `X-Gitlab-Token`).
    pub fn is(&self, token: &str) -> bool {
        // `ct_eq` on slices of different lengths is false without comparing;
        // the length of the secret is all that leaks.
        bool::from(self.0.as_slice().ct_eq(token.as_bytes()))
    }

    /// The HMAC-SHA256 of `body` as lowercase hex (tests sign with it).
    #[cfg(test)]
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(body);
        mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// Decodes hex (either case); `None` for odd lengths, other characters, or
/// more than a SHA-512's worth.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    let digit = |byte: u8| (byte as char).to_digit(16);
    text.as_bytes().chunks(2).map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_s_documented_example_verifies() {
        // The example of GitHub's "Validating webhook deliveries": secret
        // "It's a Secret to Everybody", payload "Hello, World!".
        let secret = Secret::new(b"It's a Secret to Everybody").unwrap();
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(secret.signed(b"Hello, World!", signature, "sha256="));
        assert_eq!(secret.sign(b"Hello, World!"), signature.strip_prefix("sha256=").unwrap());
        assert!(secret.signed(
            b"Hello, World!",
            &signature.to_uppercase().replace("SHA256=", "sha256="),
            "sha256="
        ));
    }

    #[test]
    fn wrong_or_malformed_signatures_fail() {
        let secret = Secret::new(b"s3cret").unwrap();
        let good = secret.sign(b"body");
        assert!(secret.signed(b"body", &good, ""));
        assert!(!secret.signed(b"body!", &good, ""), "another body");
        assert!(!secret.signed(b"body", &good, "sha256="), "the prefix is missing");
        assert!(!Secret::new(b"other").unwrap().signed(b"body", &good, ""), "another secret");
        for bad in ["", "sha256=", "zz", &good[..63], &format!("{good}00"), &"0".repeat(1000)] {
            assert!(!secret.signed(b"body", bad, ""), "{bad:?} verified");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        let secret = Secret::new(b"s3cret").unwrap();
        assert!(secret.is("s3cret"));
        assert!(!secret.is("s3cre") && !secret.is("s3cret ") && !secret.is(""));
        assert!(Secret::new(b"").is_err());
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }

    #[test]
    fn the_file_s_newline_is_not_part_of_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert!(Secret::load(&path).unwrap().is("s3cret"));
        std::fs::write(&path, "\n").unwrap();
        assert!(Secret::load(&path).is_err());
    }
}
