//! Naming a safe point: the rules for labels, and the forms `--at` and `--to` accept (an id,
//! a label, a time or an age), read and then looked up in a history window.
//!
//! Pure: the clock and the time zone are arguments (`find_safe_point` reads the real ones),
//! and the window is whatever the caller has, through [`Candidate`]. The command line and
//! the daemon both check labels here, so they refuse the same ones.

use anyhow::{Context, Result};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rewind_history::format::MAX_LABEL;
use rewind_history::SafePointId;

use crate::time::{local_time, timestamp_ns};

/// Checks a label for `rewind safepoint --label`: 1 to 64 bytes, no control characters,
/// nothing that reads as a safe point id, an age or a time (see [`parse_selector`]). The
/// daemon checks it again, and that no safe point of the window has it already.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("the label is empty; omit --label for a safe point without one".into());
    }
    if label.len() > MAX_LABEL {
        return Err(format!(
            "the label is {} bytes long; at most {MAX_LABEL} are kept",
            label.len()
        ));
    }
    if let Some(c) = label.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the label holds the control character {c:?}; use printable characters"
        ));
    }
    if let Some(why) = label_ambiguity(label) {
        return Err(why);
    }
    Ok(())
}

/// clap's parser for `--label`.
pub fn parse_label(text: &str) -> Result<String, String> {
    check_label(text).map(|()| text.to_string())
}

/// What `--at` and `--to` accept, in the order they are tried: an id (only digits), a
/// relative age (`90s`, `5m`, `2h`, `1d`), a time (`10:42:07` or `10:42` today in local
/// time, `2026-11-24 10:42:07` local, RFC 3339 such as `2026-11-24T10:42:07+01:00`), else
/// a label. Labels that could read as one of the others are refused when they are made
/// (see [`check_label`]), so a text names one thing only. This is their value name in the
/// help.
pub const SELECTOR_VALUE_NAME: &str = "ID|LABEL|TIME|AGE";

/// Which safe point a `--at`/`--to` text names, before looking at the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Safe point with this id.
    Id(SafePointId),
    /// The safe point with this label.
    Label(String),
    /// The newest safe point made at or before this instant, ns since the Unix epoch.
    AtOrBefore(u64),
}

/// The seconds in one unit of a relative age.
fn age_unit_secs(unit: char) -> Option<u64> {
    match unit {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    }
}

/// `text` as a relative age in seconds (`90s`, `5m`, `2h`, `1d`), if it has that form.
fn parse_age_secs(text: &str) -> Option<Result<u64, String>> {
    let unit = text.chars().last()?;
    let secs = age_unit_secs(unit)?;
    let number = &text[..text.len() - 1];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(secs))
            .filter(|s| *s <= 100 * 365 * 86_400)
            .ok_or_else(|| format!("the age '{text}' is too long (at most 100 years)")),
    )
}

/// True when `text` has the shape of a time: a digit first and a ':' in it, or a date
/// `YYYY-MM-DD` first.
fn looks_like_time(text: &str) -> bool {
    let b = text.as_bytes();
    let starts_with_digit = b.first().is_some_and(u8::is_ascii_digit);
    let date = b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit);
    (starts_with_digit && text.contains(':')) || date
}

/// Why `label` cannot be a label because it reads as a safe point id, age or time.
fn label_ambiguity(label: &str) -> Option<String> {
    if label == "now" {
        return Some(
            "the label 'now' would read as the live device (`rewind diff --to now`); choose \
             another"
                .to_string(),
        );
    }
    if label.bytes().all(|b| b.is_ascii_digit()) {
        return Some(format!(
            "the label '{label}' is only digits, which would read as a safe point id; \
             add a letter"
        ));
    }
    if parse_age_secs(label).is_some() {
        return Some(format!(
            "the label '{label}' reads as an age (like 5m: five minutes ago); add a letter \
             in front"
        ));
    }
    if looks_like_time(label) {
        return Some(format!(
            "the label '{label}' reads as a time (a digit first and a ':', or a date \
             YYYY-MM-DD first); put a letter in front"
        ));
    }
    None
}

