//! The supervisor of `rewind add --supervise`: keeps device ID served.
//!
//! It is this program re-executed as `rewind __supervise -n ID`, in its own session, logging
//! to the daemon's log. Every `--interval` seconds it looks at the device:
//! - gone: the device was deleted (`rewind del` stops the supervisor first anyway): exit;
//! - waiting for a daemon (quiesced, or live with its daemon dead): start a new daemon with
//!   `rewind recover`'s code, which reissues the waiting I/O;
//! - live: ping the daemon over its control socket (the heartbeat) with a `--timeout`; after
//!   `--misses` failed pings in a row the daemon counts as hung: SIGKILL, then recover.
//!
//! Limits: at most `RECOVERIES_MAX` recoveries in `RECOVERY_WINDOW`; past that the
//! supervisor gives up and exits (the device stays quiesced for `rewind recover`), so a
//! daemon that dies at once every time does not loop forever.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libublk::sys;

use crate::ipc::control::ControlRequest;
use crate::ipc::paths;
use crate::runtime::client;
use crate::runtime::launch;
use crate::runtime::registry;

/// Recoveries allowed within [`RECOVERY_WINDOW`] before the supervisor gives up.
const RECOVERIES_MAX: usize = 10;
/// See [`RECOVERIES_MAX`].
const RECOVERY_WINDOW: Duration = Duration::from_secs(300);
/// How long a killed daemon may take to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The supervisor's settings (`rewind __supervise`).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The device.
    pub id: u32,
    /// Between two looks.
    pub interval: Duration,
    /// Longest a ping may take.
    pub timeout: Duration,
    /// Pings missed in a row before the daemon is killed.
    pub misses: u32,
}

/// Runs the supervisor until the device is gone or recovery fails too often.
pub fn run(opts: &Options) -> Result<()> {
    let id = opts.id;
    let pid_file = paths::supervisor_pid_path(id);
    paths::ensure_run_dir().with_context(|| format!("creating {}", paths::RUN_DIR))?;
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    log::info!(
        "supervisor (pid {}) of /dev/ublkb{id}: heartbeat every {:?}, timeout {:?}, {} missed \
         in a row count as hung",
        std::process::id(),
        opts.interval,
        opts.timeout,
        opts.misses
    );
    let result = watch(opts);
    // Only ours: `rewind del` may already have removed it, and a new supervisor written it.
    if std::fs::read_to_string(&pid_file).is_ok_and(|t| t.trim() == std::process::id().to_string())
    {
        let _ = std::fs::remove_file(&pid_file);
    }
    match &result {
        Ok(()) => log::info!("supervisor of /dev/ublkb{id}: exiting"),
        Err(e) => log::error!("supervisor of /dev/ublkb{id}: {e:#}"),
    }
    result
}

/// Looks at the device every interval until it is gone; recovers it whenever its daemon
/// is dead or hung.
fn watch(opts: &Options) -> Result<()> {
    let id = opts.id;
    let mut missed = 0u32;
    let mut recoveries: VecDeque<Instant> = VecDeque::new();
    loop {
        std::thread::sleep(opts.interval);
        reap_children();
        if !registry::device_exists(id) {
            log::info!("/dev/ublkb{id} is gone");
            return Ok(());
        }
        match look(opts, &mut missed)? {
            Look::Fine => continue,
            Look::Recover => {}
        }
        missed = 0;
        take_recovery(id, &mut recoveries)?;
        let started = Instant::now();
        match launch::recover_device(id) {
            Ok(device) => log::info!(
                "recovered {device} in {:.1?} (recovery {} of at most {RECOVERIES_MAX} per {:?})",
                started.elapsed(),
                recoveries.len(),
                RECOVERY_WINDOW
            ),
            Err(e) => log::error!("recovering /dev/ublkb{id} failed: {e:#}; trying again"),
        }
    }
}

