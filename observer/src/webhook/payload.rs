//! What a webhook request says, read from its headers and JSON body: which
//! forge sent it, which event it is, and the names and URLs its push payload
//! gives the repository.
//!
//! Only those names are read from a payload. Commit ids, refs and everything
//! else are ignored: a push only makes the observer scan, and the scan reads
//! the repository itself.

use axum::http::HeaderMap;
use serde::Deserialize;

/// Who sent a request, by its headers or path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// `X-GitHub-Event`, signed with `X-Hub-Signature-256: sha256=HEX`.
    GitHub { event: String },
    /// `X-Gitea-Event` or `X-Forgejo-Event`, signed with
    /// `X-Gitea-Signature` / `X-Forgejo-Signature: HEX`.
    Gitea { event: String },
    /// `X-Gitlab-Event`, with the secret itself in `X-Gitlab-Token`.
    GitLab { event: String },
    /// `POST /hook/NAME`, signed with `X-Baton-Signature-256: sha256=HEX`.
    Generic { name: String },
}

/// The header of Baton's generic form.
pub const GENERIC_SIGNATURE: &str = "x-baton-signature-256";

impl Sender {
    /// Recognises the sender from the path (`/hook/NAME` is the generic
    /// form) or the forge's event header. Gitea and Forgejo also send
    /// GitHub's headers, so theirs are looked at first.
    ///
    /// # Errors
    /// A request that is none of these, with a short reason.
    pub fn of(path: &str, headers: &HeaderMap) -> Result<Sender, &'static str> {
        if let Some(name) = path.strip_prefix("/hook/") {
            if name.is_empty() {
                return Err("POST /hook/NAME needs a repository name");
            }
            return Ok(Sender::Generic { name: name.to_string() });
        }
        let header = |name: &str| headers.get(name).map(|value| value.to_str().map(str::to_string));
        let event = |value: Option<Result<String, _>>| match value {
            Some(Ok(event)) => Ok(Some(event)),
            Some(Err(_)) => Err("the event header is not text"),
            None => Ok(None),
        };
        if let Some(event) = event(header("x-gitea-event").or_else(|| header("x-forgejo-event")))? {
            return Ok(Sender::Gitea { event });
        }
        if let Some(event) = event(header("x-gitlab-event"))? {
            return Ok(Sender::GitLab { event });
        }
        if let Some(event) = event(header("x-github-event"))? {
            return Ok(Sender::GitHub { event });
        }
        Err("no X-GitHub-Event, X-Gitea-Event, X-Forgejo-Event or X-Gitlab-Event header (or POST /hook/NAME)")
    }

    /// The forge's name, for logs.
    pub fn forge(&self) -> &'static str {
        match self {
            Sender::GitHub { .. } => "github",
            Sender::Gitea { .. } => "gitea",
            Sender::GitLab { .. } => "gitlab",
            Sender::Generic { .. } => "generic",
        }
    }

    /// What the event asks of the observer.
    pub fn kind(&self) -> Kind {
        match self {
            Sender::GitHub { event } | Sender::Gitea { event } if event == "push" => Kind::Push,
            Sender::GitHub { event } | Sender::Gitea { event } if event == "ping" => Kind::Ping,
            Sender::GitLab { event } if event == "Push Hook" => Kind::Push,
            Sender::Generic { .. } => Kind::Push,
            _ => Kind::Other,
        }
    }
}

/// What an event asks of the observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A push: scan the repository.
    Push,
    /// A forge checking that the hook works.
    Ping,
    /// Anything else (issues, tags, ...): acknowledged and ignored.
    Other,
}

/// The names and URLs a push payload gives its repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoNames {
    /// `full_name` (GitHub, Gitea), `path_with_namespace` (GitLab), `name`.
    pub names: Vec<String>,
    /// `clone_url`, `ssh_url`, `git_url`, `html_url`, `url` (GitHub, Gitea);
    /// `git_http_url`, `git_ssh_url`, `web_url`, `homepage` (GitLab).
    pub urls: Vec<String>,
}

/// The parts of a push payload that are read.
#[derive(Deserialize)]
struct Push {
    repository: Option<Repository>,
    project: Option<Project>,
}

/// GitHub's and Gitea's `repository` (GitLab's too, with fewer fields).
#[derive(Deserialize)]
struct Repository {
    name: Option<String>,
    full_name: Option<String>,
    clone_url: Option<String>,
    ssh_url: Option<String>,
    git_url: Option<String>,
    html_url: Option<String>,
    url: Option<String>,
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    homepage: Option<String>,
}

/// GitLab's `project`.
#[derive(Deserialize)]
struct Project {
    name: Option<String>,
    path_with_namespace: Option<String>,
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    web_url: Option<String>,
}

/// Reads a push payload's repository names and URLs.
///
/// # Errors
/// A body that is not JSON of the expected shape, or names no repository.
pub fn repo_names(body: &[u8]) -> Result<RepoNames, String> {
    let push: Push = serde_json::from_slice(body).map_err(|err| format!("invalid push payload: {err}"))?;
    let mut found = RepoNames::default();
    if let Some(project) = push.project {
        found.names.extend(project.path_with_namespace.into_iter().chain(project.name));
        found.urls.extend([project.git_http_url, project.git_ssh_url, project.web_url].into_iter().flatten());
    }
    if let Some(repo) = push.repository {
        found.names.extend(repo.full_name.into_iter().chain(repo.name));
        let urls = [
            repo.clone_url,
            repo.ssh_url,
            repo.git_url,
            repo.html_url,
            repo.url,
            repo.git_http_url,
            repo.git_ssh_url,
            repo.homepage,
        ];
        found.urls.extend(urls.into_iter().flatten());
    }
    found.names.retain(|name| !name.trim().is_empty());
    found.urls.retain(|url| !url.trim().is_empty());
    if found.names.is_empty() && found.urls.is_empty() {
        return Err("the push payload names no repository".into());
    }
    Ok(found)
}

