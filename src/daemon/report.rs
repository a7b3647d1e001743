//! Where the daemon says it is live, or why it failed: a line on the status pipe of the
//! `rewind add` (or `rewind recover`) that started it, or the device path on stdout when it
//! serves in the foreground.

use std::fs::File;
use std::io::Write;
use std::os::unix::io::{FromRawFd, RawFd};

use anyhow::{Context, Result};
use parking_lot::Mutex;

use crate::ipc::status::Status;

/// Where the daemon says it is live, or why it failed.
pub enum Reporter {
    /// The status pipe of the `rewind add` (or `rewind recover`) that started this daemon;
    /// used once.
    Pipe(Mutex<Option<File>>),
    /// Foreground: the device path goes to stdout; errors are printed by `main`.
    Stdout,
}

impl Reporter {
    /// The status pipe passed as descriptor `fd`.
    pub fn from_fd(fd: RawFd) -> Result<Reporter> {
        // SAFETY: F_GETFD only reads the descriptor table entry; it fails for a descriptor
        // that is not open, which is checked before taking ownership below.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("status descriptor {fd}"));
        }
        // Kept from the programs this one may exec (`daemon::handover`): the starter waits
        // for the pipe's end. SAFETY: F_SETFD only changes the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("status descriptor {fd}"));
        }
        // SAFETY: the descriptor is open (checked above) and was made for this process by
        // the `rewind add` (or `recover`) that started it and passed its number; nothing
        // else in this process uses it, so the File may own and close it.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(Reporter::Pipe(Mutex::new(Some(file))))
    }

    fn send(&self, status: &Status) {
        match self {
            Reporter::Pipe(pipe) => {
                if let Some(mut f) = pipe.lock().take() {
                    if let Err(e) = f.write_all(status.line().as_bytes()) {
                        // The starter gave up waiting; the log still says what happened.
                        log::warn!("could not report to `rewind add`: {e}");
                    }
                }
            }
            Reporter::Stdout => {
                if let Status::Live(dev) = status {
                    println!("{dev}");
                    let _ = std::io::stdout().flush();
                }
            }
        }
    }

    /// The device is live at `device`; also told to a service manager (`notify`).
    pub fn live(&self, device: &str) {
        self.send(&Status::Live(device.to_string()));
        crate::daemon::notify::ready(device);
    }

    /// Serving failed before the device went live (a no-op once it was reported live).
    pub fn failed(&self, why: &str) {
        self.send(&Status::Failed(why.to_string()));
    }
}
