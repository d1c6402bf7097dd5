//! A token bucket per connection: a peer that sends messages faster than its
//! role ever needs is disconnected, so one flooding peer cannot starve the
//! scheduler for everyone else.

use std::time::Instant;

/// Messages per second and burst allowed for one peer.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// Runners send pongs, results and output chunks of up to 64 KiB; 20,000 a
/// second is over a gigabyte of output per second.
pub const RUNNER: Rate = Rate { per_second: 20_000.0, burst: 40_000.0 };
/// Observers pipeline submissions; a push of thousands of commits arrives as
/// a burst.
pub const OBSERVER: Rate = Rate { per_second: 50_000.0, burst: 100_000.0 };
/// A person or a script asking questions.
pub const CLIENT: Rate = Rate { per_second: 1_000.0, burst: 2_000.0 };

/// The bucket.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    /// A full bucket.
    pub fn new(rate: Rate) -> Limiter {
        Limiter { rate, tokens: rate.burst, last: Instant::now() }
    }

    /// Takes one token; `false` when the peer is over its rate.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_a_flood_does_not_and_time_refills() {
        let start = Instant::now();
        let mut limiter = Limiter::new(Rate { per_second: 10.0, burst: 5.0 });
        limiter.last = start;
        assert!((0..5).all(|_| limiter.allow_at(start)));
        assert!(!limiter.allow_at(start));
        assert!(limiter.allow_at(start + Duration::from_millis(100)));
        assert!(!limiter.allow_at(start + Duration::from_millis(100)));
    }
}
