//! The webhook receiver (`--webhook ADDR`): an HTTP server on the observer's
//! runtime that turns a forge's signed push notification into an immediate
//! scan of the repository it names.
//!
//! `payload` tells the forges apart and reads the repository's names from a
//! push, `verify` checks signatures and tokens in constant time. The answers:
//! 202 for a push that woke a scan, 200 for a ping or an event that is
//! ignored, 400 for a malformed request, 401 for a missing or wrong
//! signature, 404 for a repository the observer does not observe, 405 for
//! anything but POST, 413 for a body over [`MAX_BODY`]. Nothing a request
//! carries is trusted beyond the repository's name: the scan fetches and
//! walks the repository itself, as a poll would.

mod payload;
mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub use self::payload::GENERIC_SIGNATURE;
use self::payload::{Kind, RepoNames, Sender};
pub use self::verify::Secret;
use crate::scan::Wake;

/// The largest body accepted: GitHub caps its payloads at 25 MB, but a push
/// of a few dozen commits is a few tens of KiB, and only the repository's
/// names are read.
pub const MAX_BODY: usize = 1024 * 1024;

/// Requests handled at once; a forge sends one delivery at a time per hook.
const MAX_CONCURRENT: usize = 32;

/// How long a request, body included, may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One observed repository, as a webhook can wake it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its location as submitted (`RepoUrl`).
    pub id: String,
    /// The explicit name from `[[repo]] webhook_name`.
    pub webhook_name: Option<String>,
    /// Its scan loop.
    pub wake: Arc<Wake>,
}

/// What every request needs.
struct Receiver {
    /// What every request is checked against.
    secret: Secret,
    targets: Vec<Target>,
}

/// Serves webhooks on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, secret: Secret, targets: Vec<Target>, shutdown: CancellationToken) {
    let receiver = Arc::new(Receiver { secret, targets });
    // Outermost first: an oversized body is refused (413) before anything else.
    let layers = ServiceBuilder::new()
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(CatchPanicLayer::new())
        .layer(ConcurrencyLimitLayer::new(MAX_CONCURRENT))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT));
    let app = Router::new().fallback(receive).with_state(receiver).layer(layers);
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(err) = axum::serve(listener, service).with_graceful_shutdown(shutdown.cancelled_owned()).await
    {
        tracing::error!(error = %err, "the webhook receiver stopped");
    }
}

/// Answers one request.
async fn receive(
    State(receiver): State<Arc<Receiver>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let (status, text) = answer(&receiver, &method, uri.path(), &headers, &body);
    if status.is_success() {
        tracing::debug!(peer = %peer, status = status.as_u16(), answer = %text, "webhook");
    } else {
        tracing::warn!(peer = %peer, path = %uri.path(), status = status.as_u16(), answer = %text, "webhook refused");
    }
    (status, format!("{text}\n"))
}

/// The answer to one request, as a pure function of it.
fn answer(
    receiver: &Receiver,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, String) {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "webhooks are POSTed".into());
    }
    let sender = match Sender::of(path, headers) {
        Ok(sender) => sender,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason.into()),
    };
    if let Err(reason) = authenticate(&receiver.secret, &sender, headers, body) {
        return (StatusCode::UNAUTHORIZED, reason.into());
    }
    let names = match (&sender, sender.kind()) {
        (_, Kind::Ping) => return (StatusCode::OK, "pong".into()),
        (Sender::GitHub { event } | Sender::Gitea { event } | Sender::GitLab { event }, Kind::Other) => {
            return (StatusCode::OK, format!("ignored: event {event:?} is not a push"));
        }
        (Sender::Generic { name }, _) => RepoNames { names: vec![name.clone()], urls: vec![name.clone()] },
        (_, _) => match payload::repo_names(body) {
            Ok(names) => names,
            Err(reason) => return (StatusCode::BAD_REQUEST, reason),
        },
    };
    let woken: Vec<&str> = receiver
        .targets
        .iter()
        .filter(|target| payload::matches(&target.id, target.webhook_name.as_deref(), &names))
        .map(|target| {
            target.wake.scan();
            target.id.as_str()
        })
        .collect();
    if woken.is_empty() {
        let named = names.names.first().or(names.urls.first()).map(String::as_str).unwrap_or_default();
        return (StatusCode::NOT_FOUND, format!("no observed repository is {named:?}"));
    }
    tracing::info!(forge = sender.forge(), repos = ?woken, "push received, scanning");
    (StatusCode::ACCEPTED, format!("scanning {}", woken.join(" ")))
}

