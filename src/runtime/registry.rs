//! Finding and managing the running rewind devices: `rewind list`, `rewind stats` and
//! `rewind del`, and asking a device's daemon ([`ask`]).
//!
//! A ublk device is rewind's when the json libublk exports for it
//! (`/run/ublksrvd/NNNN.json`) carries rewind's [`TargetData`]; other ublk targets are
//! skipped. Figures come from each daemon's control socket; the kernel's view (state and
//! daemon pid) from the ublk control device.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libublk::ctrl::UblkCtrl;
use libublk::sys;
use serde::Serialize;

use crate::daemon::serve::PidFile;
use crate::daemon::target::{self, TargetData, ViewOf, TARGET_DATA_KEY};
use crate::ipc::control::{self, DeviceStats, Request};
use crate::ipc::paths;
use crate::runtime::launch::check_ublk_access;
use crate::size::human;

/// How long `list` and `stats` wait for a daemon to answer.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `del` waits for a daemon to close its image and exit.
const EXIT_WAIT: Duration = Duration::from_secs(30);
/// When `del` says it is still waiting.
const EXIT_WAIT_NOTICE: Duration = Duration::from_secs(3);

/// The ids of all ublk devices, rewind's or not, ascending.
fn ublk_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir("/sys/class/ublk-char")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("ublkc"))
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

fn device_exists(id: u32) -> bool {
    Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists()
}

/// Rewind's data for device `id` (public for `rewind view`), or `None` if it is not a rewind device (or has no json
/// yet: the daemon writes it just before the device starts).
pub fn target_data(id: u32) -> Option<TargetData> {
    let text = std::fs::read_to_string(paths::ublk_json_path(id)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(json.get("target_data")?.get(TARGET_DATA_KEY)?.clone()).ok()
}

/// The kernel's view of device `id`: its state and its daemon's pid.
pub fn kernel_view(id: u32) -> Result<(u16, i32)> {
    let info = kernel_info(id)?;
    Ok((info.state, info.ublksrv_pid))
}

/// The kernel's information on device `id`.
fn kernel_info(id: u32) -> Result<sys::ublksrv_ctrl_dev_info> {
    let id_arg = i32::try_from(id).context("device id out of range")?;
    let ctrl = UblkCtrl::new_simple(id_arg)
        .map_err(|e| anyhow::anyhow!("{}", target::describe_ublk_error(&e)))
        .with_context(|| format!("reading ublk device {id}"))?;
    Ok(ctrl.dev_info())
}

/// True when device `id` waits for a new daemon: quiesced, or live with its daemon gone (the
/// kernel quiesces it in a moment).
pub fn needs_recovery(state: u16, pid: i32) -> bool {
    let state = u32::from(state);
    state == sys::UBLK_S_DEV_QUIESCED
        || state == sys::UBLK_S_DEV_FAIL_IO
        || (state == sys::UBLK_S_DEV_LIVE && !process_alive(pid))
}

/// A device `rewind recover` can take over.
pub struct Recoverable {
    /// What its dead daemon recorded.
    pub data: TargetData,
    /// Its queues.
    pub queues: u16,
    /// Their depth.
    pub depth: u16,
}

/// Checks that device `id` is a rewind device whose daemon died, leaving it to recover.
pub fn recoverable(id: u32) -> Result<Recoverable> {
    let Some(data) = target_data(id) else {
        bail!(not_rewind(id));
    };
    if let Some(of) = &data.view {
        bail!(
            "{} is a view of {} (safe point {}): views end with their daemon and are not \
             recovered; `rewind del -n {id}` removes it, `rewind view` opens a new one",
            paths::device_path(id).display(),
            paths::device_path(of.of).display(),
            of.at
        );
    }
    let info = kernel_info(id)?;
    if info.flags & u64::from(sys::UBLK_F_USER_RECOVERY) == 0 {
        bail!(
            "ublk device {id} was added with --on-crash stop: it cannot be recovered; \
             `rewind del -n {id}`, then `rewind add {}` again",
            data.image
        );
    }
    let pid = info.ublksrv_pid;
    if !needs_recovery(info.state, pid) {
        if u32::from(info.state) == sys::UBLK_S_DEV_LIVE {
            bail!(
                "ublk device {id} is live, served by its daemon (pid {pid}): nothing to recover \
                 (if that daemon hangs, `kill -9 {pid}` first)"
            );
        }
        bail!(
            "ublk device {id} is {}: it is being stopped, not waiting for recovery",
            state_name(info.state)
        );
    }
    Ok(Recoverable {
        data,
        queues: info.nr_hw_queues,
        depth: info.queue_depth,
    })
}

/// The pid of device `id`'s supervisor, if one runs.
pub fn supervisor_pid(id: u32) -> Option<i32> {
    let text = std::fs::read_to_string(paths::supervisor_pid_path(id)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    process_alive(pid).then_some(pid)
}

/// Stops device `id`'s supervisor, if one runs, so it does not recover a device being
/// deleted.
fn stop_supervisor(id: u32) {
    let Some(pid) = supervisor_pid(id) else {
        return;
    };
    // SAFETY: kill only sends a signal; the pid was read from the supervisor's pid file
    // and checked to be a live process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(paths::supervisor_pid_path(id));
}

fn state_name(state: u16) -> &'static str {
    match u32::from(state) {
        sys::UBLK_S_DEV_DEAD => "dead",
        sys::UBLK_S_DEV_LIVE => "live",
        sys::UBLK_S_DEV_QUIESCED => "quiesced",
        sys::UBLK_S_DEV_FAIL_IO => "failing I/O",
        _ => "unknown",
    }
}

/// True while process `pid` runs (a zombie counts as gone: it has exited).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')', since comm may hold anything.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// One row of `rewind list`.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// ublk device id.
    pub id: u32,
    /// `/dev/ublkbN`.
    pub device: String,
    /// The image.
    pub image: String,
    /// `live`, `dead`, ..., or what went wrong asking.
    pub state: String,
    /// The daemon's pid, as the kernel knows it.
    pub pid: Option<i32>,
    /// The daemon's log.
    pub log: Option<String>,
    /// The daemon's figures, if it answered.
    pub stats: Option<DeviceStats>,
    /// True when the device waits for a new daemon (`rewind recover`).
    pub needs_recover: bool,
    /// The pid of its supervisor (`rewind add --supervise`), if one runs.
    pub supervisor: Option<i32>,
    /// For a view (`rewind view`): the live device it is a view of.
    pub view_of: Option<u32>,
    /// For a view: the safe point it shows.
    pub view_at: Option<u64>,
}

