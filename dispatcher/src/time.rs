//! Times as the protocol carries them (milliseconds since the Unix epoch)
//! and as people and JSON read them (RFC 3339). Shared by the dispatcher and
//! the `baton` client.
//!
//! Times may come from the network, so nothing here may panic on a nonsense
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
    }
}
