//! Who may steer through HTTP: with a token file, requests carrying
//! `Authorization: Bearer <the secret>` (compared in constant time); without
//! one, loopback peers only, as on the protocol port. Either way a browser's
//! request sent by a page of another site (a form posted cross-site to
//! `127.0.0.1:8080`) may not steer: the loopback rule trusts the machine's
//! users, not every page their browser opens. Then the same rule as the
//! client port ([`crate::users::authorize`]): HTTP cannot prove a user, so
//! with `[[user]]` tables configured the web API does not steer.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::users::{authorize, Action, Principal, Users, Via};

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
    /// The actor steering records name: `web` and the peer's address.
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
        // HTTP proves no user: steering records name the web and the peer.
        Ok(format!("web {}", peer.ip()))
    }

    /// Whether a token is needed (the page then shows its token prompt).
    pub fn needs_token(&self) -> bool {
        self.secret.is_some()
    }

    /// Allows or refuses a steering request.
    ///
    /// # Errors
    /// 401 for a missing or wrong token, 403 for a remote peer without a
    /// token file or a request a page of another site sent.
    pub fn check(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
        if cross_site(headers) {
            tracing::warn!(peer = %peer, "web steering request sent by a page of another site");
            return Err(ApiError::new(StatusCode::FORBIDDEN, "a page of another site may not steer"));
        }
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

/// Whether a browser says the request comes from a page of another origin:
/// `Sec-Fetch-Site` other than `same-origin` or `none`, or an `Origin` whose
/// host is not the `Host` asked. Clients that are not browsers send neither.
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return true;
        }
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            !origin_host.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
        (None, _) => false,
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

    #[test]
    fn a_page_of_another_site_may_not_steer_even_from_loopback() {
        let auth = Auth::new(None);
        let loopback: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let with = |pairs: &[(&'static str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, value.parse().unwrap());
            }
            headers
        };
        assert!(auth.check(loopback, &HeaderMap::new()).is_ok(), "curl sends no Origin");
        let same = with(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]);
        assert!(auth.check(loopback, &same).is_ok(), "the page's own buttons");
        let forged = with(&[("host", "127.0.0.1:8080"), ("origin", "https://evil.example")]);
        assert_eq!(auth.check(loopback, &forged).unwrap_err().status, StatusCode::FORBIDDEN);
        let fetched = with(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(auth.check(loopback, &fetched).unwrap_err().status, StatusCode::FORBIDDEN);
    }
}
