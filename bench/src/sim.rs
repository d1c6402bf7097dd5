//! Simulated peers that speak the real protocol (runners built on
//! `harness::peer`), for load the real daemons
//! cannot make cheaply: runners that pass every task at once (and answer
//! heartbeats), and observers that pipeline thousands of submissions.
//!
//! Each simulated runner is one tokio task with one connection; a [`Fleet`]
//! owns them and aborts them all when dropped, which closes their sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use harness::peer::{self, FakeRunner, RunnerConnection};
use protocol::message::{
    DispatcherToObserver, DispatcherToRunner, ObserverToDispatcher, Pong, RunnerToDispatcher, Submit,
};
use protocol::{Branch, CommitId, Name, RepoUrl};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

/// Connections dialled at once when a fleet starts: below the listen
/// backlog, so no SYN is dropped and retried a second later.
const DIAL_CONCURRENCY: usize = 64;

/// Submissions written before a flush: large enough to fill a TCP segment
/// or several, small enough to keep the dispatcher busy from the start.
const SUBMIT_FLUSH_EVERY: usize = 64;

/// What the simulated runners of a fleet have seen, summed.
#[derive(Debug, Default)]
pub struct Counters {
    pub registered: AtomicU64,
    pub pongs: AtomicU64,
    pub assigned: AtomicU64,
    pub acked: AtomicU64,
    pub refused: AtomicU64,
    /// Set when `acked` reaches `ack_target`.
    pub ack_target: AtomicU64,
    pub target_reached: Notify,
}

/// Simulated runners; dropping the fleet disconnects them all.
pub struct Fleet {
    pub counters: Arc<Counters>,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Fleet {
    /// Connects `n` simulated runners named `{prefix}-{i}`; returns once each
    /// has dialled and sent `Register` (not necessarily been answered).
    ///
    /// `ack_target` is the number of `ResultAck`s after which
    /// [`Counters::target_reached`] is notified (0: never).
    ///
    /// # Errors
    /// When a runner cannot connect.
    pub async fn connect(addr: &str, prefix: &str, n: usize, ack_target: u64) -> anyhow::Result<Fleet> {
        let counters = Arc::new(Counters::default());
        counters.ack_target.store(ack_target, Ordering::SeqCst);
        let dialing = Arc::new(Semaphore::new(DIAL_CONCURRENCY));
        let mut tasks = JoinSet::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(n.max(1));
        for idx in 0..n {
            let name = Name::new(format!("{prefix}-{idx}")).map_err(anyhow::Error::msg)?;
            let (addr, counters, dialing, ready) =
                (addr.to_string(), Arc::clone(&counters), Arc::clone(&dialing), ready_tx.clone());
            tasks.spawn(async move {
                let permit = dialing.acquire_owned().await.context("dial semaphore closed")?;
                let dialled = register(&addr, &name).await;
                drop(permit);
                match dialled {
                    Ok(conn) => {
                        let _ = ready.send(Ok(())).await;
                        serve(conn, &counters).await
                    }
                    Err(err) => {
                        let _ = ready.send(Err(anyhow::anyhow!("{err:#}"))).await;
                        Err(err)
                    }
                }
            });
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(err)) => return Err(err.context("a simulated runner could not connect")),
                None => anyhow::bail!("simulated runners ended before connecting"),
            }
        }
        Ok(Fleet { counters, tasks })
    }

    /// The first simulated runner that failed, if any has ended.
    pub fn failure(&mut self) -> Option<anyhow::Error> {
        match self.tasks.try_join_next()? {
            Ok(Ok(())) => Some(anyhow::anyhow!("a simulated runner was disconnected")),
            Ok(Err(err)) => Some(err),
            Err(err) => Some(anyhow::anyhow!("a simulated runner panicked: {err}")),
        }
    }
}

async fn register(addr: &str, name: &Name) -> anyhow::Result<RunnerConnection> {
    let mut runner = FakeRunner::dial(addr, name.as_str()).await?;
    runner.send(RunnerToDispatcher::Register(peer::register(Vec::new(), Vec::new()))).await?;
    Ok(runner.conn)
}

