//! The manager's decisions, as data: which runners each pool has, what the
//! dispatcher last said about the load, and what to do about it.
//!
//! [`Fleet::decide`] is a pure function of that state and the time, so every
//! rule is unit-tested below without processes or sockets; `mod.rs` performs
//! the [`Action`]s it returns and feeds back what happened.
//!
//! The rules (SPEC §11):
//! - a pool below its MIN starts runners, with or without a dispatcher;
//! - pending tasks a pool can take (its labels include theirs) that no
//!   starting runner will absorb start one runner each, up to MAX; tasks no
//!   pool can take start nothing and are logged once;
//! - a runner the dispatcher has shown idle for the idle timeout is drained
//!   (the dispatcher refuses if it became busy) and only then stopped, never
//!   below MIN;
//! - without a load (dispatcher away) nothing is drained or stopped;
//! - with the command driver, whose runners the manager cannot watch, a
//!   runner the connected dispatcher has not listed for [`ABSENT_GRACE`]
//!   (or, when starting, [`START_GRACE`]) is stopped and forgotten, so that
//!   a replacement can start.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use protocol::message::{Drained, Load, LoadState, PoolReport};
use protocol::{Label, Name};

use super::config::PoolConfig;

/// How long a drain request may go unanswered (a lost connection) before the
/// runner counts as up again.
const DRAIN_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// How long a runner that was up may be missing from the loads of a
/// connected dispatcher before it counts as dead (command driver): longer
/// than a runner's reconnect back-off after a dispatcher restart.
pub const ABSENT_GRACE: Duration = Duration::from_secs(30);

/// How long a started runner may take to register (command driver): a cloud
/// machine may take minutes to boot.
pub const START_GRACE: Duration = Duration::from_secs(10 * 60);

/// Where a managed runner is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Started; the dispatcher has not listed it yet.
    Starting,
    /// Listed by the dispatcher at least once (or adopted).
    Up,
    /// A drain was asked at this time; waiting for the answer.
    Draining(Instant),
    /// Stopped (or being stopped); gone once the driver says so.
    Stopping,
}

/// A runner this manager started (or adopted).
#[derive(Clone, Debug)]
pub struct Managed {
    pub pool: usize,
    pub phase: Phase,
    /// Since when the dispatcher shows it idle, without a break.
    pub idle_since: Option<Instant>,
    /// Since when a connected dispatcher has not listed it (or since it was
    /// started, while starting).
    pub absent_since: Option<Instant>,
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start { pool: usize, name: Name, reason: String },
    Drain { name: Name, reason: String },
    Stop { name: Name, reason: String },
}

/// The pools, their runners and the last load.
#[derive(Debug)]
pub struct Fleet {
    pub pools: Vec<PoolConfig>,
    pub runners: BTreeMap<Name, Managed>,
    /// The dispatcher's last load; `None` while it is away.
    load: Option<Load>,
    /// Label sets of pending tasks no pool serves, already logged.
    unservable: BTreeSet<Vec<Label>>,
    /// Whether runners missing from the loads are presumed dead (the command
    /// driver; local processes are watched directly).
    watch_absence: bool,
}

impl Fleet {
    /// A fleet with no runners yet.
    pub fn new(pools: Vec<PoolConfig>, watch_absence: bool) -> Fleet {
        Fleet { pools, runners: BTreeMap::new(), load: None, unservable: BTreeSet::new(), watch_absence }
    }

    /// The pool index of a runner name `POOL-N`, if `POOL` is configured.
    pub fn pool_of_name(&self, name: &str) -> Option<usize> {
        let (pool, number) = name.rsplit_once('-')?;
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || number.starts_with('0') {
            return None;
        }
        self.pools.iter().position(|config| config.name.as_str() == pool)
    }

    /// Takes over a runner found running (after a manager restart).
    pub fn adopt(&mut self, name: Name, pool: usize) {
        self.runners.insert(name, Managed { pool, phase: Phase::Up, idle_since: None, absent_since: None });
    }

