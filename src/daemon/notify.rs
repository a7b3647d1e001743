//! systemd's notify protocol, for a daemon a service manager runs (`rewind add --foreground`
//! as the main process of the `rewind@.service` unit, `Type=notify`): readiness once the
//! device is live, watchdog pings while the daemon is healthy, and the stop. Without
//! `NOTIFY_SOCKET` in the environment all of it does nothing.
//!
//! The watchdog (`WatchdogSec=` in the unit, which sets `WATCHDOG_USEC` and `WATCHDOG_PID`)
//! pings at half the interval, each time after reading the engine's figures, which takes
//! its state lock: a daemon whose engine is stuck stops pinging, and systemd restarts the
//! unit, which recovers the device (`rewind add` of an image whose device waits for a new
//! daemon recovers it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rewind_history::Volume;
use sd_notify::NotifyState;

use crate::daemon::backing::FileStore;

/// The device is live at `device`.
pub fn ready(device: &str) {
    let status = format!("serving {device}");
    send(&[
        NotifyState::Ready,
        NotifyState::MainPid(std::process::id()),
        NotifyState::Status(&status),
    ]);
}

/// The daemon is stopping (a stop signal, or `rewind del`).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(state: &[NotifyState]) {
    // Not fatal: the service manager may be gone, and the device serves on either way.
    if let Err(e) = sd_notify::notify(false, state) {
        log::warn!("telling the service manager ({state:?}): {e}");
    }
}

/// Starts the watchdog thread if the service manager asked for one; it ends when `stop` is
/// set or the volume is gone.
pub fn spawn_watchdog(volume: Weak<Volume<FileStore>>, stop: Arc<AtomicBool>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec) / 2;
    log::info!("watchdog: a ping every {every:?} while the engine answers");
    let spawned = std::thread::Builder::new()
        .name("rewind-watchdog".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Some(v) = volume.upgrade() else {
                    return;
                };
                // Takes the state lock: blocks here, and pings no more, if the engine is
                // stuck.
                let _ = v.stats();
                drop(v);
                send(&[NotifyState::Watchdog]);
                std::thread::sleep(every);
            }
        });
    if let Err(e) = spawned {
        log::error!("starting the watchdog thread: {e}; systemd will restart the daemon");
    }
}
