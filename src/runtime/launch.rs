//! Starting daemons and supervisors in the background, and waiting until a daemon reports
//! its device live (for `rewind add` and `rewind recover`, and the supervisor's recoveries).
//!
//! The daemon is this program re-executed as the hidden `rewind __serve`, in its own session
//! (`setsid`), stdin from /dev/null, stdout and stderr appended to its log file. It reports
//! on a pipe whose write end it inherits: one line, `live /dev/ublkbN` or `error WHY`
//! (`ipc::status`).
//!
//! `rewind recover -n ID` starts the same daemon with `--recover`, on the image and options
//! the dead daemon recorded in the device's ublk json (its queues and depth: the kernel's);
//! `rewind add --supervise` then starts the supervisor (`rewind __supervise`, see
//! `runtime::supervise`) the same way.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::daemon::pacing::{COALESCE_MS_DEFAULT, IDLE_SECS_DEFAULT};
use crate::daemon::serve::ServeOptions;
use crate::ipc::device::OnCrash;
use crate::ipc::paths;
use crate::ipc::status::Status;
use crate::runtime::registry::recoverable;
use crate::runtime::removal::delete_stale_views;

/// How long `rewind add` (or `rewind recover`) waits for the daemon to report. Recovery of a
/// large image after a crash reads its checkpoint and journal, which takes a while on a slow
/// disk.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// Lines of the daemon's log shown when it dies without reporting.
const LOG_TAIL_LINES: usize = 10;

/// One queue per 4 CPUs, at least 1 and at most 4. A queue thread serves the requests of the
/// CPUs its queue is mapped to, so with a queue per CPU it competes for that CPU with the
/// application submitting there, and every request switches between the two; with fewer
/// queues than CPUs the scheduler runs the queue threads beside the submitters. Measured
/// with fio in a 2-vCPU guest (6.12, QD32, interleaved runs): one queue served 4 KiB random
/// writes 1.7x and reads 1.9x faster than two; rublk shows the same (BENCHMARKS.md). More
/// than 4 cost memory (a 512 KiB buffer per tag) and spread one writer's stream for little
/// gain.
pub fn default_queues() -> u16 {
    std::thread::available_parallelism().map_or(1, |n| queues_for_cpus(n.get()))
}

fn queues_for_cpus(cpus: usize) -> u16 {
    (cpus / 4).clamp(1, 4) as u16
}

/// Starts a daemon that takes over device `id` and waits until it is live; returns the
/// device path. Used by `rewind recover` and the supervisor.
pub fn recover_device(id: u32) -> Result<String> {
    let serve = prepare_recovery(id)?;
    let log = serve.log.clone().expect("prepare_recovery sets the log");
    start_daemon(&serve, &log)
}

/// Checks that device `id` waits for a new daemon, deletes the views its dead daemon left,
/// and returns the options of the daemon that takes it over (its log included).
pub fn prepare_recovery(id: u32) -> Result<ServeOptions> {
    let found = recoverable(id)?;
    // Views end with their daemon; the new daemon starts without them.
    delete_stale_views(id);
    let log = found.data.log_path();
    let serve = ServeOptions {
        image: PathBuf::from(&found.data.image),
        id: Some(id),
        queues: found.queues,
        depth: found.depth,
        log: Some(log.clone()),
        idle_secs: found.data.idle_secs.unwrap_or(IDLE_SECS_DEFAULT),
        coalesce_ms: found.data.coalesce_ms.unwrap_or(COALESCE_MS_DEFAULT),
        on_crash: OnCrash::Queue,
        recover: true,
        // The kernel kept the device's flags, and with them its data path.
        data_path: None,
        // A device served read-only is added with --on-crash stop: it is never recovered.
        read_only_at: None,
    };
    Ok(serve)
}

/// Starts `rewind __supervise -n ID` of `exe` (default: this program) in its own session,
/// logging to `log`; returns its pid.
pub fn start_supervisor(id: u32, log: &Path, exe: Option<&Path>) -> Result<u32> {
    let log_file = open_log(log)?;
    let args: [OsString; 3] = [
        "__supervise".into(),
        "--number".into(),
        id.to_string().into(),
    ];
    let child = spawn_detached(exe, &args, log_file, None, "supervisor")?;
    Ok(child.id())
}

