//! One handler per peer role, each reading its role's messages and turning
//! them into scheduler events or store queries.

pub mod client;
pub mod limit;
pub mod manager;
pub mod observer;
pub mod runner;

/// Converts a submission from the wire into a store row.
pub(crate) fn new_task(
    repo: protocol::RepoUrl,
    branch: protocol::Branch,
    commit: protocol::CommitId,
    labels: Vec<protocol::Label>,
    trigger: crate::store::Trigger,
    requested_by: Option<String>,
) -> crate::store::NewTask {
    let kind = crate::store::TaskKind::Test;
    crate::store::NewTask {
        repo,
        branch,
        commit,
        labels,
        trigger,
        kind,
        release_id: None,
        host: None,
        deployment_id: None,
        requested_by,
    }
}
