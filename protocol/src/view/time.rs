//! Times as the protocol carries them (milliseconds since the Unix epoch, set
//! by the dispatcher's clock) and as JSON and people read them: RFC 3339 for
//! JSON and files, "3s ago" and "1m 5s" for tables.
//!
//! Times come from the network, so nothing here may panic on a nonsense
//! value: humantime panics before 1970 and fails after 9999, and both are
//! answered with `None` instead.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last millisecond humantime can print: 9999-12-31T23:59:59.999Z.
const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// Now, in the protocol's unit.
pub fn now_ms() -> i64 {
    // A clock before 1970 is a broken clock; treating it as the epoch keeps
    // times finite instead of failing.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// `ms` as an RFC 3339 UTC timestamp with milliseconds
/// (`2026-05-01T12:00:00.250Z`), or `None` outside years 1970 to 9999.
pub fn rfc3339(ms: i64) -> Option<String> {
    if !(0..=MAX_RFC3339_MS).contains(&ms) {
        return None;
    }
    let instant = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    Some(humantime::format_rfc3339_millis(instant).to_string())
}

/// How long before `now_ms` the instant `then_ms` was, in its largest whole
/// unit: "0s ago", "59s ago", "2m ago", "5h ago", "3d ago". An instant in the
/// future (clocks of two hosts disagree) reads "in 2s".
pub fn relative(now_ms: i64, then_ms: i64) -> String {
    let delta_ms = i128::from(now_ms) - i128::from(then_ms);
    let seconds = delta_ms.unsigned_abs() / 1000;
    let amount = match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=86_399 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    };
    if delta_ms < 0 && seconds > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A duration for tables and `show`: "850ms", "4.2s", "3m 12s", "2h 5m",
/// "1d 1h 50m". Whole seconds from a minute on; zero units are left out.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{}.{}s", ms / 1000, ms % 1000 / 100),
        _ => {
            let seconds = ms / 1000;
            let units = [
                (seconds / 86_400, "d"),
                (seconds / 3600 % 24, "h"),
                (seconds / 60 % 60, "m"),
                (seconds % 60, "s"),
            ];
            let parts: Vec<String> = units
                .iter()
                .filter(|(amount, _)| *amount > 0)
                .map(|(amount, unit)| format!("{amount}{unit}"))
                .collect();
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_milliseconds_and_refuses_what_humantime_cannot_print() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(rfc3339(1_777_636_800_250).as_deref(), Some("2026-05-01T12:00:00.250Z"));
        assert_eq!(rfc3339(MAX_RFC3339_MS).as_deref(), Some("9999-12-31T23:59:59.999Z"));
        assert_eq!(rfc3339(-1), None);
        assert_eq!(rfc3339(MAX_RFC3339_MS + 1), None);
        assert_eq!(rfc3339(i64::MAX), None);
        assert_eq!(rfc3339(i64::MIN), None);
    }

    #[test]
    fn relative_times_use_the_largest_whole_unit() {
        let now = 1_000_000_000_000;
        let cases = [
            (0, "0s ago"),
            (999, "0s ago"),
            (3_000, "3s ago"),
            (59_999, "59s ago"),
            (60_000, "1m ago"),
            (150_000, "2m ago"),
            (3_600_000, "1h ago"),
            (86_399_999, "23h ago"),
            (3 * 86_400_000, "3d ago"),
            (-2_500, "in 2s"),
            (-500, "0s ago"),
        ];
        for (ago_ms, expected) in cases {
            assert_eq!(relative(now, now - ago_ms), expected, "{ago_ms} ms ago");
        }
        assert_eq!(relative(i64::MAX, i64::MIN), format!("{}d ago", u128::from(u64::MAX) / 1000 / 86_400));
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(4_250), "4.2s");
        assert_eq!(duration(192_400), "3m 12s");
        assert_eq!(duration(7_500_000), "2h 5m");
        assert_eq!(duration(93_000_000), "1d 1h 50m");
        assert_eq!(duration(86_400_000), "1d");
    }
}
