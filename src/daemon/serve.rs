//! The daemon's life: serves one image as one ublk device until the device is deleted.
//!
//! Start: open and lock the image, recover it (`Volume::open`), add the ublk device (or take
//! over a quiesced one) and tell the engine what a completed write must survive (all of
//! them when the device outlives this daemon: `OnCrash::durability`), bind the control
//! socket, write the pid file, start the safe point
//! ticker and the queues; once the kernel reports the device live, tell the `rewind add` (or
//! `rewind recover`) that started us (a line on a pipe) or print the device path
//! (foreground).
//!
//! Stop: `rewind del` (or SIGTERM/SIGINT/SIGHUP here) stops the device; the queues drain and
//! exit, `run_target` returns, the device is deleted, the socket and pid file are removed,
//! and the volume is closed with a final checkpoint, all before the process exits, so
//! `rewind del` can wait for the exit to know the image is clean.

use std::ffi::OsString;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libublk::ctrl::UblkCtrl;
use libublk::io::UblkDev;
use rewind_history::{SafePointId, Volume, PAGE_SIZE};

use crate::daemon::backing::{describe_owner, BackingError, BackingKind, FileStore};
use crate::daemon::control::{self, Answers};
use crate::daemon::flusher::Flusher;
use crate::daemon::handover::Handover;
use crate::daemon::notify;
use crate::daemon::pacing::{Pacer, Policy};
use crate::daemon::report::Reporter;
use crate::daemon::signals::{block_stop_signals, spawn_signal_thread};
use crate::daemon::target::Target;
use crate::daemon::ublk::{self, describe_ublk_error};
use crate::daemon::views::{self, Views};
use crate::ipc::control::{DeviceStats, PoolFileRecord};
use crate::ipc::device::{DataPath, OnCrash, PidFile, TargetData, TARGET_DATA_KEY};
use crate::ipc::paths;
use crate::size::describe_layout;

/// How long the daemon waits for the last references to the volume (a control request in
/// progress) before it gives up closing it cleanly.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What `rewind __serve` (or `rewind add --foreground`) was asked to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The data path asked for (`None`: zero copy where the kernel has it); a device taken
    /// over keeps the one it was added with.
    pub data_path: Option<DataPath>,
    /// Serve this safe point of the image read-only (`rewind add --read-only`), opening the
    /// image read-only, instead of the live device.
    pub read_only_at: Option<SafePointId>,
}

