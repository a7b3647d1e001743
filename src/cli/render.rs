//! How the command line prints what it found: tables, times, percentages and sizes, the
//! figures of `rewind stats` and the window of `rewind log`, and the JSON of a safe point.
//!
//! Times are shown in local time as `YYYY-MM-DD HH:MM:SS`; JSON carries RFC 3339 with the
//! local offset and the exact nanoseconds since the Unix epoch (see `time`).

use jiff::tz::TimeZone;
use rewind_history::SafePointId;
use serde::Serialize;

use crate::ipc::control::{DeviceStats, MirrorRecord, SafePointRecord};
use crate::ipc::device::DataPath;
use crate::runtime::listing::ListedDevice;
use crate::size::human;
use crate::time::{local_time, rfc3339};

/// One safe point in `--json` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JsonSafePoint {
    /// Its id.
    pub id: SafePointId,
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
    /// `held_pages` of [`SafePointRecord`] in bytes: the history made between it and the
    /// next safe point, which it (and maybe older safe points) reads.
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
            safe_points: s.engine.safe_points,
            oldest_time_ns: s.oldest_safe_point_time_ns,
            history_bytes: s.engine.history_pages * s.page_size,
            history_capacity_bytes: s.engine.history_capacity_pages * s.page_size,
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

/// Prints `value` as pretty JSON on stdout (the `--json` of every command).
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `, label "x"` for a safe point labelled x, nothing for one without a label.
pub fn label_suffix(label: Option<&str>) -> String {
    label
        .map(|l| format!(", label \"{l}\""))
        .unwrap_or_default()
}

