//! The daemon: serves one image as one ublk device until the device is deleted.
//!
//! Start: open and lock the image, recover it (`Volume::open`), add the ublk device, bind
//! the control socket, start the safe point ticker and the queues; once the kernel reports
//! the device live, tell the `rewind add` that started us (a line on a pipe) or print the
//! device path (foreground).
//!
//! Stop: `rewind del` (or SIGTERM/SIGINT/SIGHUP here) stops the device; the queues drain and
//! exit, `run_target` returns, the device is deleted, the socket and pid file are removed,
//! and the volume is closed with a final checkpoint, all before the process exits, so
//! `rewind del` can wait for the exit to know the image is clean.

use std::fs::File;
use std::io::Write;
use std::os::unix::io::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libublk::ctrl::UblkCtrl;
use libublk::io::UblkDev;
use parking_lot::Mutex;
use rewind_history::{Volume, PAGE_SIZE};

use crate::backing::FileStore;
use crate::control::{self, DeviceStats, Request, Response, SafePointRecord};
use crate::image;
use crate::pacing::{Pacer, Policy};
use crate::paths;
use crate::target::{self, OnCrash, Target, TargetData, TARGET_DATA_KEY};
use crate::timeline;
use crate::views::{self, Views};

/// How long the daemon waits for the last references to the volume (a control request in
/// progress) before it gives up closing it cleanly.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What `rewind __serve` (or `rewind add --foreground`) was asked to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The image, absolute.
    pub image: PathBuf,
    /// The ublk device id, or the first free one.
    pub id: Option<u32>,
    /// Queues.
    pub queues: u16,
    /// Depth of each queue.
    pub depth: u16,
    /// The daemon's log file, for `list` and `stats` to show.
    pub log: Option<PathBuf>,
    /// Seconds without writes before an idle safe point; 0: never.
    pub idle_secs: u64,
    /// Flush coalescing interval in ms; 0: none.
    pub coalesce_ms: u64,
    /// What the kernel does with the device's I/O if this daemon dies.
    pub on_crash: OnCrash,
    /// Take over device `id`, left quiesced by a daemon that died, instead of adding one.
    pub recover: bool,
}

/// One line the daemon sends `rewind add` on the status pipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// The device is live at this path.
    Live(String),
    /// Serving failed, for this reason.
    Failed(String),
}

impl Status {
    /// The line for the pipe, newline included.
    pub fn line(&self) -> String {
        match self {
            Status::Live(dev) => format!("live {dev}\n"),
            // One line: the reader stops at the first newline.
            Status::Failed(why) => format!("error {}\n", why.replace('\n', " ")),
        }
    }

    /// Reads a line written by [`Status::line`].
    pub fn parse(line: &str) -> Option<Status> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if let Some(dev) = line.strip_prefix("live ") {
            Some(Status::Live(dev.to_string()))
        } else {
            line.strip_prefix("error ")
                .map(|why| Status::Failed(why.to_string()))
        }
    }
}

