//! Peers that speak the real protocol through `protocol::peer::dial`, for
//! what the real daemons will not do: an observer connection for hand-made
//! submissions, and a runner that claims someone else's task (the security
//! tests' impostor) or passes every task at once by the thousand (the
//! benchmark's simulated fleet). Frames no real peer would send are the
//! security tests' own hand-written `Raw` peer.

use std::time::Duration;

use anyhow::Context;
use protocol::handshake::Role;
use protocol::message::{
    DispatcherToObserver, DispatcherToRunner, Held, HostFacts, ObserverToDispatcher, Outcome, Pong, Register,
    RunnerToDispatcher, TaskResult,
};
use protocol::{Connection, Label, Name, TaskId};

/// A runner's side of a connection.
pub type RunnerConnection = Connection<DispatcherToRunner, RunnerToDispatcher>;

/// An observer's side of a connection.
pub type ObserverConnection = Connection<DispatcherToObserver, ObserverToDispatcher>;

/// Dials `addr` as observer `name` without a secret; the connection is
/// ready for `Submit`s.
///
/// # Errors
/// When the name is invalid or the dial or handshake fails.
pub async fn dial_observer(addr: &str, name: &str) -> anyhow::Result<ObserverConnection> {
    let name = Name::new(name).map_err(anyhow::Error::msg)?;
    let (conn, _welcome) = protocol::peer::dial(addr, Role::Observer, &name, None, protocol::MAX_FRAME)
        .await
        .with_context(|| format!("fake observer {name} dialling {addr}"))?;
    Ok(conn)
}

/// What a fake runner registers with: one slot, `labels`, and the attempts
/// it claims to hold.
pub fn register(labels: Vec<Label>, held: Vec<Held>) -> Register {
    let host = HostFacts { os: "linux".into(), arch: std::env::consts::ARCH.into(), cpus: 1 };
    Register { labels, slots: 1, host, held }
}

/// A result that says the attempt passed, with every other field empty.
pub fn passed(task_id: TaskId, attempt: u32) -> TaskResult {
    TaskResult {
        task_id,
        attempt,
        outcome: Outcome::Passed,
        exit_code: Some(0),
        duration_ms: 0,
        summary: None,
        reason: None,
        output_len: 0,
        tag: None,
        failed_step: None,
        tests: vec![],
    }
}

/// A runner connection past the handshake (not yet registered).
pub struct FakeRunner {
    pub conn: RunnerConnection,
}

impl FakeRunner {
    /// Dials `addr` as runner `name` without a secret.
    ///
    /// # Errors
    /// When the name is invalid or the dial or handshake fails.
    pub async fn dial(addr: &str, name: &str) -> anyhow::Result<FakeRunner> {
        let name = Name::new(name).map_err(anyhow::Error::msg)?;
        let (conn, _welcome) = protocol::peer::dial(addr, Role::Runner, &name, None, protocol::MAX_FRAME)
            .await
            .with_context(|| format!("fake runner {name} dialling {addr}"))?;
        Ok(FakeRunner { conn })
    }

    /// Sends one message.
    ///
    /// # Errors
    /// When the connection fails.
    pub async fn send(&mut self, message: RunnerToDispatcher) -> anyhow::Result<()> {
        self.conn.send(&message).await.context("fake runner sending")
    }

    /// The next message that is not a ping or a `Forget`, within `patience`;
    /// pings are answered on the way.
    ///
    /// # Errors
    /// When the connection fails or closes, or `patience` runs out.
    pub async fn next(&mut self, patience: Duration) -> anyhow::Result<DispatcherToRunner> {
        loop {
            let received = tokio::time::timeout(patience, self.conn.recv())
                .await
                .with_context(|| format!("no message from the dispatcher within {patience:?}"))?;
            match received.context("fake runner reading")? {
                Some(DispatcherToRunner::Ping(ping)) => {
                    self.send(RunnerToDispatcher::Pong(Pong { seq: ping.seq })).await?
                }
                Some(DispatcherToRunner::Forget(_)) => {}
                Some(other) => return Ok(other),
                None => anyhow::bail!("the dispatcher closed the connection"),
            }
        }
    }
}