/// `rows` as lines of aligned columns two spaces apart, right-aligned where `right` says,
/// trailing spaces trimmed.
pub fn table<const N: usize>(rows: &[[String; N]], right: [bool; N]) -> Vec<String> {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .zip(right)
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

/// The table of `rewind list`, one string per line, header first:
/// `ID  DEVICE  SIZE  HISTORY USED/TOTAL  STATE  IMAGE`, "?" for the figures of a daemon
/// that did not answer.
pub fn device_table(devices: &[ListedDevice]) -> Vec<String> {
    let mut rows = vec![[
        "ID".to_string(),
        "DEVICE".into(),
        "SIZE".into(),
        "HISTORY USED/TOTAL".into(),
        "DATA PATH".into(),
        "STATE".into(),
        "IMAGE".into(),
    ]];
    for d in devices {
        rows.push([
            d.id.to_string(),
            d.device.clone(),
            size_column(&d.stats),
            history_column(&d.stats),
            d.data_path.map_or("?", DataPath::name).into(),
            d.state.clone(),
            d.image.clone(),
        ]);
    }
    table(&rows, [false; 7])
}

fn history_column(stats: &Option<DeviceStats>) -> String {
    match stats {
        Some(s) => format!(
            "{} / {}",
            human(s.engine.history_pages * s.page_size),
            human(s.engine.history_capacity_pages * s.page_size)
        ),
        None => "?".into(),
    }
}

fn size_column(stats: &Option<DeviceStats>) -> String {
    stats
        .as_ref()
        .map_or_else(|| "?".into(), |s| human(s.device_bytes))
}

/// The table of `rewind log`, one string per line, header first:
/// `ID  TIME  TRIGGER  LABEL  CHANGED  HELD`, and `KEPT BY` when a safe point is pinned or
/// shown by a view; ids and sizes right-aligned, "-" for no label and for an unknown size.
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
    table(&rows, RIGHT)
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

/// What `rewind safepoint` prints: `safe point 12 at 2025-06-01 10:42:07, label "x"`.
pub fn safe_point_line(sp: &SafePointRecord, tz: &TimeZone) -> String {
    let mut line = format!("safe point {} at {}", sp.id, local_time(sp.time_ns, tz));
    if let Some(label) = &sp.label {
        line.push_str(&format!(", label {label:?}"));
    }
    line
}

/// What `rewind stats` prints, one figure a line: a name padded to 12 columns, then its
/// value.
pub fn stats_text(s: &DeviceStats, tz: &TimeZone) -> String {
    let mut lines = vec![("device", s.device.clone())];
    if let Some(at) = s.read_only_at {
        lines.push((
            "read only",
            format!("safe point {at} of the image, served read-only (`rewind add --read-only`)"),
        ));
    }
    if let Some(warning) = s.host_full_warning() {
        lines.push(("warning", warning));
    }
    lines.extend(space_lines(s));
    lines.extend(s.pool.iter().enumerate().map(|(i, f)| {
        let what = if i == 0 { "metadata" } else { "data" };
        let kind = if f.block_device {
            "block device"
        } else {
            "file"
        };
        (
            "pool",
            format!("{} ({kind}): {} of {what}", f.path, human(f.bytes)),
        )
    }));
    if let Some(path) = s.data_path {
        lines.push(("data path", describe_data_path(path).into()));
    }
    lines.extend(written_line(s));
    lines.extend(window_lines(s, tz));
    lines.extend(pacing_lines(s));
    lines.extend(kept_lines(s));
    lines.extend(s.mirror.as_ref().map(|m| ("mirror", mirror_line(m, tz))));
    lines.push(("daemon", format!("pid {}", s.pid)));
    if let Some(log) = &s.log {
        lines.push(("log", log.clone()));
    }
    lines
        .iter()
        .map(|(name, value)| format!("{name:<12} {value}\n"))
        .collect()
}

/// `rewind stats`: where the device's mirror stands.
fn mirror_line(m: &MirrorRecord, tz: &TimeZone) -> String {
    let at = match (m.applying, m.at) {
        (Some(to), _) => format!("being brought to safe point {to} (a mix until that ends)"),
        (None, Some(at)) => format!("at safe point {at}"),
        (None, None) => "no safe point yet".into(),
    };
    format!(
        "{}: {at}, {} safe points and {:.1} s behind (mirror pid {}, as of {})",
        m.target,
        m.lag_safe_points,
        m.lag_ms as f64 / 1000.0,
        m.pid,
        local_time(m.updated_ns, tz)
    )
}

/// `rewind stats`: how request data moves between the kernel and the image.
fn describe_data_path(path: DataPath) -> &'static str {
    match path {
        DataPath::ZeroCopy => {
            "zero copy: the image is read into and written from the kernel's pages"
        }
        DataPath::Copy => "copy: request data goes through the daemon's buffers",
    }
}

