//! Waiting for a condition against a deadline, never a fixed sleep
//! (Pueue's `wait.rs`): a passing wait is as fast as the condition, a
//! failing one says what it waited for.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long any wait may take before it fails. Generous: CI machines are
/// shared and slow, and waits poll, so passing runs are not slowed.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How often [`wait_for`] polls.
const POLL: Duration = Duration::from_millis(25);

/// A point in time after which a wait fails, saying what it waited for.
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    patience: Duration,
    what: String,
}

impl Deadline {
    /// Fails `patience` from now.
    pub fn after(patience: Duration, what: impl Into<String>) -> Deadline {
        Deadline { at: Instant::now() + patience, patience, what: what.into() }
    }

    /// The time left, zero once the deadline has passed.
    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Fails once the deadline has passed.
    ///
    /// # Errors
    /// After the deadline.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.passed(), "timed out after {:?} waiting for {}", self.patience, self.what);
        Ok(())
    }
}

/// Polls `check` until it returns `Some`, for at most `patience`.
///
/// # Errors
/// When `patience` runs out first (`what` names the condition).
pub fn wait_for<T>(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Deadline::after(patience, what);
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        deadline.check()?;
        std::thread::sleep(POLL);
    }
}

/// Waits up to `patience` for `child` to exit by itself, and reaps it.
///
/// # Errors
/// When waiting fails, or the child still runs at the deadline (it is then
/// left running: the caller decides whether to kill it).
pub fn exit(child: &mut Child, patience: Duration, what: &str) -> anyhow::Result<ExitStatus> {
    let status = wait_for(&format!("{what} to exit"), patience, || child.try_wait().transpose())?;
    Ok(status?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_returns_the_value_or_names_what_it_waited_for() {
        let mut polls = 0;
        let value = wait_for("three polls", PATIENCE, || {
            polls += 1;
            (polls == 3).then_some(polls)
        });
        assert_eq!(value.unwrap(), 3);
        let err = wait_for("nothing", Duration::ZERO, || None::<()>).unwrap_err();
        assert!(format!("{err:#}").contains("waiting for nothing"), "{err:#}");
    }
}