impl ServeOptions {
    /// The arguments of `rewind __serve` for these options, reporting on descriptor
    /// `status_fd` (if any) and logging to `log` (if any); `cli::serve_options` reads them
    /// back. `rewind add` and `recover` start the daemon with them, a handover execs them.
    pub fn args(&self, status_fd: Option<RawFd>, log: Option<&Path>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["__serve".into(), self.image.clone().into()];
        let mut option = |name: &str, value: OsString| {
            args.push(name.into());
            args.push(value);
        };
        option("--queues", self.queues.to_string().into());
        option("--depth", self.depth.to_string().into());
        if let Some(fd) = status_fd {
            option("--status-fd", fd.to_string().into());
        }
        if let Some(log) = log {
            option("--log", log.into());
        }
        option("--idle", self.idle_secs.to_string().into());
        option("--coalesce", self.coalesce_ms.to_string().into());
        option("--on-crash", self.on_crash.name().into());
        if let Some(path) = self.data_path {
            option("--data-path", path.name().into());
        }
        if let Some(id) = self.id {
            option("--number", id.to_string().into());
        }
        if let Some(at) = self.read_only_at {
            option("--read-only-at", at.to_string().into());
        }
        if self.recover {
            args.push("--recover".into());
        }
        args
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

/// Opens the volume, serves it until the device is stopped, and closes it whatever happened.
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
    let (volume, direct_io) = open_volume(opts)?;
    let volume = Arc::new(volume);
    // Whatever happened while serving, the volume is closed cleanly if it can be: the
    // device is gone by the time serve_volume returns. A volume opened read-only has
    // nothing to close.
    let served = serve_volume(opts, reporter, signals, &volume, direct_io);
    let closed = match opts.read_only_at {
        Some(_) => Ok(()),
        None => close_volume(volume, &image_text),
    };
    match (served, closed) {
        (Err(e), Err(c)) => {
            // Only the first error reaches `main`; the log keeps the second.
            log::error!("{c:#}");
            Err(e)
        }
        (served, closed) => served.and(closed),
    }
}

/// Opens, locks and recovers the image; also says whether its data path is `O_DIRECT`.
fn open_volume(opts: &ServeOptions) -> Result<(Volume<FileStore>, bool)> {
    let image_text = opts.image.display().to_string();
    let store = open_image(opts)?;
    let direct_io = store.direct_io();
    let started = Instant::now();
    let host = crate::host::this_host();
    let volume = if opts.read_only_at.is_some() {
        // The journal a crash left is replayed in memory only: the image is not written.
        Volume::open_read_only(store, &host)
    } else {
        log_stale_owner(&store, &image_text);
        Volume::open(store, &host)
    }
    .with_context(|| format!("opening the rewind image {image_text}"))?;
    log::info!(
        "opened {image_text} in {:.1?}: {}; data path {}",
        started.elapsed(),
        describe_layout(volume.layout()),
        if direct_io { "O_DIRECT" } else { "buffered" }
    );
    Ok((volume, direct_io))
}

/// Opens and locks the image. A killed daemon's lock goes only when the kernel has torn
/// down its io_uring rings, which can outlive the process by a moment: recovery waits for it.
fn open_image(opts: &ServeOptions) -> Result<FileStore> {
    // A read-only daemon may follow a `kill -9` of the image's daemon as closely.
    let wait = if opts.recover || opts.read_only_at.is_some() {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + wait;
    loop {
        let opened = match opts.read_only_at {
            Some(_) => FileStore::open_read_only(&opts.image),
            None => FileStore::open(&opts.image),
        };
        match opened {
            Err(BackingError::InUse { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

/// The files of a pool, for `rewind stats`; none for an image of one file.
fn pool_files(store: &FileStore) -> Vec<PoolFileRecord> {
    let files = store.files();
    if files.len() < 2 {
        return Vec::new();
    }
    files
        .into_iter()
        .map(|f| PoolFileRecord {
            path: f.path.display().to_string(),
            block_device: f.kind == BackingKind::BlockDevice,
            bytes: f.bytes,
        })
        .collect()
}

/// Says so when the image was left open by a daemon that is gone: this one holds the lock
/// now, so that owner no longer runs, and `Volume::open` replays its journal.
fn log_stale_owner(store: &FileStore, image: &str) {
    let Ok(sb) = rewind_history::read_superblock(store) else {
        // Volume::open reports a bad superblock properly.
        return;
    };
    if sb.clean.get() != 0 {
        return;
    }
    let owner = sb.owner().map_or("pid unknown".to_string(), |(pid, host)| {
        describe_owner(pid, &host)
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
    // Deletes the device when dropped (libublk's handle for an added device does), after
    // the runtime files below are gone: the id is free for a new device after that.
    let device = Device::add_or_recover(opts)?;
    // Before the queues start: what a completed write must survive follows from whether
    // the device outlives this daemon.
    volume.set_durability(device.on_crash.durability());
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_thread(signals, device.id, stop.clone())?;
    paths::ensure_run_dir().with_context(|| format!("creating {}", paths::RUN_DIR))?;
    let socket = paths::socket_path(device.id);
    let listener = control::bind(&socket)
        .with_context(|| format!("binding the control socket {}", socket.display()))?;
    let socket_guard = RemoveOnDrop(socket);
    let pacer = start_pacer(opts);
    let target_data = device.target_data(opts, direct_io);
    let views = Views::new(device.id, target_data.clone());
    spawn_notice_thread(Arc::downgrade(volume), Arc::downgrade(&views))?;
    let handover = Arc::new(device.handover(opts, stop.clone()));
    let answers = Answers::new(
        volume,
        pacer.clone(),
        views.clone(),
        device.fixed_stats(opts, volume, direct_io),
        handover.clone(),
    );
    control::start_server(listener, move |request| answers.reply(request))
        .context("starting the control socket thread")?;
    let pid_guard = write_pid_file(device.id, opts)?;
    let (target, ticker) = match opts.read_only_at {
        // A past safe point, read only: no flusher, no safe points of the pacer's.
        Some(at) => {
            let view = volume
                .open_view(at)
                .with_context(|| format!("serving safe point {at} read-only"))?;
            let target = Target::new(volume.clone(), pacer.clone(), None, device.nr_queues);
            (Arc::new(target.with_view(view)), None)
        }
        None => {
            let flusher =
                Flusher::start(Arc::downgrade(volume)).context("starting the flusher thread")?;
            let target = Target::new(
                volume.clone(),
                pacer.clone(),
                Some(flusher),
                device.nr_queues,
            );
            // Stopped (and joined) when dropped, on every way out below.
            let ticker = pacer
                .start_ticker(Arc::downgrade(volume))
                .context("starting the safe point ticker")?;
            (Arc::new(target), Some(ticker))
        }
    };
    let watchdog = notify::Watchdog::start(Arc::downgrade(volume));
    let run = device.run(
        &target,
        &target_data,
        reporter,
        &stop,
        &handover,
        opts.recover,
    );
    handover.set_serving(false);
    watchdog.stopping();
    // The views go with the live device: they hold the volume.
    views.close_all();
    drop(ticker);
    drop(target);
    // Before the device goes: a new device may get this id, and with it these paths.
    drop(pid_guard);
    drop(socket_guard);
    device.remove(run, opts.recover, reporter)
}

/// The pacer for `opts`' `--idle` and `--coalesce`, after saying in the log what they make.
fn start_pacer(opts: &ServeOptions) -> Arc<Pacer> {
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
    pacer
}

/// Writes the pid file of device `id`'s daemon; the guard removes it.
fn write_pid_file(id: u32, opts: &ServeOptions) -> Result<RemoveOnDrop> {
    let path = paths::pid_path(id);
    let content = PidFile {
        pid: std::process::id(),
        image: opts.image.display().to_string(),
        log: opts.log.as_ref().map(|p| p.display().to_string()),
    };
    let text = serde_json::to_string(&content)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(RemoveOnDrop(path))
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

/// The ublk device this daemon serves.
struct Device {
    /// Deletes the device when dropped if it was added here (not if it was taken over).
    ctrl: UblkCtrl,
    id: u32,
    nr_queues: u16,
    depth: u16,
    /// What the kernel does with its I/O if this daemon dies, from the device's flags.
    on_crash: OnCrash,
    /// How request data moves, from the device's flags.
    data_path: DataPath,
    /// `/dev/ublkbN`.
    path: String,
}

impl Device {
    /// Adds the device `opts` asks for, or takes over the quiesced device `opts.id` when
    /// recovering.
    fn add_or_recover(opts: &ServeOptions) -> Result<Device> {
        let ctrl = if opts.recover {
            let Some(id) = opts.id else {
                anyhow::bail!("recovering a device needs its id");
            };
            ublk::recover_device(id)?
        } else {
            let data_path = ublk::choose_data_path(opts.data_path)?;
            ublk::add_device(opts.id, opts.queues, opts.depth, opts.on_crash, data_path)?
        };
        let info = ctrl.dev_info();
        // The kernel's flags decide, for a device taken over as for a new one.
        let on_crash = if info.flags & u64::from(libublk::sys::UBLK_F_USER_RECOVERY) != 0 {
            OnCrash::Queue
        } else {
            OnCrash::Stop
        };
        let device = Device {
            id: info.dev_id,
            nr_queues: info.nr_hw_queues,
            depth: info.queue_depth,
            on_crash,
            data_path: DataPath::of_device_flags(info.flags),
            path: paths::device_path(info.dev_id).display().to_string(),
            ctrl,
        };
        log::info!(
            "{} ublk device {}: {} queues of depth {}, {}; if this daemon dies: {}",
            if opts.recover { "recovering" } else { "added" },
            device.id,
            device.nr_queues,
            info.queue_depth,
            match device.data_path {
                DataPath::ZeroCopy => "zero copy (the kernel's request pages go to the image)",
                DataPath::Copy => "copying request data through the daemon's buffers",
            },
            match on_crash {
                OnCrash::Queue => {
                    "I/O waits for `rewind recover` (a write completes once its journal \
                     record is written, so none that completed is lost)"
                }
                OnCrash::Stop => {
                    "the device fails its I/O and stops (a write completes before its journal \
                     record is written: the writes since the last flush are lost)"
                }
            }
        );
        Ok(device)
    }

    /// What the device's exported json records for `rewind list`, `rewind del` and
    /// `rewind recover`.
    fn target_data(&self, opts: &ServeOptions, direct_io: bool) -> TargetData {
        TargetData {
            image: opts.image.display().to_string(),
            direct_io,
            socket: paths::socket_path(self.id).display().to_string(),
            log: opts.log.as_ref().map(|p| p.display().to_string()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            on_crash: Some(self.on_crash),
            idle_secs: Some(opts.idle_secs),
            coalesce_ms: Some(opts.coalesce_ms),
            view: None,
            data_path: Some(self.data_path),
            read_only_at: opts.read_only_at,
        }
    }

    /// What handing this device to another binary execs: `rewind __serve --recover` of it
    /// with these options, the kernel's queues and depth, and this daemon's log.
    fn handover(&self, opts: &ServeOptions, stop: Arc<AtomicBool>) -> Handover {
        let refused = (self.on_crash != OnCrash::Queue).then(|| {
            format!(
                "{} was added with --on-crash {}: without this daemon its I/O would fail; \
                 `rewind del -n {}` and `rewind add` it again with the new binary",
                self.path,
                self.on_crash.name(),
                self.id
            )
        });
        let takeover = ServeOptions {
            id: Some(self.id),
            queues: self.nr_queues,
            depth: self.depth,
            on_crash: self.on_crash,
            recover: true,
            data_path: Some(self.data_path),
            ..opts.clone()
        };
        Handover::new(takeover.args(None, opts.log.as_deref()), refused, stop)
    }

    /// The device's figures that do not change while it is served, with the engine's as
    /// they stand now (each answer takes those afresh: `control::device_stats`).
    fn fixed_stats(
        &self,
        opts: &ServeOptions,
        volume: &Volume<FileStore>,
        direct_io: bool,
    ) -> DeviceStats {
        DeviceStats {
            id: self.id,
            device: self.path.clone(),
            image: opts.image.display().to_string(),
            pid: std::process::id(),
            direct_io,
            log: opts.log.as_ref().map(|p| p.display().to_string()),
            page_size: PAGE_SIZE,
            device_bytes: volume.layout().device_bytes(),
            engine: volume.stats(),
            oldest_safe_point_time_ns: None,
            newest_safe_point_time_ns: None,
            idle_secs: opts.idle_secs,
            coalesce_ms: opts.coalesce_ms,
            pinned: Vec::new(),
            views: Vec::new(),
            image_bytes: Some(volume.store().files_bytes()),
            image_allocated_bytes: None,
            host_full_errors: 0,
            image_data_bytes_written: None,
            image_metadata_bytes_written: None,
            data_path: Some(self.data_path),
            mirror: None,
            pool: pool_files(volume.store()),
            read_only_at: opts.read_only_at,
        }
    }

    /// Serves the device with `target` until it is stopped: starts its queues, and once the
    /// kernel reports it live tells `reporter` (and stops it at once if a stop signal came
    /// meanwhile, per `stop`).
    fn run(
        &self,
        target: &Arc<Target>,
        data: &TargetData,
        reporter: &Arc<Reporter>,
        stop: &Arc<AtomicBool>,
        handover: &Arc<Handover>,
        recovering: bool,
    ) -> Result<()> {
        let target_json = serde_json::json!({ TARGET_DATA_KEY: data });
        let queue_target = target.clone();
        let live_reporter = reporter.clone();
        let live_stop = stop.clone();
        let live_device = self.path.clone();
        let live_handover = handover.clone();
        let process_start = started_at();
        let run = self.ctrl.run_target(
            |dev: &mut UblkDev| target.init(dev, target_json),
            move |qid: u16, dev: &UblkDev| queue_target.serve_queue(qid, dev),
            move |ctrl: &UblkCtrl| {
                log::info!(
                    "{live_device} is live{}",
                    if recovering {
                        format!(
                            " again: recovered {:.1?} after this daemon started; queued I/O \
                             reissued",
                            process_start.elapsed()
                        )
                    } else {
                        String::new()
                    }
                );
                live_reporter.live(&live_device);
                // The status pipe is closed now: nothing but the log descriptors survives
                // an exec.
                live_handover.set_serving(true);
                if live_stop.load(Ordering::SeqCst) {
                    // A stop signal came while the device was starting, when STOP_DEV had
                    // no effect yet: stop it now.
                    log::info!("stopping {live_device}: a stop signal came during start");
                    if let Err(e) = ctrl.kill_dev() {
                        log::error!("stopping {live_device}: {}", describe_ublk_error(&e));
                    }
                }
            },
        );
        let device = &self.path;
        run.map(|_| ()).map_err(|e| match target.setup_failure() {
            Some(why) => anyhow::anyhow!("starting {device}: {why}"),
            None => anyhow::anyhow!("starting {device}: {}", describe_ublk_error(&e)),
        })
    }

    /// Deletes the device once `run` ended, unless recovering it failed (it then stays
    /// quiesced for another try); passes `run` on.
    fn remove(self, run: Result<()>, recovered: bool, reporter: &Reporter) -> Result<()> {
        let device = &self.path;
        match &run {
            Ok(()) => {
                log::info!("{device} stopped");
                // A handle that took over a device does not delete it when dropped.
                if recovered {
                    if let Err(e) = self.ctrl.del_dev() {
                        log::warn!("deleting {device}: {}", describe_ublk_error(&e));
                    }
                }
            }
            Err(e) if recovered => {
                reporter.failed(&format!("{e:#}"));
                // Not deleted: its queued I/O would fail. It stays quiesced once this
                // process is gone, for another `rewind recover` (or `rewind del`).
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
                if let Err(e) = self.ctrl.del_dev_async() {
                    log::warn!(
                        "deleting {device} after the failed start: {}",
                        describe_ublk_error(&e)
                    );
                }
            }
        }
        let id = self.id;
        drop(self);
        log::info!("deleted ublk device {id}");
        run
    }
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

/// When this daemon started serving, as an `Instant` (the first call, made first thing in
/// `serve`): the log of a recovery says how long it took from there.
fn started_at() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
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
