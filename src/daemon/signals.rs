//! The signals that stop the daemon cleanly (SIGTERM, SIGINT, SIGHUP): blocked in every
//! thread and taken by one thread of their own, which stops the device the way `rewind del`
//! does, so the queues drain and the volume closes cleanly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::daemon::ublk;

/// The signals that stop the device cleanly.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks the stop signals in the calling thread, and so in every thread it starts later;
/// the signal thread takes them with `sigwait`.
pub fn block_stop_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data that sigemptyset initializes before any other use;
    // sigaddset and pthread_sigmask read and write only the set passed to them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).context("blocking signals");
        }
        Ok(set)
    }
}

/// On a stop signal, stops device `id` the way `rewind del` does, so the queues drain and
/// the volume closes cleanly.
pub fn spawn_signal_thread(set: libc::sigset_t, id: u32, stop: Arc<AtomicBool>) -> Result<()> {
    std::thread::Builder::new()
        .name("rewind-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait reads the set and writes the signal number into `sig`, both
            // live locals of this thread.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc != 0 {
                log::error!(
                    "sigwait failed: {}; signals no longer stop the device",
                    std::io::Error::from_raw_os_error(rc)
                );
                return;
            }
            if stop.swap(true, Ordering::SeqCst) {
                log::warn!(
                    "signal {sig} again: already stopping (SIGKILL skips the clean close; \
                     the next `rewind add` then recovers the image)"
                );
                continue;
            }
            log::info!("signal {sig}: stopping device {id}");
            if let Err(why) = ublk::stop_device(id, "device") {
                log::error!("{why}");
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