/// Answers pings and passes every assignment at once, until disconnected.
async fn serve(mut conn: RunnerConnection, counters: &Counters) -> anyhow::Result<()> {
    while let Some(message) = conn.recv().await.context("simulated runner reading")? {
        match message {
            DispatcherToRunner::Registered(_) => {
                counters.registered.fetch_add(1, Ordering::Relaxed);
            }
            DispatcherToRunner::Ping(ping) => {
                conn.send(&RunnerToDispatcher::Pong(Pong { seq: ping.seq })).await?;
                counters.pongs.fetch_add(1, Ordering::Relaxed);
            }
            DispatcherToRunner::Assign(assign) => {
                counters.assigned.fetch_add(1, Ordering::Relaxed);
                let result = peer::passed(assign.task_id, assign.attempt);
                conn.send(&RunnerToDispatcher::Result(result)).await?;
            }
            DispatcherToRunner::ResultAck(ack) => {
                if !ack.accepted {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                }
                let acked = counters.acked.fetch_add(1, Ordering::SeqCst) + 1;
                if acked == counters.ack_target.load(Ordering::SeqCst) {
                    counters.target_reached.notify_one();
                }
            }
            DispatcherToRunner::Abort(_) | DispatcherToRunner::Forget(_) | DispatcherToRunner::Resend(_) => {}
        }
    }
    Ok(())
}

/// How one simulated observer's submissions went.
#[derive(Debug)]
pub struct Submitted {
    pub accepted: u64,
    pub duplicates: u64,
    /// When the last answer arrived.
    pub last_answer: Instant,
}

/// Submits `commits` of `repo` and `branch` on one observer connection,
/// pipelined: a writer keeps sending while a reader counts the in-order
/// answers.
///
/// # Errors
/// Connection failures, or a refused submission.
pub async fn submit_all(
    addr: &str,
    name: &str,
    repo: &RepoUrl,
    branch: &Branch,
    commits: &[CommitId],
) -> anyhow::Result<Submitted> {
    let conn = peer::dial_observer(addr, name).await?;
    let (mut receiver, mut sender) = conn.split();
    let writer = async {
        for (idx, commit) in commits.iter().enumerate() {
            let submit = Submit {
                repo: repo.clone(),
                branch: branch.clone(),
                commit: commit.clone(),
                labels: Vec::new(),
            };
            sender.feed(&ObserverToDispatcher::Submit(submit)).await?;
            if (idx + 1) % SUBMIT_FLUSH_EVERY == 0 {
                sender.flush().await?;
            }
        }
        sender.flush().await?;
        anyhow::Ok(())
    };
    let reader = async {
        let mut submitted = Submitted { accepted: 0, duplicates: 0, last_answer: Instant::now() };
        let mut n_answers = 0;
        while n_answers < commits.len() {
            match receiver.recv().await.context("reading submission answers")? {
                // Heartbeats come only after a second without answers.
                Some(DispatcherToObserver::Ping(_)) => continue,
                Some(DispatcherToObserver::Accepted(accepted)) => {
                    n_answers += 1;
                    submitted.accepted += 1;
                    submitted.duplicates += u64::from(accepted.duplicate);
                }
                Some(DispatcherToObserver::Refused(refused)) => {
                    anyhow::bail!("a submission was refused: {}", refused.reason)
                }
                None => anyhow::bail!("the dispatcher closed the observer connection"),
            }
        }
        submitted.last_answer = Instant::now();
        Ok(submitted)
    };
    let (written, read) = tokio::join!(writer, reader);
    written.context("writing submissions")?;
    read
}

/// `n` distinct fake commit ids (40 hex digits), spread like real ones.
pub fn fake_commits(n: usize, seed: u64) -> Vec<CommitId> {
    let mut state = seed;
    let mut next = move || {
        // splitmix64: cheap, well spread, deterministic.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| {
            let text = format!("{:016x}{:016x}{:08x}", next(), next(), next() as u32);
            // 16 + 16 + 8 lowercase hex digits: always a valid commit id.
            CommitId::new(text).expect("40 lowercase hex digits are a valid commit id")
        })
        .collect()
}
