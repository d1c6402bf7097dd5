//! Client (`baton`) connections: queries answered from the store's readers
//! or the scheduler's memory, commands sent to the scheduler, and console
//! output streamed from the log files. Every request is first checked by
//! [`crate::users::authorize`] for the connection's [`Principal`].

use protocol::message::{ClientToDispatcher, DispatcherToClient, LogRequest, Selector, TaskInfo};
use protocol::{Connection, Name, RepoUrl, Sender, TaskId};
use tokio_util::sync::CancellationToken;

use crate::scheduler::{Event, Steer, Stopped};
use crate::server::Shared;
use crate::store::Trigger;
use crate::users::{authorize, Action, Principal};

/// Most tasks one `tasks` query returns.
const MAX_LIMIT: u32 = 10_000;
/// How long an admitted client may sit between requests before its
/// connection is closed, so idle clients do not hold connection slots.
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Who a client connection is: its principal, and its handshake name (the
/// actor steering records name when no user is proven).
pub struct Peer {
    pub principal: Principal,
    pub name: Name,
}

/// Serves one client until it disconnects or the dispatcher stops.
pub async fn serve(
    conn: Connection<ClientToDispatcher, DispatcherToClient>,
    shared: &Shared,
    peer: Peer,
    token: CancellationToken,
) {
    let (mut receiver, mut sender) = conn.split();
    let mut limiter = super::limit::Limiter::new(super::limit::CLIENT);
    loop {
        let request = tokio::select! {
            _ = token.cancelled() => return,
            request = tokio::time::timeout(IDLE, receiver.recv()) => match request {
                Ok(request) => request,
                Err(_) => {
                    tracing::debug!("idle client; closing");
                    return;
                }
            },
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, "bad frame from client; closing");
                return;
            }
        };
        if !limiter.allow() {
            tracing::warn!("client is flooding; closing");
            return;
        }
        tracing::debug!(request = ?request, "client request");
        let result = match check(shared, &peer.principal, &request).await {
            Err(refusal) => {
                sender.send(&DispatcherToClient::Error(refusal)).await.map_err(anyhow::Error::from)
            }
            Ok(()) => match request {
                ClientToDispatcher::Log(log) => stream_log(&mut sender, shared, log, &token).await,
                other => {
                    let answer = answer(shared, other, &peer).await;
                    sender.send(&answer).await.map_err(anyhow::Error::from)
                }
            },
        };
        if let Err(err) = result {
            tracing::debug!(error = %format!("{err:#}"), "client went away");
            return;
        }
    }
}

/// Whether the principal may make this request.
///
/// # Errors
/// The refusal's text, for the client.
async fn check(shared: &Shared, principal: &Principal, request: &ClientToDispatcher) -> Result<(), String> {
    let users = &shared.users;
    let task_repo;
    let action = match request {
        ClientToDispatcher::Submit(submit) => Action::Trigger { repo: &submit.repo },
        ClientToDispatcher::Rerun(task_id) | ClientToDispatcher::Abort(task_id) => {
            // Roles may be limited to repositories: find the task's. Without
            // users the repository does not matter and is not looked up: every
            // steering action then has the same rule, `Admin`'s included.
            task_repo = match users.enabled() {
                true => repo_of(shared, *task_id).await?,
                false => None,
            };
            match &task_repo {
                Some(repo) => Action::Trigger { repo },
                None if users.enabled() => return Err(format!("no task {task_id}")),
                None => Action::Admin,
            }
        }
        ClientToDispatcher::Rollback(rollback) => Action::Approve { repo: &rollback.repo, environment: None },
        // Asking for, approving, rejecting or rolling back a deployment is a
        // delivery right in that environment.
        ClientToDispatcher::Deploy(request) | ClientToDispatcher::Approve(request) => {
            Action::Approve { repo: &request.repo, environment: Some(request.env.as_str()) }
        }
        ClientToDispatcher::Reject(request) => {
            Action::Approve { repo: &request.repo, environment: Some(request.env.as_str()) }
        }
        ClientToDispatcher::RollbackEnv(request) => {
            Action::Approve { repo: &request.repo, environment: Some(request.env.as_str()) }
        }
        ClientToDispatcher::Status
        | ClientToDispatcher::Runners
        | ClientToDispatcher::Tasks(_)
        | ClientToDispatcher::Show(_)
        | ClientToDispatcher::Log(_)
        | ClientToDispatcher::Pools
        | ClientToDispatcher::Releases(_)
        | ClientToDispatcher::Commits(_)
        | ClientToDispatcher::Deployments(_)
        | ClientToDispatcher::TestCases(_)
        | ClientToDispatcher::Flaky(_) => Action::Read,
    };
    authorize(users, principal, action).map_err(|refusal| {
        tracing::info!(user = ?principal.user, %refusal, "request refused");
        refusal.to_string()
    })
}