/// The row of view device `id`: its figures are its live device's; its state says what
/// it shows, or why it fails.
fn view_entry(id: u32, data: TargetData, of: &ViewOf) -> Entry {
    let device = paths::device_path(id).display().to_string();
    let parent = paths::device_path(of.of).display().to_string();
    let (kernel_state, pid) = match kernel_view(id) {
        Ok((s, pid)) => (state_name(s).to_string(), Some(pid)),
        Err(e) => (format!("unknown ({e:#})"), None),
    };
    let mut state = format!("{kernel_state}, view of {parent} at safe point {}", of.at);
    let mut stats = None;
    if pid.is_some_and(process_alive) {
        match control::request(&paths::socket_path(of.of), &Request::Stats, STATS_TIMEOUT) {
            Ok(r) if r.ok => {
                if let Some(why) = r.stats.as_ref().and_then(|s| {
                    s.views
                        .iter()
                        .find(|v| v.device_id == id)
                        .and_then(|v| v.dropped.clone())
                }) {
                    state = format!("{state}, dropped (reads fail): {why}");
                }
                stats = r.stats;
            }
            Ok(r) => state = format!("{state}, daemon says: {}", r.error.unwrap_or_default()),
            Err(e) => state = format!("{state}, daemon not answering ({e})"),
        }
    } else {
        state = format!("{state}, its daemon is gone: `rewind del -n {id}`");
    }
    Entry {
        id,
        device,
        image: data.image,
        state,
        pid,
        log: data.log,
        stats,
        needs_recover: false,
        supervisor: None,
        view_of: Some(of.of),
        view_at: Some(of.at),
    }
}

