//! One liveness model, dispatcher side (issue 12, item 3).
//!
//! A runner is lost when its connection closes, or when nothing came from
//! it for the window (`heartbeat-interval × heartbeat-misses`) while a ping
//! that was actually sent has gone unanswered for at least an interval,
//! measured on the monotonic clock over time the dispatcher itself was
//! running: a frozen runner is lost a window after its last frame, and a
//! runner that was never asked (the dispatcher did not ping) is never judged. Each connection's writer sends the pings,
//! every interval, and notes each once it is on the socket: however busy the
//! scheduler is (a queue full of output, a slow fsync), pings go out on time
//! (a runner applies the mirror rule and would otherwise reconnect) and are
//! never counted as sent before they were. Any frame from the runner is a
//! sign of life: the connection's reader notes it in the [`LastHeard`]
//! before the frame joins the scheduler's queue, so a pong never waits
//! behind output; while the reader waits for room in that queue it is not
//! reading the socket, and the runner cannot be judged silent for that time.
//! The scheduler judges at each heartbeat tick, and ticks itself at the start
//! of a batch when a tick is due, so a tick never waits behind the queue.
//! When the scheduler notices that it was not running (a batch starts much
//! later than the last heartbeat tick: SIGSTOP, a VM pause, a slow fsync),
//! it drops the evidence gathered across the stall, pings everyone afresh,
//! and for one window treats a closed connection like a dispatcher restart
//! (the runner may re-adopt its tasks) instead of a death.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the wire says about one runner connection: when a ping was last
/// written to it and not answered yet, and whether its reader is busy. The
/// connection's writer notes each ping once it is on the socket, its reader
/// notes every frame, the scheduler thread judges; atomics, no lock.
#[derive(Debug)]
pub struct LastHeard {
    epoch: Instant,
    /// Microseconds after `epoch`, plus one, of the first ping written
    /// since the last frame from the runner; 0 when every ping written was
    /// followed by a frame.
    unanswered: AtomicU64,
    /// Microseconds after `epoch` of the last frame from the runner (or of
    /// the moment evidence was last voided).
    heard: AtomicU64,
    /// The connection's reader holds a frame it is handing to the
    /// scheduler's full queue: it is not reading the socket, so the
    /// runner's silence cannot be judged (its frames wait in our buffer).
    delivering: AtomicBool,
}

impl LastHeard {
    /// Nothing owed yet.
    pub fn new() -> LastHeard {
        LastHeard {
            epoch: Instant::now(),
            unanswered: AtomicU64::new(0),
            heard: AtomicU64::new(0),
            delivering: AtomicBool::new(false),
        }
    }

    /// A frame arrived: every ping written before it is answered.
    pub fn note(&self) {
        self.note_at(Instant::now());
    }

    /// A frame arrived at `at`.
    pub fn note_at(&self, at: Instant) {
        self.heard.store(self.micros(at), Ordering::Relaxed);
        self.unanswered.store(0, Ordering::Relaxed);
    }

    /// Rounded up: the runner is never judged before the window is over.
    fn micros(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        let micros = since.as_micros() + u128::from(!since.subsec_nanos().is_multiple_of(1000));
        micros.min(u128::from(u64::MAX - 1)) as u64
    }

    /// A ping was just written to the socket.
    pub fn pinged(&self) {
        self.pinged_at(Instant::now());
    }

