//! The schedules at run time: one task per `[[schedule]]` that sleeps until
//! its cron expression's next time (the observer's local time zone, chrono's
//! `Local`) and then asks the repository's scan loop for the branch's tip,
//! which is submitted as a new task with trigger `schedule`.
//!
//! Each schedule's last fire time is kept in the state file (moved when the
//! dispatcher acknowledges the submission). A schedule whose time passed while
//! the observer was down fires once at start, however many times it missed; a
//! schedule seen for the first time only records the start as its baseline.
//! The wall clock is read again at least every [`MAX_SLEEP`], so a clock that
//! jumps (suspend, NTP) is caught up with on the next read.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone, Utc};
use croner::Cron;
use tokio_util::sync::CancellationToken;

use crate::config::Schedule;
use crate::queue::{Fire, Ledger};
use crate::scan::{ScheduledTip, Wake};

/// The longest sleep before the wall clock is read again.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// What a schedule does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due<Tz: TimeZone> {
    /// Fire now, standing for this time (the latest one due).
    Fire(DateTime<Tz>),
    /// Nothing is due before this time.
    Wait(DateTime<Tz>),
    /// The expression names no later time (such as 30 February).
    Never,
}

/// The rule, as a pure function: with the last firing at `after`, what is
/// due at `now`. Every time between `after` and `now` is folded into one
/// firing, the latest.
pub fn due<Tz: TimeZone>(cron: &Cron, after: &DateTime<Tz>, now: &DateTime<Tz>) -> Due<Tz> {
    match cron.find_next_occurrence(after, false) {
        Err(_) => Due::Never,
        Ok(next) if next <= *now => Due::Fire(
            cron.find_previous_occurrence(now, true).map_or(next.clone(), |latest| latest.max(next)),
        ),
        Ok(next) => Due::Wait(next),
    }
}

/// Runs one schedule until `shutdown`.
pub async fn run(schedule: Schedule, ledger: Arc<Ledger>, wake: Arc<Wake>, shutdown: CancellationToken) {
    let mut after: DateTime<Local> = match ledger.last_fired(&schedule.key) {
        Some(at) => at.with_timezone(&Local),
        None => {
            // First sight: nothing was missed, but a later outage must be.
            let now = Utc::now();
            ledger.fired(&Fire { key: schedule.key.clone(), at: now });
            if let Err(err) = ledger.save().await {
                tracing::error!(error = format!("{err:#}"), "saving the state file failed");
            }
            now.with_timezone(&Local)
        }
    };
    loop {
        let now = Local::now();
        match due(&schedule.cron, &after, &now) {
            Due::Fire(at) => {
                tracing::debug!(schedule = %schedule.key, at = %at, "schedule due");
                let fire = Fire { key: schedule.key.clone(), at: at.with_timezone(&Utc) };
                wake.fire(ScheduledTip {
                    branch: schedule.branch.clone(),
                    labels: schedule.labels.clone(),
                    fire,
                });
                after = at;
            }
            Due::Wait(next) => {
                let wait = (next - now).to_std().unwrap_or_default().min(MAX_SLEEP);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            Due::Never => {
                tracing::warn!(schedule = %schedule.key, "the cron expression names no later time; the schedule is done");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::FixedOffset;

    use super::*;
    use crate::config::parse_cron;

    fn at(text: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(text).unwrap()
    }

    #[test]
    fn waits_for_the_next_time() {
        let nightly = parse_cron("0 3 * * *").unwrap();
        let due = due(&nightly, &at("2026-12-01T03:00:00+01:00"), &at("2026-12-01T12:00:00+01:00"));
        assert_eq!(due, Due::Wait(at("2026-12-02T03:00:00+01:00")));
    }

    #[test]
    fn many_missed_times_fire_once_for_the_latest() {
        let nightly = parse_cron("0 3 * * *").unwrap();
        let after = at("2026-11-20T03:00:00+01:00");
        let now = at("2026-12-01T12:00:00+01:00");
        let Due::Fire(fired) = due(&nightly, &after, &now) else { panic!("nothing due") };
        assert_eq!(fired, at("2026-12-01T03:00:00+01:00"));
        assert_eq!(due(&nightly, &fired, &now), Due::Wait(at("2026-12-02T03:00:00+01:00")));
    }

    #[test]
    fn seconds_and_the_exact_time() {
        let every_5s = parse_cron("*/5 * * * * *").unwrap();
        let now = at("2026-12-01T12:00:10+00:00");
        assert_eq!(due(&every_5s, &at("2026-12-01T12:00:05+00:00"), &now), Due::Fire(now));
        assert_eq!(due(&every_5s, &now, &now), Due::Wait(at("2026-12-01T12:00:15+00:00")));
        let never = parse_cron("0 0 0 30 2 *").unwrap();
        assert_eq!(due(&never, &now, &now), Due::Never);
    }
}
