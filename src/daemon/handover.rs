//! Handing the device to another rewind binary (`rewind upgrade`).
//!
//! The daemon makes what was written durable (a commit), answers the request, and replaces
//! itself with the new binary (`execve`: the same pid) run as `rewind __serve --recover`,
//! which takes the device over as `rewind recover` does. This is the kernel's user recovery,
//! the path a `kill -9` takes, entered on purpose: from the moment the old program's
//! queues are gone until the new one's are live the kernel holds the device's I/O; a request
//! the old program had not completed is reissued to the new one, and every write it did
//! complete has its journal record written, so none is lost and no program using the device
//! sees an error. It needs a device added with `--on-crash queue`.
//!
//! Keeping the pid keeps what others know of the daemon: a service manager's main process
//! (`rewind@.service`, whose `NOTIFY_SOCKET` the new program inherits and tells it is ready
//! again), the pid file, the kernel's record. The log descriptors carry over too; every
//! other descriptor is close-on-exec once the device is live (only then is a handover
//! taken), which is how the kernel learns that the old queues are gone. Just before the
//! exec the daemon pings the service manager's watchdog, so the new program has a whole
//! interval to take over.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a handover of this daemon's device needs, and whether one is under way.
pub struct Handover {
    /// The arguments (after the program name) that take this device over.
    args: Vec<OsString>,
    /// Why this device cannot be handed over, if it cannot.
    refused: Option<String>,
    /// True while the device is live and served here: not before (the status pipe of the
    /// `rewind add` waiting for it is still open, and the kernel has no device to recover
    /// yet), not once it stops.
    serving: AtomicBool,
    /// Set when a signal stops the daemon: the stop closes the image, an exec would not.
    stop: Arc<AtomicBool>,
    /// Set from the start of a handover until the exec (or its failure, or a failed
    /// commit): every other request is refused meanwhile, so a ping answered after a
    /// handover is the new program's, or the old one's again after a failure.
    underway: AtomicBool,
}

impl Handover {
    /// A handover that runs `rewind` with `args`; `refused`: why there can be none; `stop`:
    /// set when the daemon stops.
    pub fn new(args: Vec<OsString>, refused: Option<String>, stop: Arc<AtomicBool>) -> Handover {
        Handover {
            args,
            refused,
            serving: AtomicBool::new(false),
            stop,
            underway: AtomicBool::new(false),
        }
    }

    /// The device is live and served here (`true`), or no longer (`false`).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// True while the device is live and served here, and no stop signal came: work that
    /// holds the volume long (an export) ends when this turns false, so the volume can close.
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst)
    }

    /// True from the start of a handover until it is given up (a failed commit or exec).
    pub fn underway(&self) -> bool {
        self.underway.load(Ordering::SeqCst)
    }

    /// Checks that the device can go to `exe` now and begins the handover; `views` gives
    /// the view devices open once it has begun (they end with this program, so the user
    /// closes them first; the caller keeps new ones from opening meanwhile). On success the
    /// caller commits, answers, then calls [`Handover::exec`].
    pub fn begin<V>(&self, exe: &Path, views: V) -> Result<(), String>
    where
        V: FnOnce() -> Vec<String>,
    {
        if let Some(why) = &self.refused {
            return Err(why.clone());
        }
        if !exe.is_absolute() {
            return Err(format!(
                "{}: the binary must be named by an absolute path",
                exe.display()
            ));
        }
        if !self.serving() {
            return Err("the device is not being served now (it is starting or stopping)".into());
        }
        if self.underway.swap(true, Ordering::SeqCst) {
            return Err("a handover is under way already".into());
        }
        let views = views();
        if !views.is_empty() {
            self.abandon();
            return Err(format!(
                "views of this device are open ({}): they end with the program serving them; \
                 close them first (`rewind del -n ID` for each)",
                views.join(", ")
            ));
        }
        Ok(())
    }

    /// Gives up a handover that was begun: the daemon serves on.
    pub fn abandon(&self) {
        self.underway.store(false, Ordering::SeqCst);
    }

    /// Replaces this process with `exe` taking the device over. Returns only if that
    /// failed, having logged why; the daemon then serves on.
    pub fn exec(&self, exe: &Path) {
        log::info!(
            "handing the device over to {} (same pid {})",
            exe.display(),
            std::process::id()
        );
        crate::daemon::notify::handing_over(exe);
        // Whatever the log buffers must be out before the program goes.
        log::logger().flush();
        let error = execv(exe, &self.args);
        log::error!(
            "handing the device over to {}: {error}; this daemon serves on",
            exe.display()
        );
        self.abandon();
    }
}