fn entry(id: u32, data: TargetData) -> Entry {
    if let Some(of) = data.view.clone() {
        return view_entry(id, data, &of);
    }
    let device = paths::device_path(id).display().to_string();
    let supervisor = supervisor_pid(id);
    let (mut state, pid, needs_recover) = match kernel_view(id) {
        Ok((s, pid)) => (state_name(s).to_string(), Some(pid), needs_recovery(s, pid)),
        Err(e) => (format!("unknown ({e:#})"), None, false),
    };
    let stats = if needs_recover {
        state = format!(
            "{state}, daemon dead: {}",
            if supervisor.is_some() {
                "its supervisor recovers it".to_string()
            } else {
                format!("needs `rewind recover -n {id}`")
            }
        );
        None
    } else if pid.is_some_and(process_alive) {
        match control::request(&paths::socket_path(id), &Request::Stats, STATS_TIMEOUT) {
            Ok(r) if r.ok => r.stats,
            Ok(r) => {
                state = format!("{state}, daemon says: {}", r.error.unwrap_or_default());
                None
            }
            Err(e) => {
                state = format!("{state}, daemon not answering ({e})");
                None
            }
        }
    } else {
        if pid.is_some() {
            state = format!("{state}, no daemon");
        }
        None
    };
    Entry {
        id,
        device,
        image: data.image,
        state,
        pid,
        log: data.log,
        stats,
        needs_recover,
        supervisor,
        view_of: None,
        view_at: None,
    }
}

/// The rewind devices now, by id.
pub fn rewind_devices() -> Vec<Entry> {
    ublk_ids()
        .into_iter()
        .filter_map(|id| target_data(id).map(|d| entry(id, d)))
        .collect()
}

fn history_column(stats: &Option<DeviceStats>) -> String {
    match stats {
        Some(s) => format!(
            "{} / {}",
            human(s.history_pages * s.page_size),
            human(s.history_capacity_pages * s.page_size)
        ),
        None => "?".into(),
    }
}

fn size_column(stats: &Option<DeviceStats>) -> String {
    stats
        .as_ref()
        .map_or_else(|| "?".into(), |s| human(s.device_bytes))
}