    /// A ping was written at `at`; the runner owes an answer from the first
    /// ping not answered yet.
    pub fn pinged_at(&self, at: Instant) {
        let micros = self.micros(at);
        let _ = self.unanswered.compare_exchange(0, micros + 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Marks the reader as handing a frame to the scheduler until the guard
    /// drops, which counts as hearing the runner then: time the dispatcher
    /// itself spent is never counted as the runner's silence.
    pub fn delivering(&self) -> Delivering<'_> {
        self.delivering.store(true, Ordering::Relaxed);
        Delivering(self)
    }

    /// Whether the runner is silent past `window` at `now`: nothing heard
    /// from it for that long, a ping written at least `answer_time` ago is
    /// unanswered, and the reader is listening.
    pub(super) fn silent_for(&self, now: Instant, window: Duration, answer_time: Duration) -> bool {
        let unanswered = self.unanswered.load(Ordering::Relaxed);
        if unanswered == 0 || self.delivering.load(Ordering::Relaxed) {
            return false;
        }
        let asked = self.epoch + Duration::from_micros(unanswered - 1);
        let heard = self.epoch + Duration::from_micros(self.heard.load(Ordering::Relaxed));
        now.saturating_duration_since(asked) >= answer_time && now.saturating_duration_since(heard) > window
    }

    /// Evidence gathered across a stall of the dispatcher is void: the
    /// runner's silence counts again from now.
    pub(super) fn forget(&self) {
        self.note();
    }
}

/// See [`LastHeard::delivering`].
pub struct Delivering<'a>(&'a LastHeard);

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        self.0.note();
        self.0.delivering.store(false, Ordering::Relaxed);
    }
}

impl Default for LastHeard {
    fn default() -> LastHeard {
        LastHeard::new()
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
        let start = Instant::now();
        heard.pinged_at(start);
        let window = Duration::from_millis(10);
        assert!(heard.silent_for(start + Duration::from_millis(20), window, window));
        heard.note();
        assert!(!heard.silent_for(start + Duration::from_secs(60), window, window));
    }

    #[test]
    fn silence_counts_from_the_last_frame_once_a_ping_went_unanswered_for_an_interval() {
        let heard = LastHeard::new();
        let (window, interval) = (Duration::from_secs(3), Duration::from_secs(1));
        let last = Instant::now();
        heard.note_at(last);
        // No ping written: no judgement, however long.
        assert!(!heard.silent_for(last + Duration::from_secs(600), window, interval));
        // Frozen just after its last frame: the next ping goes unanswered,
        // and the runner is lost a window after that frame.
        let sent = last + Duration::from_millis(900);
        heard.pinged_at(sent);
        heard.pinged_at(sent + interval);
        assert!(!heard.silent_for(last + window, window, interval));
        assert!(heard.silent_for(last + Duration::from_millis(3001), window, interval));
        // A ping written just now is not yet unanswered, however long the
        // silence before it (the dispatcher did not ask).
        let late = LastHeard::new();
        late.note_at(last);
        late.pinged_at(last + Duration::from_secs(10));
        assert!(!late.silent_for(last + Duration::from_millis(10_500), window, interval));
        assert!(late.silent_for(last + Duration::from_millis(11_001), window, interval));
        // A stall voids the evidence: silence counts from the stall's end,
        // not from the last frame before it (a ping after the stall and a
        // window later, the runner is still in time).
        heard.forget();
        assert!(!heard.silent_for(Instant::now() + Duration::from_secs(2), window, interval));
        let stall_end = Instant::now();
        heard.pinged_at(stall_end);
        assert!(!heard.silent_for(stall_end + window, window, interval));
        assert!(heard.silent_for(Instant::now() + window + Duration::from_millis(1), window, interval));
    }

    #[test]
    fn a_reader_busy_delivering_to_the_scheduler_is_not_the_runners_silence() {
        let heard = LastHeard::new();
        let window = Duration::from_secs(1);
        let sent = Instant::now() + Duration::from_secs(1);
        heard.pinged_at(sent);
        {
            let _delivering = heard.delivering();
            assert!(!heard.silent_for(sent + Duration::from_secs(10), window, window));
        }
        // Delivered: that counts as heard. A later ping unanswered for the
        // window is silence again.
        assert!(!heard.silent_for(sent + Duration::from_secs(10), window, window));
        let later = Instant::now() + Duration::from_secs(2);
        heard.pinged_at(later);
        assert!(heard.silent_for(later + Duration::from_secs(10), window, window));
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
