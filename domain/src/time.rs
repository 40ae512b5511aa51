//! Time as the shop's messages write it: RFC 3339 in UTC (`2026-11-24T10:15:02.125Z`).
//!
//! A formatter, not a clock: the caller passes the time (usually `SystemTime::now()`), so the
//! rules of this crate stay free of I/O and the formatting is tested on fixed instants.

use std::time::{SystemTime, UNIX_EPOCH};

/// How finely [`rfc3339`] writes the seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Whole seconds: `2026-11-24T10:15:02Z`.
    Seconds,
    /// Milliseconds: `2026-11-24T10:15:02.125Z`.
    Millis,
}

/// `at` as an RFC 3339 date and time in UTC. An instant before 1970 is written
/// as what it is (`1969-12-31T23:59:59.999Z`), not as the epoch.
pub fn rfc3339(at: SystemTime, precision: Precision) -> String {
    let millis: i128 = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_millis() as i128,
        Err(before) => -(before.duration().as_millis() as i128),
    };
    let (secs, milli) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let date = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
    match precision {
        Precision::Seconds => format!("{date}Z"),
        Precision::Millis => format!("{date}.{milli:03}Z"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let millis = |s, ms| rfc3339(at(s, ms), Precision::Millis);
        assert_eq!(millis(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(millis(1_795_515_302, 125), "2026-11-24T10:15:02.125Z");
        assert_eq!(millis(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        let seconds = rfc3339(at(1_795_515_302, 999), Precision::Seconds);
        assert_eq!(seconds, "2026-11-24T10:15:02Z");
    }

    #[test]
    fn an_instant_before_1970_is_not_the_epoch() {
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(rfc3339(before, Precision::Millis), "1969-12-31T23:59:59.999Z");
        let leap = UNIX_EPOCH - Duration::from_secs(86_400 * 365 * 2);
        assert_eq!(rfc3339(leap, Precision::Seconds), "1968-01-02T00:00:00Z");
    }
}