/// `rewind list`.
pub fn list_command(json: bool) -> Result<()> {
    require_root("rewind list")?;
    let entries = if Path::new(crate::runtime::launch::UBLK_CONTROL).exists() {
        rewind_devices()
    } else {
        Vec::new()
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!("rewind: no rewind devices");
        return Ok(());
    }
    let mut rows = vec![[
        "ID".to_string(),
        "DEVICE".into(),
        "SIZE".into(),
        "HISTORY USED/TOTAL".into(),
        "STATE".into(),
        "IMAGE".into(),
    ]];
    for e in &entries {
        rows.push([
            e.id.to_string(),
            e.device.clone(),
            size_column(&e.stats),
            history_column(&e.stats),
            e.state.clone(),
            e.image.clone(),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
    Ok(())
}

/// Sends `request` to the daemon of device `id` (for `command`, which needs root to reach
/// the socket). The outer error says why the daemon could not be asked; the inner one is
/// the daemon's refusal, for the caller to put in words.
pub fn ask(
    command: &str,
    id: u32,
    request: &Request,
    timeout: Duration,
) -> Result<Result<control::Response, String>> {
    require_root(command)?;
    let Some(data) = target_data(id) else {
        bail!(not_rewind(id));
    };
    if let Some(v) = data.view {
        bail!(
            "{} is a view of {} (safe point {}): give -n {} (the live device)",
            paths::device_path(id).display(),
            paths::device_path(v.of).display(),
            v.at,
            v.of
        );
    }
    let reply = match control::request(&paths::socket_path(id), request, timeout) {
        Ok(r) => r,
        Err(e) => {
            if let Ok((state, pid)) = kernel_view(id) {
                if needs_recovery(state, pid) {
                    bail!(
                        "the daemon of ublk device {id} is dead and the device waits for a new \
                         one: `rewind recover -n {id}`"
                    );
                }
            }
            return Err(e.into());
        }
    };
    if !reply.ok {
        return Ok(Err(reply.error.unwrap_or_else(|| "no reason given".into())));
    }
    Ok(Ok(reply))
}

/// The rewind device whose daemon serves `image`, if one does (best effort: the ublk json
/// of other users' devices may not be readable).
pub fn device_serving(image: &Path) -> Option<u32> {
    let want = std::fs::canonicalize(image).ok()?;
    ublk_ids().into_iter().find(|&id| {
        target_data(id)
            .and_then(|d| std::fs::canonicalize(d.image).ok())
            .is_some_and(|p| p == want)
    })
}

/// `rewind stats`.
pub fn stats_command(id: u32, json: bool) -> Result<()> {
    let reply = match ask("rewind stats", id, &Request::Stats, STATS_TIMEOUT)? {
        Ok(reply) => reply,
        Err(why) => bail!("the daemon of ublk device {id} refused: {why}"),
    };
    let Some(s) = reply.stats else {
        bail!("the daemon of ublk device {id} sent no figures");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    print!("{}", stats_text(&s, &jiff::tz::TimeZone::system()));
    Ok(())
}

/// What `rewind stats` prints, one figure a line.
pub fn stats_text(s: &DeviceStats, tz: &jiff::tz::TimeZone) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let pct = crate::cli::history::percent;
    let mut line = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<12} {value}");
    };
    line("device", s.device.clone());
    line(
        "image",
        format!(
            "{} ({})",
            s.image,
            if s.direct_io { "O_DIRECT" } else { "buffered" }
        ),
    );
    line(
        "size",
        format!(
            "{} ({} pages of {} bytes)",
            human(s.device_bytes),
            s.logical_pages,
            s.page_size
        ),
    );
    line(
        "history",
        format!(
            "{} used of {} ({:.1}%)",
            human(s.history_pages * s.page_size),
            human(s.history_capacity_pages * s.page_size),
            pct(s.history_pages, s.history_capacity_pages)
        ),
    );
    line(
        "free",
        format!(
            "{} ({} pages)",
            human(s.free_pages * s.page_size),
            s.free_pages
        ),
    );
    let id_or_dash = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    line(
        "safe points",
        format!(
            "{} (oldest {}, newest {})",
            s.safe_points,
            id_or_dash(s.oldest_safe_point),
            id_or_dash(s.newest_safe_point)
        ),
    );
    let time = |t: Option<u64>| {
        t.map_or_else(
            || "-".to_string(),
            |t| crate::cli::history::local_time(t, tz),
        )
    };
    line(
        "window",
        format!(
            "{} to {}",
            time(s.oldest_safe_point_time_ns),
            time(s.newest_safe_point_time_ns)
        ),
    );
    line(
        "idle",
        if s.idle_secs == 0 {
            "off: no idle safe points".to_string()
        } else {
            format!("a safe point after {} s without writes", s.idle_secs)
        },
    );
    line(
        "coalesce",
        if s.coalesce_ms == 0 {
            "off: every flush makes a safe point".to_string()
        } else {
            format!(
                "flushes within {} ms of a safe point make none",
                s.coalesce_ms
            )
        },
    );
    if !s.pinned.is_empty() {
        let ids: Vec<String> = s.pinned.iter().map(u64::to_string).collect();
        line("pinned", ids.join(", "));
    }
    for v in &s.views {
        line(
            "view",
            match &v.dropped {
                None => format!("{} at safe point {}", v.device, v.at),
                Some(why) => format!(
                    "{} at safe point {}: dropped, reads fail: {why}",
                    v.device, v.at
                ),
            },
        );
    }
    line("daemon", format!("pid {}", s.pid));
    if let Some(log) = &s.log {
        line("log", log.clone());
    }
    out
}

fn require_root(command: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{command} needs root (it reads {} and the daemons' sockets in {})",
            libublk::ctrl::UblkCtrl::run_dir(),
            paths::RUN_DIR
        );
    }
    Ok(())
}

fn not_rewind(id: u32) -> String {
    if device_exists(id) {
        format!(
            "ublk device {id} is not a rewind device (or is still starting); \
             `rewind list` shows the rewind devices"
        )
    } else {
        format!("there is no ublk device {id}; `rewind list` shows the rewind devices")
    }
}

/// Where device `id` is in use: its mount points and the devices stacked on it.
fn users_of(id: u32) -> Vec<String> {
    let mut users = Vec::new();
    let block = format!("/sys/block/ublkb{id}");
    if let Ok(holders) = std::fs::read_dir(format!("{block}/holders")) {
        for h in holders.flatten() {
            users.push(format!("held by {}", h.file_name().to_string_lossy()));
        }
    }
    let Ok(devt) = std::fs::read_to_string(format!("{block}/dev")) else {
        return users;
    };
    let devt = devt.trim();
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        // "36 35 98:0 / /mnt ...": field 3 is the device, field 5 the mount point.
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() > 4 && fields[2] == devt {
                users.push(format!("mounted on {}", fields[4]));
            }
        }
    }
    users
}

