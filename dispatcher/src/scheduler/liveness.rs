//! One liveness model, dispatcher side (issue 12, item 3).
//!
//! A runner is lost when its connection closes, or when pings that were
//! actually sent go unanswered for the window (`heartbeat-interval ×
//! heartbeat-misses`), measured on the monotonic clock over time the
//! dispatcher itself was running. Any frame from the runner is a sign of
//! life: the connection's reader notes it in a [`LastHeard`] before the
//! frame joins the scheduler's queue, so a pong never waits behind output.
//! When the scheduler notices that it was not running (a batch starts much
//! later than the last heartbeat tick: SIGSTOP, a VM pause, a slow fsync),
//! it drops the evidence gathered across the stall, pings everyone afresh,
//! and for one window treats a closed connection like a dispatcher restart
//! (the runner may re-adopt its tasks) instead of a death.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a connection's reader last received a frame. Written by the
/// reader, read by the scheduler thread; one atomic, no lock.
#[derive(Debug)]
pub struct LastHeard {
    epoch: Instant,
    /// Microseconds after `epoch`.
    micros: AtomicU64,
}

impl LastHeard {
    /// Heard now.
    pub fn new() -> LastHeard {
        LastHeard { epoch: Instant::now(), micros: AtomicU64::new(0) }
    }

    /// Notes that a frame arrived.
    pub fn note(&self) {
        let micros = self.epoch.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        self.micros.fetch_max(micros, Ordering::Relaxed);
    }

    /// When the last frame arrived.
    pub fn at(&self) -> Instant {
        self.epoch + Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }
}

impl Default for LastHeard {
    fn default() -> LastHeard {
        LastHeard::new()
    }
}

/// A runner's heartbeat evidence.
#[derive(Debug, Default)]
pub(super) struct Heartbeat {
    /// When the oldest ping still unanswered was sent; `None` when every
    /// ping sent so far was followed by a frame from the runner.
    pub unanswered_since: Option<Instant>,
}

impl Heartbeat {
    /// A ping is being sent now.
    pub fn pinged(&mut self, now: Instant) {
        self.unanswered_since.get_or_insert(now);
    }

    /// Whether the runner is silent past `window`: pings went unanswered
    /// for that long, and no frame arrived since the first of them.
    pub fn silent_for(&mut self, heard: &LastHeard, now: Instant, window: Duration) -> bool {
        let Some(since) = self.unanswered_since else { return false };
        if heard.at() >= since {
            self.unanswered_since = None;
            return false;
        }
        now.saturating_duration_since(since) > window
    }

    /// Evidence gathered across a stall of the dispatcher is void.
    pub fn forget(&mut self) {
        self.unanswered_since = None;
    }
}

/// Whether the gap since the last heartbeat tick means the dispatcher was
/// not running: ticks come four times per interval, so a gap of two
/// intervals is seven ticks missed. At least a second, so that a machine
/// merely busy (late ticks of a few hundred milliseconds) is not taken for
/// a stalled one and judging is not put off for ever.
pub(super) fn stalled(last_tick: Instant, now: Instant, interval: Duration) -> bool {
    now.saturating_duration_since(last_tick) > (interval * 2).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_after_the_ping_answers_it() {
        let heard = LastHeard::new();
        let mut heartbeat = Heartbeat::default();
        let start = Instant::now();
        heartbeat.pinged(start);
        let window = Duration::from_millis(10);
        assert!(heartbeat.silent_for(&heard, start + Duration::from_millis(20), window));
        heard.note();
        assert!(!heartbeat.silent_for(&heard, start + Duration::from_secs(60), window));
        assert_eq!(heartbeat.unanswered_since, None);
    }

    #[test]
    fn silence_counts_from_the_first_unanswered_ping_only() {
        let heard = LastHeard::new();
        let mut heartbeat = Heartbeat::default();
        let window = Duration::from_secs(3);
        // No ping sent: no judgement, however long.
        assert!(!heartbeat.silent_for(&heard, Instant::now() + Duration::from_secs(600), window));
        let sent = Instant::now() + Duration::from_secs(1);
        heartbeat.pinged(sent);
        heartbeat.pinged(sent + Duration::from_secs(1));
        assert!(!heartbeat.silent_for(&heard, sent + Duration::from_secs(3), window));
        assert!(heartbeat.silent_for(&heard, sent + Duration::from_millis(3001), window));
        heartbeat.forget();
        assert!(!heartbeat.silent_for(&heard, sent + Duration::from_secs(60), window));
    }

    #[test]
    fn a_late_tick_is_a_stall() {
        let now = Instant::now();
        let interval = Duration::from_secs(1);
        assert!(!stalled(now, now + Duration::from_millis(1500), interval));
        assert!(stalled(now, now + Duration::from_millis(2500), interval));
        let fast = Duration::from_millis(200);
        assert!(!stalled(now, now + Duration::from_millis(900), fast));
        assert!(stalled(now, now + Duration::from_millis(1100), fast));
    }
}
