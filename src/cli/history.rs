//! The commands on a device's history: `rewind safepoint`, `rewind log`, `rewind rollback`,
//! `rewind view`, `rewind diff`, `rewind pin` and `rewind unpin` (`rewind bisect` has its
//! own room, `bisect`), on a served device
//! (through its daemon) or, where it makes sense, on an image no daemon serves.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jiff::tz::TimeZone;
use rewind_history::SafePointId;
use serde::Serialize;

use crate::cli::render::{
    label_suffix, log_footer, log_table, print_json, safe_point_line, table, JsonSafePoint,
    WindowSummary,
};
use crate::daemon::backing::{BackingError, FileStore};
use crate::ipc::control::{ControlRequest, Extent, SafePointRecord, ViewRecord};
use crate::ipc::paths;
use crate::runtime::client::ask;
use crate::runtime::registry;
use crate::selector::find_safe_point;
use crate::size::human;
use crate::time::{local_time, rfc3339};

/// How long `rewind safepoint` waits: the daemon syncs the image before it answers, which
/// can take a while behind a lot of buffered writes.
const SAFE_POINT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `rewind log -n` waits.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// Prints the window `records` of `rewind log` as a table with `summary` under it, or as
/// JSON.
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
        print_json(&entries)?;
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
    let device = paths::device_path(id).display().to_string();
    let reply = match ask(
        "rewind safepoint",
        id,
        &ControlRequest::SafePoint { label },
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
        print_json(&entry)?;
        return Ok(());
    }
    println!("{}", safe_point_line(&sp, &tz));
    Ok(())
}

