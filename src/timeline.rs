//! The history window as users see it: `rewind safepoint` and `rewind log`, the rules for
//! labels, and how times and safe points are printed.
//!
//! Times are shown in local time (the `TZ` variable, else `/etc/localtime`, else UTC) as
//! `YYYY-MM-DD HH:MM:SS`; JSON carries RFC 3339 with the local offset and the exact
//! nanoseconds since the Unix epoch.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rewind_history::format::MAX_LABEL;
use rewind_history::SafePoint;
use serde::Serialize;

use crate::backing::{BackingError, FileStore};
use crate::control::{DeviceStats, Request, SafePointRecord};
use crate::devices;
use crate::size::human;

/// How long `rewind safepoint` waits: the daemon syncs the image before it answers, which
/// can take a while behind a lot of buffered writes.
const SAFE_POINT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `rewind log -n` waits.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a label for `rewind safepoint --label`: 1 to 64 bytes, no control characters,
/// nothing that reads as a safe point id, an age or a time (see [`parse_selector`]). The daemon checks it again, and that
/// no safe point of the window has it already.
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

fn timestamp(ns: u64) -> Timestamp {
    // u64 nanoseconds end in 2554, well inside jiff's range; the fallback is unreachable.
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
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

/// One safe point in `--json` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JsonSafePoint {
    /// Its id.
    pub id: u64,
    /// RFC 3339, local offset.
    pub time: String,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// What made it.
    pub trigger: String,
    /// Its label, or null.
    pub label: Option<String>,
    /// Bytes first written in the epoch it closed; null when unknown (the oldest).
    pub changed_bytes: Option<u64>,
    /// Bytes of history that go when it retires.
    pub held_bytes: u64,
    /// Kept from retiring by `rewind pin`.
    pub pinned: bool,
    /// The view devices showing it (ublk ids).
    pub views: Vec<u32>,
}

impl JsonSafePoint {
    /// `r` with its times for `tz`, pages of `page_size` bytes.
    pub fn new(r: &SafePointRecord, page_size: u64, tz: &TimeZone) -> JsonSafePoint {
        JsonSafePoint {
            id: r.id,
            time: rfc3339(r.time_ns, tz),
            time_ns: r.time_ns,
            trigger: r.trigger.clone(),
            label: r.label.clone(),
            changed_bytes: r.changed_pages.map(|p| p * page_size),
            held_bytes: r.held_pages * page_size,
            pinned: r.pinned,
            views: r.views.clone(),
        }
    }
}

/// The figures under the table of `rewind log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSummary {
    /// Safe points in the window.
    pub safe_points: u64,
    /// When the oldest was made.
    pub oldest_time_ns: Option<u64>,
    /// History in use, bytes.
    pub history_bytes: u64,
    /// The history area, bytes.
    pub history_capacity_bytes: u64,
}

impl WindowSummary {
    /// From a daemon's figures.
    pub fn from_stats(s: &DeviceStats) -> WindowSummary {
        WindowSummary {
            safe_points: s.safe_points,
            oldest_time_ns: s.oldest_safe_point_time_ns,
            history_bytes: s.history_pages * s.page_size,
            history_capacity_bytes: s.history_capacity_pages * s.page_size,
        }
    }
}