/// Checks the request's signature or token.
fn authenticate(
    secret: &Secret,
    sender: &Sender,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), &'static str> {
    // Each forge's header; the prefix of its HMAC-SHA256 signature (`None`:
    // the header holds the secret itself, GitLab's token); what a request
    // without it is told.
    let (header, signed, missing) = match sender {
        Sender::GitHub { .. } => ("x-hub-signature-256", Some("sha256="), "missing X-Hub-Signature-256"),
        Sender::Gitea { .. } if headers.contains_key("x-forgejo-signature") => {
            ("x-forgejo-signature", Some(""), "missing X-Forgejo-Signature")
        }
        Sender::Gitea { .. } => ("x-gitea-signature", Some(""), "missing X-Gitea-Signature"),
        Sender::GitLab { .. } => ("x-gitlab-token", None, "missing X-Gitlab-Token"),
        Sender::Generic { .. } => (GENERIC_SIGNATURE, Some("sha256="), "missing X-Baton-Signature-256"),
    };
    let value = headers.get(header).ok_or(missing)?;
    let value = value.to_str().map_err(|_| "the signature is not text")?;
    let valid = match signed {
        Some(prefix) => secret.signed(body, value, prefix),
        None => secret.is(value),
    };
    if valid {
        Ok(())
    } else {
        Err("the signature does not match")
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn receiver(secret: &[u8]) -> (Receiver, Arc<Wake>) {
        let wake = Arc::new(Wake::default());
        let target =
            Target { id: "/srv/git/acme/app.git".into(), webhook_name: None, wake: Arc::clone(&wake) };
        (Receiver { secret: Secret::new(secret).unwrap(), targets: vec![target] }, wake)
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    const PUSH: &[u8] = br#"{"repository": {"name": "app", "full_name": "acme/app"}}"#;

    #[test]
    fn statuses() {
        let (receiver, _wake) = receiver(b"s3cret");
        let secret = Secret::new(b"s3cret").unwrap();
        let signed = |body: &[u8]| format!("sha256={}", secret.sign(body));
        let github = |event: &str, signature: String| {
            headers(&[("x-github-event", event.into()), ("x-hub-signature-256", signature)])
        };
        let post = |path: &str, headers: &HeaderMap, body: &[u8]| {
            answer(&receiver, &Method::POST, path, headers, body).0
        };
        assert_eq!(post("/", &github("push", signed(PUSH)), PUSH), StatusCode::ACCEPTED);
        assert_eq!(post("/", &github("ping", signed(b"{}")), b"{}"), StatusCode::OK);
        assert_eq!(post("/", &github("issues", signed(b"{}")), b"{}"), StatusCode::OK);
        assert_eq!(post("/", &github("push", signed(b"{}")), PUSH), StatusCode::UNAUTHORIZED);
        assert_eq!(post("/", &headers(&[("x-github-event", "push".into())]), PUSH), StatusCode::UNAUTHORIZED);
        assert_eq!(post("/", &github("push", signed(b"[1]")), b"[1]"), StatusCode::BAD_REQUEST);
        assert_eq!(post("/", &HeaderMap::new(), PUSH), StatusCode::BAD_REQUEST);
        let other = br#"{"repository": {"full_name": "acme/other", "name": "other"}}"#;
        assert_eq!(post("/", &github("push", signed(other)), other), StatusCode::NOT_FOUND);
        let gitlab = |token: &str| {
            headers(&[("x-gitlab-event", "Push Hook".into()), ("x-gitlab-token", token.into())])
        };
        let gitlab_push = br#"{"project": {"path_with_namespace": "acme/app"}}"#;
        assert_eq!(post("/", &gitlab("s3cret"), gitlab_push), StatusCode::ACCEPTED);
        assert_eq!(post("/", &gitlab("s3cre"), gitlab_push), StatusCode::UNAUTHORIZED);
        let gitea = headers(&[("x-gitea-event", "push".into()), ("x-gitea-signature", secret.sign(PUSH))]);
        assert_eq!(post("/", &gitea, PUSH), StatusCode::ACCEPTED);
        let generic = headers(&[(GENERIC_SIGNATURE, signed(b""))]);
        assert_eq!(post("/hook/acme/app", &generic, b""), StatusCode::ACCEPTED);
        assert_eq!(post("/hook/acme/other", &generic, b""), StatusCode::NOT_FOUND);
        assert_eq!(post("/hook/acme/app", &HeaderMap::new(), b""), StatusCode::UNAUTHORIZED);
        let get = answer(&receiver, &Method::GET, "/", &HeaderMap::new(), b"").0;
        assert_eq!(get, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn refused_requests_wake_no_scan() {
        let (receiver, wake) = receiver(b"s3cret");
        let wrong =
            headers(&[("x-github-event", "push".into()), ("x-hub-signature-256", "sha256=00".into())]);
        let unsigned = headers(&[("x-gitlab-event", "Push Hook".into())]);
        for headers in [&wrong, &unsigned, &HeaderMap::new()] {
            assert!(answer(&receiver, &Method::POST, "/", headers, PUSH).0.is_client_error());
        }
        // A stored permit would resolve at the first poll, before the zero timeout.
        assert!(
            tokio::time::timeout(Duration::ZERO, wake.notified()).await.is_err(),
            "a refused request woke the scan"
        );
    }

    #[tokio::test]
    async fn a_signed_push_wakes_the_scan() {
        let (receiver, wake) = receiver(b"s3cret");
        let signature = format!("sha256={}", Secret::new(b"s3cret").unwrap().sign(PUSH));
        let github = headers(&[("x-github-event", "push".into()), ("x-hub-signature-256", signature)]);
        assert_eq!(answer(&receiver, &Method::POST, "/", &github, PUSH).0, StatusCode::ACCEPTED);
        // The permit left by the push: the scan loop would wake at once.
        tokio::time::timeout(Duration::from_secs(5), wake.notified()).await.expect("woken");
    }
}
