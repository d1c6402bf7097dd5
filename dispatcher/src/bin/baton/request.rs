//! From the command line to the one request sent: every argument is turned
//! into the protocol's checked types here, before any connection is made.
//!
//! Owns the rules a user can trip over: `show` reads a short all-digit
//! argument as a task id and anything else as a commit, a repository given as
//! a relative local path is made absolute, and `submit` takes a short commit
//! id, resolved by git when the repository is a local directory and by the
//! dispatcher otherwise (the request is then a `Commits` query, and
//! [`Invocation::then_submit`] what to submit once it is answered). It does no
//! I/O beyond resolving that path, asking git, and reading the token and key
//! files.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use protocol::message::{
    ClientToDispatcher, CommitQuery, FlakyQuery, LogRequest, ManualSubmit, ReleaseQuery, RollbackRequest,
    Selector, TaskQuery,
};
use protocol::peer::Credentials;
use protocol::tls::ClientTls;
use protocol::{Branch, CommitId, CommitPrefix, Label, RepoUrl, Secret, TaskId, TaskState};

use crate::cli::{Cli, Command};
use crate::git;

/// `show` reads an all-digit argument shorter than this as a task id.
///
/// Seven digits keep every id below a million unambiguous while leaving
/// all-digit commit abbreviations reachable by typing one more digit (git's
/// default abbreviation is seven characters).
const MAX_ID_DIGITS_IN_SHOW: usize = 6;

/// Everything `baton` needs to run once the command line is accepted.
#[derive(Debug)]
pub struct Invocation {
    /// The dispatcher's `host:port`, as given.
    pub address: String,
    /// The shared secret and TLS trust, when given.
    pub credentials: Credentials,
    /// Print JSON instead of human output.
    pub json: bool,
    /// The request to send.
    pub request: ClientToDispatcher,
    /// `show --tests`: ask for the task's per-test outcomes too.
    pub with_tests: bool,
    /// For `submit` of a commit prefix the dispatcher resolves (`request` is
    /// then its `Commits` query): the rest of the submission.
    pub then_submit: Option<SubmitRest>,
}

/// A submission without its commit, which the dispatcher names first.
#[derive(Debug)]
pub struct SubmitRest {
    pub repo: RepoUrl,
    pub branch: Branch,
    pub labels: Vec<Label>,
}

impl SubmitRest {
    /// The submission of `commit`.
    pub fn with(&self, commit: CommitId) -> ManualSubmit {
        ManualSubmit {
            repo: self.repo.clone(),
            branch: self.branch.clone(),
            commit,
            labels: self.labels.clone(),
        }
    }
}

impl Invocation {
    /// Validates the command line and reads the token file.
    ///
    /// `cwd` is where relative repository paths are resolved from. A token file
    /// readable by group or others is used, with a warning on stderr.
    ///
    /// # Errors
    /// An argument the protocol's types refuse, a relative repository path
    /// that does not exist, or an unreadable or empty token file.
    pub fn from_cli(cli: Cli, cwd: &Path) -> anyhow::Result<Invocation> {
        let request = build(&cli.command, cwd)?;
        let then_submit = match (&request, &cli.command) {
            (ClientToDispatcher::Commits(query), Command::Submit(args)) => Some(SubmitRest {
                repo: query.repo.clone(),
                branch: parse_branch(&args.branch)?,
                labels: parse_labels(&args.labels)?,
            }),
            _ => None,
        };
        let secret = match &cli.token_file {
            Some(path) => Some(read_secret(path)?),
            None => None,
        };
        let tls = match &cli.tls_ca {
            Some(ca) => Some(
                ClientTls::from_ca_file(ca, cli.tls_server_name.as_deref())
                    .with_context(|| format!("reading TLS CA {}", ca.display()))?,
            ),
            None => None,
        };
        let user = crate::key::load(cli.key_file.as_deref(), cli.user.as_deref())?;
        let credentials = Credentials { secret, tls, user };
        let with_tests = matches!(&cli.command, Command::Show(args) if args.tests);
        Ok(Invocation {
            address: cli.dispatcher,
            credentials,
            json: cli.json,
            request,
            with_tests,
            then_submit,
        })
    }
}

/// Reads the token file, warning when others can read it too.
fn read_secret(path: &Path) -> anyhow::Result<Secret> {
    let (secret, exposed) =
        Secret::from_file(path).with_context(|| format!("reading token file {}", path.display()))?;
    if exposed {
        let warning = format!("warning: token file {} is readable by group or others", path.display());
        // A closed stderr must not stop the command over a warning.
        let _ = writeln!(std::io::stderr(), "{warning}");
    }
    Ok(secret)
}