/// The repository of a task, read from the store.
async fn repo_of(shared: &Shared, task_id: TaskId) -> Result<Option<RepoUrl>, String> {
    let task = read_task(shared, task_id).await.map_err(|err| format!("{err:#}"))?;
    Ok(task.map(|task| task.repo))
}

async fn answer(shared: &Shared, request: ClientToDispatcher, peer: &Peer) -> DispatcherToClient {
    let by = peer.principal.actor(peer.name.as_str());
    let scheduler = &shared.scheduler;
    let result: Result<DispatcherToClient, String> = match request {
        ClientToDispatcher::Status => scheduler
            .ask(|reply| Event::Status { reply })
            .await
            .map(DispatcherToClient::Status)
            .map_err(stopped),
        ClientToDispatcher::Runners => scheduler
            .ask(|reply| Event::Runners { reply })
            .await
            .map(DispatcherToClient::Runners)
            .map_err(stopped),
        ClientToDispatcher::Tasks(query) => {
            let limit = query.limit.clamp(1, MAX_LIMIT);
            shared
                .readers
                .query(move |reader| reader.tasks(query.repo.as_ref(), query.state, limit))
                .await
                .map(DispatcherToClient::Tasks)
                .map_err(|err| format!("{err:#}"))
        }
        ClientToDispatcher::Show(selector) => {
            let found = shared
                .readers
                .query(move |reader| match &selector {
                    Selector::Id(id) => reader.task(*id),
                    Selector::Commit(prefix) => match reader.newest_for_commit(prefix)? {
                        Some(task) => Ok(Some(task)),
                        // `baton show 1000000`: the client reads long digit
                        // strings as commit prefixes; with no such commit,
                        // it is a task id past a million.
                        None => match prefix.as_str().parse::<i64>().ok().and_then(|id| TaskId::new(id).ok())
                        {
                            Some(id) => reader.task(id),
                            None => Ok(None),
                        },
                    },
                })
                .await;
            match found {
                Ok(Some(task)) => {
                    Ok(DispatcherToClient::Task(Some(Box::new(explain_wait(shared, task).await))))
                }
                Ok(None) => Ok(DispatcherToClient::Task(None)),
                Err(err) => Err(format!("{err:#}")),
            }
        }
        ClientToDispatcher::Submit(submit) => {
            let task = super::new_task(
                submit.repo,
                submit.branch,
                submit.commit,
                submit.labels,
                Trigger::Manual,
                Some(by),
            );
            match scheduler.ask(|reply| Event::Submit { task, reply }).await {
                Ok(result) => result.map(DispatcherToClient::Accepted),
                Err(err) => Err(stopped(err)),
            }
        }
        ClientToDispatcher::Rerun(task_id) => {
            match scheduler.ask(|reply| Event::Rerun { task_id, by, reply }).await {
                Ok(result) => result.map(DispatcherToClient::Accepted),
                Err(err) => Err(stopped(err)),
            }
        }
        ClientToDispatcher::Abort(task_id) => {
            match scheduler.ask(|reply| Event::Abort { task_id, by, reply }).await {
                Ok(result) => result.map(|task| DispatcherToClient::Aborted(Box::new(task))),
                Err(err) => Err(stopped(err)),
            }
        }
        ClientToDispatcher::Log(_) => Err("log is streamed, not answered".into()),
        ClientToDispatcher::Pools => {
            let load = shared.scheduler.subscribe_load().borrow().clone();
            Ok(DispatcherToClient::Pools(shared.pools.infos(&load)))
        }
        ClientToDispatcher::Releases(query) => shared
            .readers
            .query(move |reader| reader.releases(query.repo.as_ref()))
            .await
            .map(DispatcherToClient::Releases)
            .map_err(|err| format!("{err:#}")),
        ClientToDispatcher::Commits(query) => shared
            .readers
            // Two are enough to tell one answer from an ambiguous prefix.
            .query(move |reader| reader.commits_with_prefix(&query.repo, &query.prefix, 2))
            .await
            .map(DispatcherToClient::Commits)
            .map_err(|err| format!("{err:#}")),
        ClientToDispatcher::Rollback(request) => {
            let (repo, to, by) =
                (request.repo, request.to, peer.principal.user.as_ref().map(Name::to_string));
            match scheduler.ask(|reply| Event::Rollback { repo, to, by, reply }).await {
                Ok(result) => result.map(|release| DispatcherToClient::Release(Box::new(release))),
                Err(err) => Err(stopped(err)),
            }
        }
        ClientToDispatcher::Deployments(query) => shared
            .readers
            .query(move |reader| reader.deployments(query.repo.as_ref(), query.env.as_ref()))
            .await
            .map(DispatcherToClient::Deployments)
            .map_err(|err| format!("{err:#}")),
        ClientToDispatcher::Deploy(request) => steer(shared, Steer::Deploy(request), by).await,
        ClientToDispatcher::Approve(request) => steer(shared, Steer::Approve(request), by).await,
        ClientToDispatcher::Reject(request) => steer(shared, Steer::Reject(request), by).await,
        ClientToDispatcher::RollbackEnv(request) => steer(shared, Steer::Rollback(request), by).await,
        ClientToDispatcher::TestCases(task_id) => shared
            .readers
            .query(move |reader| reader.test_cases(task_id))
            .await
            .map(DispatcherToClient::TestCases)
            .map_err(|err| format!("{err:#}")),
        ClientToDispatcher::Flaky(query) => {
            let limit = query.limit.clamp(1, MAX_LIMIT);
            shared
                .readers
                .query(move |reader| reader.flaky_tests(query.repo.as_ref(), limit))
                .await
                .map(DispatcherToClient::Flaky)
                .map_err(|err| format!("{err:#}"))
        }
    };
    result.unwrap_or_else(DispatcherToClient::Error)
}