/// What one look at the device found.
enum Look {
    /// Nothing to do now: its daemon answers, it is being stopped, or the look failed.
    Fine,
    /// Its daemon is dead, or was hung and is killed now: the device needs a new one.
    Recover,
}

/// Looks at the device once: its state in the kernel, then the heartbeat of its daemon.
/// `missed` counts the heartbeats missed in a row; a daemon that misses `opts.misses` is
/// killed.
fn look(opts: &Options, missed: &mut u32) -> Result<Look> {
    let id = opts.id;
    let (state, pid) = match registry::kernel_view(id) {
        Ok(v) => v,
        // Deleted between the two looks, most likely: the next look tells.
        Err(e) => {
            log::warn!("reading /dev/ublkb{id}: {e:#}");
            return Ok(Look::Fine);
        }
    };
    if registry::needs_recovery(state, pid) {
        log::warn!("the daemon of /dev/ublkb{id} (pid {pid}) is dead: recovering");
        return Ok(Look::Recover);
    }
    if u32::from(state) != sys::UBLK_S_DEV_LIVE {
        // Being stopped by `rewind del`: it goes away soon.
        *missed = 0;
        return Ok(Look::Fine);
    }
    match client::request(&paths::socket_path(id), &ControlRequest::Ping, opts.timeout) {
        // Busy (every control connection taken) is alive: it accepted and answered.
        Ok(r) if r.ok || r.is_busy() => {
            if *missed > 0 {
                log::info!("the daemon of /dev/ublkb{id} answers again");
            }
            *missed = 0;
            return Ok(Look::Fine);
        }
        Ok(r) => log::warn!(
            "heartbeat of /dev/ublkb{id}: the daemon refused: {}",
            r.error.unwrap_or_default()
        ),
        Err(e) => log::warn!("heartbeat of /dev/ublkb{id} missed: {e}"),
    }
    *missed += 1;
    if *missed < opts.misses {
        return Ok(Look::Fine);
    }
    log::error!(
        "the daemon of /dev/ublkb{id} (pid {pid}) missed {missed} heartbeats in a row: \
         killing it (SIGKILL) to recover the device"
    );
    kill_hung(pid)?;
    Ok(Look::Recover)
}

/// Counts one more recovery of device `id` in `recoveries` (their times, oldest first), or
/// gives up when [`RECOVERIES_MAX`] were made within [`RECOVERY_WINDOW`].
fn take_recovery(id: u32, recoveries: &mut VecDeque<Instant>) -> Result<()> {
    let now = Instant::now();
    while recoveries
        .front()
        .is_some_and(|t| now.duration_since(*t) > RECOVERY_WINDOW)
    {
        recoveries.pop_front();
    }
    if recoveries.len() >= RECOVERIES_MAX {
        anyhow::bail!(
            "{RECOVERIES_MAX} recoveries within {RECOVERY_WINDOW:?}: giving up; the device \
             stays quiesced until `rewind recover -n {id}` or `rewind del -n {id}`"
        );
    }
    recoveries.push_back(now);
    Ok(())
}

/// Kills a hung daemon and waits until it is gone.
fn kill_hung(pid: i32) -> Result<()> {
    if pid <= 0 {
        return Ok(());
    }
    // SAFETY: kill only sends a signal; pid is the daemon the kernel names for the device.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e).with_context(|| format!("killing pid {pid}"));
        }
    }
    let deadline = Instant::now() + KILL_WAIT;
    while registry::process_alive(pid) {
        if Instant::now() >= deadline {
            anyhow::bail!("pid {pid} is still there {KILL_WAIT:?} after SIGKILL");
        }
        reap_children();
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Reaps the daemons this supervisor started that have exited.
fn reap_children() {
    loop {
        // SAFETY: waitpid with WNOHANG only collects exit statuses of this process's
        // children; the status pointer may be null.
        let rc = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if rc <= 0 {
            return;
        }
    }
}