/// `rewind del`.
pub fn del_command(id: Option<u32>, all: bool) -> Result<()> {
    check_ublk_access("rewind del")?;
    if !all {
        let Some(id) = id else {
            bail!("give -n ID or -a");
        };
        return delete(id);
    }
    // Views first: deleting a live device deletes its views anyway.
    let mut ids: Vec<(bool, u32)> = ublk_ids()
        .into_iter()
        .filter_map(|id| target_data(id).map(|d| (d.view.is_none(), id)))
        .collect();
    ids.sort_unstable();
    let ids: Vec<u32> = ids.into_iter().map(|(_, id)| id).collect();
    if ids.is_empty() {
        eprintln!("rewind: no rewind devices");
        return Ok(());
    }
    let mut failed = Vec::new();
    for id in ids {
        if !device_exists(id) {
            continue; // a view that went with its live device
        }
        if let Err(e) = delete(id) {
            eprintln!("rewind: {e:#}");
            failed.push(id.to_string());
        }
    }
    if !failed.is_empty() {
        bail!("could not delete device(s) {}", failed.join(", "));
    }
    Ok(())
}

/// Stops device `id`, waits for its daemon to close the image and exit, and deletes the
/// device if the daemon could not.
fn delete(id: u32) -> Result<()> {
    let Some(data) = target_data(id) else {
        bail!(not_rewind(id));
    };
    let device = paths::device_path(id).display().to_string();
    let users = users_of(id);
    if !users.is_empty() {
        bail!(
            "{device} is in use ({}); unmount or release it first",
            users.join(", ")
        );
    }
    if let Some(of) = &data.view {
        return delete_view(id, of);
    }
    // Its views first: they are served by its daemon and show its history.
    let views = views_of(id);
    for &v in &views {
        let users = users_of(v);
        if !users.is_empty() {
            bail!(
                "{} is a view of {device} and is in use ({}); unmount or release it first",
                paths::device_path(v).display(),
                users.join(", ")
            );
        }
    }
    for v in views {
        if let Some(of) = target_data(v).and_then(|d| d.view) {
            delete_view(v, &of)?;
        }
    }
    stop_supervisor(id);
    let id_arg = i32::try_from(id).context("device id out of range")?;
    let ctrl = UblkCtrl::new_simple(id_arg)
        .map_err(|e| anyhow::anyhow!("{}", target::describe_ublk_error(&e)))
        .with_context(|| format!("opening ublk device {id}"))?;
    let mut pid = ctrl.dev_info().ublksrv_pid;
    if pid <= 0 {
        pid = read_pid_file(id).unwrap_or(0);
    }
    // STOP_DEV: the queues of the daemon see their commands aborted and exit; it then
    // closes the image and deletes the device itself.
    if let Err(e) = ctrl.kill_dev() {
        log::warn!("stopping {device}: {}", target::describe_ublk_error(&e));
    }
    if process_alive(pid) {
        wait_for_exit(pid, &device, &data)?;
    } else {
        // A daemon that died (kill -9) left its socket and pid file behind.
        for stale in [paths::socket_path(id), paths::pid_path(id)] {
            let _ = std::fs::remove_file(stale);
        }
    }
    // The daemon deletes the device as it exits; if it died before, do it here. Only if
    // the device is still the one that daemon served, not a new one with the same id.
    if device_exists(id) {
        if let Ok((_, now_pid)) = kernel_view(id) {
            if now_pid == pid || !process_alive(now_pid) {
                ctrl.del_dev().map_err(|e| {
                    anyhow::anyhow!("deleting {device}: {}", target::describe_ublk_error(&e))
                })?;
            }
        }
    }
    Ok(())
}

/// The view devices of live device `id`.
pub fn views_of(id: u32) -> Vec<u32> {
    ublk_ids()
        .into_iter()
        .filter(|&v| {
            target_data(v)
                .and_then(|d| d.view)
                .is_some_and(|of| of.of == id)
        })
        .collect()
}

/// Deletes the views of device `id` left by its dead daemon (before `rewind recover`):
/// views are not recovered. One in use (mounted) is left, with a warning.
pub fn delete_stale_views(id: u32) {
    for v in views_of(id) {
        let device = paths::device_path(v).display().to_string();
        let users = users_of(v);
        if !users.is_empty() {
            log::warn!(
                "{device}, a view left by the dead daemon, is in use ({}): left as is; \
                 unmount it and `rewind del -n {v}`",
                users.join(", ")
            );
            continue;
        }
        if let Some(of) = target_data(v).and_then(|d| d.view) {
            match delete_view(v, &of) {
                Ok(()) => log::info!("deleted {device}, a view left by the dead daemon"),
                Err(e) => log::warn!("{e:#}"),
            }
        }
    }
}