    /// The runner is gone (its process exited, or it was stopped).
    pub fn remove(&mut self, name: &Name) -> Option<Managed> {
        self.runners.remove(name)
    }

    /// A start failed: forget the runner so that a later pass may retry.
    pub fn start_failed(&mut self, name: &Name) {
        self.runners.remove(name);
    }

    /// A stop failed: the runner is back to up, its idle time kept, so it is
    /// tried again.
    pub fn stop_failed(&mut self, name: &Name) {
        if let Some(runner) = self.runners.get_mut(name) {
            runner.phase = Phase::Up;
        }
    }

    /// The dispatcher went away: no load, no drains in flight.
    pub fn disconnected(&mut self) {
        self.load = None;
        for runner in self.runners.values_mut() {
            if matches!(runner.phase, Phase::Draining(_)) {
                runner.phase = Phase::Up;
            }
            runner.idle_since = None;
            if runner.phase != Phase::Starting {
                runner.absent_since = None;
            }
        }
    }

    /// A new load from the dispatcher.
    pub fn observe(&mut self, load: Load, now: Instant) {
        for (name, runner) in self.runners.iter_mut() {
            match load.runners.iter().find(|listed| &listed.name == name) {
                Some(listed) => {
                    runner.absent_since = None;
                    if runner.phase == Phase::Starting {
                        runner.phase = Phase::Up;
                    }
                    match listed.state {
                        LoadState::Idle | LoadState::Draining => {
                            runner.idle_since.get_or_insert(now);
                        }
                        LoadState::Busy => runner.idle_since = None,
                    }
                }
                None => {
                    runner.idle_since = None;
                    runner.absent_since.get_or_insert(now);
                }
            }
        }
        self.load = Some(load);
    }

    /// The dispatcher's answer to a drain: stop the runner, or keep it.
    pub fn drained(&mut self, answer: &Drained) -> Option<Action> {
        let runner = self.runners.get_mut(&answer.runner)?;
        if !matches!(runner.phase, Phase::Draining(_)) {
            return None;
        }
        if answer.drained {
            runner.phase = Phase::Stopping;
            Some(Action::Stop {
                name: answer.runner.clone(),
                reason: "idle past the idle timeout, drained".into(),
            })
        } else {
            tracing::info!(runner = %answer.runner, reason = ?answer.reason, "drain refused; keeping the runner");
            runner.phase = Phase::Up;
            runner.idle_since = None;
            None
        }
    }

    /// Runners of pool `pool` that count towards its size (not stopping).
    fn size(&self, pool: usize) -> u32 {
        self.runners.values().filter(|runner| runner.pool == pool && runner.phase != Phase::Stopping).count()
            as u32
    }