/// A deployment request for the scheduler, on behalf of `by`.
async fn steer(shared: &Shared, steer: Steer, by: String) -> Result<DispatcherToClient, String> {
    match shared.scheduler.ask(|reply| Event::Deployment { steer, by, reply }).await {
        Ok(result) => result.map(|deployment| DispatcherToClient::Deployment(Box::new(deployment))),
        Err(err) => Err(stopped(err)),
    }
}

/// A pending task that needs labels no live runner has says so, instead of
/// looking forgotten.
async fn explain_wait(shared: &Shared, mut task: TaskInfo) -> TaskInfo {
    if task.state != protocol::TaskState::Pending || task.labels.is_empty() {
        return task;
    }
    let Ok(runners) = shared.scheduler.ask(|reply| Event::Runners { reply }).await else { return task };
    let servable = runners.iter().any(|runner| {
        runner.state != protocol::message::RunnerState::Dead
            && task.labels.iter().all(|label| runner.labels.contains(label))
    });
    if !servable {
        let labels: Vec<&str> = task.labels.iter().map(|label| label.as_str()).collect();
        let mut reason = format!("waiting for a runner with labels: {}", labels.join(", "));
        // Runner managers start runners for work their pools can take.
        if shared.pools.any() && !shared.pools.serves(&task.labels) {
            reason.push_str(" (no runner manager's pool serves these labels)");
        }
        task.reason = Some(reason);
    }
    task
}

fn stopped(err: Stopped) -> String {
    err.to_string()
}

/// Sends a task's output: what the log holds, then, with `follow`, what is
/// appended until the task ends; then `LogEnd` with the task.
///
/// A follower reads each attempt's log through one open handle, and only up
/// to the length the scheduler published for that attempt: the scheduler
/// renames `logs/<id>.log` when a new attempt starts, and a handle opened by
/// name at the wrong moment would read the next attempt's bytes at the
/// previous attempt's offset (issue 11).
async fn stream_log(
    sender: &mut Sender<DispatcherToClient>,
    shared: &Shared,
    request: LogRequest,
    token: &CancellationToken,
) -> anyhow::Result<()> {
    let task_id = request.task_id;
    let Some(task) = read_task(shared, task_id).await? else {
        sender.send(&DispatcherToClient::Error(format!("no task {task_id}"))).await?;
        return Ok(());
    };
    if task.state.is_final() && crate::logs::pruned(&shared.files, &shared.readers, task_id).await? {
        let message = format!("the log of task {task_id} was pruned (--keep-logs)");
        sender.send(&DispatcherToClient::Error(message)).await?;
        return Ok(());
    }
    let follow = request.follow && !task.state.is_final();
    let read = crate::follow::read_log(
        &shared.scheduler,
        &shared.files,
        task_id,
        follow,
        token.cancelled(),
        &mut Client(sender),
    )
    .await?;
    if read == crate::follow::Read::Stopped {
        return Ok(());
    }
    let task = read_task(shared, task_id).await?.unwrap_or(task);
    sender.send(&DispatcherToClient::LogEnd(Box::new(task))).await?;
    Ok(())
}

/// A client connection reading a log.
struct Client<'a>(&'a mut Sender<DispatcherToClient>);

impl crate::follow::Sink for Client<'_> {
    /// Large frames: `baton log` of a big log is bound by per-frame costs.
    const CHUNK: usize = 256 * 1024;

    async fn chunk(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.0.send(&DispatcherToClient::LogChunk(bytes)).await?;
        Ok(())
    }
}

async fn read_task(shared: &Shared, task_id: TaskId) -> anyhow::Result<Option<TaskInfo>> {
    shared.readers.query(move |reader| reader.task(task_id)).await
}