/// Starts the daemon for `opts` and waits for it to report; returns the device path.
pub fn start_daemon(opts: &ServeOptions, log: &Path) -> Result<String> {
    let log_file = open_log(log)?;
    let (read_end, write_end) = status_pipe()?;
    let status_fd = write_end.as_raw_fd();
    let child = spawn_detached(
        None,
        &opts.args(Some(status_fd), Some(log)),
        log_file,
        Some(status_fd),
        "daemon",
    )?;
    // Only the daemon may hold the write end now, so its exit shows as end of file.
    drop(write_end);
    wait_for_status(child, read_end, opts, log)
}

/// Starts `exe` (default: this program) with `args` in a session of its own (`setsid`, so no
/// terminal's signals reach it), stdin from /dev/null, stdout and stderr appended to
/// `log_file`. Descriptor `keep_fd`, if given, stays open across exec; every other
/// descriptor of this process is close-on-exec. `what` names the child in errors.
fn spawn_detached(
    exe: Option<&Path>,
    args: &[OsString],
    log_file: File,
    keep_fd: Option<RawFd>,
    what: &str,
) -> Result<Child> {
    let exe = match exe {
        Some(exe) => exe.to_path_buf(),
        None => std::env::current_exe()
            .with_context(|| format!("finding this program to start the {what}"))?,
    };
    let mut cmd = Command::new(exe);
    cmd.args(args)
        // A background daemon is no service's main process: it must not tell the service
        // manager of whatever started it that it is ready (`daemon::notify`).
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(
            log_file
                .try_clone()
                .context("duplicating the log descriptor")?,
        )
        .stderr(log_file);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called: setsid and fcntl are, and it allocates
    // nothing. It touches only `keep_fd`, a descriptor the child inherited.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = keep_fd {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags == -1 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting the {what}"))
}

fn open_log(log: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| {
            format!(
                "opening the daemon's log {} (set {} to another directory)",
                log.display(),
                paths::LOG_DIR_ENV
            )
        })
}

/// The status pipe, both ends close-on-exec: (read end, write end).
fn status_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error()).context("creating the status pipe");
    }
    // SAFETY: pipe2 succeeded, so both are new open descriptors that nothing else owns.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // If this process was started with stdin, stdout or stderr closed, the pipe may have
    // taken one of their numbers, which the child's own redirections then overwrite.
    // try_clone duplicates to the lowest free number from 3 up.
    let write_end = if write_end.as_raw_fd() < 3 {
        write_end.try_clone().context("moving the status pipe")?
    } else {
        write_end
    };
    Ok((read_end, write_end))
}

/// Waits for the line the daemon `child` writes on the status pipe (`read_end`): the device
/// path once it is live, or an error that says why it is not.
fn wait_for_status(
    mut child: Child,
    read_end: OwnedFd,
    opts: &ServeOptions,
    log: &Path,
) -> Result<String> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let got = BufReader::new(File::from(read_end))
            .read_line(&mut line)
            .map(|_| line);
        let _ = tx.send(got);
    });
    let image = opts.image.display();
    match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(Ok(line)) => match Status::parse(&line) {
            Some(Status::Live(device)) => Ok(device),
            Some(Status::Failed(why)) => {
                let _ = wait_briefly(&mut child);
                bail!(
                    "the daemon could not serve {image}: {why} (log: {})",
                    log.display()
                )
            }
            None => {
                let exit = wait_briefly(&mut child);
                show_log_tail(log);
                bail!(
                    "the daemon (pid {pid}) {} before the device came up; its log is {}",
                    exit,
                    log.display()
                )
            }
        },
        Ok(Err(e)) => bail!(
            "reading the daemon's status: {e}; see its log {}",
            log.display()
        ),
        Err(_) => bail!(
            "the daemon (pid {pid}) has not reported within {}s; it may still be recovering \
             {image}: see its log {} and `rewind list`",
            STARTUP_TIMEOUT.as_secs(),
            log.display()
        ),
    }
}

/// How the daemon ended, waiting up to 2 s for it.
fn wait_briefly(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return format!("exited ({status})"),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return "closed its status pipe".into(),
            Err(e) => return format!("could not be waited for ({e})"),
        }
    }
}

fn show_log_tail(log: &Path) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if !tail.is_empty() {
        eprintln!("rewind: last lines of {}:", log.display());
        for line in tail {
            eprintln!("    {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_per_four_cpus_from_one_to_four() {
        let got: Vec<u16> = [1, 2, 4, 7, 8, 12, 16, 64]
            .into_iter()
            .map(queues_for_cpus)
            .collect();
        assert_eq!(got, [1, 1, 1, 1, 2, 3, 4, 4]);
    }
}