/// Reads a `--at`/`--to` text; `now` and `tz` give "today" and ages their meaning.
pub fn parse_selector(text: &str, now: Timestamp, tz: &TimeZone) -> Result<Selector, String> {
    const FORMS: &str = "an id, a label, a time (10:42:07 today, 2026-11-24 10:42:07, \
                         2026-11-24T10:42:07+01:00) or an age (90s, 5m, 2h, 1d)";
    if text.is_empty() {
        return Err(format!("no safe point given: give {FORMS}"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(|id| Selector::Id(SafePointId(id)))
            .map_err(|_| format!("safe point id '{text}' is too large"));
    }
    if let Some(age) = parse_age_secs(text) {
        let secs = age?;
        let then = now
            .checked_sub(jiff::SignedDuration::from_secs(secs as i64))
            .map_err(|e| format!("{text} ago: {e}"))?;
        return Ok(Selector::AtOrBefore(timestamp_ns(then)?));
    }
    if !looks_like_time(text) {
        return Ok(Selector::Label(text.to_string()));
    }
    let bad = |e: &dyn std::fmt::Display| {
        format!("'{text}' looks like a time but is not one ({e}); give {FORMS}")
    };
    let at = if text.len() >= 10 && text.as_bytes()[4] == b'-' {
        // With an offset (RFC 3339) it is exact; without, it is local time.
        match text.parse::<Timestamp>() {
            Ok(ts) => ts,
            Err(_) => {
                let dt: jiff::civil::DateTime =
                    text.replacen(' ', "T", 1).parse().map_err(|e| bad(&e))?;
                tz.to_timestamp(dt).map_err(|e| bad(&e))?
            }
        }
    } else {
        let time: jiff::civil::Time = text.parse().map_err(|e| bad(&e))?;
        let today = now.to_zoned_datetime(tz.clone()).date();
        tz.to_timestamp(today.to_datetime(time))
            .map_err(|e| bad(&e))?
    };
    if at > now {
        return Err(format!(
            "{text} ({}) is later than now: give a time in the past",
            local_time(timestamp_ns(at)?, tz)
        ));
    }
    Ok(Selector::AtOrBefore(timestamp_ns(at)?))
}

/// A safe point of a window, as far as a selector looks at it.
pub trait Candidate {
    /// Its id.
    fn id(&self) -> SafePointId;
    /// When it was made, ns since the Unix epoch.
    fn time_ns(&self) -> u64;
    /// Its label, if it has one.
    fn label(&self) -> Option<&str>;
}

/// Finds the safe point `to` names (see [`SELECTOR_VALUE_NAME`]), times read in local time
/// now.
pub fn find_safe_point<'a, C: Candidate>(window: &'a [C], to: &str) -> Result<&'a C> {
    find_safe_point_at(window, to, Timestamp::now(), &TimeZone::system())
}

