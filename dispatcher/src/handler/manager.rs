//! Runner manager connections (`baton-runner-manager`): the manager reports
//! its pools and asks to drain idle runners; the dispatcher pushes the load
//! (pending tasks by labels, runners by state) whenever it changes.
//!
//! The load is a `watch` channel, so pushes are coalesced: a manager that
//! reads slowly gets the newest load, never a backlog. Pool reports live in
//! [`Pools`], shared with the client handler for `baton status` and
//! `baton runners`, and vanish with their manager's connection.

use std::collections::HashMap;
use std::sync::Mutex;

use protocol::message::{DispatcherToManager, Drained, Load, ManagerToDispatcher, PoolInfo, PoolReport};
use protocol::{Connection, Name};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::scheduler::Event;
use crate::server::Shared;

/// Pools one manager may report.
const MAX_POOLS: usize = 64;
/// Runners one pool may list.
const MAX_POOL_RUNNERS: usize = 1024;
/// Labels one pool may list (as a runner may advertise).
const MAX_POOL_LABELS: usize = 64;
/// Drain answers queued for the writer; a manager asks for one drain per
/// idle runner at a time, so this is never reached by a well-behaved one.
const ANSWERS: usize = 64;
/// A manager sends a pool report on change and a drain per idle runner.
const RATE: super::limit::Rate = super::limit::Rate { per_second: 200.0, burst: 2_000.0 };

/// The pools of every connected manager, by connection.
#[derive(Default)]
pub struct Pools {
    by_conn: Mutex<HashMap<u64, Vec<PoolReport>>>,
}

impl Pools {
    fn set(&self, conn: u64, pools: Vec<PoolReport>) {
        self.lock().insert(conn, pools);
    }

    fn remove(&self, conn: u64) {
        self.lock().remove(&conn);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<PoolReport>>> {
        // A panic while holding the lock leaves a plain map, still valid.
        self.by_conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether any manager has reported a pool.
    pub fn any(&self) -> bool {
        self.lock().values().any(|pools| !pools.is_empty())
    }

    /// Whether some pool's labels satisfy `labels`.
    pub fn serves(&self, labels: &[protocol::Label]) -> bool {
        self.lock().values().flatten().any(|pool| labels.iter().all(|label| pool.labels.contains(label)))
    }

    /// The pool of each managed runner, by runner name.
    pub fn pool_of_runners(&self) -> HashMap<Name, Name> {
        let mut map = HashMap::new();
        for pool in self.lock().values().flatten() {
            for runner in &pool.runners {
                map.insert(runner.clone(), pool.name.clone());
            }
        }
        map
    }

    /// Every pool with its size, busy and pending counts from `load`.
    pub fn infos(&self, load: &Load) -> Vec<PoolInfo> {
        let mut infos: Vec<PoolInfo> = self
            .lock()
            .values()
            .flatten()
            .map(|pool| {
                let busy = load
                    .runners
                    .iter()
                    .filter(|runner| {
                        runner.state == protocol::message::LoadState::Busy
                            && pool.runners.contains(&runner.name)
                    })
                    .count();
                let pending: u32 = load
                    .pending
                    .iter()
                    .filter(|group| group.labels.iter().all(|label| pool.labels.contains(label)))
                    .map(|group| group.count)
                    .sum();
                PoolInfo {
                    name: pool.name.clone(),
                    labels: pool.labels.clone(),
                    min: pool.min,
                    max: pool.max,
                    size: pool.runners.len() as u32,
                    busy: busy as u32,
                    pending,
                    runners: pool.runners.clone(),
                }
            })
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }
}

/// Serves one runner manager until it disconnects or the dispatcher stops.
/// A manager steers (it drains runners), so with a token file it must have
/// proved the secret.
pub async fn serve(
    conn: Connection<ManagerToDispatcher, DispatcherToManager>,
    shared: &Shared,
    authenticated: bool,
    token: CancellationToken,
) {
    if !authenticated && shared.secret.is_some() {
        tracing::warn!("unauthenticated runner manager; closing");
        return;
    }
    let conn_id = shared.next_conn_id();
    let (mut receiver, mut sender) = conn.split();
    let (answers, mut queued) = mpsc::channel::<Drained>(ANSWERS);
    let mut load = shared.scheduler.subscribe_load();
    // The first load goes out at once; a tick makes the scheduler compute a
    // fresh one now that someone listens.
    load.mark_changed();
    let _ = shared.scheduler.send(Event::Tick).await;
    let stop = token.child_token();
    let writer_stop = stop.clone();
    let writer = async move {
        loop {
            let message = tokio::select! {
                _ = writer_stop.cancelled() => break,
                changed = load.changed() => match changed {
                    Ok(()) => DispatcherToManager::Load(Load::clone(&load.borrow_and_update())),
                    Err(_) => break,
                },
                answer = queued.recv() => match answer {
                    Some(answer) => DispatcherToManager::Drained(answer),
                    None => break,
                },
            };
            if let Err(err) = sender.send(&message).await {
                tracing::debug!(error = %err, "cannot write to runner manager");
                writer_stop.cancel();
                break;
            }
        }
    };
    let mut limiter = super::limit::Limiter::new(RATE);
    let reader = async {
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => break,
                message = receiver.recv() => message,
            };
            match message {
                Ok(Some(_)) if !limiter.allow() => {
                    tracing::warn!("runner manager is flooding; closing");
                    break;
                }
                Ok(Some(ManagerToDispatcher::Pools(pools))) => match check_pools(pools) {
                    Ok(pools) => {
                        tracing::info!(pools = pools.len(), "runner manager reported its pools");
                        shared.pools.set(conn_id, pools);
                    }
                    Err(reason) => {
                        tracing::warn!(reason, "invalid pool report; closing");
                        break;
                    }
                },
                Ok(Some(ManagerToDispatcher::Drain(runner))) => {
                    let name = runner.clone();
                    let Ok(result) = shared.scheduler.ask(|reply| Event::Drain { runner: name, reply }).await
                    else {
                        break;
                    };
                    let answer = Drained { runner, drained: result.is_ok(), reason: result.err() };
                    if answers.send(answer).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "bad frame from runner manager; closing");
                    break;
                }
            }
        }
        stop.cancel();
    };
    tokio::join!(reader, writer);
    shared.pools.remove(conn_id);
}

fn check_pools(pools: Vec<PoolReport>) -> Result<Vec<PoolReport>, String> {
    if pools.len() > MAX_POOLS {
        return Err(format!("more than {MAX_POOLS} pools"));
    }
    for pool in &pools {
        if pool.runners.len() > MAX_POOL_RUNNERS || pool.labels.len() > MAX_POOL_LABELS {
            return Err(format!("pool {} lists too many runners or labels", pool.name));
        }
        if pool.min > pool.max {
            return Err(format!("pool {} has min above max", pool.name));
        }
    }
    Ok(pools)
}
