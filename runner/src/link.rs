//! The runner's one connection to the dispatcher, kept up forever.
//!
//! Dial, register (naming every held attempt), then serve: the read loop owns
//! the receiving half and turns each message into an action on the attempts;
//! one writer task owns the sending half; one shipper per attempt per
//! connection streams the attempt's output from the spool, then its result.
//! The link applies the mirror rule of the dispatcher's liveness check:
//! `Registered` says how often the dispatcher pings and how many pings a
//! runner may miss, and no frame at all from the dispatcher for twice
//! `interval × misses` means the link is dead (a frozen dispatcher, a host
//! that vanished, a cut without a reset): the link drops it and dials again
//! at once, and the new registration re-adopts the running attempts.
//! When the connection drops, tests keep running and everything this
//! connection started stops; the next connection's `Registered` says where
//! shipping resumes. On failure the link waits with capped exponential
//! back-off and tries again, and never gives up: a dispatcher that is down is
//! not a reason to exit.
//!
//! This module owns no attempt state and writes no files.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::handshake::Role;
use protocol::message::{
    DispatcherToRunner, HostFacts, Output, Pong, Register, Registered, RunnerToDispatcher, SlotFreed,
};
use protocol::peer::Backoff;
use protocol::peer::Credentials;
use protocol::{Receiver, Sender};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::attempts::{Control, Progress, Shared};
use crate::spool::AttemptKey;

/// A last look for a frame once the idle timer fired (see the read loop).
const IDLE_GRACE: Duration = Duration::from_millis(250);

/// Messages that must not wait behind output (register, pongs, draining):
/// the writer always drains this lane first, so a heartbeat answer waits for
/// at most the one frame being written. Few are ever queued: one pong per
/// ping.
const URGENT_CAPACITY: usize = 16;

/// Output chunks and results waiting for the socket. Results share this
/// queue with output so that an attempt's result always follows its last
/// byte. 16 chunks of 64 KiB bound the memory a slow link can hold to 1 MiB.
const BULK_CAPACITY: usize = 16;

/// Largest output chunk per message.
const CHUNK: u64 = 64 * 1024;

/// How long a closing connection may take to send what is queued.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// How long the link waits for `Registered` (and any frame before it)
/// before it declares the dispatcher gone; after it, the dispatcher's own
/// heartbeat window applies.
const UNREGISTERED_IDLE: Duration = Duration::from_secs(30);

/// Bounds on the heartbeat window a dispatcher may announce: a hostile or
/// misconfigured value must neither make the link reconnect in a loop nor
/// switch the check off.
const MIN_IDLE: Duration = Duration::from_millis(100);
const MAX_IDLE: Duration = Duration::from_secs(3600);