    /// What to do now. Marks the runners it starts, drains and stops, so
    /// that the next call does not repeat an action.
    pub fn decide(&mut self, now: Instant, idle_timeout: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        for runner in self.runners.values_mut() {
            if let Phase::Draining(since) = runner.phase {
                if now.duration_since(since) > DRAIN_ANSWER_WAIT {
                    runner.phase = Phase::Up;
                }
            }
        }
        let mut starts = vec![0u32; self.pools.len()];
        let mut reasons: Vec<String> = vec![String::new(); self.pools.len()];
        for (pool_idx, pool) in self.pools.iter().enumerate() {
            let size = self.size(pool_idx);
            if size < pool.min {
                starts[pool_idx] = pool.min - size;
                reasons[pool_idx] = format!("below MIN {}", pool.min);
            }
        }
        if let Some(load) = &self.load {
            // Starting runners will take pending work as soon as they
            // register: count them before starting more.
            let mut spare: Vec<u32> = (0..self.pools.len())
                .map(|pool_idx| {
                    let starting = self
                        .runners
                        .values()
                        .filter(|runner| runner.pool == pool_idx && runner.phase == Phase::Starting)
                        .count() as u32;
                    starting + starts[pool_idx]
                })
                .collect();
            let mut room: Vec<u32> = (0..self.pools.len())
                .map(|pool_idx| {
                    self.pools[pool_idx].max.saturating_sub(self.size(pool_idx) + starts[pool_idx])
                })
                .collect();
            let mut unservable = BTreeSet::new();
            for group in &load.pending {
                let takers: Vec<usize> = (0..self.pools.len())
                    .filter(|pool_idx| {
                        group.labels.iter().all(|label| self.pools[*pool_idx].labels.contains(label))
                    })
                    .collect();
                if takers.is_empty() {
                    unservable.insert(group.labels.clone());
                    if !self.unservable.contains(&group.labels) {
                        let labels: Vec<&str> = group.labels.iter().map(Label::as_str).collect();
                        tracing::warn!(tasks = group.count, labels = ?labels,
                            "pending tasks need labels no pool serves; starting nothing for them");
                    }
                    continue;
                }
                let mut waiting = group.count;
                for pool_idx in &takers {
                    let absorbed = waiting.min(spare[*pool_idx]);
                    spare[*pool_idx] -= absorbed;
                    waiting -= absorbed;
                }
                for pool_idx in &takers {
                    let started = waiting.min(room[*pool_idx]);
                    if started > 0 {
                        room[*pool_idx] -= started;
                        starts[*pool_idx] += started;
                        waiting -= started;
                        reasons[*pool_idx] = "pending tasks it can take and no idle runner".into();
                    }
                }
            }
            self.unservable = unservable;
        }
        for (pool_idx, count) in starts.iter().enumerate() {
            for _ in 0..*count {
                let name = self.free_name(pool_idx);
                let runner = Managed {
                    pool: pool_idx,
                    phase: Phase::Starting,
                    idle_since: None,
                    absent_since: Some(now),
                };
                self.runners.insert(name.clone(), runner);
                actions.push(Action::Start { pool: pool_idx, name, reason: reasons[pool_idx].clone() });
            }
        }
        if self.watch_absence && self.load.is_some() {
            for (name, runner) in self.runners.iter_mut() {
                let grace = if runner.phase == Phase::Starting { START_GRACE } else { ABSENT_GRACE };
                let missing = runner.absent_since.is_some_and(|since| now.duration_since(since) > grace);
                if missing && matches!(runner.phase, Phase::Starting | Phase::Up) {
                    runner.phase = Phase::Stopping;
                    let reason = format!("not seen by the dispatcher for {}s", grace.as_secs());
                    actions.push(Action::Stop { name: name.clone(), reason });
                }
            }
        }
        if let Some(load) = &self.load {
            let mut sizes: Vec<u32> = (0..self.pools.len())
                .map(|pool_idx| {
                    self.runners
                        .values()
                        .filter(|runner| {
                            runner.pool == pool_idx && matches!(runner.phase, Phase::Starting | Phase::Up)
                        })
                        .count() as u32
                })
                .collect();
            let mut idle: Vec<(Instant, Name)> = self
                .runners
                .iter()
                .filter(|(_, runner)| runner.phase == Phase::Up)
                .filter_map(|(name, runner)| runner.idle_since.map(|since| (since, name.clone())))
                .collect();
            idle.sort();
            for (since, name) in idle {
                let runner = self.runners.get_mut(&name).expect("listed from the map");
                let listed = load.runners.iter().find(|listed| listed.name == name);
                // A runner the dispatcher drained (a late answer, or its own
                // SIGTERM) takes no work: stop it, replacements follow.
                if listed.is_some_and(|listed| listed.state == LoadState::Draining) {
                    runner.phase = Phase::Stopping;
                    sizes[runner.pool] = sizes[runner.pool].saturating_sub(1);
                    actions.push(Action::Stop { name, reason: "drained, takes no work".into() });
                    continue;
                }
                if now.duration_since(since) < idle_timeout
                    || sizes[runner.pool] <= self.pools[runner.pool].min
                {
                    continue;
                }
                sizes[runner.pool] -= 1;
                runner.phase = Phase::Draining(now);
                let reason = format!("idle for {}", humantime::format_duration(round_secs(now - since)));
                actions.push(Action::Drain { name, reason });
            }
        }
        actions
    }

