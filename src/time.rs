//! Wall-clock times as rewind reads and prints them: nanoseconds since the Unix epoch,
//! shown in local time (the `TZ` variable, else `/etc/localtime`, else UTC) as
//! `YYYY-MM-DD HH:MM:SS`, or as RFC 3339 with the local offset for JSON.

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// `ns` (since the Unix epoch) as a `Timestamp`.
pub fn timestamp(ns: u64) -> Timestamp {
    // u64 nanoseconds end in 2554, well inside jiff's range; the fallback is unreachable.
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `ts` in nanoseconds since the Unix epoch; an error for an instant before 1970.
pub fn timestamp_ns(ts: Timestamp) -> Result<u64, String> {
    u64::try_from(ts.as_nanosecond()).map_err(|_| format!("{ts} is before 1970"))
}

/// `ns` (since the Unix epoch) as `YYYY-MM-DD HH:MM:SS` in `tz`.
pub fn local_time(ns: u64, tz: &TimeZone) -> String {
    timestamp(ns)
        .to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// `ns` as RFC 3339 with `tz`'s offset at that instant and the fraction it needs, e.g.
/// `2025-06-01T10:42:07.5+02:00`.
pub fn rfc3339(ns: u64, tz: &TimeZone) -> String {
    let ts = timestamp(ns);
    ts.display_with_offset(tz.to_offset(ts)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2023-11-14 22:13:20 UTC.
    const T: u64 = 1_700_000_000_000_000_000;

    #[test]
    fn times_in_a_given_zone() {
        let utc = TimeZone::UTC;
        assert_eq!(local_time(T, &utc), "2023-11-14 22:13:20");
        assert_eq!(rfc3339(T, &utc), "2023-11-14T22:13:20+00:00");
        assert_eq!(
            rfc3339(T + 5_000_000, &utc),
            "2023-11-14T22:13:20.005+00:00"
        );
        let paris = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!(local_time(T, &paris), "2023-11-14 23:13:20");
        assert_eq!(rfc3339(T, &paris), "2023-11-14T23:13:20+01:00");
        // Summer time.
        let june = T + 200 * 86_400 * 1_000_000_000;
        assert_eq!(rfc3339(june, &paris), "2024-06-02T00:13:20+02:00");
    }
}
