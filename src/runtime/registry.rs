//! The rewind devices on this machine, as the kernel and the daemons' files show them: which
//! ublk devices exist (`/sys/class/ublk-char`), which are rewind's and what their daemons
//! recorded (libublk's json, the pid files), their state in the kernel, who uses them, and
//! whether this process may manage them (the root check).
//!
//! A ublk device is rewind's when the json libublk exports for it
//! (`/run/ublksrvd/NNNN.json`) carries rewind's [`TargetData`]; other ublk targets are
//! skipped. Nothing here talks to a daemon (`client` does).

use std::path::Path;

use anyhow::{bail, Context, Result};
use libublk::ctrl::UblkCtrl;
use libublk::sys;

use crate::daemon::ublk::describe_ublk_error;
use crate::ipc::device::{PidFile, TargetData, TARGET_DATA_KEY};
use crate::ipc::paths;

/// The control device of the ublk driver.
pub const UBLK_CONTROL: &str = "/dev/ublk-control";
/// Where the kernel lists the ublk devices, one `ublkcN` entry each.
const UBLK_CHAR_CLASS: &str = "/sys/class/ublk-char";

/// The ids of all ublk devices, rewind's or not, ascending.
pub fn ublk_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(UBLK_CHAR_CLASS)
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

/// True while ublk device `id` exists, rewind's or not.
pub fn device_exists(id: u32) -> bool {
    Path::new(UBLK_CHAR_CLASS)
        .join(format!("ublkc{id}"))
        .exists()
}

/// Rewind's data for device `id`, or `None` if it is not a rewind device (or has no json
/// yet: the daemon writes it just before the device starts).
pub fn target_data(id: u32) -> Option<TargetData> {
    let text = std::fs::read_to_string(paths::ublk_json_path(id)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(json.get("target_data")?.get(TARGET_DATA_KEY)?.clone()).ok()
}

/// The ids of the rewind devices, views first (deleting a live device deletes its views).
pub fn rewind_ids_views_first() -> Vec<u32> {
    let mut ids: Vec<(bool, u32)> = ublk_ids()
        .into_iter()
        .filter_map(|id| target_data(id).map(|d| (d.view.is_none(), id)))
        .collect();
    ids.sort_unstable();
    ids.into_iter().map(|(_, id)| id).collect()
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
        .map_err(|e| anyhow::anyhow!("{}", describe_ublk_error(&e)))
        .with_context(|| format!("reading ublk device {id}"))?;
    Ok(ctrl.dev_info())
}

/// True when a device in `state` whose daemon is `pid` waits for a new daemon: quiesced, or
/// live with its daemon gone (the kernel quiesces it in a moment).
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

/// The kernel's device state in a word.
pub fn state_name(state: u16) -> &'static str {
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

/// The pid device `id`'s daemon wrote in its pid file, if the file is there.
pub fn read_pid_file(id: u32) -> Option<i32> {
    let text = std::fs::read_to_string(paths::pid_path(id)).ok()?;
    let p: PidFile = serde_json::from_str(&text).ok()?;
    i32::try_from(p.pid).ok()
}

/// Fails unless this process runs as root; `why` says what `command` needs it for.
fn require_root(command: &str, why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{command} needs root ({why})");
    }
    Ok(())
}

/// Fails unless this process may read the devices' json and talk to their daemons: root.
pub fn check_daemon_access(command: &str) -> Result<()> {
    require_root(
        command,
        &format!(
            "it reads {} and the daemons' sockets in {}",
            UblkCtrl::run_dir(),
            paths::RUN_DIR
        ),
    )
}

/// Fails unless this process may create ublk devices: root, and the driver loaded.
pub fn check_ublk_access(command: &str) -> Result<()> {
    require_root(
        command,
        &format!("ublk devices are created through {UBLK_CONTROL}"),
    )?;
    if !Path::new(UBLK_CONTROL).exists() {
        bail!(
            "{UBLK_CONTROL} is missing: load the ublk driver with `modprobe ublk_drv` \
             (it needs Linux 6.0 or later built with CONFIG_BLK_DEV_UBLK)"
        );
    }
    Ok(())
}

/// Why device `id` cannot be asked or deleted: it does not exist, or is not rewind's.
pub fn not_rewind(id: u32) -> String {
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
pub fn users_of(id: u32) -> Vec<String> {
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

/// The rewind device (not a view) of `image` that waits for a new daemon, its own having
/// died, if there is one.
pub fn waiting_device(image: &Path) -> Option<u32> {
    let want = std::fs::canonicalize(image).ok()?;
    ublk_ids().into_iter().find(|&id| {
        target_data(id)
            .filter(|d| d.view.is_none())
            .and_then(|d| std::fs::canonicalize(d.image).ok())
            .is_some_and(|p| p == want)
            && kernel_view(id).is_ok_and(|(state, pid)| needs_recovery(state, pid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

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
