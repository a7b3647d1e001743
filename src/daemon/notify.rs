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

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
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

/// The daemon is about to exec `exe` (`rewind upgrade`): a watchdog ping now gives the new
/// program a whole interval to take the device over and ping in turn.
pub fn handing_over(exe: &std::path::Path) {
    let status = format!("handing the device over to {}", exe.display());
    send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
}

fn send(state: &[NotifyState]) {
    // Not fatal: the service manager may be gone, and the device serves on either way.
    if let Err(e) = sd_notify::notify(false, state) {
        log::warn!("telling the service manager ({state:?}): {e}");
    }
}

/// The watchdog pings, if the service manager asked for them: started before the device
/// goes live, ended by `stopping`.
pub struct Watchdog {
    /// Set once STOPPING=1 is sent; held from the check to the ping, so no ping follows
    /// STOPPING=1 (a late one would arm the watchdog again during the stop).
    stopped: Arc<Mutex<bool>>,
}

impl Watchdog {
    /// Starts the watchdog thread if the service manager asked for one (`WATCHDOG_USEC`);
    /// it ends with `stopping` or when the volume is gone.
    pub fn start(volume: Weak<Volume<FileStore>>) -> Watchdog {
        let stopped = Arc::new(Mutex::new(false));
        let mut usec = 0;
        if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
            let every = Duration::from_micros(usec) / 2;
            log::info!("watchdog: a ping every {every:?} while the engine answers");
            let theirs = stopped.clone();
            let spawned = std::thread::Builder::new()
                .name("rewind-watchdog".into())
                .spawn(move || ping(&volume, &theirs, every));
            if let Err(e) = spawned {
                log::error!("starting the watchdog thread: {e}; systemd will restart the daemon");
            }
        }
        Watchdog { stopped }
    }

    /// The daemon is stopping (a stop signal, or `rewind del`): STOPPING=1, and no ping
    /// after it.
    pub fn stopping(&self) {
        let mut stopped = self.stopped.lock();
        *stopped = true;
        send(&[NotifyState::Stopping]);
    }
}

/// The watchdog thread: every `every`, reads the engine's figures, which takes its state
/// lock (so a stuck engine stops the pings), then pings.
fn ping(volume: &Weak<Volume<FileStore>>, stopped: &Mutex<bool>, every: Duration) {
    loop {
        let Some(v) = volume.upgrade() else {
            return;
        };
        let _ = v.stats();
        drop(v);
        {
            let stopped = stopped.lock();
            if *stopped {
                return;
            }
            send(&[NotifyState::Watchdog]);
        }
        std::thread::sleep(every);
    }
}
