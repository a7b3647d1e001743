//! `rewind upgrade -n ID`: hands a live device to another rewind binary, the one now
//! installed by default, without taking the device down (`daemon::handover` says how the
//! daemon does it).
//!
//! The steps: check the new binary runs (`--version`); stop the device's supervisor, if
//! it has one (it would take the moment between the two programs for a death and recover
//! the device itself); ask the daemon to hand over; wait until the new program answers
//! pings (a ping tells the programs apart by when each started serving) and the kernel
//! has the device live again; start a supervisor from the new binary where there was one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libublk::sys;
use serde::Serialize;

use crate::ipc::control::ControlRequest;
use crate::ipc::paths;
use crate::runtime::client::{self, ClientError};
use crate::runtime::launch;
use crate::runtime::registry::{
    kernel_view, not_rewind, process_alive, state_name, supervisor_pid, target_data,
};
use crate::runtime::removal::stop_supervisor;

/// How long the daemon may take to make its writes durable and answer.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the new program may take to serve the device: it opens the image and replays
/// its journal, as a recovery does.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one ping of the waiting loop may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the daemon must look gone before the upgrade counts it as dead.
const GONE_FOR: Duration = Duration::from_secs(1);
/// Between two looks while the new program starts.
const POLL: Duration = Duration::from_millis(10);

/// What an upgrade did.
#[derive(Clone, Debug, Serialize)]
pub struct Upgraded {
    /// ublk device id.
    pub id: u32,
    /// `/dev/ublkbN`.
    pub device: String,
    /// The daemon's pid, the same before and after.
    pub pid: i32,
    /// The binary that serves the device now.
    pub binary: PathBuf,
    /// What served it before (`rewind X.Y.Z`, as the device recorded it).
    pub from_version: String,
    /// What serves it now (`binary --version`).
    pub to_version: String,
    /// From the daemon's answer until the new program serves the device. The kernel holds
    /// the device's I/O from the exec, right after the answer, until then; a request the
    /// old program had taken but not finished waited from its start.
    pub pause_ms: u64,
    /// The new supervisor's pid, where the device had one.
    pub supervisor: Option<u32>,
}

/// Hands device `id` to `binary` (default: this program).
pub fn upgrade(id: u32, binary: Option<&Path>) -> Result<Upgraded> {
    let Some(data) = target_data(id) else {
        bail!(not_rewind(id));
    };
    let device = paths::device_path(id).display().to_string();
    if let Some(of) = &data.view {
        bail!(
            "{device} is a view of {}: upgrade that device (its views must be closed first)",
            paths::device_path(of.of).display()
        );
    }
    let (state, pid) = kernel_view(id)?;
    if u32::from(state) != sys::UBLK_S_DEV_LIVE || !process_alive(pid) {
        bail!(
            "{device} is not served by a live daemon (the kernel says {}, pid {pid}): \
             `rewind recover -n {id}` starts the installed binary on it",
            state_name(state)
        );
    }
    let binary = match binary {
        Some(b) => std::path::absolute(b).with_context(|| format!("resolving {}", b.display()))?,
        None => std::env::current_exe().context("finding this program")?,
    };
    let to_version = version_of(&binary)?;
    let socket = paths::socket_path(id);
    let before = serving_since(&socket)
        .with_context(|| format!("asking the daemon of {device} (pid {pid})"))?;
    let supervised = supervisor_pid(id).is_some();
    if supervised {
        stop_supervisor(id);
    }
    let handed = hand_over(id, &socket, &binary, pid, before);
    // The old program serves on after a refusal or a failed exec, the new one once it took
    // over: either way the device is supervised again, from the new binary. A device that
    // waits for `rewind recover` is left to the user.
    let supervisor = match (supervised, &handed) {
        (true, Ok(_) | Err(Refused::ServesOn(_))) => {
            match launch::start_supervisor(id, &data.log_path(), Some(&binary)) {
                Ok(pid) => Some(pid),
                Err(e) => {
                    log::warn!("restarting the supervisor of {device}: {e:#}");
                    None
                }
            }
        }
        _ => None,
    };
    let pause = handed.map_err(|r| match r {
        Refused::Waits(e) if supervised => anyhow::anyhow!(
            "{e:#}; its supervisor is stopped too (`rewind add {} --supervise` once the \
             device is recovered starts one)",
            data.image
        ),
        Refused::ServesOn(e) | Refused::Waits(e) => e,
    })?;
    Ok(Upgraded {
        id,
        device,
        pid,
        binary,
        from_version: format!("rewind {}", data.version),
        to_version,
        pause_ms: u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
        supervisor,
    })
}