/// `rewind stats`: the image, and how its space is used.
fn space_lines(s: &DeviceStats) -> [(&'static str, String); 4] {
    [
        ("image", image_line(s)),
        (
            "size",
            format!(
                "{} ({} pages of {} bytes)",
                human(s.device_bytes),
                s.engine.logical_pages,
                s.page_size
            ),
        ),
        (
            "history",
            format!(
                "{} used of {} ({:.1}%)",
                human(s.engine.history_pages * s.page_size),
                human(s.engine.history_capacity_pages * s.page_size),
                percent(s.engine.history_pages, s.engine.history_capacity_pages)
            ),
        ),
        (
            "free",
            format!(
                "{} ({} pages)",
                human(s.engine.free_pages * s.page_size),
                s.engine.free_pages
            ),
        ),
    ]
}

/// `rewind stats`: what the daemon wrote to the image, when it says (older daemons do not).
fn written_line(s: &DeviceStats) -> Option<(&'static str, String)> {
    let (data, metadata) = (s.image_data_bytes_written?, s.image_metadata_bytes_written?);
    Some((
        "written",
        format!(
            "{} of data, {} of metadata to the image since the daemon started",
            human(data),
            human(metadata)
        ),
    ))
}

/// `rewind stats`: the image, its data path, and how much of it is allocated when it is
/// sparse.
fn image_line(s: &DeviceStats) -> String {
    let path = if s.direct_io { "O_DIRECT" } else { "buffered" };
    match (s.image_sparse(), s.image_allocated_bytes, s.image_bytes) {
        (Some(true), Some(allocated), Some(len)) => format!(
            "{} ({path}; sparse: {} of {} allocated)",
            s.image,
            human(allocated),
            human(len)
        ),
        _ => format!("{} ({path})", s.image),
    }
}

/// `rewind stats`: the safe points of the window, and when they were made.
fn window_lines(s: &DeviceStats, tz: &TimeZone) -> [(&'static str, String); 2] {
    let id_or_dash = |v: Option<SafePointId>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let time = |t: Option<u64>| t.map_or_else(|| "-".to_string(), |t| local_time(t, tz));
    [
        (
            "safe points",
            format!(
                "{} (oldest {}, newest {})",
                s.engine.safe_points,
                id_or_dash(s.engine.oldest_safe_point),
                id_or_dash(s.engine.newest_safe_point)
            ),
        ),
        (
            "window",
            format!(
                "{} to {}",
                time(s.oldest_safe_point_time_ns),
                time(s.newest_safe_point_time_ns)
            ),
        ),
    ]
}

/// `rewind stats`: when the daemon makes safe points of its own (`--idle`, `--coalesce`).
fn pacing_lines(s: &DeviceStats) -> [(&'static str, String); 2] {
    [
        (
            "idle",
            if s.idle_secs == 0 {
                "off: no idle safe points".to_string()
            } else {
                format!("a safe point after {} s without writes", s.idle_secs)
            },
        ),
        (
            "coalesce",
            if s.coalesce_ms == 0 {
                "off: every flush makes a safe point".to_string()
            } else {
                format!(
                    "flushes within {} ms of a safe point make none",
                    s.coalesce_ms
                )
            },
        ),
    ]
}

/// `rewind stats`: what keeps safe points in the window: pins, then views.
fn kept_lines(s: &DeviceStats) -> Vec<(&'static str, String)> {
    let mut lines = Vec::new();
    if !s.pinned.is_empty() {
        let ids: Vec<String> = s.pinned.iter().map(SafePointId::to_string).collect();
        lines.push(("pinned", ids.join(", ")));
    }
    for v in &s.views {
        lines.push((
            "view",
            match &v.dropped {
                None => format!("{} at safe point {}", v.device, v.at),
                Some(why) => format!(
                    "{} at safe point {}: dropped, reads fail: {why}",
                    v.device, v.at
                ),
            },
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::control::{sample_stats, ViewRecord};

    // 2023-11-14 22:13:20 UTC.
    const T: u64 = 1_700_000_000_000_000_000;

    fn rec(id: u64, trigger: &str, label: Option<&str>, changed: Option<u64>) -> SafePointRecord {
        SafePointRecord {
            id: SafePointId(id),
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

    #[test]
    fn stats_show_the_window() {
        let s = DeviceStats {
            device: "/dev/ublkb0".into(),
            engine: rewind_history::Stats {
                free_pages: 60_000,
                history_pages: 5_536,
                safe_points: 14,
                oldest_safe_point: Some(SafePointId(3)),
                newest_safe_point: Some(SafePointId(16)),
                ..sample_stats().engine
            },
            newest_safe_point_time_ns: Some(1_700_000_060_000_000_000),
            coalesce_ms: 0,
            ..sample_stats()
        };
        let text = stats_text(&s, &jiff::tz::TimeZone::UTC);
        let expected = "\
device       /dev/ublkb0
image        /tmp/a.img (O_DIRECT)
size         1 GiB (262144 pages of 4096 bytes)
history      21.6 MiB used of 256 MiB (8.4%)
free         234.4 MiB (60000 pages)
data path    zero copy: the image is read into and written from the kernel's pages
safe points  14 (oldest 3, newest 16)
window       2023-11-14 22:13:20 to 2023-11-14 22:14:20
idle         a safe point after 2 s without writes
coalesce     off: every flush makes a safe point
daemon       pid 42
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn stats_warn_of_a_full_host_and_show_a_sparse_image() {
        let s = DeviceStats {
            host_full_errors: 2,
            image_allocated_bytes: Some(300 << 20),
            ..sample_stats()
        };
        let text = stats_text(&s, &TimeZone::UTC);
        assert!(
            !text.contains("\nwritten "),
            "an older daemon says nothing of what it wrote\n{text}"
        );
        let head: Vec<&str> = text.lines().take(3).collect();
        assert_eq!(
            head,
            [
                "device       /dev/ublkb3",
                "warning      host filesystem full (ENOSPC): writes failing (2 refused since \
                 the daemon started)",
                "image        /tmp/a.img (O_DIRECT; sparse: 300 MiB of 1.3 GiB allocated)",
            ],
            "\n{text}"
        );
    }

    #[test]
    fn stats_tell_what_the_daemon_wrote() {
        let s = DeviceStats {
            image_data_bytes_written: Some(3 << 30),
            image_metadata_bytes_written: Some(5 << 20),
            ..sample_stats()
        };
        let text = stats_text(&s, &TimeZone::UTC);
        assert!(
            text.contains(
                "\nwritten      3 GiB of data, 5 MiB of metadata to the image since the daemon \
                 started\n"
            ),
            "\n{text}"
        );
    }

    #[test]
    fn device_table_layout() {
        let live = ListedDevice {
            id: 0,
            device: "/dev/ublkb0".into(),
            image: "/tmp/a.img".into(),
            state: "live".into(),
            pid: Some(42),
            log: None,
            stats: Some(sample_stats()),
            needs_recover: false,
            supervisor: None,
            view_of: None,
            view_at: None,
            data_path: Some(DataPath::ZeroCopy),
        };
        let dead = ListedDevice {
            id: 12,
            device: "/dev/ublkb12".into(),
            state: "quiesced, daemon dead: needs `rewind recover -n 12`".into(),
            stats: None,
            needs_recover: true,
            data_path: Some(DataPath::Copy),
            ..live.clone()
        };
        let lines = device_table(&[live, dead]);
        let expected = [
            "ID  DEVICE        SIZE   HISTORY USED/TOTAL  DATA PATH  STATE                                                IMAGE",
            "0   /dev/ublkb0   1 GiB  40 KiB / 256 MiB    zero-copy  live                                                 /tmp/a.img",
            "12  /dev/ublkb12  ?      ?                   copy       quiesced, daemon dead: needs `rewind recover -n 12`  /tmp/a.img",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
    }

    #[test]
    fn stats_show_pins_views_and_the_log() {
        let s = DeviceStats {
            pinned: vec![SafePointId(3), SafePointId(5)],
            views: vec![
                ViewRecord {
                    device_id: 1,
                    device: "/dev/ublkb1".into(),
                    at: SafePointId(5),
                    dropped: None,
                },
                ViewRecord {
                    device_id: 2,
                    device: "/dev/ublkb2".into(),
                    at: SafePointId(3),
                    dropped: Some("the history area is full".into()),
                },
            ],
            log: Some("/var/log/rewind/rewind-a.img.log".into()),
            ..sample_stats()
        };
        let text = stats_text(&s, &TimeZone::UTC);
        let tail: Vec<&str> = text.lines().skip(10).collect();
        assert_eq!(
            tail,
            [
                "pinned       3, 5",
                "view         /dev/ublkb1 at safe point 5",
                "view         /dev/ublkb2 at safe point 3: dropped, reads fail: the history area is full",
                "daemon       pid 42",
                "log          /var/log/rewind/rewind-a.img.log",
            ],
            "\n{text}"
        );
    }
}
