//! Deleting rewind devices (`rewind del`, and the views a dead daemon left): the daemon of a
//! live device is stopped and waited for, so its image is closed cleanly; what a dead
//! daemon left behind is removed here.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libublk::ctrl::UblkCtrl;

use crate::daemon::ublk::describe_ublk_error;
use crate::ipc::control::ControlRequest;
use crate::ipc::device::{TargetData, ViewOf};
use crate::ipc::paths;
use crate::runtime::client;
use crate::runtime::registry::{
    device_exists, kernel_view, not_rewind, process_alive, read_pid_file, supervisor_pid,
    target_data, users_of, views_of,
};

/// How long `del` waits for a daemon to close its image and exit.
const EXIT_WAIT: Duration = Duration::from_secs(30);
/// When `del` says it is still waiting.
const EXIT_WAIT_NOTICE: Duration = Duration::from_secs(3);

/// Stops device `id`'s supervisor, if one runs, so it does not recover a device being
/// deleted (or handed over): SIGTERM, then SIGKILL if it is still there 5 s later.
pub fn stop_supervisor(id: u32) {
    let Some(pid) = supervisor_pid(id) else {
        return;
    };
    if !signal_and_wait(pid, libc::SIGTERM) {
        // A supervisor left running would recover the device behind the caller's back.
        log::warn!("the supervisor (pid {pid}) of /dev/ublkb{id} ignored SIGTERM: SIGKILL");
        signal_and_wait(pid, libc::SIGKILL);
    }
    let _ = std::fs::remove_file(paths::supervisor_pid_path(id));
}

/// Sends `signal` to `pid` and waits up to 5 s for it to be gone; returns whether it is.
fn signal_and_wait(pid: i32, signal: libc::c_int) -> bool {
    // SAFETY: kill only sends a signal; the pid was read from the supervisor's pid file
    // and checked to be a live process.
    unsafe {
        libc::kill(pid, signal);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    !process_alive(pid)
}

/// Stops device `id`, waits for its daemon to close the image and exit, and deletes the
/// device if the daemon could not.
pub fn delete(id: u32) -> Result<()> {
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
    delete_views_of(id, &device)?;
    stop_supervisor(id);
    let id_arg = i32::try_from(id).context("device id out of range")?;
    let ctrl = UblkCtrl::new_simple(id_arg)
        .map_err(|e| anyhow::anyhow!("{}", describe_ublk_error(&e)))
        .with_context(|| format!("opening ublk device {id}"))?;
    let mut pid = ctrl.dev_info().ublksrv_pid;
    if pid <= 0 {
        pid = read_pid_file(id).unwrap_or(0);
    }
    // STOP_DEV: the queues of the daemon see their commands aborted and exit; it then
    // closes the image and deletes the device itself.
    if let Err(e) = ctrl.kill_dev() {
        log::warn!("stopping {device}: {}", describe_ublk_error(&e));
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
                    anyhow::anyhow!("deleting {device}: {}", describe_ublk_error(&e))
                })?;
            }
        }
    }
    Ok(())
}

/// Deletes the views of live device `id` (shown as `device`), or none if one is in use.
fn delete_views_of(id: u32, device: &str) -> Result<()> {
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
    Ok(())
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
    let asked = client::request(
        &paths::socket_path(of.of),
        &ControlRequest::CloseView { device: id },
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
                    anyhow::anyhow!("deleting {device}: {}", describe_ublk_error(&e))
                })?;
            }
        }
    }
    Ok(())
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
