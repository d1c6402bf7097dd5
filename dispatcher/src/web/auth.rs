//! Who may steer through HTTP: with a token file, requests carrying
//! `Authorization: Bearer <the secret>` (compared in constant time); without
//! one, loopback peers only, as on the protocol port. Then the same rule as
//! the client port ([`crate::users::authorize`]): HTTP cannot prove a user,
//! so with `[[user]]` tables configured the web API does not steer.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::users::{authorize, Action, Principal, Users, Via};

/// The name steering records give requests made over HTTP.
pub const WEB_ACTOR: &str = "web";

/// The steering rule.
pub struct Auth {
    secret: Option<Vec<u8>>,
    users: Arc<Users>,
}

impl Auth {
    pub fn new(secret: Option<Vec<u8>>) -> Auth {
        Auth { secret, users: Arc::new(Users::default()) }
    }

    /// Sets the configured users.
    pub fn with_users(mut self, users: Arc<Users>) -> Auth {
        self.users = users;
        self
    }

    /// Whether `[[user]]` tables are configured.
    pub fn users_enabled(&self) -> bool {
        self.users.enabled()
    }

    /// Allows or refuses a steering request: the token or loopback, then the
    /// roles.
    ///
    /// # Returns
    /// The actor steering records name.
    ///
    /// # Errors
    /// As [`Auth::check`]; 403 when the roles refuse.
    pub fn steer(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        action: Action<'_>,
    ) -> Result<String, ApiError> {
        self.check(peer, headers)?;
        let via = if self.secret.is_some() { Via::Secret } else { Via::Loopback };
        let principal = Principal { user: None, via };
        authorize(&self.users, &principal, action).map_err(|refusal| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{refusal} (the web API cannot prove a user: steer with `baton` and your key)"),
            )
        })?;
        Ok(principal.actor(WEB_ACTOR))
    }

    /// Whether a token is needed (the page then shows its token prompt).
    pub fn needs_token(&self) -> bool {
        self.secret.is_some()
    }

    /// Allows or refuses a steering request.
    ///
    /// # Errors
    /// 401 for a missing or wrong token, 403 for a remote peer without a
    /// token file.
    pub fn check(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.secret {
            Some(secret) => {
                let given = headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
                    .map(<[u8]>::trim_ascii);
                match given {
                    Some(given) if bool::from(given.ct_eq(secret)) => Ok(()),
                    Some(_) => {
                        tracing::warn!(peer = %peer, "web steering request with a wrong token");
                        Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong token"))
                    }
                    None => Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "this dispatcher needs `Authorization: Bearer <token>` to steer",
                    )),
                }
            }
            None if peer.ip().is_loopback() => Ok(()),
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "without a token file only loopback peers may steer",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn token_and_loopback_rules() {
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:1".parse().unwrap();
        let open = Auth::new(None);
        assert!(open.check(local, &HeaderMap::new()).is_ok());
        assert_eq!(open.check(remote, &HeaderMap::new()).unwrap_err().status, StatusCode::FORBIDDEN);
        let closed = Auth::new(Some(b"s3cret".to_vec()));
        assert!(closed.check(remote, &headers("Bearer s3cret")).is_ok());
        assert_eq!(
            closed.check(local, &headers("Bearer nope")).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(closed.check(local, &HeaderMap::new()).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            closed.check(local, &headers("Basic s3cret")).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }
}