/// `part` of `whole` in percent, 0 for an empty whole.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The table of `rewind log`, one string per line, header first:
/// `ID  TIME  TRIGGER  LABEL  CHANGED  HELD`, ids and sizes right-aligned, "-" for no
/// label and for an unknown size.
pub fn log_table(records: &[SafePointRecord], page_size: u64, tz: &TimeZone) -> Vec<String> {
    const RIGHT: [bool; 7] = [true, false, false, false, true, true, false];
    let kept_column = records.iter().any(|r| r.pinned || !r.views.is_empty());
    let mut rows: Vec<[String; 7]> = vec![[
        "ID".into(),
        "TIME".into(),
        "TRIGGER".into(),
        "LABEL".into(),
        "CHANGED".into(),
        "HELD".into(),
        if kept_column { "KEPT BY" } else { "" }.into(),
    ]];
    for r in records {
        let mut kept: Vec<String> = Vec::new();
        if r.pinned {
            kept.push("pin".into());
        }
        kept.extend(r.views.iter().map(|v| format!("view ublkb{v}")));
        rows.push([
            r.id.to_string(),
            local_time(r.time_ns, tz),
            r.trigger.clone(),
            r.label.clone().unwrap_or_else(|| "-".into()),
            r.changed_pages
                .map_or_else(|| "-".into(), |p| human(p * page_size)),
            human(r.held_pages * page_size),
            kept.join(", "),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .zip(RIGHT)
                .map(|((cell, w), right)| {
                    if right {
                        format!("{cell:>w$}")
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

/// The line under the table: how far back the window reaches and how full the history is.
pub fn log_footer(w: &WindowSummary, tz: &TimeZone) -> String {
    let since = w
        .oldest_time_ns
        .map_or_else(String::new, |t| format!(" since {}", local_time(t, tz)));
    format!(
        "{} safe point{}{since}; history {} used of {} ({:.1}%)",
        w.safe_points,
        if w.safe_points == 1 { "" } else { "s" },
        human(w.history_bytes),
        human(w.history_capacity_bytes),
        percent(w.history_bytes, w.history_capacity_bytes)
    )
}

fn print_log(
    records: &[SafePointRecord],
    summary: &WindowSummary,
    page_size: u64,
    json: bool,
) -> Result<()> {
    let tz = TimeZone::system();
    if json {
        let entries: Vec<JsonSafePoint> = records
            .iter()
            .map(|r| JsonSafePoint::new(r, page_size, &tz))
            .collect();
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    for line in log_table(records, page_size, &tz) {
        println!("{line}");
    }
    println!("{}", log_footer(summary, &tz));
    Ok(())
}

/// `rewind safepoint -n ID [--label LABEL]`.
pub fn safepoint_command(id: u32, label: Option<String>, json: bool) -> Result<()> {
    let device = crate::paths::device_path(id).display().to_string();
    let reply = match devices::ask(
        "rewind safepoint",
        id,
        &Request::SafePoint { label },
        SAFE_POINT_TIMEOUT,
    )? {
        Ok(reply) => reply,
        Err(why) => bail!("no safe point made on {device}: {why}"),
    };
    let (Some(sp), Some(stats)) = (reply.safe_point, reply.stats) else {
        bail!("the daemon of {device} made a safe point but did not say which");
    };
    let tz = TimeZone::system();
    if json {
        let entry = JsonSafePoint::new(&sp, stats.page_size, &tz);
        println!("{}", serde_json::to_string_pretty(&entry)?);
        return Ok(());
    }
    println!("{}", safe_point_line(&sp, &tz));
    Ok(())
}

/// What `rewind safepoint` prints: `safe point 12 at 2025-06-01 10:42:07, label "x"`.
pub fn safe_point_line(sp: &SafePointRecord, tz: &TimeZone) -> String {
    let mut line = format!("safe point {} at {}", sp.id, local_time(sp.time_ns, tz));
    if let Some(label) = &sp.label {
        line.push_str(&format!(", label {label:?}"));
    }
    line
}

/// `rewind log -n ID`: asks the daemon.
pub fn log_device_command(id: u32, json: bool) -> Result<()> {
    let reply = match devices::ask("rewind log", id, &Request::Log, LOG_TIMEOUT)? {
        Ok(reply) => reply,
        Err(why) => bail!(
            "the daemon of {} refused: {why}",
            crate::paths::device_path(id).display()
        ),
    };
    let (Some(records), Some(stats)) = (reply.safe_points, reply.stats) else {
        bail!("the daemon of ublk device {id} sent no history");
    };
    print_log(
        &records,
        &WindowSummary::from_stats(&stats),
        stats.page_size,
        json,
    )
}

/// `rewind log IMAGE`: reads an image no daemon serves, writing nothing.
pub fn log_image_command(image: &Path, json: bool) -> Result<()> {
    let store = match FileStore::open_read_only(image) {
        Ok(s) => s,
        Err(BackingError::InUse { .. }) => bail!(served_elsewhere(image)),
        Err(e) => return Err(e.into()),
    };
    let found = rewind_history::inspect(&store, &crate::host::this_host())
        .with_context(|| format!("reading the history of {}", image.display()))?;
    let records: Vec<SafePointRecord> = found.safe_points.iter().map(Into::into).collect();
    let s = &found.stats;
    let summary = WindowSummary {
        safe_points: s.safe_points,
        oldest_time_ns: found.safe_points.first().map(|i| i.safe_point.time_ns),
        history_bytes: s.history_pages * rewind_history::PAGE_SIZE,
        history_capacity_bytes: s.history_capacity_pages * rewind_history::PAGE_SIZE,
    };
    print_log(&records, &summary, rewind_history::PAGE_SIZE, json)?;
    if !found.clean && !json {
        println!("(not closed cleanly: shown as the next `rewind add` will recover it)");
    }
    Ok(())
}

/// What `--at` and `--to` accept, in the order they are tried: an id (only digits), a
/// relative age (`90s`, `5m`, `2h`, `1d`), a time (`10:42:07` or `10:42` today in local
/// time, `2026-11-24 10:42:07` local, RFC 3339 such as `2026-11-24T10:42:07+01:00`), else
/// a label. Labels that could read as one of the others are refused when they are made
/// (see [`check_label`]), so a text names one thing only.
pub const SELECTOR_HELP: &str = "ID|LABEL|TIME|AGE";

/// Which safe point a `--at`/`--to` text names, before looking at the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Safe point with this id.
    Id(u64),
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
            .map(Selector::Id)
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

fn timestamp_ns(ts: Timestamp) -> Result<u64, String> {
    u64::try_from(ts.as_nanosecond()).map_err(|_| format!("{ts} is before 1970"))
}

/// Finds the safe point `to` names (see [`SELECTOR_HELP`]), times read in local time now.
pub fn find_safe_point<'a>(
    window: &'a [rewind_history::SafePoint],
    to: &str,
) -> Result<&'a rewind_history::SafePoint> {
    find_safe_point_at(window, to, Timestamp::now(), &TimeZone::system())
}

/// [`find_safe_point`] with the clock and time zone given.
pub fn find_safe_point_at<'a>(
    window: &'a [rewind_history::SafePoint],
    to: &str,
    now: Timestamp,
    tz: &TimeZone,
) -> Result<&'a rewind_history::SafePoint> {
    let range = match (window.first(), window.last()) {
        (Some(a), Some(b)) => format!("{} to {}", a.id, b.id),
        _ => "none".into(),
    };
    match parse_selector(to, now, tz).map_err(anyhow::Error::msg)? {
        Selector::Id(id) => window.iter().find(|s| s.id == id).with_context(|| {
            format!("safe point {id} is not in the history window (ids {range}); `rewind log` lists them")
        }),
        Selector::Label(label) => window
            .iter()
            .find(|s| s.label.as_deref() == Some(label.as_str()))
            .with_context(|| {
                format!(
                    "no safe point in the history window is labelled '{label}'; `rewind log` lists them"
                )
            }),
        Selector::AtOrBefore(ns) => {
            window
                .iter()
                .rev()
                .find(|s| s.time_ns <= ns)
                .with_context(|| match window.first() {
                    Some(oldest) => format!(
                        "no safe point at or before {} ('{to}'); the oldest is {} at {}",
                        local_time(ns, tz),
                        oldest.id,
                        local_time(oldest.time_ns, tz)
                    ),
                    None => format!(
                        "no safe point at or before {}: the history window is empty",
                        local_time(ns, tz)
                    ),
                })
        }
    }
}

#[derive(Serialize)]
struct RollbackJson {
    to: u64,
    undo: u64,
    time: String,
    label: Option<String>,
}

/// `rewind rollback IMAGE --to X`: on an image no daemon serves.
pub fn rollback_image_command(image: &Path, to: &str, json: bool) -> Result<()> {
    let (target, undo) = change_image(image, to, |vol, target| {
        vol.rollback(target.id)
            .with_context(|| format!("rolling {} back", image.display()))
    })?;
    let shown = image.display().to_string();
    print_rollback(&shown, &shown, &target, undo, json)
}

/// Changes the history of an image no daemon serves: finds the safe point `at` read-only
/// first (so a refusal writes nothing), then opens the image, runs `change` and closes it.
fn change_image<T>(
    image: &Path,
    at: &str,
    change: impl FnOnce(&rewind_history::Volume<FileStore>, &SafePoint) -> Result<T>,
) -> Result<(SafePoint, T)> {
    let store = match FileStore::open(image) {
        Ok(s) => s,
        Err(BackingError::InUse { .. }) => bail!(served_elsewhere(image)),
        Err(e) => return Err(e.into()),
    };
    let found = rewind_history::inspect(&store, &crate::host::this_host())
        .with_context(|| format!("reading the history of {}", image.display()))?;
    let window: Vec<_> = found
        .safe_points
        .into_iter()
        .map(|i| i.safe_point)
        .collect();
    let target = find_safe_point(&window, at)?.clone();
    let vol = rewind_history::Volume::open(store, &crate::host::this_host())
        .with_context(|| format!("opening {}", image.display()))?;
    let out = change(&vol, &target)?;
    vol.close()
        .with_context(|| format!("closing {}", image.display()))?;
    Ok((target, out))
}

/// What a rollback prints: where `what` went, and the command (`rewind rollback WHICH`)
/// that undoes it.
fn print_rollback(
    what: &str,
    which: &str,
    target: &rewind_history::SafePoint,
    undo: u64,
    json: bool,
) -> Result<()> {
    let tz = TimeZone::system();
    if json {
        let j = RollbackJson {
            to: target.id,
            undo,
            time: rfc3339(target.time_ns, &tz),
            label: target.label.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        let label = target
            .label
            .as_deref()
            .map(|l| format!(", label \"{l}\""))
            .unwrap_or_default();
        println!(
            "rolled {what} back to safe point {} ({}{label}); undo with `rewind rollback {which} --to {undo}`",
            target.id,
            local_time(target.time_ns, &tz),
        );
    }
    Ok(())
}

/// `rewind rollback -n ID --to X`: on a served device nobody has open exclusively.
pub fn rollback_device_command(id: u32, to: &str, json: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let device = crate::paths::device_path(id);
    let shown = device.display().to_string();
    let window = device_window("rewind rollback", id)?;
    let target = find_safe_point(&window, to)?.clone();
    // O_EXCL on a block device fails with EBUSY while it is mounted or open exclusively,
    // and keeps anyone from mounting it while we hold it.
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&device)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                anyhow::anyhow!(
                    "{shown} is in use (mounted, or open exclusively): unmount it or stop \
                     what holds it, then roll back"
                )
            } else {
                anyhow::anyhow!("opening {shown}: {e}")
            }
        })?;
    let reply = match devices::ask(
        "rewind rollback",
        id,
        &Request::Rollback { to: target.id },
        SAFE_POINT_TIMEOUT,
    )? {
        Ok(reply) => reply,
        Err(why) => bail!("{shown} was not rolled back: {why}"),
    };
    let undo = reply
        .undo
        .context("the daemon rolled back but did not say how to undo it")?;
    // The kernel still caches pages of the old state: drop them so readers see the new one.
    const BLKFLSBUF: libc::c_ulong = 0x1261; // _IO(0x12, 97)
                                             // SAFETY: BLKFLSBUF takes no argument; the fd is an open block device we own.
    if unsafe { libc::ioctl(holder.as_raw_fd(), BLKFLSBUF, 0) } != 0 {
        bail!(
            "{shown} was rolled back to safe point {}, but dropping the kernel's cached pages \
             failed ({}): run `blockdev --flushbufs {shown}` before reading it",
            target.id,
            std::io::Error::last_os_error()
        );
    }
    drop(holder);
    print_rollback(&shown, &format!("-n {id}"), &target, undo, json)
}

/// The history window of device `id`, from its daemon (for `command`).
fn device_window(command: &str, id: u32) -> Result<Vec<rewind_history::SafePoint>> {
    let shown = crate::paths::device_path(id).display().to_string();
    let reply = match devices::ask(command, id, &Request::Log, LOG_TIMEOUT)? {
        Ok(reply) => reply,
        Err(why) => bail!("reading the history of {shown}: {why}"),
    };
    Ok(reply
        .safe_points
        .unwrap_or_default()
        .iter()
        .map(|r| rewind_history::SafePoint {
            id: r.id,
            time_ns: r.time_ns,
            trigger: rewind_history::Trigger::User,
            label: r.label.clone(),
        })
        .collect())
}

/// How long `rewind view` waits for the daemon to add the view device.
const VIEW_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct ViewJson {
    device: String,
    id: u32,
    of: u32,
    at: u64,
    time: String,
    label: Option<String>,
}

/// `rewind view -n ID --at X`: asks the daemon of device `id` for a read-only device
/// showing safe point X, and prints its path.
pub fn view_command(id: u32, at: &str, json: bool) -> Result<()> {
    let shown = crate::paths::device_path(id).display().to_string();
    let window = device_window("rewind view", id)?;
    let target = find_safe_point(&window, at)?.clone();
    let reply = match devices::ask(
        "rewind view",
        id,
        &Request::OpenView { at: target.id },
        VIEW_TIMEOUT,
    )? {
        Ok(reply) => reply,
        Err(why) => bail!("no view of {shown} at safe point {}: {why}", target.id),
    };
    let view = reply
        .view
        .context("the daemon opened a view but did not say which device")?;
    // The node appears through devtmpfs a moment after the device goes live.
    let path = Path::new(&view.device);
    for _ in 0..100 {
        if path.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let tz = TimeZone::system();
    if json {
        let j = ViewJson {
            device: view.device.clone(),
            id: view.device_id,
            of: id,
            at: target.id,
            time: rfc3339(target.time_ns, &tz),
            label: target.label.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        let label = target
            .label
            .as_deref()
            .map(|l| format!(", label \"{l}\""))
            .unwrap_or_default();
        eprintln!(
            "rewind: {}: read-only view of {shown} at safe point {} ({}{label}); \
             `rewind del -n {}` removes it",
            view.device,
            target.id,
            local_time(target.time_ns, &tz),
            view.device_id
        );
        println!("{}", view.device);
    }
    Ok(())
}

#[derive(Serialize)]
struct PinJson {
    id: u64,
    pinned: bool,
    time: String,
    label: Option<String>,
}

/// `rewind pin` / `rewind unpin`: on device `id` through its daemon, or on `image`.
pub fn pin_command(
    id: Option<u32>,
    image: Option<&Path>,
    at: &str,
    pinned: bool,
    json: bool,
) -> Result<()> {
    let verb = if pinned { "pin" } else { "unpin" };
    let command = format!("rewind {verb}");
    let (target, what) = match (id, image) {
        (Some(id), _) => {
            let shown = crate::paths::device_path(id).display().to_string();
            let window = device_window(&command, id)?;
            let target = find_safe_point(&window, at)?.clone();
            match devices::ask(
                &command,
                id,
                &Request::Pin {
                    id: target.id,
                    pinned,
                },
                SAFE_POINT_TIMEOUT,
            )? {
                Ok(_) => {}
                Err(why) => bail!(
                    "could not {verb} safe point {} of {shown}: {why}",
                    target.id
                ),
            }
            (target, shown)
        }
        (None, Some(image)) => {
            let (target, ()) = change_image(image, at, |vol, target| {
                vol.pin(target.id, pinned)
                    .with_context(|| format!("{verb}ning safe point {}", target.id))
            })?;
            (target, image.display().to_string())
        }
        (None, None) => bail!("give -n ID or an IMAGE"),
    };
    let tz = TimeZone::system();
    if json {
        let j = PinJson {
            id: target.id,
            pinned,
            time: rfc3339(target.time_ns, &tz),
            label: target.label.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "{} safe point {} of {what} ({})",
            if pinned { "pinned" } else { "unpinned" },
            target.id,
            local_time(target.time_ns, &tz)
        );
    }
    Ok(())
}

fn served_elsewhere(image: &Path) -> String {
    match devices::device_serving(image) {
        Some(id) => format!(
            "{} is served by a running rewind daemon as {}: ask it with `rewind log -n {id}`",
            image.display(),
            crate::paths::device_path(id).display()
        ),
        None => format!(
            "{} is in use by a running rewind daemon (or a `rewind create`): ask the daemon \
             with `rewind log -n ID` (`rewind list` shows the ids)",
            image.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2023-11-14 22:13:20 UTC.
    const T: u64 = 1_700_000_000_000_000_000;

    fn rec(id: u64, trigger: &str, label: Option<&str>, changed: Option<u64>) -> SafePointRecord {
        SafePointRecord {
            id,
            time_ns: T + id * 1_500_000_000,
            trigger: trigger.into(),
            label: label.map(Into::into),
            changed_pages: changed,
            held_pages: id * 256,
            pinned: false,
            views: vec![],
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

    fn window() -> Vec<rewind_history::SafePoint> {
        // Safe points 3, 4, 5 at T, T + 60 s, T + 120 s, labelled.
        (3..6)
            .map(|id| rewind_history::SafePoint {
                id,
                time_ns: T + (id - 3) * 60_000_000_000,
                trigger: rewind_history::Trigger::User,
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
        assert_eq!(p("42"), Ok(Selector::Id(42)));
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
        ] {
            let e = parse_label(label).unwrap_err();
            assert!(e.contains(why), "{label}: {e}");
        }
        for ok in ["v10:42", "nightly-2026-11-24", "5min", "m", "2026-release"] {
            assert!(parse_label(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn find_by_id_label_time_and_age() {
        let w = window();
        let utc = TimeZone::UTC;
        let find = |t: &str| find_safe_point_at(&w, t, now(), &utc).map(|s| s.id);
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
        let e = find_safe_point_at(&[], "5m", now(), &utc)
            .unwrap_err()
            .to_string();
        assert!(e.contains("history window is empty"), "{e}");
    }

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

    #[test]
    fn table_layout() {
        let records = [
            rec(0, "format", None, None),
            rec(7, "user", Some("before-upgrade"), Some(3)),
            rec(12, "flush", None, Some(300_000)),
        ];
        let lines = log_table(&records, 4096, &TimeZone::UTC);
        let expected = [
            "ID  TIME                 TRIGGER  LABEL           CHANGED    HELD",
            " 0  2023-11-14 22:13:20  format   -                     -     0 B",
            " 7  2023-11-14 22:13:30  user     before-upgrade   12 KiB   7 MiB",
            "12  2023-11-14 22:13:38  flush    -               1.1 GiB  12 MiB",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
    }

    #[test]
    fn table_marks_pins_and_views() {
        let mut pinned = rec(7, "user", Some("before-upgrade"), Some(3));
        pinned.pinned = true;
        pinned.views = vec![1];
        let mut viewed = rec(12, "flush", None, Some(300_000));
        viewed.views = vec![2, 3];
        let lines = log_table(
            &[rec(0, "format", None, None), pinned, viewed],
            4096,
            &TimeZone::UTC,
        );
        let expected = [
            "ID  TIME                 TRIGGER  LABEL           CHANGED    HELD  KEPT BY",
            " 0  2023-11-14 22:13:20  format   -                     -     0 B",
            " 7  2023-11-14 22:13:30  user     before-upgrade   12 KiB   7 MiB  pin, view ublkb1",
            "12  2023-11-14 22:13:38  flush    -               1.1 GiB  12 MiB  view ublkb2, view ublkb3",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
    }

    #[test]
    fn footer_says_how_far_back_and_how_full() {
        let w = WindowSummary {
            safe_points: 14,
            oldest_time_ns: Some(T),
            history_bytes: 120 << 20,
            history_capacity_bytes: 1 << 30,
        };
        assert_eq!(
            log_footer(&w, &TimeZone::UTC),
            "14 safe points since 2023-11-14 22:13:20; history 120 MiB used of 1 GiB (11.7%)"
        );
        let one = WindowSummary {
            safe_points: 1,
            oldest_time_ns: Some(T),
            history_bytes: 0,
            history_capacity_bytes: 0,
        };
        assert_eq!(
            log_footer(&one, &TimeZone::UTC),
            "1 safe point since 2023-11-14 22:13:20; history 0 B used of 0 B (0.0%)"
        );
    }

    #[test]
    fn json_entries() {
        let j = JsonSafePoint::new(
            &rec(7, "user", Some("before"), Some(3)),
            4096,
            &TimeZone::UTC,
        );
        assert_eq!(
            serde_json::to_value(&j).unwrap(),
            serde_json::json!({
                "id": 7,
                "time": "2023-11-14T22:13:30.5+00:00",
                "time_ns": 1_700_000_010_500_000_000u64,
                "trigger": "user",
                "label": "before",
                "changed_bytes": 12288,
                "held_bytes": 7 * 256 * 4096,
                "pinned": false,
                "views": [],
            })
        );
        let oldest = JsonSafePoint::new(&rec(0, "format", None, None), 4096, &TimeZone::UTC);
        let v = serde_json::to_value(&oldest).unwrap();
        assert!(v["label"].is_null() && v["changed_bytes"].is_null(), "{v}");
    }

    #[test]
    fn safe_point_line_shows_the_label_quoted() {
        let tz = TimeZone::UTC;
        assert_eq!(
            safe_point_line(&rec(7, "user", Some("before"), Some(0)), &tz),
            "safe point 7 at 2023-11-14 22:13:30, label \"before\""
        );
        assert_eq!(
            safe_point_line(&rec(8, "user", None, Some(0)), &tz),
            "safe point 8 at 2023-11-14 22:13:32"
        );
    }
}