    /// `POOL-N` with the lowest N not in use.
    fn free_name(&self, pool: usize) -> Name {
        let prefix = self.pools[pool].name.as_str();
        (1..)
            .map(|number| format!("{prefix}-{number}"))
            .map(|name| Name::new(name).expect("pool names leave room for a number"))
            .find(|name| !self.runners.contains_key(name))
            .expect("an unused number exists")
    }

    /// What the dispatcher is told about the pools.
    pub fn reports(&self) -> Vec<PoolReport> {
        self.pools
            .iter()
            .enumerate()
            .map(|(pool_idx, pool)| PoolReport {
                name: pool.name.clone(),
                labels: pool.labels.clone(),
                min: pool.min,
                max: pool.max,
                runners: self
                    .runners
                    .iter()
                    .filter(|(_, runner)| runner.pool == pool_idx && runner.phase != Phase::Stopping)
                    .map(|(name, _)| name.clone())
                    .collect(),
            })
            .collect()
    }
}

fn round_secs(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

#[cfg(test)]
mod tests {
    use protocol::message::{PendingGroup, RunnerLoad};

    use super::*;

    fn label(text: &str) -> Label {
        Label::new(text).unwrap()
    }

    fn name(text: &str) -> Name {
        Name::new(text).unwrap()
    }

    fn pool(pool_name: &str, labels: &[&str], min: u32, max: u32) -> PoolConfig {
        PoolConfig { name: name(pool_name), labels: labels.iter().map(|l| label(l)).collect(), min, max }
    }

    fn pending(labels: &[&str], count: u32) -> PendingGroup {
        PendingGroup { labels: labels.iter().map(|l| label(l)).collect(), count }
    }

    fn listed(runner: &str, state: LoadState) -> RunnerLoad {
        RunnerLoad { name: name(runner), labels: vec![], state }
    }

    fn starts(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Start { name, .. } => Some(name.to_string()),
                _ => None,
            })
            .collect()
    }

    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn a_burst_starts_one_runner_per_task_up_to_max_and_no_more() {
        let now = Instant::now();
        let mut fleet = Fleet::new(vec![pool("ci", &["linux"], 0, 3)], false);
        assert!(fleet.decide(now, IDLE).is_empty(), "nothing without a load");
        fleet.observe(Load { pending: vec![pending(&[], 2), pending(&["linux"], 5)], runners: vec![] }, now);
        assert_eq!(starts(&fleet.decide(now, IDLE)), ["ci-1", "ci-2", "ci-3"]);
        // The same load again: the starting runners absorb it.
        fleet.observe(Load { pending: vec![pending(&["linux"], 7)], runners: vec![] }, now);
        assert!(fleet.decide(now, IDLE).is_empty());
        assert_eq!(fleet.reports()[0].runners.len(), 3);
    }

    #[test]
    fn starting_runners_absorb_pending_tasks() {
        let now = Instant::now();
        let mut fleet = Fleet::new(vec![pool("ci", &[], 0, 10)], false);
        fleet.observe(Load { pending: vec![pending(&[], 1)], runners: vec![] }, now);
        assert_eq!(starts(&fleet.decide(now, IDLE)), ["ci-1"]);
        fleet.observe(Load { pending: vec![pending(&[], 2)], runners: vec![] }, now);
        assert_eq!(starts(&fleet.decide(now, IDLE)), ["ci-2"]);
    }

    #[test]
    fn tasks_no_pool_serves_start_nothing() {
        let now = Instant::now();
        let mut fleet = Fleet::new(vec![pool("ci", &["linux"], 0, 3)], false);
        fleet.observe(Load { pending: vec![pending(&["gpu"], 4)], runners: vec![] }, now);
        assert!(fleet.decide(now, IDLE).is_empty());
    }

    #[test]
    fn min_is_kept_even_without_a_dispatcher() {
        let now = Instant::now();
        let mut fleet = Fleet::new(vec![pool("ci", &[], 2, 3)], false);
        assert_eq!(starts(&fleet.decide(now, IDLE)), ["ci-1", "ci-2"]);
        fleet.remove(&name("ci-1"));
        assert_eq!(starts(&fleet.decide(now, IDLE)), ["ci-1"], "a dead runner is replaced under its name");
    }

    #[test]
    fn idle_runners_are_drained_then_stopped_down_to_min_and_busy_ones_kept() {
        let start = Instant::now();
        let mut fleet = Fleet::new(vec![pool("ci", &[], 1, 3)], false);
        for runner in ["ci-1", "ci-2", "ci-3"] {
            fleet.adopt(name(runner), 0);
        }
        let load = Load {
            pending: vec![],
            runners: vec![
                listed("ci-1", LoadState::Idle),
                listed("ci-2", LoadState::Idle),
                listed("ci-3", LoadState::Busy),
            ],
        };
        fleet.observe(load.clone(), start);
        assert!(fleet.decide(start + IDLE / 2, IDLE).is_empty(), "not idle long enough");
        let later = start + IDLE + Duration::from_secs(1);
        fleet.observe(load, later);
        let actions = fleet.decide(later, IDLE);
        let drained: Vec<&Action> = actions.iter().filter(|a| matches!(a, Action::Drain { .. })).collect();
        assert_eq!(drained.len(), 2, "{actions:?}: both idle ones, the busy one keeps MIN");
        assert!(fleet.decide(later, IDLE).is_empty(), "a drain is asked once");
        let stop = fleet.drained(&Drained { runner: name("ci-1"), drained: true, reason: None });
        assert!(matches!(stop, Some(Action::Stop { .. })));
        let refused = fleet.drained(&Drained {
            runner: name("ci-2"),
            drained: false,
            reason: Some("runner is busy".into()),
        });
        assert_eq!(refused, None);
        assert_eq!(fleet.reports()[0].runners, [name("ci-2"), name("ci-3")]);
    }

    #[test]
    fn without_the_dispatcher_nothing_is_drained() {
        let start = Instant::now();
        let mut fleet = Fleet::new(vec![pool("ci", &[], 0, 3)], false);
        fleet.adopt(name("ci-1"), 0);
        fleet.observe(Load { pending: vec![], runners: vec![listed("ci-1", LoadState::Idle)] }, start);
        fleet.disconnected();
        assert!(fleet.decide(start + IDLE * 10, IDLE).is_empty());
    }

    #[test]
    fn command_runners_missing_from_the_load_are_stopped_only_after_the_grace() {
        let start = Instant::now();
        let mut fleet = Fleet::new(vec![pool("ci", &[], 0, 3)], true);
        fleet.adopt(name("ci-1"), 0);
        fleet.adopt(name("ci-2"), 0);
        let load = Load { pending: vec![], runners: vec![listed("ci-2", LoadState::Busy)] };
        fleet.observe(load.clone(), start);
        assert!(fleet.decide(start + ABSENT_GRACE / 2, IDLE).is_empty());
        // A dispatcher restart in between resets the clock.
        fleet.disconnected();
        let later = start + ABSENT_GRACE;
        fleet.observe(load.clone(), later);
        assert!(fleet.decide(later + ABSENT_GRACE / 2, IDLE).is_empty());
        let actions = fleet.decide(later + ABSENT_GRACE * 2, IDLE);
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert!(matches!(&actions[0], Action::Stop { name: stopped, .. } if stopped.as_str() == "ci-1"));
    }

    #[test]
    fn runner_names_map_back_to_pools() {
        let fleet = Fleet::new(vec![pool("ci", &[], 0, 3), pool("gpu-big", &[], 0, 1)], false);
        assert_eq!(fleet.pool_of_name("ci-12"), Some(0));
        assert_eq!(fleet.pool_of_name("gpu-big-1"), Some(1));
        assert_eq!(fleet.pool_of_name("ci-"), None);
        assert_eq!(fleet.pool_of_name("ci-01"), None);
        assert_eq!(fleet.pool_of_name("other-1"), None);
    }
}