/// [`find_safe_point`] with the clock and time zone given.
pub fn find_safe_point_at<'a, C: Candidate>(
    window: &'a [C],
    to: &str,
    now: Timestamp,
    tz: &TimeZone,
) -> Result<&'a C> {
    let range = match (window.first(), window.last()) {
        (Some(a), Some(b)) => format!("{} to {}", a.id(), b.id()),
        _ => "none".into(),
    };
    match parse_selector(to, now, tz).map_err(anyhow::Error::msg)? {
        Selector::Id(id) => window.iter().find(|s| s.id() == id).with_context(|| {
            format!("safe point {id} is not in the history window (ids {range}); `rewind log` lists them")
        }),
        Selector::Label(label) => window
            .iter()
            .find(|s| s.label() == Some(label.as_str()))
            .with_context(|| {
                format!(
                    "no safe point in the history window is labelled '{label}'; `rewind log` lists them"
                )
            }),
        Selector::AtOrBefore(ns) => {
            window
                .iter()
                .rev()
                .find(|s| s.time_ns() <= ns)
                .with_context(|| match window.first() {
                    Some(oldest) => format!(
                        "no safe point at or before {} ('{to}'); the oldest is {} at {}",
                        local_time(ns, tz),
                        oldest.id(),
                        local_time(oldest.time_ns(), tz)
                    ),
                    None => format!(
                        "no safe point at or before {}: the history window is empty",
                        local_time(ns, tz)
                    ),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2023-11-14 22:13:20 UTC.
    const T: u64 = 1_700_000_000_000_000_000;

    /// A safe point of a test window.
    #[derive(Debug)]
    struct Sp {
        id: SafePointId,
        time_ns: u64,
        label: Option<String>,
    }

    impl Candidate for Sp {
        fn id(&self) -> SafePointId {
            self.id
        }
        fn time_ns(&self) -> u64 {
            self.time_ns
        }
        fn label(&self) -> Option<&str> {
            self.label.as_deref()
        }
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("before-upgrade"), Ok("before-upgrade".into()));
        assert!(parse_label("with spaces, and ünïcode").is_ok());
        assert!(parse_label("").unwrap_err().contains("empty"));
        assert!(parse_label(&"x".repeat(64)).is_ok());
        let e = parse_label(&"x".repeat(65)).unwrap_err();
        assert!(e.contains("65 bytes") && e.contains("64"), "{e}");
        // 22 three-byte characters: 66 bytes though only 22 characters.
        assert!(parse_label(&"€".repeat(22))
            .unwrap_err()
            .contains("66 bytes"));
        assert!(parse_label("a\nb").unwrap_err().contains("control"));
        assert!(parse_label("42").unwrap_err().contains("safe point id"));
        assert!(parse_label("v42").is_ok());
    }

    fn window() -> Vec<Sp> {
        // Safe points 3, 4, 5 at T, T + 60 s, T + 120 s, labelled.
        (3..6)
            .map(|id| Sp {
                id: SafePointId(id),
                time_ns: T + (id - 3) * 60_000_000_000,
                label: Some(format!("sp-{id}")),
            })
            .collect()
    }

    fn now() -> Timestamp {
        // T + 10 minutes: 2023-11-14 22:23:20 UTC.
        Timestamp::from_nanosecond(i128::from(T + 600_000_000_000)).unwrap()
    }

    #[test]
    fn selectors_parse_ids_ages_times_and_labels() {
        let utc = TimeZone::UTC;
        let p = |t: &str| parse_selector(t, now(), &utc);
        let sec = 1_000_000_000u64;
        let now_ns = T + 600 * sec;
        assert_eq!(p("42"), Ok(Selector::Id(SafePointId(42))));
        assert_eq!(
            p("before-upgrade"),
            Ok(Selector::Label("before-upgrade".into()))
        );
        assert_eq!(p("90s"), Ok(Selector::AtOrBefore(now_ns - 90 * sec)));
        assert_eq!(p("5m"), Ok(Selector::AtOrBefore(now_ns - 300 * sec)));
        assert_eq!(p("2h"), Ok(Selector::AtOrBefore(now_ns - 7200 * sec)));
        assert_eq!(p("1d"), Ok(Selector::AtOrBefore(now_ns - 86_400 * sec)));
        assert_eq!(p("0s"), Ok(Selector::AtOrBefore(now_ns)));
        // Today, local time.
        assert_eq!(p("22:13:20"), Ok(Selector::AtOrBefore(T)));
        assert_eq!(p("22:13"), Ok(Selector::AtOrBefore(T - 20 * sec)));
        assert_eq!(p("2023-11-14 22:13:20"), Ok(Selector::AtOrBefore(T)));
        assert_eq!(p("2023-11-14T22:13:20"), Ok(Selector::AtOrBefore(T)));
        assert_eq!(p("2023-11-14T23:13:20+01:00"), Ok(Selector::AtOrBefore(T)));
        assert_eq!(p("2023-11-14T22:13:20Z"), Ok(Selector::AtOrBefore(T)));
        assert_eq!(
            p("2023-11-14T22:13:20.5Z"),
            Ok(Selector::AtOrBefore(T + sec / 2))
        );
        // Local time in another zone.
        let paris = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!(
            parse_selector("23:13:20", now(), &paris),
            Ok(Selector::AtOrBefore(T))
        );
        assert_eq!(
            parse_selector("2023-11-14 23:13:20", now(), &paris),
            Ok(Selector::AtOrBefore(T))
        );
        // Refusals say why.
        assert!(p("23:59:00").unwrap_err().contains("later than now"));
        assert!(p("2030-01-01 00:00:00")
            .unwrap_err()
            .contains("later than now"));
        assert!(p("25:00:00").unwrap_err().contains("looks like a time"));
        assert!(p("2023-13-01 00:00")
            .unwrap_err()
            .contains("looks like a time"));
        assert!(p("").unwrap_err().contains("no safe point given"));
        assert!(p("99999999999999999999").unwrap_err().contains("too large"));
        assert!(p("99999999999d").unwrap_err().contains("too long"));
        // Not an age: a label.
        assert_eq!(p("5min"), Ok(Selector::Label("5min".into())));
        assert_eq!(p("m"), Ok(Selector::Label("m".into())));
    }

    #[test]
    fn labels_that_read_as_times_or_ages_are_refused() {
        for (label, why) in [
            ("5m", "age"),
            ("90s", "age"),
            ("10:42", "time"),
            ("2026-11-24", "time"),
            ("2026-11-24-nightly", "time"),
            ("123", "safe point id"),
            ("now", "live device"),
        ] {
            let e = parse_label(label).unwrap_err();
            assert!(e.contains(why), "{label}: {e}");
        }
        for ok in [
            "v10:42",
            "nightly-2026-11-24",
            "5min",
            "m",
            "2026-release",
            "nowhere",
        ] {
            assert!(parse_label(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn find_by_id_label_time_and_age() {
        let w = window();
        let utc = TimeZone::UTC;
        let find = |t: &str| find_safe_point_at(&w, t, now(), &utc).map(|s| s.id.0);
        assert_eq!(find("4").unwrap(), 4);
        assert_eq!(find("sp-5").unwrap(), 5);
        assert_eq!(find("22:13:20").unwrap(), 3, "exactly at");
        assert_eq!(find("22:14:19").unwrap(), 3, "just before the next");
        assert_eq!(find("22:14:20").unwrap(), 4);
        assert_eq!(find("5m").unwrap(), 5);
        assert_eq!(find("9m").unwrap(), 4, "T + 60 s");
        let e = find("2023-11-14 22:00:00").unwrap_err().to_string();
        assert_eq!(
            e,
            "no safe point at or before 2023-11-14 22:00:00 ('2023-11-14 22:00:00'); the \
             oldest is 3 at 2023-11-14 22:13:20"
        );
        let e = find("1h").unwrap_err().to_string();
        assert!(e.contains("the oldest is 3"), "{e}");
        assert!(find("9").unwrap_err().to_string().contains("ids 3 to 5"));
        assert!(find("nope")
            .unwrap_err()
            .to_string()
            .contains("labelled 'nope'"));
        let e = find_safe_point_at::<Sp>(&[], "5m", now(), &utc)
            .unwrap_err()
            .to_string();
        assert!(e.contains("history window is empty"), "{e}");
    }
}
