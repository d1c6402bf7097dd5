//! The deployment commands of SPEC §12: `deploy`, `approve`, `reject`,
//! `deployments` and `rollback --env`: their arguments, their requests and
//! how their answers look. `cli`, `request` and `command` only wire them in.

use clap::Args;
use comfy_table::Cell;
use protocol::message::{
    ClientToDispatcher, DeploymentInfo, DeploymentQuery, DeploymentRequest, DispatcherToClient,
    EnvRollbackRequest, RejectRequest,
};
use protocol::view::{self, relative};
use protocol::{Name, RepoUrl};

use crate::render::{self, Style};

/// Written where a value is absent.
const NONE: &str = "-";

/// `baton deploy` and `baton approve`.
#[derive(Debug, Args)]
pub struct DeploymentArgs {
    /// The repository (a URL, or a local path made absolute).
    pub repo: String,

    /// The release: `r3` or `3`.
    #[arg(value_name = "VERSION")]
    pub version: String,

    /// The environment.
    #[arg(long, value_name = "ENV")]
    pub env: String,
}

/// `baton reject`.
#[derive(Debug, Args)]
pub struct RejectArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,

    /// Why, for the record.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

/// `baton deployments`.
#[derive(Debug, Args)]
pub struct DeploymentsArgs {
    /// Only deployments of this repository (a URL, or a local path made absolute).
    #[arg(long, value_name = "REPO")]
    pub repo: Option<String>,

    /// Only deployments to this environment.
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
}

/// The request of `deploy` (`approve` when `approve` is set).
///
/// # Errors
/// An invalid version or environment name.
pub fn request(repo: RepoUrl, args: &DeploymentArgs, approve: bool) -> anyhow::Result<ClientToDispatcher> {
    let request = DeploymentRequest {
        repo,
        version: super::request::parse_version(&args.version)?,
        env: env(&args.env)?,
    };
    Ok(if approve { ClientToDispatcher::Approve(request) } else { ClientToDispatcher::Deploy(request) })
}

/// The request of `reject`.
///
/// # Errors
/// An invalid version or environment name, or an empty reason.
pub fn reject(repo: RepoUrl, args: &RejectArgs) -> anyhow::Result<ClientToDispatcher> {
    anyhow::ensure!(!args.reason.trim().is_empty(), "--reason must say why");
    Ok(ClientToDispatcher::Reject(RejectRequest {
        repo,
        version: super::request::parse_version(&args.deployment.version)?,
        env: env(&args.deployment.env)?,
        reason: args.reason.clone(),
    }))
}

/// The request of `deployments`.
///
/// # Errors
/// An invalid environment name.
pub fn query(repo: Option<RepoUrl>, args: &DeploymentsArgs) -> anyhow::Result<ClientToDispatcher> {
    Ok(ClientToDispatcher::Deployments(DeploymentQuery {
        repo,
        env: args.env.as_deref().map(env).transpose()?,
    }))
}

/// The request of `rollback REPO --env E [--to VERSION]`.
pub fn rollback(repo: RepoUrl, env: Name, to: Option<u32>) -> ClientToDispatcher {
    ClientToDispatcher::RollbackEnv(EnvRollbackRequest { repo, env, to })
}

/// An environment name.
///
/// # Errors
/// A name with characters a name may not have.
pub fn env(text: &str) -> anyhow::Result<Name> {
    Name::new(text).map_err(|err| anyhow::anyhow!("invalid environment {text:?}: {err}"))
}

/// The text for a deployment answer, or `None` when the pair is not one of
/// this module's.
pub fn present(
    request: &ClientToDispatcher,
    answer: &DispatcherToClient,
    as_json: bool,
    now_ms: i64,
    style: Style,
) -> Option<String> {
    let deployments: Vec<&DeploymentInfo> = match (request, answer) {
        (ClientToDispatcher::Deployments(_), DispatcherToClient::Deployments(list)) => {
            if as_json {
                return Some(json(serde_json::Value::Array(list.iter().map(view::deployment).collect())));
            }
            list.iter().collect()
        }
        (
            ClientToDispatcher::Deploy(_)
            | ClientToDispatcher::Approve(_)
            | ClientToDispatcher::Reject(_)
            | ClientToDispatcher::RollbackEnv(_),
            DispatcherToClient::Deployment(one),
        ) => {
            if as_json {
                return Some(json(view::deployment(one)));
            }
            vec![&**one]
        }
        _ => return None,
    };
    Some(table(&deployments, now_ms, style))
}

fn json(value: serde_json::Value) -> String {
    let mut text = serde_json::to_string(&value).expect("a serde_json::Value always serialises");
    text.push('\n');
    text
}

/// One line per deployment, what it waits for or why it ended last.
pub fn table(deployments: &[&DeploymentInfo], now_ms: i64, style: Style) -> String {
    if deployments.is_empty() {
        return "no deployments\n".into();
    }
    let mut table = render::table(
        style,
        &["ID", "REPO", "VERSION", "ENV", "STATE", "HOSTS", "REQUESTED BY", "APPROVED BY", "CREATED", "NOTE"],
    );
    for deployment in deployments {
        let hosts: Vec<String> = deployment
            .hosts
            .iter()
            .map(|host| format!("{}{}={}", host.name, if host.canary { "*" } else { "" }, host.state))
            .collect();
        let note = match (&deployment.waiting_for, &deployment.reason) {
            (Some(waiting_for), _) => format!("waiting for {waiting_for}"),
            (None, Some(reason)) => reason.clone(),
            (None, None) => NONE.to_string(),
        };
        let version = match deployment.kind {
            protocol::ReleaseKind::Rollback => format!("r{} (rollback)", deployment.version),
            protocol::ReleaseKind::Release => format!("r{}", deployment.version),
        };
        table.add_row(vec![
            Cell::new(deployment.id),
            Cell::new(&deployment.repo),
            Cell::new(version),
            Cell::new(&deployment.environment),
            Cell::new(deployment.state),
            Cell::new(if hosts.is_empty() { NONE.to_string() } else { hosts.join(" ") }),
            Cell::new(&deployment.requested_by),
            Cell::new(deployment.approved_by.as_deref().unwrap_or(NONE)),
            Cell::new(relative(now_ms, deployment.created_at_ms)),
            Cell::new(note),
        ]);
    }
    render::finish(&table)
}