/// `execv(exe, [exe, args...])`; returns only on failure. Not `CommandExt::exec`: std
/// unblocks every signal before it execs, and the daemon's stop signals must stay blocked
/// (its signal thread takes them with `sigwait`): arriving meanwhile, they would kill it
/// mid-handover, or for good on this thread if the exec fails. Blocked, they wait for the
/// new program, which blocks them too.
fn execv(exe: &Path, args: &[OsString]) -> std::io::Error {
    let to_c = |s: &[u8]| CString::new(s).map_err(std::io::Error::other);
    let program = match to_c(exe.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut argv = vec![program.clone()];
    for a in args {
        match to_c(a.as_bytes()) {
            Ok(c) => argv.push(c),
            Err(e) => return e,
        }
    }
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: `program` and every pointer in `pointers` point into CStrings that live
    // until after the call, and the array ends with a null pointer, as execv requires. On
    // success it does not return; on failure it changed nothing.
    unsafe { libc::execv(program.as_ptr(), pointers.as_ptr()) };
    std::io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(refused: Option<&str>) -> Handover {
        let h = Handover::new(
            Vec::new(),
            refused.map(String::from),
            Arc::new(AtomicBool::new(false)),
        );
        h.set_serving(true);
        h
    }

    #[test]
    fn a_handover_is_refused_with_the_reason_and_begun_once() {
        let none = Vec::new;
        let stop = serving(Some("added with --on-crash stop"));
        assert_eq!(
            stop.begin(Path::new("/bin/true"), none).unwrap_err(),
            "added with --on-crash stop"
        );
        let h = serving(None);
        let views = || vec!["/dev/ublkb3".to_string()];
        assert!(h
            .begin(Path::new("/bin/true"), views)
            .unwrap_err()
            .contains("/dev/ublkb3"));
        assert!(!h.underway(), "a refusal ends what it began");
        assert!(h
            .begin(Path::new("rewind"), none)
            .unwrap_err()
            .contains("absolute"));
        h.begin(Path::new("/bin/true"), none).unwrap();
        assert!(h.underway());
        assert!(
            h.begin(Path::new("/bin/true"), none).is_err(),
            "one at a time"
        );
        h.abandon();
        assert!(!h.underway());
    }

    #[test]
    fn only_a_device_being_served_is_handed_over() {
        let stop = Arc::new(AtomicBool::new(false));
        let h = Handover::new(Vec::new(), None, stop.clone());
        assert!(
            h.begin(Path::new("/bin/true"), Vec::new).is_err(),
            "not live yet"
        );
        h.set_serving(true);
        stop.store(true, Ordering::SeqCst);
        assert!(
            h.begin(Path::new("/bin/true"), Vec::new).is_err(),
            "stopping"
        );
        stop.store(false, Ordering::SeqCst);
        h.begin(Path::new("/bin/true"), Vec::new).unwrap();
    }

    #[test]
    fn a_failed_exec_returns_and_ends_the_handover() {
        let h = Handover::new(
            vec!["--version".into()],
            None,
            Arc::new(AtomicBool::new(false)),
        );
        h.set_serving(true);
        h.begin(Path::new("/nonexistent/rewind"), Vec::new).unwrap();
        h.exec(Path::new("/nonexistent/rewind"));
        assert!(!h.underway(), "the daemon serves on after a failed exec");
    }
}