/// Removes view device `id`: its daemon closes it; if that daemon is gone, the device is
/// stopped and deleted here.
fn delete_view(id: u32, of: &ViewOf) -> Result<()> {
    let device = paths::device_path(id).display().to_string();
    let asked = control::request(
        &paths::socket_path(of.of),
        &Request::CloseView { device: id },
        EXIT_WAIT,
    );
    match asked {
        Ok(r) if r.ok => {}
        Ok(r) => log::warn!(
            "the daemon of {} did not close {device}: {}",
            paths::device_path(of.of).display(),
            r.error.unwrap_or_default()
        ),
        Err(e) => log::info!("{device}: its daemon is gone ({e}); deleting it here"),
    }
    if device_exists(id) {
        let id_arg = i32::try_from(id).context("device id out of range")?;
        if let Ok(ctrl) = UblkCtrl::new_simple(id_arg) {
            let _ = ctrl.kill_dev();
            if device_exists(id) {
                ctrl.del_dev().map_err(|e| {
                    anyhow::anyhow!("deleting {device}: {}", target::describe_ublk_error(&e))
                })?;
            }
        }
    }
    Ok(())
}

fn read_pid_file(id: u32) -> Option<i32> {
    let text = std::fs::read_to_string(paths::pid_path(id)).ok()?;
    let p: PidFile = serde_json::from_str(&text).ok()?;
    i32::try_from(p.pid).ok()
}

fn wait_for_exit(pid: i32, device: &str, data: &TargetData) -> Result<()> {
    let start = Instant::now();
    let mut told = false;
    while process_alive(pid) {
        let waited = start.elapsed();
        if waited >= EXIT_WAIT {
            bail!(
                "the daemon of {device} (pid {pid}) did not exit within {}s; it may still be \
                 writing the final checkpoint of {}: see {}. `kill -9 {pid}` loses nothing \
                 that was flushed, and the next `rewind add` recovers the image",
                EXIT_WAIT.as_secs(),
                data.image,
                data.log.as_deref().unwrap_or("its log")
            );
        }
        if !told && waited >= EXIT_WAIT_NOTICE {
            eprintln!(
                "rewind: waiting for the daemon of {device} (pid {pid}) to close {}...",
                data.image
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_show_the_window() {
        let s = DeviceStats {
            id: 0,
            device: "/dev/ublkb0".into(),
            image: "/tmp/a.img".into(),
            pid: 42,
            direct_io: true,
            log: None,
            page_size: 4096,
            device_bytes: 1 << 30,
            logical_pages: 262_144,
            physical_pages: 327_680,
            free_pages: 60_000,
            history_pages: 5_536,
            history_capacity_pages: 65_536,
            safe_points: 14,
            oldest_safe_point: Some(3),
            newest_safe_point: Some(16),
            oldest_safe_point_time_ns: Some(1_700_000_000_000_000_000),
            newest_safe_point_time_ns: Some(1_700_000_060_000_000_000),
            idle_secs: 2,
            coalesce_ms: 0,
            pinned: vec![],
            views: vec![],
        };
        let text = stats_text(&s, &jiff::tz::TimeZone::UTC);
        let expected = "\
device       /dev/ublkb0
image        /tmp/a.img (O_DIRECT)
size         1 GiB (262144 pages of 4096 bytes)
history      21.6 MiB used of 256 MiB (8.4%)
free         234.4 MiB (60000 pages)
safe points  14 (oldest 3, newest 16)
window       2023-11-14 22:13:20 to 2023-11-14 22:14:20
idle         a safe point after 2 s without writes
coalesce     off: every flush makes a safe point
daemon       pid 42
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn this_process_is_alive_and_nonsense_is_not() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(0));
        assert!(!process_alive(-1));
        assert!(!process_alive(i32::MAX));
    }

    #[test]
    fn exited_child_counts_as_gone_before_it_is_reaped() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        // Unreaped, it is a zombie: gone for our purposes.
        while process_alive(pid) {
            assert!(Instant::now() < deadline, "child still alive");
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().expect("reap");
    }
}
