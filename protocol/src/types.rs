//! Checked values that cross the wire.
//!
//! Each type validates itself while decoding (`#[serde(try_from = ...)]`), so
//! a hostile commit id, branch, repository location or name cannot exist as a
//! value anywhere in Baton: code that holds one may pass it to git or use it in
//! a path without checking again.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A task's id: positive, increasing in submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct TaskId(i64);

impl TaskId {
    /// Wraps a positive id.
    ///
    /// # Errors
    /// Returns the reason when `id` is not positive.
    pub fn new(id: i64) -> Result<TaskId, String> {
        if id > 0 {
            Ok(TaskId(id))
        } else {
            Err(format!("task id must be positive, got {id}"))
        }
    }

    /// The id as stored in SQLite.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for TaskId {
    type Error = String;
    fn try_from(id: i64) -> Result<TaskId, String> {
        TaskId::new(id)
    }
}

impl From<TaskId> for i64 {
    fn from(id: TaskId) -> i64 {
        id.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $check:path) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a value.
            ///
            /// # Errors
            /// Returns a human-readable reason when the value is not acceptable.
            pub fn new(value: impl Into<String>) -> Result<$name, String> {
                let value = value.into();
                $check(&value)?;
                Ok($name(value))
            }

            /// The checked string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<$name, String> {
                $name::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(value: &str) -> Result<$name, String> {
                $name::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// A full commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
    CommitId,
    check_commit_id
);
string_newtype!(
    /// A commit id or an abbreviation of one: 4 to 64 lowercase hex digits.
    CommitPrefix,
    check_commit_prefix
);
string_newtype!(
    /// A branch name that git's `check-ref-format --branch` would accept.
    Branch,
    check_branch
);
string_newtype!(
    /// Where a repository lives: an absolute local path or a git URL
    /// (`file://`, `ssh://`, `git://`, `http(s)://`, or `user@host:path`).
    RepoUrl,
    check_repo_url
);
string_newtype!(
    /// A peer's name (runner, observer, client): `[A-Za-z0-9._-]{1,64}`.
    Name,
    check_name
);
string_newtype!(
    /// A runner label, with the same rules as a [`Name`].
    Label,
    check_name
);

fn is_lower_hex(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_commit_id(value: &str) -> Result<(), String> {
    if (value.len() == 40 || value.len() == 64) && is_lower_hex(value) {
        Ok(())
    } else {
        Err(format!("invalid commit id {:?}: expected 40 or 64 lowercase hex digits", shorten(value)))
    }
}

fn check_commit_prefix(value: &str) -> Result<(), String> {
    if (4..=64).contains(&value.len()) && is_lower_hex(value) {
        Ok(())
    } else {
        Err(format!("invalid commit {:?}: expected 4 to 64 lowercase hex digits", shorten(value)))
    }
}

fn check_name(value: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && !value.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(format!("invalid name {:?}: use 1 to 64 of A-Z a-z 0-9 . _ - (not first . or -)", shorten(value)))
    }
}

/// Git's rules for a branch name (`git check-ref-format --branch`), plus a
/// length bound.
fn check_branch(value: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid branch {:?}: {why}", shorten(value)));
    if value.is_empty() || value.len() > 255 {
        return bad("must be 1 to 255 bytes");
    }
    if value.starts_with('-') {
        return bad("must not start with '-'");
    }
    if value == "@" || value.contains("@{") || value.contains("..") || value.contains("//") {
        return bad("must not be '@' or contain '@{', '..' or '//'");
    }
    if value.starts_with('/') || value.ends_with('/') || value.ends_with('.') {
        return bad("must not start or end with '/' or end with '.'");
    }
    let forbidden = |c: char| c.is_control() || " ~^:?*[\\".contains(c);
    if value.chars().any(forbidden) {
        return bad("must not contain spaces, control characters or any of ~^:?*[\\");
    }
    for component in value.split('/') {
        if component.starts_with('.') || component.ends_with(".lock") {
            return bad("no component may start with '.' or end with '.lock'");
        }
    }
    Ok(())
}

/// A repository location. Local paths must be absolute and free of `..`
/// components; URLs must use a transport gix fetches with. Nothing may start
/// with `-` (git would read it as an option) or hold control characters.
fn check_repo_url(value: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid repository {:?}: {why}", shorten(value)));
    if value.is_empty() || value.len() > 1024 {
        return bad("must be 1 to 1024 bytes");
    }
    if value.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    if value.starts_with('-') {
        return bad("must not start with '-'");
    }
    let path = if let Some((scheme, rest)) = value.split_once("://") {
        if !["file", "ssh", "git", "http", "https"].contains(&scheme) {
            return bad("scheme must be file, ssh, git, http or https");
        }
        if rest.is_empty() {
            return bad("has no host or path");
        }
        rest
    } else if value.starts_with('/') {
        value
    } else if let Some((host, path)) = value.split_once(':') {
        // scp-like `user@host:path`; a bare relative path is refused because a
        // daemon's working directory is no place to resolve network input.
        let host_ok =
            !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
        if !host_ok || path.is_empty() || path.starts_with(':') {
            return bad("must be an absolute path or a URL");
        }
        path
    } else {
        return bad("must be an absolute path or a URL");
    };
    if path.split('/').any(|component| component == "..") {
        return bad("must not contain '..' components");
    }
    Ok(())
}

/// Keeps error messages about hostile input short.
fn shorten(value: &str) -> String {
    value.chars().take(80).collect()
}

/// The states of a task (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Pending,
    Running,
    Passed,
    Failed,
    /// An infrastructure failure: checkout failed, runner lost too often.
    Error,
    Aborted,
}

