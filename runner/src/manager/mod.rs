//! `baton-runner-manager`: keeps each pool of identical runners between its
//! MIN and MAX, starting runners as work comes and stopping them when they
//! sit idle (SPEC §11).
//!
//! Code map: `cli` and `config` turn flags into a [`Config`]; `link` keeps the
//! connection to the dispatcher, which pushes the load (pending tasks by
//! labels, runners by state) and answers drain requests; `fleet` decides, as
//! a pure function of what it knows; `driver` starts and stops runners
//! (local processes with pid files, or the operator's commands). [`run`] is
//! the loop that ties them: every event (a load, a drain answer, a runner
//! exiting, a tick) updates the fleet, then the fleet's actions are
//! performed and the pools reported.
//!
//! **Invariant:** a runner is stopped only after the dispatcher drained it
//! (it then gets no work), or once the dispatcher lists it as draining: a
//! busy runner is never stopped, and without the dispatcher nothing is.
//! **Invariant:** one manager per work root (a lock file), so two managers
//! never adopt the same runners.

pub mod cli;
pub mod config;
mod driver;
mod fleet;
mod link;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::message::DispatcherToManager;
use protocol::peer::Credentials;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use self::config::Config;
use self::driver::{Driver, DriverEvent};
use self::fleet::{Action, Fleet};
use self::link::{LinkEvent, LinkInput};

/// How often runner processes are checked and idle timers looked at. A dead
/// local runner is noticed within this; the scheduling decisions themselves
/// follow each load the dispatcher pushes at once.
const TICK: Duration = Duration::from_millis(200);

/// Drain requests waiting for the link (one per idle runner at most).
const DRAIN_QUEUE: usize = 1024;

/// Events from the link and the drivers waiting for the loop.
const EVENT_QUEUE: usize = 256;

/// Runs the manager until `shutdown` is cancelled. Runners are left running
/// on a stop: the next start adopts them.
///
/// # Errors
/// Start-up failures only: the work root cannot be created or is locked by
/// another manager, the token or CA file cannot be read.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let credentials = Credentials::load(
        config.token_file.as_deref(),
        config.tls_ca.as_deref(),
        config.tls_server_name.as_deref(),
    )?;
    std::fs::create_dir_all(&config.work_root)
        .with_context(|| format!("creating work root {}", config.work_root.display()))?;
    let _lock = lock(&config.work_root)?;
    let (driver_events, mut from_driver) = mpsc::channel(EVENT_QUEUE);
    let mut driver = Driver::new(&config, driver_events);
    let watch_absence = matches!(config.driver, config::DriverConfig::Command { .. });
    let mut fleet = Fleet::new(config.pools.clone(), watch_absence);
    for (name, pool) in driver.adopt(|name| fleet.pool_of_name(name)) {
        fleet.adopt(name, pool);
    }
    tracing::info!(pools = config.pools.len(), adopted = fleet.runners.len(),
        idle_timeout = %humantime::format_duration(config.idle_timeout), "runner manager starting");

    let (pools_tx, pools_rx) = watch::channel(fleet.reports());
    let (drains_tx, drains_rx) = mpsc::channel(DRAIN_QUEUE);
    let (link_events, mut from_link) = mpsc::channel(EVENT_QUEUE);
    let link_stop = CancellationToken::new();
    let link = tokio::spawn(
        link::run(
            config.dispatcher.clone(),
            config.name.clone(),
            credentials,
            LinkInput { pools: pools_rx, drains: drains_rx },
            link_events,
            link_stop.clone(),
        )
        .instrument(tracing::info_span!("link", dispatcher = %config.dispatcher)),
    );
    let mut manager = Manager { config, driver, fleet, drains: drains_tx, pools: pools_tx };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = from_link.recv() => match event {
                Some(event) => manager.on_link(event),
                None => break,
            },
            Some(event) = from_driver.recv() => manager.on_driver(event),
            _ = tick.tick() => manager.on_tick(),
        }
        manager.step();
    }
    link_stop.cancel();
    let _ = link.await;
    tracing::info!(runners = manager.fleet.runners.len(), "runner manager stopped; its runners keep running");
    Ok(())
}

/// The loop's state.
struct Manager {
    config: Config,
    driver: Driver,
    fleet: Fleet,
    drains: mpsc::Sender<protocol::Name>,
    pools: watch::Sender<Vec<protocol::message::PoolReport>>,
}

impl Manager {
    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected => {}
            LinkEvent::Disconnected => self.fleet.disconnected(),
            LinkEvent::Message(DispatcherToManager::Load(load)) => self.fleet.observe(load, Instant::now()),
            LinkEvent::Message(DispatcherToManager::Drained(answer)) => {
                if let Some(action) = self.fleet.drained(&answer) {
                    self.perform(action);
                }
            }
        }
    }

    fn on_driver(&mut self, event: DriverEvent) {
        match event {
            DriverEvent::Gone { name, reason } => self.gone(&name, &reason),
            DriverEvent::Stopped { name } => self.gone(&name, "stopped"),
            DriverEvent::StopFailed { name, reason } => {
                tracing::warn!(runner = %name, reason, "stop failed; will try again");
                self.fleet.stop_failed(&name);
            }
        }
    }

    fn on_tick(&mut self) {
        for (name, reason) in self.driver.exited() {
            self.gone(&name, &reason);
        }
    }

    fn gone(&mut self, name: &protocol::Name, reason: &str) {
        let Some(runner) = self.fleet.remove(name) else { return };
        self.driver.forget(name);
        let pool = &self.fleet.pools[runner.pool].name;
        if runner.phase == fleet::Phase::Stopping {
            tracing::info!(runner = %name, pool = %pool, reason, "runner stopped");
        } else {
            tracing::warn!(runner = %name, pool = %pool, reason, "runner gone; a replacement starts if the pool needs one");
        }
    }

    /// Decides, acts, and reports the pools if they changed.
    fn step(&mut self) {
        for action in self.fleet.decide(Instant::now(), self.config.idle_timeout) {
            self.perform(action);
        }
        let reports = self.fleet.reports();
        self.pools.send_if_modified(|current| {
            if *current == reports {
                false
            } else {
                *current = reports;
                true
            }
        });
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Start { pool, name, reason } => {
                let pool_config = &self.fleet.pools[pool];
                match self.driver.start(pool_config, &name) {
                    Ok(()) => {
                        tracing::info!(runner = %name, pool = %pool_config.name, pid = ?self.driver.pid(&name),
                        reason, "starting a runner")
                    }
                    Err(err) => {
                        tracing::error!(runner = %name, pool = %pool_config.name, error = %format!("{err:#}"),
                            "cannot start a runner");
                        self.fleet.start_failed(&name);
                    }
                }
            }
            Action::Drain { name, reason } => {
                tracing::info!(runner = %name, reason, "asking the dispatcher to drain an idle runner");
                if self.drains.try_send(name.clone()).is_err() {
                    self.fleet.stop_failed(&name);
                }
            }
            Action::Stop { name, reason } => {
                let Some(pool) = self.fleet.runners.get(&name).map(|runner| runner.pool) else { return };
                tracing::info!(runner = %name, pool = %self.fleet.pools[pool].name, reason, "stopping a runner");
                self.driver.stop(&self.fleet.pools[pool], &name);
            }
        }
    }
}

/// Takes `WORK_ROOT/manager.lock` for as long as the returned file is open.
fn lock(root: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = root.join("manager.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own for the call's duration.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!("another runner manager uses {} (it holds {})", root.display(), path.display());
    }
    Ok(file)
}