/// Where the daemon says it is live, or why it failed.
pub enum Reporter {
    /// The status pipe of the `rewind add` that started this daemon; used once.
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
        // SAFETY: the descriptor is open (checked above) and was made for this process by
        // `rewind add`, which passed its number; nothing else in this process uses it, so
        // the File may own and close it.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(Reporter::Pipe(Mutex::new(Some(file))))
    }

    fn send(&self, status: &Status) {
        match self {
            Reporter::Pipe(pipe) => {
                if let Some(mut f) = pipe.lock().take() {
                    if let Err(e) = f.write_all(status.line().as_bytes()) {
                        // `rewind add` gave up waiting; the log still says what happened.
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

    /// The device is live at `device`.
    pub fn live(&self, device: &str) {
        self.send(&Status::Live(device.to_string()));
    }

    /// Serving failed before the device went live (a no-op once it was reported live).
    pub fn failed(&self, why: &str) {
        self.send(&Status::Failed(why.to_string()));
    }
}

/// Serves `opts.image` until the device is deleted or a signal stops it.
pub fn serve(opts: &ServeOptions, reporter: Reporter) -> Result<()> {
    let reporter = Arc::new(reporter);
    let result = serve_until_stopped(opts, &reporter);
    if let Err(e) = &result {
        reporter.failed(&format!("{e:#}"));
    }
    result
}

/// The signals that stop the device cleanly.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks the stop signals in the calling thread, and so in every thread it starts later;
/// the signal thread takes them with `sigwait`.
fn block_stop_signals() -> Result<libc::sigset_t> {
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
fn spawn_signal_thread(set: libc::sigset_t, id: u32, stop: Arc<AtomicBool>) -> Result<()> {
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
            stop_device(id);
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Sends STOP_DEV for device `id` through a control handle of this thread.
fn stop_device(id: u32) {
    let Ok(id_arg) = i32::try_from(id) else {
        log::error!("device id {id} out of range");
        return;
    };
    match UblkCtrl::new_simple(id_arg) {
        Ok(ctrl) => {
            if let Err(e) = ctrl.kill_dev() {
                log::error!("stopping device {id}: {}", target::describe_ublk_error(&e));
            }
        }
        Err(e) => log::error!(
            "opening device {id} to stop it: {}",
            target::describe_ublk_error(&e)
        ),
    }
}

/// The pid file's content.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PidFile {
    /// The daemon.
    pub pid: u32,
    /// The image it serves.
    pub image: String,
    /// Its log.
    pub log: Option<String>,
}

fn write_pid_file(path: &Path, content: &PidFile) -> Result<()> {
    let text = serde_json::to_string(content)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Removes a runtime file when dropped, so every way out of the daemon cleans up.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("removing {}: {e}", self.0.display()),
        }
    }
}

fn serve_until_stopped(opts: &ServeOptions, reporter: &Arc<Reporter>) -> Result<()> {
    started_at();
    // Before any thread starts, so that all of them inherit the mask.
    let signals = block_stop_signals()?;
    let image_text = opts.image.display().to_string();
    log::info!(
        "rewind {} (pid {}) serving {image_text}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );

    let store = open_image(opts)?;
    log_stale_owner(&store, &image_text);
    let direct_io = store.direct_io();
    let started = Instant::now();
    let volume = Volume::open(store, &crate::host::this_host())
        .with_context(|| format!("opening the rewind image {image_text}"))?;
    log::info!(
        "opened {image_text} in {:.1?}: {}; data path {}",
        started.elapsed(),
        image::describe(volume.layout()),
        if direct_io { "O_DIRECT" } else { "buffered" }
    );
    let volume = Arc::new(volume);
    // Whatever happened while serving, the volume is closed cleanly if it can be: the
    // device is gone by the time serve_volume returns.
    let served = serve_volume(opts, reporter, signals, &volume, direct_io);
    let closed = close_volume(volume, &image_text);
    match (served, closed) {
        (Err(e), Err(c)) => {
            // Only the first error reaches `main`; the log keeps the second.
            log::error!("{c:#}");
            Err(e)
        }
        (served, closed) => served.and(closed),
    }
}

/// Says so when the image was left open by a daemon that is gone: this one holds the lock
/// now, so that owner no longer runs, and `Volume::open` replays its journal.
/// Opens and locks the image. A killed daemon's lock goes only when the kernel has torn
/// down its io_uring rings, which can outlive the process by a moment: recovery waits for it.
fn open_image(opts: &ServeOptions) -> Result<FileStore> {
    let wait = if opts.recover {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + wait;
    loop {
        match FileStore::open(&opts.image) {
            Err(crate::backing::BackingError::InUse { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

fn log_stale_owner(store: &FileStore, image: &str) {
    let Ok(sb) = rewind_history::read_superblock(store) else {
        // Volume::open reports a bad superblock properly.
        return;
    };
    if sb.clean.get() != 0 {
        return;
    }
    let owner = sb.owner().map_or("pid unknown".to_string(), |(pid, host)| {
        crate::backing::describe_owner(pid, &host)
    });
    log::warn!(
        "{image} was not closed cleanly: its owner ({owner}) died or was killed and holds its \
         lock no more (a stale owner); recovering from the journal"
    );
}

/// Adds the device (or takes over a quiesced one), serves it until it is stopped, and
/// deletes it.
fn serve_volume(
    opts: &ServeOptions,
    reporter: &Arc<Reporter>,
    signals: libc::sigset_t,
    volume: &Arc<Volume<FileStore>>,
    direct_io: bool,
) -> Result<()> {
    let image_text = opts.image.display().to_string();
    // Deletes the device when dropped (libublk's handle for an added device does), after
    // the runtime files below are gone: the id is free for a new device after that.
    let ctrl = if opts.recover {
        let Some(id) = opts.id else {
            anyhow::bail!("recovering a device needs its id");
        };
        target::recover_device(id)?
    } else {
        target::add_device(opts.id, opts.queues, opts.depth, opts.on_crash)?
    };
    let info = ctrl.dev_info();
    let id = info.dev_id;
    let nr_queues = info.nr_hw_queues;
    // The kernel's flags decide, for a device taken over as for a new one.
    let on_crash = if info.flags & u64::from(libublk::sys::UBLK_F_USER_RECOVERY) != 0 {
        OnCrash::Queue
    } else {
        OnCrash::Stop
    };
    let device = paths::device_path(id).display().to_string();
    log::info!(
        "{} ublk device {id}: {nr_queues} queues of depth {}; if this daemon dies: {}",
        if opts.recover { "recovering" } else { "added" },
        info.queue_depth,
        match on_crash {
            OnCrash::Queue =>
                "I/O waits for `rewind recover` (writes are journaled before \
                               they complete)",
            OnCrash::Stop => "the device fails its I/O and stops",
        }
    );
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_thread(signals, id, stop.clone())?;

    paths::ensure_run_dir().with_context(|| format!("creating {}", paths::RUN_DIR))?;
    let socket = paths::socket_path(id);
    let pid_file = paths::pid_path(id);
    let log_text = opts.log.as_ref().map(|p| p.display().to_string());
    let listener = control::bind(&socket)
        .with_context(|| format!("binding the control socket {}", socket.display()))?;
    let socket_guard = RemoveOnDrop(socket.clone());
    let weak = Arc::downgrade(volume);
    let about = DeviceStats {
        id,
        device: device.clone(),
        image: image_text.clone(),
        pid: std::process::id(),
        direct_io,
        log: log_text.clone(),
        page_size: PAGE_SIZE,
        device_bytes: volume.layout().device_bytes(),
        logical_pages: 0,
        physical_pages: 0,
        free_pages: 0,
        history_pages: 0,
        history_capacity_pages: 0,
        safe_points: 0,
        oldest_safe_point: None,
        newest_safe_point: None,
        oldest_safe_point_time_ns: None,
        newest_safe_point_time_ns: None,
        idle_secs: opts.idle_secs,
        coalesce_ms: opts.coalesce_ms,
        pinned: Vec::new(),
        views: Vec::new(),
    };
    let pacer = Arc::new(Pacer::new(Policy::new(opts.idle_secs, opts.coalesce_ms)));
    log::info!(
        "safe points: every flush{}, and after {}",
        if opts.coalesce_ms > 0 {
            format!(" at least {} ms after the previous one", opts.coalesce_ms)
        } else {
            String::new()
        },
        if opts.idle_secs > 0 {
            format!("{} s without writes", opts.idle_secs)
        } else {
            "no idle interval (idle safe points off)".into()
        }
    );
    let target_data = TargetData {
        image: image_text.clone(),
        direct_io,
        socket: socket.display().to_string(),
        log: log_text.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        on_crash: Some(on_crash),
        idle_secs: Some(opts.idle_secs),
        coalesce_ms: Some(opts.coalesce_ms),
        view: None,
    };
    let views = Views::new(id, target_data.clone());
    spawn_notice_thread(Arc::downgrade(volume), Arc::downgrade(&views))?;
    let control_pacer = pacer.clone();
    let control_views = views.clone();
    control::serve(listener, move |request: &Request| {
        let Some(volume) = weak.upgrade() else {
            return Response::error("the device is shutting down");
        };
        let views = &control_views;
        // Views dropped since the last look show as such in the answer.
        views.absorb_notices(&volume);
        match request {
            Request::Stats => Response::stats(device_stats(&volume, &about, views)),
            Request::OpenView { at } => match views.open(&volume, &control_pacer, *at) {
                Ok(view) => Response::view(view),
                Err(why) => {
                    log::warn!("opening a view of safe point {at}: {why}");
                    Response::error(why)
                }
            },
            Request::CloseView { device } => match views.close(*device) {
                Ok(()) => Response::done(),
                Err(why) => Response::error(why),
            },
            Request::Pin { id, pinned } => match volume.pin(*id, *pinned) {
                Ok(()) => {
                    log::info!(
                        "safe point {id} {}",
                        if *pinned { "pinned" } else { "unpinned" }
                    );
                    Response::done()
                }
                Err(e) => Response::error(e.to_string()),
            },
            Request::SafePoint { label } => {
                user_safe_point(&volume, &control_pacer, label.clone(), &about, views)
            }
            Request::Log => Response::log(
                volume
                    .safe_point_infos()
                    .iter()
                    .map(|info| {
                        let mut r = SafePointRecord::from(info);
                        r.views = views.devices_at(r.id);
                        r
                    })
                    .collect(),
                device_stats(&volume, &about, views),
            ),
            Request::Ping => {
                // Takes the engine's state lock: a daemon whose engine is stuck does not
                // answer, which is what the supervisor's heartbeat wants to know.
                let _ = volume.stats();
                Response::pong(about.pid)
            }
            Request::Rollback { to } => match volume.rollback(*to) {
                Ok(undo) => {
                    log::info!("rolled back to safe point {to}; safe point {undo} undoes it");
                    Response::rollback(undo)
                }
                Err(e) => Response::error(e.to_string()),
            },
        }
    })
    .context("starting the control socket thread")?;
    write_pid_file(
        &pid_file,
        &PidFile {
            pid: std::process::id(),
            image: image_text.clone(),
            log: log_text.clone(),
        },
    )?;
    let pid_guard = RemoveOnDrop(pid_file);

    let target_json = serde_json::json!({ TARGET_DATA_KEY: target_data });
    let target = Arc::new(Target::new(volume.clone(), pacer.clone(), nr_queues));
    // Stopped (and joined) when dropped, on every way out below.
    let ticker = pacer
        .start_ticker(Arc::downgrade(volume))
        .context("starting the safe point ticker")?;
    let queue_target = target.clone();
    let live_reporter = reporter.clone();
    let live_stop = stop.clone();
    let live_device = device.clone();
    let recovering = opts.recover;
    let process_start = started_at();
    let run = ctrl.run_target(
        |dev: &mut UblkDev| target.init(dev, target_json),
        move |qid: u16, dev: &UblkDev| queue_target.serve_queue(qid, dev),
        move |ctrl: &UblkCtrl| {
            log::info!(
                "{live_device} is live{}",
                if recovering {
                    format!(
                        " again: recovered {:.1?} after this daemon started; queued I/O reissued",
                        process_start.elapsed()
                    )
                } else {
                    String::new()
                }
            );
            live_reporter.live(&live_device);
            if live_stop.load(Ordering::SeqCst) {
                // A stop signal came while the device was starting, when STOP_DEV had no
                // effect yet: stop it now.
                log::info!("stopping {live_device}: a stop signal came during start");
                if let Err(e) = ctrl.kill_dev() {
                    log::error!(
                        "stopping {live_device}: {}",
                        target::describe_ublk_error(&e)
                    );
                }
            }
        },
    );
    let run = run.map(|_| ()).map_err(|e| match target.setup_failure() {
        Some(why) => anyhow::anyhow!("starting {device}: {why}"),
        None => anyhow::anyhow!("starting {device}: {}", target::describe_ublk_error(&e)),
    });
    // The views go with the live device: they hold the volume.
    views.close_all();
    drop(ticker);
    drop(target);
    // Before the device goes: a new device may get this id, and with it these paths.
    drop(pid_guard);
    drop(socket_guard);
    match &run {
        Ok(()) => {
            log::info!("{device} stopped");
            // A handle that took over a device does not delete it when dropped.
            if opts.recover {
                if let Err(e) = ctrl.del_dev() {
                    log::warn!("deleting {device}: {}", target::describe_ublk_error(&e));
                }
            }
        }
        Err(e) if opts.recover => {
            reporter.failed(&format!("{e:#}"));
            // Not deleted: its queued I/O would fail. It stays quiesced once this process
            // is gone, for another `rewind recover` (or `rewind del`).
            log::error!("recovering {device} failed; the device stays quiesced");
            return run;
        }
        Err(e) => {
            // Tell `rewind add` now: what follows may take a while.
            reporter.failed(&format!("{e:#}"));
            // Queues that did start may still wait for requests of a device that never
            // went live; the synchronous delete below would wait for them to let go of
            // the device, and they wait for it. Delete without waiting; the kernel
            // aborts their commands.
            if let Err(e) = ctrl.del_dev_async() {
                log::warn!(
                    "deleting {device} after the failed start: {}",
                    target::describe_ublk_error(&e)
                );
            }
        }
    }
    drop(ctrl);
    log::info!("deleted ublk device {id}");
    run
}

/// Every [`views::NOTICE_INTERVAL`], logs what reclaim gave up (views dropped, pins
/// released) so the log says why a view's reads fail; ends with the volume.
fn spawn_notice_thread(
    volume: std::sync::Weak<Volume<FileStore>>,
    views: std::sync::Weak<Views>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("rewind-notices".into())
        .spawn(move || loop {
            std::thread::sleep(views::NOTICE_INTERVAL);
            let (Some(volume), Some(views)) = (volume.upgrade(), views.upgrade()) else {
                return;
            };
            views.absorb_notices(&volume);
        })
        .context("starting the notice thread")?;
    Ok(())
}

/// When this process started, as an `Instant`: `rewind recover` measures the recovery from
/// the start of the daemon it launches.
fn started_at() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// The device's figures now; `about` holds the ones that do not change.
fn device_stats(volume: &Volume<FileStore>, about: &DeviceStats, views: &Views) -> DeviceStats {
    let s = volume.stats();
    let infos = volume.safe_point_infos();
    let safe_points: Vec<_> = infos.iter().map(|i| &i.safe_point).collect();
    DeviceStats {
        logical_pages: s.logical_pages,
        physical_pages: s.physical_pages,
        free_pages: s.free_pages,
        history_pages: s.history_pages,
        history_capacity_pages: s.history_capacity_pages,
        safe_points: s.safe_points,
        oldest_safe_point: s.oldest_safe_point,
        newest_safe_point: s.newest_safe_point,
        oldest_safe_point_time_ns: safe_points.first().map(|sp| sp.time_ns),
        newest_safe_point_time_ns: safe_points.last().map(|sp| sp.time_ns),
        pinned: infos
            .iter()
            .filter(|i| i.pinned)
            .map(|i| i.safe_point.id)
            .collect(),
        views: views.records(),
        ..about.clone()
    }
}

/// `rewind safepoint`: checks the label (valid, and unique in the window: the control
/// thread is the only maker of labelled safe points, so the check cannot race with
/// another), makes the safe point and answers with it.
fn user_safe_point(
    volume: &Volume<FileStore>,
    pacer: &Pacer,
    label: Option<String>,
    about: &DeviceStats,
    views: &Views,
) -> Response {
    if let Some(l) = &label {
        if let Err(why) = timeline::check_label(l) {
            return Response::error(why);
        }
        let safe_points = volume.safe_points();
        if let Some(sp) = safe_points
            .iter()
            .find(|sp| sp.label.as_deref() == Some(l.as_str()))
        {
            return Response::error(format!(
                "the label {l:?} is already used by safe point {} (`rewind log -n {}` shows \
                 it); a label names one safe point: choose another",
                sp.id, about.id
            ));
        }
    }
    let shown = label
        .as_ref()
        .map(|l| format!(" {l:?}"))
        .unwrap_or_default();
    match pacer.user_safe_point(volume, label) {
        Ok(id) => {
            log::info!("made safe point {id}{shown} on request");
            match volume
                .safe_point_infos()
                .iter()
                .find(|i| i.safe_point.id == id)
            {
                Some(info) => Response::safe_point(info.into(), device_stats(volume, about, views)),
                None => Response::error(format!(
                    "safe point {id} was made but has already left the window: the history \
                     area is full"
                )),
            }
        }
        Err(e) => {
            log::error!("making safe point{shown} on request: {e}");
            Response::error(format!("making the safe point: {e}"))
        }
    }
}

/// Closes the volume cleanly once nothing else holds it.
fn close_volume(volume: Arc<Volume<FileStore>>, image: &str) -> Result<()> {
    let deadline = Instant::now() + CLOSE_WAIT;
    let mut volume = volume;
    loop {
        match Arc::try_unwrap(volume) {
            Ok(v) => {
                let started = Instant::now();
                v.close().with_context(|| {
                    format!("closing {image} (the next `rewind add` recovers it)")
                })?;
                log::info!("closed {image} cleanly in {:.1?}", started.elapsed());
                return Ok(());
            }
            Err(shared) => {
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "closing {image}: still in use after {CLOSE_WAIT:?}; left as after a \
                         crash (the next `rewind add` recovers it)"
                    );
                }
                volume = shared;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_round_trip() {
        for s in [
            Status::Live("/dev/ublkb3".into()),
            Status::Failed("opening x: no such file".into()),
        ] {
            assert_eq!(Status::parse(&s.line()), Some(s));
        }
        // A multi-line error stays one line.
        let s = Status::Failed("a\nb".into());
        assert_eq!(s.line(), "error a b\n");
        assert_eq!(Status::parse(""), None);
        assert_eq!(Status::parse("garbage\n"), None);
    }
}