/// Keeps the runner connected to the dispatcher until `stop` is cancelled.
pub async fn run(shared: Arc<Shared>, credentials: Credentials, stop: CancellationToken) {
    let address = shared.config.dispatcher.clone();
    let mut backoff = Backoff::default();
    loop {
        let dialled = tokio::select! {
            dialled = protocol::peer::dial_with::<DispatcherToRunner, RunnerToDispatcher>(
                &address,
                Role::Runner,
                &shared.config.name,
                &credentials,
                protocol::MAX_FRAME,
            ) => dialled,
            _ = stop.cancelled() => return,
        };
        let delay = match dialled {
            Ok((connection, welcome)) => {
                tracing::info!(dispatcher_version = %welcome.dispatcher_version, "connected");
                let (receiver, sender) = connection.split();
                let ended = session(&shared, receiver, sender, &stop, &mut backoff).await;
                if stop.is_cancelled() {
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!(error = %format!("{ended:#}"), retry_in = ?delay, "connection lost");
                delay
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, retry_in = ?delay, "cannot reach the dispatcher");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Serves one connection until it fails or `stop` is cancelled; returns why
/// it ended.
async fn session(
    shared: &Arc<Shared>,
    mut receiver: Receiver<DispatcherToRunner>,
    sender: Sender<RunnerToDispatcher>,
    stop: &CancellationToken,
    backoff: &mut Backoff,
) -> anyhow::Error {
    let connection_token = stop.child_token();
    let (urgent_tx, urgent_rx) = mpsc::channel(URGENT_CAPACITY);
    let (bulk_tx, bulk_rx) = mpsc::channel(BULK_CAPACITY);
    let mut writer = tokio::spawn(write_loop(sender, urgent_rx, bulk_rx));
    let mut writer_done = false;
    let mut link = Link {
        shared: shared.clone(),
        urgent: urgent_tx,
        bulk: bulk_tx,
        connection: connection_token.clone(),
        held_at_register: HashSet::new(),
        registered: false,
        idle: UNREGISTERED_IDLE,
    };
    let ended = async {
        link.register().await?;
        let mut draining = shared.draining();
        if *draining.borrow_and_update() {
            link.send_urgent(RunnerToDispatcher::Draining).await?;
        }
        let mut slot_freed = shared.slot_freed();
        slot_freed.borrow_and_update();
        loop {
            // Biased, so that a drain that starts just before the stop is
            // still announced.
            tokio::select! {
                biased;
                written = &mut writer => {
                    writer_done = true;
                    return match written {
                        Ok(Ok(())) => Err(anyhow::anyhow!("writer stopped")),
                        Ok(Err(err)) => Err(err).context("sending"),
                        Err(err) => Err(anyhow::anyhow!("writer failed: {err}")),
                    };
                }
                Ok(()) = draining.changed() => {
                    if *draining.borrow_and_update() {
                        tracing::info!("telling the dispatcher the runner is draining");
                        link.send_urgent(RunnerToDispatcher::Draining).await?;
                    }
                }
                Ok(()) = slot_freed.changed() => {
                    slot_freed.borrow_and_update();
                    let free_slots = shared.free_slots();
                    link.send_urgent(RunnerToDispatcher::SlotFreed(SlotFreed { free_slots })).await?;
                }
                _ = stop.cancelled() => return Ok(()),
                received = tokio::time::timeout(link.idle, receiver.recv()) => {
                    let idle = link.idle;
                    let received = match received {
                        Ok(received) => received,
                        // After a thread of ours was held up (a write slowed by
                        // the kernel's dirty-page throttling, a busy machine),
                        // the timer can fire before a frame already waiting in
                        // the socket is seen: look again, briefly, before
                        // calling the link dead.
                        Err(_) => tokio::time::timeout(IDLE_GRACE, receiver.recv()).await.map_err(|_| {
                            anyhow::anyhow!("no message from the dispatcher for {idle:?}: the link is dead")
                        })?,
                    };
                    let message = received
                        .context("receiving")?
                        .ok_or_else(|| anyhow::anyhow!("closed by the dispatcher"))?;
                    link.handle(message, backoff).await?;
                }
            }
        }
    }
    .await;
    // Stop the shippers and close the queues; the writer sends what is
    // queued and ends. It may be stuck writing to a peer that stopped
    // reading, so it gets a moment, then is aborted: anything unsent is sent
    // again after the next registration.
    connection_token.cancel();
    drop(link);
    if !writer_done && tokio::time::timeout(FLUSH_WAIT, &mut writer).await.is_err() {
        writer.abort();
    }
    match ended {
        Ok(()) => anyhow::anyhow!("stopped"),
        Err(err) => err,
    }
}

/// One connection's state, owned by its read loop.
struct Link {
    shared: Arc<Shared>,
    urgent: mpsc::Sender<RunnerToDispatcher>,
    bulk: mpsc::Sender<RunnerToDispatcher>,
    connection: CancellationToken,
    /// What `Register` named; anything `Registered` leaves out is forgotten.
    held_at_register: HashSet<AttemptKey>,
    registered: bool,
    /// How long the dispatcher may stay silent before the link is dropped.
    idle: Duration,
}

impl Link {
    async fn register(&mut self) -> anyhow::Result<()> {
        let held = self.shared.held();
        self.held_at_register =
            held.iter().map(|held| AttemptKey { task_id: held.task_id, attempt: held.attempt }).collect();
        let config = &self.shared.config;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        tracing::info!(held = held.len(), slots = config.slots, "registering");
        self.send_urgent(RunnerToDispatcher::Register(Register {
            labels: config.labels.clone(),
            slots: config.slots,
            host: HostFacts { os: std::env::consts::OS.into(), arch: std::env::consts::ARCH.into(), cpus },
            held,
        }))
        .await
    }

    async fn send_urgent(&self, message: RunnerToDispatcher) -> anyhow::Result<()> {
        self.urgent.send(message).await.map_err(|_| anyhow::anyhow!("writer stopped"))
    }

    async fn handle(&mut self, message: DispatcherToRunner, backoff: &mut Backoff) -> anyhow::Result<()> {
        match message {
            DispatcherToRunner::Registered(registered) => {
                backoff.reset();
                self.registered(registered).await;
            }
            DispatcherToRunner::Ping(ping) => {
                // Dropping a pong when the queue is full is harmless: the
                // dispatcher tolerates missed pings, and a full queue means
                // the socket is stuck anyway.
                if self.urgent.try_send(RunnerToDispatcher::Pong(Pong { seq: ping.seq })).is_err() {
                    tracing::debug!(seq = ping.seq, "pong dropped, send queue full");
                }
            }
            DispatcherToRunner::Assign(assign) => {
                let key = AttemptKey::of(&assign);
                tracing::info!(task_id = %key.task_id, attempt = key.attempt, commit = %assign.commit, "assigned");
                if let Some(progress) = self.shared.assign(assign) {
                    self.ship(key, progress, 0);
                }
            }
            DispatcherToRunner::Abort(abort) => {
                let key = AttemptKey { task_id: abort.task_id, attempt: abort.attempt };
                tracing::info!(task_id = %key.task_id, attempt = key.attempt, "abort requested");
                self.control(key, Control::Abort).await;
            }
            DispatcherToRunner::ResultAck(ack) => {
                let key = AttemptKey { task_id: ack.task_id, attempt: ack.attempt };
                self.control(key, Control::Ack { accepted: ack.accepted, reason: ack.reason }).await;
            }
            DispatcherToRunner::Forget(forget) => {
                let key = AttemptKey { task_id: forget.task_id, attempt: forget.attempt };
                self.control(key, Control::Forget { reason: forget.reason }).await;
            }
            DispatcherToRunner::Resend(resend) => {
                let key = AttemptKey { task_id: resend.task_id, attempt: resend.attempt };
                tracing::info!(task_id = %key.task_id, attempt = key.attempt, offset = resend.output_offset, "dispatcher asks for output again");
                match self.shared.progress(key) {
                    Some(progress) => self.ship(key, progress, resend.output_offset),
                    None => {
                        tracing::warn!(task_id = %key.task_id, attempt = key.attempt, "resend of an unknown attempt")
                    }
                }
            }
        }
        Ok(())
    }

    async fn registered(&mut self, registered: Registered) {
        if self.registered {
            tracing::warn!("second registration answer ignored");
            return;
        }
        self.registered = true;
        self.idle = heartbeat_window(registered.heartbeat_interval_ms, registered.heartbeat_misses);
        tracing::info!(resume = registered.resume.len(), forget = registered.forget.len(), window = ?self.idle, "registered");
        let resume: HashMap<AttemptKey, u64> = registered
            .resume
            .iter()
            .map(|resume| {
                (AttemptKey { task_id: resume.task_id, attempt: resume.attempt }, resume.output_offset)
            })
            .collect();
        for (key, offset) in &resume {
            match self.shared.progress(*key) {
                Some(progress) => self.ship(*key, progress, *offset),
                None => {
                    tracing::warn!(task_id = %key.task_id, attempt = key.attempt, "resume of an unknown attempt")
                }
            }
        }
        let mut forgotten = HashSet::new();
        for forget in registered.forget {
            let key = AttemptKey { task_id: forget.task_id, attempt: forget.attempt };
            forgotten.insert(key);
            self.control(key, Control::Forget { reason: forget.reason }).await;
        }
        let unnamed: Vec<AttemptKey> = self
            .held_at_register
            .iter()
            .filter(|key| !resume.contains_key(key) && !forgotten.contains(key))
            .copied()
            .collect();
        for key in unnamed {
            let reason = "not named in the registration answer".to_string();
            self.control(key, Control::Forget { reason }).await;
        }
    }

    async fn control(&self, key: AttemptKey, control: Control) {
        if !self.shared.control(key, control.clone()).await {
            tracing::warn!(task_id = %key.task_id, attempt = key.attempt, ?control, "message for an unknown attempt ignored");
        }
    }

    /// Starts shipping an attempt's output from `offset` on this connection.
    fn ship(&self, key: AttemptKey, progress: watch::Receiver<Progress>, offset: u64) {
        let span = tracing::info_span!("ship", task_id = %key.task_id, attempt = key.attempt);
        let path = self.shared.spool.output_path(key);
        let bulk = self.bulk.clone();
        let connection = self.connection.clone();
        self.shared.spawn(
            async move {
                if let Err(err) = ship(key, &path, progress, offset, bulk, connection).await {
                    tracing::warn!(error = %format!("{err:#}"), "stopped shipping output");
                }
            }
            .instrument(span),
        );
    }
}

/// Sends output from `offset` as it is written, then the result.
async fn ship(
    key: AttemptKey,
    path: &std::path::Path,
    mut progress: watch::Receiver<Progress>,
    mut offset: u64,
    bulk: mpsc::Sender<RunnerToDispatcher>,
    connection: CancellationToken,
) -> anyhow::Result<()> {
    let mut file: Option<tokio::fs::File> = None;
    loop {
        let state = progress.borrow_and_update().clone();
        if offset > state.written && state.finished.is_some() {
            tracing::warn!(offset, written = state.written, "dispatcher asked for output beyond its end");
        }
        while offset < state.written {
            if connection.is_cancelled() {
                return Ok(());
            }
            let file = match &mut file {
                Some(file) => file,
                None => {
                    let mut opened = tokio::fs::File::open(path).await.context("opening output")?;
                    opened.seek(std::io::SeekFrom::Start(offset)).await.context("seeking output")?;
                    file.insert(opened)
                }
            };
            let len = CHUNK.min(state.written - offset);
            let mut data = vec![0u8; len as usize];
            file.read_exact(&mut data).await.context("reading output")?;
            let output = Output { task_id: key.task_id, attempt: key.attempt, offset, data };
            if bulk.send(RunnerToDispatcher::Output(output)).await.is_err() {
                return Ok(());
            }
            offset += len;
        }
        if let Some(finished) = state.finished {
            tracing::info!(outcome = ?finished.outcome, "sending result");
            let _ = bulk.send(RunnerToDispatcher::Result(finished.to_message(key))).await;
            return Ok(());
        }
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    // The attempt was discarded.
                    return Ok(());
                }
            }
            _ = connection.cancelled() => return Ok(()),
        }
    }
}

/// The silence after which the dispatcher is judged gone: twice its own
/// window, within sane bounds. The margin is for the dispatcher's own
/// stalls (a slow fsync, a busy scheduler thread), which it forgives itself
/// for up to a window; a runner that dropped the link then would turn a
/// stall into a lost runner.
fn heartbeat_window(interval_ms: u64, misses: u32) -> Duration {
    let window = Duration::from_millis(interval_ms).saturating_mul(misses.max(1)).saturating_mul(2);
    window.clamp(MIN_IDLE, MAX_IDLE)
}

/// Owns the sending half: urgent messages first, then output and results.
/// Ends when every queue is closed and drained.
async fn write_loop(
    mut sender: Sender<RunnerToDispatcher>,
    mut urgent: mpsc::Receiver<RunnerToDispatcher>,
    mut bulk: mpsc::Receiver<RunnerToDispatcher>,
) -> Result<(), protocol::Error> {
    loop {
        let message = tokio::select! {
            biased;
            Some(message) = urgent.recv() => message,
            Some(message) = bulk.recv() => message,
            else => return Ok(()),
        };
        sender.send(&message).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_dispatchers_within_bounds() {
        assert_eq!(heartbeat_window(1000, 3), Duration::from_secs(6));
        assert_eq!(heartbeat_window(200, 0), Duration::from_millis(400));
        assert_eq!(heartbeat_window(0, 3), MIN_IDLE);
        assert_eq!(heartbeat_window(u64::MAX, u32::MAX), MAX_IDLE);
    }
}