/// Whether an observed repository, known as `id` (its location as
/// submitted) and optionally `webhook_name`, is the one a payload names.
///
/// With a `webhook_name`, it alone decides: it must equal one of the names.
/// Without, the repository matches when its location equals one of the
/// URLs, ends with `/FULL_NAME`, or its last component is the short name
/// (`.git` and trailing slashes ignored, letters compared without case).
/// A match that is too generous costs one extra scan, never a wrong task.
pub fn matches(id: &str, webhook_name: Option<&str>, payload: &RepoNames) -> bool {
    if let Some(wanted) = webhook_name {
        return payload.names.iter().any(|name| name.eq_ignore_ascii_case(wanted));
    }
    let id = normal(id);
    if payload.urls.iter().any(|url| normal(url) == id) {
        return true;
    }
    let last = id.rsplit(['/', ':']).next().unwrap_or_default();
    payload.names.iter().map(|name| normal(name)).any(|name| {
        if name.contains('/') {
            id == name || id.ends_with(&format!("/{name}")) || id.ends_with(&format!(":{name}"))
        } else {
            last == name
        }
    })
}

/// A location or name without `.git`, trailing slashes or case.
fn normal(text: &str) -> String {
    let text = text.trim().trim_end_matches('/');
    text.strip_suffix(".git").unwrap_or(text).trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn senders_and_events() {
        let gitea = headers(&[("X-GitHub-Event", "push"), ("X-Gitea-Event", "push")]);
        assert_eq!(Sender::of("/", &gitea), Ok(Sender::Gitea { event: "push".into() }));
        let forgejo = headers(&[("X-Forgejo-Event", "push")]);
        assert_eq!(Sender::of("/", &forgejo).unwrap().kind(), Kind::Push);
        let ping = Sender::of("/x", &headers(&[("X-GitHub-Event", "ping")])).unwrap();
        assert_eq!((ping.forge(), ping.kind()), ("github", Kind::Ping));
        let gitlab = Sender::of("/", &headers(&[("X-Gitlab-Event", "Push Hook")])).unwrap();
        assert_eq!(gitlab.kind(), Kind::Push);
        let tag = Sender::of("/", &headers(&[("X-Gitlab-Event", "Tag Push Hook")])).unwrap();
        assert_eq!(tag.kind(), Kind::Other);
        assert_eq!(
            Sender::of("/hook/acme/app", &HeaderMap::new()),
            Ok(Sender::Generic { name: "acme/app".into() })
        );
        assert!(Sender::of("/hook/", &HeaderMap::new()).is_err());
        assert!(Sender::of("/", &HeaderMap::new()).is_err());
    }

    #[test]
    fn payload_names() {
        let github =
            br#"{"ref": "refs/heads/main", "repository": {"id": 1, "name": "app", "full_name": "acme/app",
            "owner": {"login": "acme"}, "clone_url": "https://example.com/acme/app.git", "ssh_url": null}}"#;
        let names = repo_names(github).unwrap();
        assert_eq!(names.names, ["acme/app", "app"]);
        assert_eq!(names.urls, ["https://example.com/acme/app.git"]);
        let gitlab =
            br#"{"object_kind": "push", "project": {"name": "App", "path_with_namespace": "acme/app",
            "git_http_url": "https://gitlab.example.com/acme/app.git"}, "repository": {"name": "App"}}"#;
        assert_eq!(repo_names(gitlab).unwrap().names, ["acme/app", "App", "App"]);
        for bad in [
            &b"not json"[..],
            b"{}",
            b"[]",
            br#"{"repository": {"name": 5}}"#,
            br#"{"repository": {"name": ""}}"#,
        ] {
            assert!(repo_names(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn matching_a_payload_to_a_repository() {
        let names = |names: &[&str], urls: &[&str]| RepoNames {
            names: names.iter().map(|name| name.to_string()).collect(),
            urls: urls.iter().map(|url| url.to_string()).collect(),
        };
        let payload = names(&["acme/app", "app"], &["https://git.example.com/acme/app.git"]);
        assert!(matches("https://git.example.com/acme/app.git", None, &payload));
        assert!(matches("https://git.example.com/acme/app", None, &payload));
        assert!(matches("/srv/git/acme/App.git", None, &payload));
        assert!(matches("/srv/git/app.git", None, &payload), "the short name");
        assert!(matches("git@example.com:acme/app.git", None, &payload));
        assert!(!matches("/srv/git/other.git", None, &payload));
        assert!(!matches("/srv/git/acme/application.git", None, &names(&["acme/app"], &[])));
        assert!(!matches("/srv/git/xacme/app.git", None, &names(&["acme/app"], &[])));
        assert!(matches("/srv/a.git", Some("acme/app"), &payload), "an explicit name decides");
        assert!(!matches("/srv/git/acme/app.git", Some("acme/other"), &payload));
    }
}