/// Maps a command to its request.
///
/// # Errors
/// As [`Invocation::from_cli`], less the token file.
pub fn build(command: &Command, cwd: &Path) -> anyhow::Result<ClientToDispatcher> {
    let request = match command {
        Command::Status => ClientToDispatcher::Status,
        Command::Runners => ClientToDispatcher::Runners,
        Command::Tasks(args) => ClientToDispatcher::Tasks(TaskQuery {
            repo: args.repo.as_deref().map(|repo| resolve_repo(repo, cwd)).transpose()?,
            state: args.state.as_deref().map(parse_state).transpose()?,
            limit: args.limit,
        }),
        Command::Show(args) => ClientToDispatcher::Show(parse_selector(&args.target)?),
        Command::Log(args) => {
            ClientToDispatcher::Log(LogRequest { task_id: parse_task_id(&args.id)?, follow: args.follow })
        }
        Command::Submit(args) => {
            let repo = resolve_repo(&args.repo, cwd)?;
            let (branch, labels) = (parse_branch(&args.branch)?, parse_labels(&args.labels)?);
            match resolve_commit(&repo, &args.commit)? {
                Some(commit) => ClientToDispatcher::Submit(ManualSubmit { repo, branch, commit, labels }),
                None => ClientToDispatcher::Commits(CommitQuery {
                    repo,
                    prefix: CommitPrefix::new(args.commit.as_str()).map_err(anyhow::Error::msg)?,
                }),
            }
        }
        Command::Rerun(args) => ClientToDispatcher::Rerun(parse_task_id(&args.id)?),
        Command::Abort(args) => ClientToDispatcher::Abort(parse_task_id(&args.id)?),
        Command::Releases(args) => ClientToDispatcher::Releases(ReleaseQuery {
            repo: args.repo.as_deref().map(|repo| resolve_repo(repo, cwd)).transpose()?,
        }),
        Command::Rollback(args) => {
            let (repo, to) =
                (resolve_repo(&args.repo, cwd)?, args.to.as_deref().map(parse_version).transpose()?);
            match &args.env {
                Some(env) => crate::deploy::rollback(repo, crate::deploy::env(env)?, to),
                None => ClientToDispatcher::Rollback(RollbackRequest { repo, to }),
            }
        }
        Command::Deploy(args) => crate::deploy::request(resolve_repo(&args.repo, cwd)?, args, false)?,
        Command::Approve(args) => crate::deploy::request(resolve_repo(&args.repo, cwd)?, args, true)?,
        Command::Reject(args) => crate::deploy::reject(resolve_repo(&args.deployment.repo, cwd)?, args)?,
        Command::Deployments(args) => {
            crate::deploy::query(args.repo.as_deref().map(|repo| resolve_repo(repo, cwd)).transpose()?, args)?
        }
        Command::Flaky(args) => ClientToDispatcher::Flaky(FlakyQuery {
            repo: args.repo.as_deref().map(|repo| resolve_repo(repo, cwd)).transpose()?,
            limit: args.limit,
        }),
    };
    Ok(request)
}

/// The commit `submit` names: a full id as given, or a prefix of at least
/// four hex digits resolved by git in a local repository; `None` when only
/// the dispatcher can resolve the prefix.
fn resolve_commit(repo: &RepoUrl, raw: &str) -> anyhow::Result<Option<CommitId>> {
    let full_error = match CommitId::new(raw) {
        Ok(commit) => return Ok(Some(commit)),
        Err(err) => err,
    };
    let Ok(prefix) = CommitPrefix::new(raw) else {
        anyhow::bail!("{full_error} (a commit id, or an unambiguous prefix of at least 4 hex digits)")
    };
    match git::local_directory(repo) {
        Some(dir) => git::resolve(&dir, &prefix),
        None => Ok(None),
    }
}

fn parse_branch(raw: &str) -> anyhow::Result<Branch> {
    Branch::new(raw).map_err(anyhow::Error::msg)
}

fn parse_labels(raw: &[String]) -> anyhow::Result<Vec<Label>> {
    raw.iter().map(|label| Label::new(label.as_str()).map_err(anyhow::Error::msg)).collect()
}

/// A release version: `r3` or `3`.
pub(crate) fn parse_version(text: &str) -> anyhow::Result<u32> {
    let digits = text.strip_prefix('r').unwrap_or(text);
    match digits.parse::<u32>() {
        Ok(version) if version > 0 => Ok(version),
        _ => anyhow::bail!("invalid release version {text:?}: expected r1, r2, ... or 1, 2, ..."),
    }
}