impl TaskState {
    /// Every state, in the order status reports list them.
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::Passed,
        TaskState::Failed,
        TaskState::Error,
        TaskState::Aborted,
    ];

    /// The lowercase name used in SQLite, JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Passed => "passed",
            TaskState::Failed => "failed",
            TaskState::Error => "error",
            TaskState::Aborted => "aborted",
        }
    }

    /// Whether the task will not change state again.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Running)
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;
    fn from_str(value: &str) -> Result<TaskState, String> {
        TaskState::ALL.into_iter().find(|state| state.as_str() == value).ok_or_else(|| {
            format!("unknown state {value:?}: expected pending, running, passed, failed, error or aborted")
        })
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids() {
        assert!(CommitId::new("a".repeat(40)).is_ok());
        assert!(CommitId::new("0123456789abcdef".repeat(4)).is_ok());
        for hostile in [
            "",
            ";rm -rf /",
            "../../etc/passwd",
            &"A".repeat(40),
            &"a".repeat(41),
            "-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "HEAD",
        ] {
            assert!(CommitId::new(hostile).is_err(), "{hostile:?} accepted");
        }
    }

    #[test]
    fn branches_follow_git_rules() {
        for good in ["main", "release/1.2", "feature-x", "a_b.c"] {
            assert!(Branch::new(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "-x",
            "a..b",
            "a b",
            "a:b",
            "x.lock",
            ".hidden",
            "a//b",
            "a/",
            "@",
            "a@{1}",
            ";rm -rf /",
            "a\nb",
        ] {
            assert!(Branch::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn repository_locations() {
        for good in [
            "/srv/git/app.git",
            "file:///srv/git/app.git",
            "https://example.com/team/app.git",
            "ssh://git@example.com/app.git",
            "git@example.com:team/app.git",
        ] {
            assert!(RepoUrl::new(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "../x",
            "/srv/../etc",
            "relative/path",
            ";rm -rf /",
            "-uexploit",
            "ext::sh -c touch% /tmp/pwned",
            "/srv/a\nb",
            "file://",
        ] {
            assert!(RepoUrl::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_and_task_ids() {
        assert!(Name::new("runner-1.host_a").is_ok());
        assert!(Name::new("").is_err());
        assert!(Name::new("a b").is_err());
        assert!(Name::new("-x").is_err());
        assert!(Name::new("x".repeat(65)).is_err());
        assert!(TaskId::new(1).is_ok());
        assert!(TaskId::new(0).is_err());
        assert!(TaskId::new(-5).is_err());
    }

    #[test]
    fn states_round_trip_through_text() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
        assert!("done".parse::<TaskState>().is_err());
    }
}

/// Defines a closed vocabulary: an enum whose values are spelled the same in
/// SQLite, JSON, config files and on the command line, with `ALL`,
/// `as_str`, `FromStr` and `Display`. On the wire it travels as the enum.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        // bincode writes the variant's index; a self-describing format
        // (JSON) writes the same name as `as_str`.
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order of the enum.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name used in SQLite, JSON and config files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(value: &str) -> Result<$name, String> {
                $name::ALL.iter().copied().find(|known| known.as_str() == value).ok_or_else(|| {
                    let known: Vec<&str> = $name::ALL.iter().map(|known| known.as_str()).collect();
                    format!("unknown {} {:?}: expected one of {}", $what, shorten(value), known.join(", "))
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// The state of a release record.
    ReleaseState, "release state" {
        /// Recorded; no deploy steps are configured, or they have not started.
        Recorded => "recorded",
        /// Its deploy task is queued or running.
        Deploying => "deploying",
        Deployed => "deployed",
        /// Its deploy task did not pass.
        Failed => "failed",
        /// A later rollback replaced it.
        RolledBack => "rolled_back",
    }
}

impl ReleaseState {
    /// Whether the release was good once, and so may be returned to.
    pub fn was_good(self) -> bool {
        matches!(self, ReleaseState::Deployed | ReleaseState::Recorded | ReleaseState::RolledBack)
    }

    /// Whether the release is the current one of its repository (or about
    /// to be).
    pub fn is_current(self) -> bool {
        matches!(self, ReleaseState::Deployed | ReleaseState::Recorded | ReleaseState::Deploying)
    }
}

vocabulary! {
    /// What made a release record.
    ReleaseKind, "release kind" {
        /// A passed test of a release branch.
        Release => "release",
        /// A return to an earlier release's commit.
        Rollback => "rollback",
    }
}

vocabulary! {
    /// What a notifier can be told about.
    NotificationEvent, "notification event" {
        TaskFailed => "task_failed",
        TaskError => "task_error",
        /// A passed test after a failed or errored one on the same branch.
        TaskRecovered => "task_recovered",
        ReleaseRecorded => "release_recorded",
        DeployFailed => "deploy_failed",
        Rollback => "rollback",
        /// A deployment waits (for approval, `after`, `needs`, hosts).
        DeploymentWaiting => "deployment_waiting",
        /// A deployment's first hosts got their deploy tasks.
        DeploymentStarted => "deployment_started",
        DeploymentDeployed => "deployment_deployed",
        DeploymentFailed => "deployment_failed",
        /// Bisection found the first failing commit of a range.
        CulpritFound => "culprit_found",
        /// A test task started its first attempt (commit statuses:
        /// `pending`). Not sent to notifiers that list no events.
        TaskStarted => "task_started",
        /// A test task ended, whatever its state (commit statuses: the
        /// final state). Not sent to notifiers that list no events.
        TaskFinished => "task_finished",
    }
}

vocabulary! {
    /// The state of a deployment: a release in an environment (SPEC §12).
    DeploymentState, "deployment state" {
        /// For approval, for `after`, for a `needs` repository, for hosts, or
        /// for another deployment of the environment to end.
        Waiting => "waiting",
        /// Deploy steps on the canary hosts.
        Canary => "canary",
        /// Deploy steps on the (other) hosts.
        Deploying => "deploying",
        Deployed => "deployed",
        Failed => "failed",
        /// A later rollback replaced it.
        RolledBack => "rolled_back",
        /// Someone rejected it while it waited.
        Rejected => "rejected",
    }
}

impl DeploymentState {
    /// Whether the deployment has ended (it changes no more, except that a
    /// deployed one may later be rolled back).
    pub fn is_final(self) -> bool {
        !matches!(self, DeploymentState::Waiting | DeploymentState::Canary | DeploymentState::Deploying)
    }
}

vocabulary! {
    /// Where one host of a deployment is.
    HostState, "host state" {
        /// Not started yet (a later host of a gray release).
        Waiting => "waiting",
        /// Its deploy task is queued or running.
        Deploying => "deploying",
        Deployed => "deployed",
        Failed => "failed",
        /// Never touched: the deployment stopped before reaching it.
        Skipped => "skipped",
    }
}

#[cfg(test)]
mod vocabulary_tests {
    use super::*;

    #[test]
    fn vocabularies_read_back_what_they_write() {
        for state in ReleaseState::ALL {
            assert_eq!(state.as_str().parse::<ReleaseState>(), Ok(*state));
        }
        for kind in ReleaseKind::ALL {
            assert_eq!(kind.to_string().parse::<ReleaseKind>(), Ok(*kind));
        }
        for event in NotificationEvent::ALL {
            assert_eq!(event.as_str().parse::<NotificationEvent>(), Ok(*event));
        }
        assert_eq!(ReleaseState::RolledBack.as_str(), "rolled_back");
        let err = "roll_back".parse::<ReleaseKind>().unwrap_err();
        assert_eq!(err, "unknown release kind \"roll_back\": expected one of release, rollback");
    }
}