/// `rewind log -n ID`: asks the daemon.
pub fn log_device_command(id: u32, json: bool) -> Result<()> {
    let reply = match ask("rewind log", id, &ControlRequest::Log, LOG_TIMEOUT)? {
        Ok(reply) => reply,
        Err(why) => bail!(
            "the daemon of {} refused: {why}",
            paths::device_path(id).display()
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

#[derive(Serialize)]
struct RollbackJson {
    to: SafePointId,
    undo: SafePointId,
    time: String,
    label: Option<String>,
}

/// `rewind rollback IMAGE --to X`: on an image no daemon serves.
pub fn rollback_image_command(image: &Path, to: &str, json: bool) -> Result<()> {
    let (chosen, undo) = change_image(image, to, |vol, chosen| {
        vol.rollback(chosen.id)
            .with_context(|| format!("rolling {} back", image.display()))
    })?;
    let shown = image.display().to_string();
    print_rollback(&shown, &shown, &chosen, undo, json)
}

/// Changes the history of an image no daemon serves: finds the safe point `at` read-only
/// first (so a refusal writes nothing), then opens the image, runs `change` and closes it.
fn change_image<T>(
    image: &Path,
    at: &str,
    change: impl FnOnce(&rewind_history::Volume<FileStore>, &SafePointRecord) -> Result<T>,
) -> Result<(SafePointRecord, T)> {
    let store = match FileStore::open(image) {
        Ok(s) => s,
        Err(BackingError::InUse { .. }) => bail!(served_elsewhere(image)),
        Err(e) => return Err(e.into()),
    };
    let host = crate::host::this_host();
    let found = rewind_history::inspect(&store, &host)
        .with_context(|| format!("reading the history of {}", image.display()))?;
    let window: Vec<SafePointRecord> = found.safe_points.iter().map(Into::into).collect();
    let chosen = find_safe_point(&window, at)?.clone();
    let vol = rewind_history::Volume::open(store, &host)
        .with_context(|| format!("opening {}", image.display()))?;
    let out = change(&vol, &chosen)?;
    vol.close()
        .with_context(|| format!("closing {}", image.display()))?;
    Ok((chosen, out))
}

/// What a rollback prints: where `what` went, and the command (`rewind rollback WHICH`)
/// that undoes it.
fn print_rollback(
    what: &str,
    which: &str,
    chosen: &SafePointRecord,
    undo: SafePointId,
    json: bool,
) -> Result<()> {
    let tz = TimeZone::system();
    if json {
        let j = RollbackJson {
            to: chosen.id,
            undo,
            time: rfc3339(chosen.time_ns, &tz),
            label: chosen.label.clone(),
        };
        print_json(&j)?;
    } else {
        let label = label_suffix(chosen.label.as_deref());
        println!(
            "rolled {what} back to safe point {} ({}{label}); undo with `rewind rollback {which} --to {undo}`",
            chosen.id,
            local_time(chosen.time_ns, &tz),
        );
    }
    Ok(())
}

/// `rewind rollback -n ID --to X`: on a served device nobody has open exclusively.
pub fn rollback_device_command(id: u32, to: &str, json: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let device = paths::device_path(id);
    let shown = device.display().to_string();
    let chosen = device_safe_point("rewind rollback", id, to)?;
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
    let reply = match ask(
        "rewind rollback",
        id,
        &ControlRequest::Rollback { to: chosen.id },
        SAFE_POINT_TIMEOUT,
    )? {
        Ok(reply) => reply,
        Err(why) => bail!("{shown} was not rolled back: {why}"),
    };
    let undo = reply
        .undo
        .context("the daemon rolled back but did not say how to undo it")?;
    // The kernel still caches pages of the old state: drop them so readers see the new one.
    // BLKFLSBUF = _IO(0x12, 97); the `libc` crate does not define it.
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    // SAFETY: BLKFLSBUF takes no argument; the fd is an open block device we own.
    if unsafe { libc::ioctl(holder.as_raw_fd(), BLKFLSBUF, 0) } != 0 {
        bail!(
            "{shown} was rolled back to safe point {}, but dropping the kernel's cached pages \
             failed ({}): run `blockdev --flushbufs {shown}` before reading it",
            chosen.id,
            std::io::Error::last_os_error()
        );
    }
    drop(holder);
    print_rollback(&shown, &format!("-n {id}"), &chosen, undo, json)
}

/// The safe point `at` names in the history window of device `id`, asking its daemon for
/// the window (for `command`).
fn device_safe_point(command: &str, id: u32, at: &str) -> Result<SafePointRecord> {
    let window = device_window(command, id)?;
    Ok(find_safe_point(&window, at)?.clone())
}

/// The safe points of device `id`, oldest first, from its daemon (for `command`).
pub fn device_window(command: &str, id: u32) -> Result<Vec<SafePointRecord>> {
    let shown = paths::device_path(id).display().to_string();
    let reply = match ask(command, id, &ControlRequest::Log, LOG_TIMEOUT)? {
        Ok(reply) => reply,
        Err(why) => bail!("reading the history of {shown}: {why}"),
    };
    Ok(reply.safe_points.unwrap_or_default())
}

/// How long `rewind view` waits for the daemon to add the view device.
const VIEW_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct ViewJson {
    device: String,
    id: u32,
    of: u32,
    at: SafePointId,
    time: String,
    label: Option<String>,
}

/// `rewind view -n ID --at X`: asks the daemon of device `id` for a read-only device
/// showing safe point X, and prints its path.
pub fn view_command(id: u32, at: &str, json: bool) -> Result<()> {
    let shown = paths::device_path(id).display().to_string();
    let chosen = device_safe_point("rewind view", id, at)?;
    let view = open_view(id, &chosen)?;
    let tz = TimeZone::system();
    if json {
        let j = ViewJson {
            device: view.device.clone(),
            id: view.device_id,
            of: id,
            at: chosen.id,
            time: rfc3339(chosen.time_ns, &tz),
            label: chosen.label.clone(),
        };
        print_json(&j)?;
    } else {
        let label = label_suffix(chosen.label.as_deref());
        eprintln!(
            "rewind: {}: read-only view of {shown} at safe point {} ({}{label}); \
             `rewind del -n {}` removes it",
            view.device,
            chosen.id,
            local_time(chosen.time_ns, &tz),
            view.device_id
        );
        println!("{}", view.device);
    }
    Ok(())
}

/// Asks the daemon of device `id` for a view of safe point `at`; returns it once its device
/// node is there.
pub fn open_view(id: u32, at: &SafePointRecord) -> Result<ViewRecord> {
    let shown = paths::device_path(id).display().to_string();
    let request = ControlRequest::OpenView { at: at.id };
    let reply = match ask("rewind view", id, &request, VIEW_TIMEOUT)? {
        Ok(reply) => reply,
        Err(why) => bail!("no view of {shown} at safe point {}: {why}", at.id),
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
    Ok(view)
}

/// How long `rewind diff` waits: the daemon walks the history after the older point.
const DIFF_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct DiffJson {
    from: SafePointId,
    /// `None`: the live device.
    to: Option<SafePointId>,
    extents: Vec<Extent>,
    changed_bytes: u64,
}

/// `rewind diff -n ID --from X --to Y`: the byte ranges of device `id` that changed between
/// safe points X and Y (`now`: the live device), as the daemon finds them in its metadata.
pub fn diff_command(id: u32, from: &str, to: &str, json: bool) -> Result<()> {
    let shown = paths::device_path(id).display().to_string();
    let from = device_safe_point("rewind diff", id, from)?;
    let to = match to {
        "now" => None,
        at => Some(device_safe_point("rewind diff", id, at)?),
    };
    let request = ControlRequest::Diff {
        from: from.id,
        to: to.as_ref().map(|t| t.id),
    };
    let extents = match ask("rewind diff", id, &request, DIFF_TIMEOUT)? {
        Ok(reply) => reply
            .extents
            .context("the daemon answered without the extents")?,
        Err(why) => bail!("no diff of {shown}: {why}"),
    };
    let changed_bytes = extents.iter().map(|e| e.length).sum();
    if json {
        return print_json(&DiffJson {
            from: from.id,
            to: to.as_ref().map(|t| t.id),
            extents,
            changed_bytes,
        });
    }
    let tz = TimeZone::system();
    let name = |sp: &SafePointRecord| safe_point_line(sp, &tz);
    eprintln!(
        "rewind: {shown}: {} changed in {} extent{} between {} and {}",
        human(changed_bytes),
        extents.len(),
        if extents.len() == 1 { "" } else { "s" },
        name(&from),
        to.as_ref().map_or_else(|| "now".to_string(), name)
    );
    let rows: Vec<[String; 2]> = std::iter::once(["OFFSET".to_string(), "LENGTH".to_string()])
        .chain(
            extents
                .iter()
                .map(|e| [e.offset.to_string(), e.length.to_string()]),
        )
        .collect();
    for line in table(&rows, [true, true]) {
        println!("{line}");
    }
    Ok(())
}

#[derive(Serialize)]
struct PinJson {
    id: SafePointId,
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
    let (chosen, what) = match (id, image) {
        (Some(id), _) => {
            let shown = paths::device_path(id).display().to_string();
            let chosen = device_safe_point(&command, id, at)?;
            match ask(
                &command,
                id,
                &ControlRequest::Pin {
                    id: chosen.id,
                    pinned,
                },
                SAFE_POINT_TIMEOUT,
            )? {
                Ok(_) => {}
                Err(why) => bail!(
                    "could not {verb} safe point {} of {shown}: {why}",
                    chosen.id
                ),
            }
            (chosen, shown)
        }
        (None, Some(image)) => {
            let (chosen, ()) = change_image(image, at, |vol, chosen| {
                vol.pin(chosen.id, pinned)
                    .with_context(|| format!("{verb}ning safe point {}", chosen.id))
            })?;
            (chosen, image.display().to_string())
        }
        (None, None) => bail!("give -n ID or an IMAGE"),
    };
    let tz = TimeZone::system();
    if json {
        let j = PinJson {
            id: chosen.id,
            pinned,
            time: rfc3339(chosen.time_ns, &tz),
            label: chosen.label.clone(),
        };
        print_json(&j)?;
    } else {
        println!(
            "{} safe point {} of {what} ({})",
            if pinned { "pinned" } else { "unpinned" },
            chosen.id,
            local_time(chosen.time_ns, &tz)
        );
    }
    Ok(())
}

fn served_elsewhere(image: &Path) -> String {
    match registry::device_serving(image) {
        Some(id) => format!(
            "{} is served by a running rewind daemon as {}: ask it with `rewind log -n {id}`",
            image.display(),
            paths::device_path(id).display()
        ),
        None => format!(
            "{} is in use by a running rewind daemon (or a `rewind create`): ask the daemon \
             with `rewind log -n ID` (`rewind list` shows the ids)",
            image.display()
        ),
    }
}