/// A task state by its lowercase name.
fn parse_state(state: &str) -> anyhow::Result<TaskState> {
    state.parse().map_err(anyhow::Error::msg)
}

/// A task id: decimal digits only, positive, within `i64`.
fn parse_task_id(raw: &str) -> anyhow::Result<TaskId> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        anyhow::bail!("invalid task id {raw:?}: expected a positive integer");
    }
    let id: i64 = raw.parse().map_err(|_| anyhow::anyhow!("invalid task id {raw:?}: too large"))?;
    TaskId::new(id).map_err(anyhow::Error::msg)
}

/// The `show` rule: 1 to [`MAX_ID_DIGITS_IN_SHOW`] digits is a task id,
/// anything else a commit prefix.
fn parse_selector(raw: &str) -> anyhow::Result<Selector> {
    let is_id =
        !raw.is_empty() && raw.len() <= MAX_ID_DIGITS_IN_SHOW && raw.bytes().all(|b| b.is_ascii_digit());
    if is_id {
        Ok(Selector::Id(parse_task_id(raw)?))
    } else {
        Ok(Selector::Commit(CommitPrefix::new(raw).map_err(anyhow::Error::msg)?))
    }
}

/// A repository location. What [`RepoUrl`] accepts as given (an absolute
/// path, a URL, `user@host:path`) is used unchanged; a relative local path is
/// canonicalised against `cwd` first, so `baton submit . COMMIT` works and the
/// dispatcher never sees a path relative to somebody else's directory.
fn resolve_repo(raw: &str, cwd: &Path) -> anyhow::Result<RepoUrl> {
    let validated = RepoUrl::new(raw);
    let is_relative_path = !raw.contains("://") && Path::new(raw).is_relative();
    if validated.is_ok() || !is_relative_path || raw.is_empty() {
        return validated.map_err(anyhow::Error::msg);
    }
    let absolute = cwd
        .join(raw)
        .canonicalize()
        .with_context(|| format!("repository {raw:?} is neither a URL nor an existing local path"))?;
    let absolute = absolute
        .to_str()
        .with_context(|| format!("repository path {} is not valid UTF-8", absolute.display()))?;
    RepoUrl::new(absolute).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn request(args: &[&str]) -> anyhow::Result<ClientToDispatcher> {
        request_in(args, Path::new("/"))
    }

    fn request_in(args: &[&str], cwd: &Path) -> anyhow::Result<ClientToDispatcher> {
        let cli = Cli::try_parse_from(std::iter::once("baton").chain(args.iter().copied())).unwrap();
        build(&cli.command, cwd)
    }

    fn error(args: &[&str]) -> String {
        format!("{:#}", request(args).unwrap_err())
    }

    fn id(id: i64) -> TaskId {
        TaskId::new(id).unwrap()
    }

    #[test]
    fn simple_commands() {
        assert_eq!(request(&["status"]).unwrap(), ClientToDispatcher::Status);
        assert_eq!(request(&["runners"]).unwrap(), ClientToDispatcher::Runners);
        assert_eq!(request(&["rerun", "12"]).unwrap(), ClientToDispatcher::Rerun(id(12)));
        assert_eq!(request(&["abort", "3"]).unwrap(), ClientToDispatcher::Abort(id(3)));
        assert_eq!(
            request(&["log", "1234567", "--follow"]).unwrap(),
            ClientToDispatcher::Log(LogRequest { task_id: id(1_234_567), follow: true })
        );
    }

    #[test]
    fn tasks_filters() {
        assert_eq!(
            request(&["tasks"]).unwrap(),
            ClientToDispatcher::Tasks(TaskQuery { repo: None, state: None, limit: 20 })
        );
        assert_eq!(
            request(&["tasks", "--repo", "https://h/x.git", "--state", "failed", "--limit", "5"]).unwrap(),
            ClientToDispatcher::Tasks(TaskQuery {
                repo: Some(RepoUrl::new("https://h/x.git").unwrap()),
                state: Some(TaskState::Failed),
                limit: 5,
            })
        );
        assert_eq!(
            error(&["tasks", "--state", "done"]),
            "unknown state \"done\": expected pending, running, passed, failed, error or aborted"
        );
    }

    #[test]
    fn show_takes_short_digit_strings_as_ids_and_the_rest_as_commits() {
        let show = |arg: &str| request(&["show", arg]).unwrap();
        let commit =
            |prefix: &str| ClientToDispatcher::Show(Selector::Commit(CommitPrefix::new(prefix).unwrap()));
        assert_eq!(show("7"), ClientToDispatcher::Show(Selector::Id(id(7))));
        assert_eq!(show("1234"), ClientToDispatcher::Show(Selector::Id(id(1234))));
        assert_eq!(show("999999"), ClientToDispatcher::Show(Selector::Id(id(999_999))));
        assert_eq!(show("1234567"), commit("1234567"));
        assert_eq!(show("abcd"), commit("abcd"));
        assert_eq!(show("12ab"), commit("12ab"));
        assert_eq!(show(COMMIT), commit(COMMIT));
        assert_eq!(error(&["show", "0"]), "task id must be positive, got 0");
        assert_eq!(
            error(&["show", "HEAD"]),
            "invalid commit \"HEAD\": expected 4 to 64 lowercase hex digits"
        );
        assert_eq!(error(&["show", "abc"]), "invalid commit \"abc\": expected 4 to 64 lowercase hex digits");
    }

    #[test]
    fn task_ids_are_checked() {
        assert_eq!(error(&["rerun", "0"]), "task id must be positive, got 0");
        assert_eq!(error(&["abort", "x1"]), "invalid task id \"x1\": expected a positive integer");
        assert_eq!(
            error(&["log", "99999999999999999999"]),
            "invalid task id \"99999999999999999999\": too large"
        );
    }

    #[test]
    fn submit_validates_through_the_protocol_types() {
        assert_eq!(
            request(&["submit", "/srv/app.git", COMMIT, "--branch", "dev", "--label", "linux"]).unwrap(),
            ClientToDispatcher::Submit(ManualSubmit {
                repo: RepoUrl::new("/srv/app.git").unwrap(),
                branch: Branch::new("dev").unwrap(),
                commit: CommitId::new(COMMIT).unwrap(),
                labels: vec![Label::new("linux").unwrap()],
            })
        );
        let ClientToDispatcher::Submit(submit) =
            request(&["submit", "git@host:team/app.git", COMMIT]).unwrap()
        else {
            panic!("not a submit")
        };
        assert_eq!(submit.branch.as_str(), "main");
        assert_eq!(submit.repo.as_str(), "git@host:team/app.git");
        // A prefix of a repository the client cannot read is the dispatcher's
        // to resolve; something that is not even a prefix is refused here.
        assert_eq!(
            request(&["submit", "/srv/app.git", "abc123"]).unwrap(),
            ClientToDispatcher::Commits(CommitQuery {
                repo: RepoUrl::new("/srv/app.git").unwrap(),
                prefix: CommitPrefix::new("abc123").unwrap(),
            })
        );
        assert_eq!(
            error(&["submit", "/srv/app.git", "abc"]),
            "invalid commit id \"abc\": expected 40 or 64 lowercase hex digits \
             (a commit id, or an unambiguous prefix of at least 4 hex digits)"
        );
        assert!(error(&["submit", "/srv/app.git", "main"]).starts_with("invalid commit id"));
        assert!(error(&["submit", "/srv/app.git", COMMIT, "--branch", "a..b"]).starts_with("invalid branch"));
        assert!(error(&["submit", "/srv/app.git", COMMIT, "--label", "a b"]).starts_with("invalid name"));
        assert!(error(&["submit", "/srv/../etc", COMMIT]).contains("must not contain '..' components"));
        assert!(error(&["submit", "/srv/a\nb", COMMIT]).starts_with("invalid repository"));
        assert!(error(&["submit", "ext::sh -c x", COMMIT])
            .starts_with("repository \"ext::sh -c x\" is neither a URL nor an existing local path: "));
    }

    #[test]
    fn relative_repository_paths_are_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repos/app")).unwrap();
        let canonical = dir.path().join("repos/app").canonicalize().unwrap();
        let expected = RepoUrl::new(canonical.to_str().unwrap()).unwrap();
        for relative in ["repos/app", "./repos/app", "repos/../repos/app"] {
            let ClientToDispatcher::Submit(submit) =
                request_in(&["submit", relative, COMMIT], dir.path()).unwrap()
            else {
                panic!("not a submit")
            };
            assert_eq!(submit.repo, expected, "{relative}");
        }
        let inside = dir.path().join("repos/app");
        let ClientToDispatcher::Tasks(query) = request_in(&["tasks", "--repo", "."], &inside).unwrap() else {
            panic!("not tasks")
        };
        assert_eq!(query.repo, Some(expected));
        let missing = request_in(&["submit", "nope", COMMIT], dir.path()).unwrap_err();
        assert!(
            format!("{missing:#}")
                .starts_with("repository \"nope\" is neither a URL nor an existing local path: "),
            "{missing:#}"
        );
    }
}