/// Why a handover did not happen, and what serves the device then.
enum Refused {
    /// The old program, still.
    ServesOn(anyhow::Error),
    /// Nobody: the device waits for `rewind recover`.
    Waits(anyhow::Error),
}

/// Asks the daemon of device `id` at `socket` (pid `pid`, serving since `before`) to hand
/// over to `binary`, and waits for the new program; returns the pause.
fn hand_over(
    id: u32,
    socket: &Path,
    binary: &Path,
    pid: i32,
    before: u64,
) -> Result<Duration, Refused> {
    let device = paths::device_path(id).display().to_string();
    let request = ControlRequest::Handover {
        exe: binary.display().to_string(),
    };
    match client::request(socket, &request, HANDOVER_TIMEOUT) {
        Ok(r) if r.ok => {}
        Ok(r) => {
            return Err(Refused::ServesOn(anyhow::anyhow!(
                "the daemon of {device} refused: {}",
                r.error.unwrap_or_default()
            )))
        }
        Err(e @ ClientError::Connect { .. }) => return Err(Refused::ServesOn(e.into())),
        // Sent, but no answer in time (a slow commit) or none at all: the handover may go
        // on. The waiting below tells which program serves in the end.
        Err(e) => log::warn!("{e}; waiting to see whether the handover goes on"),
    }
    let started = Instant::now();
    // Since when the daemon looks gone, as it must for a while before it counts as dead.
    let mut gone_since: Option<Instant> = None;
    loop {
        if !exited(pid) {
            gone_since = None;
        } else if gone_since.get_or_insert_with(Instant::now).elapsed() > GONE_FOR {
            return Err(Refused::Waits(anyhow::anyhow!(
                "{} did not take {device} over: its program exited (its log says why); the \
                 device's I/O waits for `rewind recover -n {id}`",
                binary.display()
            )));
        }
        match client::request(socket, &ControlRequest::Ping, PING_TIMEOUT) {
            // An older program says nothing of when it started: another program all the same.
            Ok(r) if r.ok && r.serving_since_ns == Some(before) => {
                return Err(Refused::ServesOn(anyhow::anyhow!(
                    "the daemon of {device} could not start {} (its log says why): it serves on",
                    binary.display()
                )));
            }
            Ok(r) if r.ok && live(id) => return Ok(started.elapsed()),
            _ => {}
        }
        if started.elapsed() > TAKEOVER_TIMEOUT {
            return Err(Refused::Waits(anyhow::anyhow!(
                "{} has not served {device} within {TAKEOVER_TIMEOUT:?} (its log says why)",
                binary.display()
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// True when the kernel has device `id` live.
fn live(id: u32) -> bool {
    kernel_view(id).is_ok_and(|(state, _)| u32::from(state) == sys::UBLK_S_DEV_LIVE)
}

/// True once process `pid` has exited. A process that execs from a thread other than its
/// main one shows as a zombie until its other threads are gone (which a thread in a long
/// sync can take a while to be): only a zombie with no thread left counts.
fn exited(pid: i32) -> bool {
    if process_alive(pid) {
        return false;
    }
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks.count() <= 1,
        Err(_) => true,
    }
}

/// When the program answering at `socket` started serving (its ping says).
fn serving_since(socket: &Path) -> Result<u64> {
    let r = client::request(socket, &ControlRequest::Ping, PING_TIMEOUT)?;
    match (r.ok, r.serving_since_ns) {
        (true, Some(since)) => Ok(since),
        (true, None) => {
            bail!("the daemon is too old to say when it started: it cannot be upgraded")
        }
        (false, _) => bail!("{}", r.error.unwrap_or_default()),
    }
}

/// `binary --version`, checking on the way that it runs.
fn version_of(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !text.starts_with("rewind ") {
        bail!(
            "{} is not a rewind binary that runs here ({} --version said {text:?}, {})",
            binary.display(),
            binary.display(),
            out.status
        );
    }
    Ok(text)
}
