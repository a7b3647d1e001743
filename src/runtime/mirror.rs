//! `rewind mirror`: a replica of a served device, a raw image file or block device, advanced
//! from one safe point to a newer one at each step.
//!
//! A step fetches from the daemon an archive of what changed between the safe point the
//! replica holds and the newest (incremental), or of the whole newest safe point when the
//! replica holds none still in the window (full), into a log file beside the mirror's state;
//! the log is synced, the state records that the replica is being brought to that safe
//! point, and only then is the log applied to the replica (each changed page written once,
//! pages that read as zeros zeroed), the replica synced, and the state moved on. A mirror
//! killed mid-apply applies the same log again when it starts: writing the newest content of
//! a page twice is harmless. A mirror killed before the state records the apply, or an
//! export cut short by the daemon's end, leaves the replica as it was.
//!
//! So the replica is a byte-for-byte image of the safe point the state names, except while
//! an apply runs or was cut short by a crash, until the next `rewind mirror` of it finishes
//! that apply (the state says `applying`, and `rewind stats` shows it).
//!
//! A replica that is itself a rewind device on this machine (`/dev/ublkbN` of another rewind
//! image) gets more: after each apply is synced, a safe point on it labelled `mirror-<id>`
//! (the source's safe point). Each such safe point is a complete step, whatever crashed:
//! `rewind view -n N --at mirror-<id>` serves one read-only. While a step is applied, the
//! replica's history area holds what it overwrites: a step larger than that area retires
//! the earlier marks (the mirror warns), so give the replica a history area as large as the
//! largest step (its size, for full rewrites) where that matters.
//!
//! While it runs, the mirror writes its status (the safe point, the lag) to a file in the
//! runtime directory, which `rewind stats` and `rewind list --json` show.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rewind_archive::{restore, Base, Directory, ExportOptions};
use rewind_history::{Clock, SafePointId, SystemClock, PAGE_SIZE};
use serde::{Deserialize, Serialize};

use crate::daemon::backing::block_device_len;
use crate::ipc::control::{ControlRequest, MirrorRecord, Response, SafePointRecord};
use crate::ipc::paths;
use crate::runtime::client::ask;
use crate::runtime::export::{self, ImageSink};
use crate::runtime::registry;

/// How long asking the daemon for its window (or a replica's daemon for a safe point) may
/// take.
const WINDOW_TIMEOUT: Duration = Duration::from_secs(30);

/// What the mirror's state file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorState {
    /// The uuid of the image mirrored (hex), once the first archive named it.
    pub source_uuid: Option<String>,
    /// The device's size in bytes.
    pub device_bytes: u64,
    /// The replica this state describes; a different file or device at the target path is
    /// not trusted to hold anything (the next step rewrites it whole).
    #[serde(default)]
    pub target: Option<TargetId>,
    /// The safe point the replica holds.
    pub at: Option<SafePointId>,
    /// Its time, ns since the Unix epoch.
    pub at_time_ns: Option<u64>,
    /// An apply under way (or cut short): the replica holds a mix until it is finished.
    pub applying: Option<Applying>,
}

/// An apply the state records before it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applying {
    /// The safe point the log brings the replica to.
    pub to: SafePointId,
    /// Its time, ns since the Unix epoch.
    pub to_time_ns: u64,
}

/// Which file or block device a replica is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetId {
    /// Its path, canonical.
    pub path: String,
    /// `st_dev` and `st_ino` of a file; `st_rdev` and 0 of a block device.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

impl TargetId {
    /// The identity of the file or device at `path`, if it exists.
    fn of(path: &Path) -> Option<TargetId> {
        let meta = std::fs::metadata(path).ok()?;
        let canonical = std::fs::canonicalize(path).ok()?;
        let (dev, ino) = if meta.file_type().is_block_device() {
            (meta.rdev(), 0)
        } else {
            (meta.dev(), meta.ino())
        };
        Some(TargetId {
            path: canonical.display().to_string(),
            dev,
            ino,
        })
    }
}

/// The history window of rewind device `id`, oldest first, from its daemon.
fn window_of(id: u32) -> Result<Vec<SafePointRecord>> {
    match ask("rewind mirror", id, &ControlRequest::Log, WINDOW_TIMEOUT)? {
        Ok(reply) => Ok(reply.safe_points.unwrap_or_default()),
        Err(why) => bail!(
            "reading the history of {}: {why}",
            paths::device_path(id).display()
        ),
    }
}

/// Refuses a replica that would destroy what it is: the mirrored device itself, or a
/// rewind image (served or not), which raw writes would ruin: its device is the target.
fn check_target(id: u32, target: &Path) -> Result<()> {
    if let Some(at) = registry::target_data(id).and_then(|d| d.read_only_at) {
        bail!(
            "{} serves safe point {at} of its image read-only: there is nothing newer to \
             mirror; `rewind import` or `rewind export` it instead",
            paths::device_path(id).display()
        );
    }
    if rewind_device_of(target) == Some(id) {
        bail!(
            "{} is the device mirrored: a replica must be another file or device",
            target.display()
        );
    }
    if let Some(served) = registry::device_serving(target) {
        bail!(
            "{} is the image of {}: a raw replica would overwrite it; mirror onto that device \
             to keep it a rewind image (each step then a safe point on it)",
            target.display(),
            paths::device_path(served).display()
        );
    }
    let mut head = [0u8; 8];
    let holds_rewind = File::open(target)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0))
        .is_ok_and(|()| head == rewind_history::format::SUPER_MAGIC);
    if holds_rewind && rewind_device_of(target).is_none() {
        bail!(
            "{} holds a rewind image: a raw replica would overwrite it; serve it (`rewind add`) \
             and mirror onto its device, or give another target",
            target.display()
        );
    }
    Ok(())
}

/// The id of the rewind device on this machine (not a view, not one served read-only)
/// that `path` names, if it names one.
fn rewind_device_of(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let id = registry::ublk_ids().into_iter().find(|id| {
        std::fs::metadata(paths::device_path(*id)).is_ok_and(|m| m.rdev() == meta.rdev())
    })?;
    let data = registry::target_data(id)?;
    (data.view.is_none() && data.read_only_at.is_none()).then_some(id)
}

/// How a mirror runs.
pub struct MirrorOptions {
    /// The replica: a raw image file (made at the device's size if missing) or a block
    /// device at least as large.
    pub target: PathBuf,
    /// The state file; its log is beside it (`.log`).
    pub state: PathBuf,
    /// Bytes per second read from the device at most (`None`: as fast as it goes).
    pub rate: Option<u64>,
}

/// What one step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The replica holds the newest safe point already.
    UpToDate(SafePointId),
    /// It was brought to a newer safe point.
    Advanced {
        /// The safe point.
        to: SafePointId,
        /// Bytes of archive fetched (0: an apply cut short was finished).
        bytes: u64,
        /// It held no safe point still in the window: every page was fetched.
        full: bool,
    },
}

/// A mirror of device `id`.
pub struct Mirror {
    id: u32,
    opts: MirrorOptions,
    state: MirrorState,
    newest: Option<SafePointRecord>,
    /// Held while the mirror lives: two mirrors never share a state file and its log.
    _lock: File,
}

impl Mirror {
    /// The mirror of device `id` into `opts.target`, resuming from its state file if it has
    /// one.
    pub fn open(id: u32, opts: MirrorOptions) -> Result<Mirror> {
        check_target(id, &opts.target)?;
        let lock = lock_beside(&opts.state)?;
        let state = match std::fs::read(&opts.state) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading the mirror state {}", opts.state.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MirrorState::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", opts.state.display())),
        };
        Ok(Mirror {
            id,
            opts,
            state,
            newest: None,
            _lock: lock,
        })
    }

    /// The state as it stands.
    pub fn state(&self) -> &MirrorState {
        &self.state
    }

    /// The log of the apply the state records.
    fn log_path(&self) -> PathBuf {
        let mut p = self.opts.state.clone().into_os_string();
        p.push(".log");
        PathBuf::from(p)
    }

    /// One step: finishes an apply cut short, or brings the replica to the device's newest
    /// safe point.
    pub fn step(&mut self) -> Result<Step> {
        if self.state.applying.is_some() {
            return self.finish_apply(0, false).or_else(|e| self.give_up_log(e));
        }
        let window = self.window()?;
        let Some(newest) = window.last().cloned() else {
            bail!(
                "the history window of {} is empty",
                paths::device_path(self.id).display()
            );
        };
        self.newest = Some(newest.clone());
        self.forget_a_replaced_target()?;
        // Safe points are named by id and time: a copy of the image that went on its own
        // reuses ids.
        let held = |s: &SafePointRecord| {
            Some(s.id) == self.state.at && Some(s.time_ns) == self.state.at_time_ns
        };
        if held(&newest) {
            return Ok(Step::UpToDate(newest.id));
        }
        let from = window.iter().find(|s| held(s)).map(|s| s.id);
        let options = ExportOptions {
            from: from.or(Some(newest.id)),
            to: Some(newest.id),
            incremental: from.is_some(),
            net: true,
        };
        let (bytes, d) = self.fetch(options)?;
        let to = d.safe_points.last().expect("an archive holds a safe point");
        let mut next = self.state.clone();
        next.applying = Some(Applying {
            to: to.id,
            to_time_ns: to.time_ns,
        });
        next.source_uuid = Some(format!("{:016x}", d.source_uuid));
        next.device_bytes = d.logical_pages * PAGE_SIZE;
        if from.is_none() {
            next.at = None;
            next.at_time_ns = None;
        }
        self.commit_state(next)?;
        self.finish_apply(bytes, from.is_none())
            .or_else(|e| self.give_up_log(e))
    }

    /// If the replica the state describes is no longer at the target path (deleted,
    /// replaced, another device), the state no longer says what the target holds: the
    /// next step rewrites it whole.
    fn forget_a_replaced_target(&mut self) -> Result<()> {
        if self.state.at.is_none() || TargetId::of(&self.opts.target) == self.state.target {
            return Ok(());
        }
        log::warn!(
            "{} is not the replica the mirror state {} describes: rewriting it whole",
            self.opts.target.display(),
            self.opts.state.display()
        );
        let mut next = self.state.clone();
        next.at = None;
        next.at_time_ns = None;
        self.commit_state(next)
    }

    /// Saves `next` and only then makes it the state: a failed save leaves the state in
    /// memory as it is on disk.
    fn commit_state(&mut self, next: MirrorState) -> Result<()> {
        self.save(&next)?;
        self.state = next;
        Ok(())
    }

    /// The device's history window, oldest first, from its daemon.
    fn window(&self) -> Result<Vec<SafePointRecord>> {
        window_of(self.id)
    }

    /// Warns when the step in `log` may overwrite more of a rewind device replica than its
    /// history area holds: its earlier `mirror-` safe points would then be retired while
    /// the step is applied, leaving none whole until it ends.
    fn warn_if_step_outgrows_replica(&self, log: &Path) {
        let Some(replica) = rewind_device_of(&self.opts.target) else {
            return;
        };
        let step = std::fs::metadata(log).map_or(0, |m| m.len());
        let request = ControlRequest::Stats;
        let history = match ask("rewind mirror", replica, &request, WINDOW_TIMEOUT) {
            Ok(Ok(Response { stats: Some(s), .. })) => {
                s.engine.history_capacity_pages * s.page_size
            }
            _ => return,
        };
        if step > history {
            log::warn!(
                "this step ({}) may overwrite more of the replica {} than its history area \
                 holds ({}): until it is applied, the replica may keep no whole mirror- safe \
                 point",
                crate::size::human(step),
                paths::device_path(replica).display(),
                crate::size::human(history)
            );
        }
    }

    /// In a replica that is a rewind device, marks the apply to `to` that was just synced:
    /// a safe point labelled `mirror-<to>`, unless the replica's newest safe point is that
    /// one already (an apply finished again after a crash between the mark and the state's
    /// move). A label `mirror-<to>` on an older safe point names another step (of another
    /// source, or of a copy whose ids went on their own): refused.
    fn mark_replica(&self, to: SafePointId) -> Result<()> {
        let Some(replica) = rewind_device_of(&self.opts.target) else {
            return Ok(());
        };
        let label = format!("mirror-{to}");
        let window = window_of(replica)?;
        if let Some(i) = window
            .iter()
            .position(|s| s.label.as_deref() == Some(label.as_str()))
        {
            if i + 1 == window.len() {
                return Ok(());
            }
            bail!(
                "the replica {} has a safe point labelled {label} that is not its newest: it \
                 marks another step than this one (another source's?); mirror onto another \
                 replica",
                paths::device_path(replica).display()
            );
        }
        let request = ControlRequest::SafePoint {
            label: Some(label.clone()),
        };
        match ask("rewind mirror", replica, &request, WINDOW_TIMEOUT)? {
            Ok(_) => Ok(()),
            Err(why) => bail!(
                "marking safe point {label} on the replica {}: {why}",
                paths::device_path(replica).display()
            ),
        }
    }

    /// After an apply failed: if the log itself is unusable (gone, truncated, damaged), the
    /// replica cannot be finished from it, so the next step rewrites it whole; a failure
    /// to write the replica is left to the next step to try again.
    fn give_up_log(&mut self, e: anyhow::Error) -> Result<Step> {
        let log_unusable = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<rewind_archive::Error>(),
                Some(
                    rewind_archive::Error::Truncated { .. }
                        | rewind_archive::Error::Corrupt(_)
                        | rewind_archive::Error::NotArchive
                        | rewind_archive::Error::NewerVersion(_)
                        | rewind_archive::Error::Refused(_)
                )
            )
        }) || !self.log_path().exists();
        if log_unusable {
            let mut next = self.state.clone();
            next.applying = None;
            next.at = None;
            next.at_time_ns = None;
            self.commit_state(next)?;
            let _ = std::fs::remove_file(self.log_path());
            return Err(e.context(
                "the log of the step under way is unusable: the next step rewrites the replica whole",
            ));
        }
        Err(e)
    }

    /// Fetches the archive `options` names into the log, synced; returns its size and
    /// directory. A partial log is removed.
    fn fetch(&mut self, options: ExportOptions) -> Result<(u64, Directory)> {
        let log = self.log_path();
        let fetched = self.fetch_into(&log, options);
        if fetched.is_err() {
            let _ = std::fs::remove_file(&log);
        }
        fetched
    }

    fn fetch_into(&self, log: &Path, options: ExportOptions) -> Result<(u64, Directory)> {
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        let expect = self.state.source_uuid.clone();
        let (target, device) = (self.opts.target.clone(), paths::device_path(self.id));
        // Before any page is fetched: the same image as before.
        let check = move |d: &Directory| -> Result<()> {
            let uuid = format!("{:016x}", d.source_uuid);
            match &expect {
                Some(u) if *u != uuid => Err(anyhow::Error::new(NotThisImage(format!(
                    "{} mirrors image {u}, but {} now serves image {uuid}: give another --state",
                    target.display(),
                    device.display()
                )))),
                _ => Ok(()),
            }
        };
        let mut limit = RateLimit::new(self.opts.rate);
        let d = export::fetch(
            "rewind mirror",
            self.id,
            options,
            &mut w,
            &check,
            &mut |done, _| limit.pace(done),
        )?;
        w.flush().context("writing the mirror's log")?;
        drop(w);
        file.sync_all().context("syncing the mirror's log")?;
        Ok((d.total_bytes(), d))
    }

    /// Applies the log the state records to the replica, syncs it and moves the state on.
    fn finish_apply(&mut self, bytes: u64, full: bool) -> Result<Step> {
        let applying = self.state.applying.clone().expect("an apply is recorded");
        let log = self.log_path();
        let file = File::open(&log).with_context(|| {
            format!(
                "the replica is being brought to safe point {} but its log {} cannot be opened",
                applying.to,
                log.display()
            )
        })?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let d = Directory::read(&mut r).with_context(|| format!("reading {}", log.display()))?;
        // An incremental log must continue exactly what the replica holds.
        let base = match (d.base, self.state.at, self.state.at_time_ns) {
            (None, ..) => Base::Empty { zero_rest: true },
            (Some(_), Some(id), Some(time_ns)) => Base::Holding { id, time_ns },
            (Some(b), ..) => {
                return Err(rewind_archive::Error::Refused(format!(
                    "the log continues safe point {b}, but the state says the replica holds none"
                ))
                .into())
            }
        };
        self.warn_if_step_outgrows_replica(&log);
        let mut replica = self.open_target(d.logical_pages * PAGE_SIZE, base)?;
        restore(&mut [(d, r)], applying.to, base, &mut replica, &mut |_| {}).with_context(
            || {
                format!(
                    "applying {} to {}",
                    log.display(),
                    self.opts.target.display()
                )
            },
        )?;
        replica.file.sync_all().context("syncing the replica")?;
        self.mark_replica(applying.to)?;
        let mut next = self.state.clone();
        next.at = Some(applying.to);
        next.at_time_ns = Some(applying.to_time_ns);
        next.applying = None;
        next.target = TargetId::of(&self.opts.target);
        self.commit_state(next)?;
        let _ = std::fs::remove_file(&log);
        Ok(Step::Advanced {
            to: applying.to,
            bytes,
            full,
        })
    }

    /// The replica, checked to hold a device of `bytes`: a file is made (for a full
    /// apply, `Base::Empty`) or sized to it; a block device must be at least as large.
    fn open_target(&self, bytes: u64, base: Base) -> Result<ImageSink> {
        let t = &self.opts.target;
        let exists = t.exists();
        if !exists && base != (Base::Empty { zero_rest: true }) {
            return Err(rewind_archive::Error::Refused(format!(
                "{} is gone: the replica is rewritten whole",
                t.display()
            ))
            .into());
        }
        let file = OpenOptions::new()
            .write(true)
            .create(!exists)
            .truncate(false)
            .open(t)
            .with_context(|| format!("opening {}", t.display()))?;
        let meta = file.metadata()?;
        if meta.file_type().is_block_device() {
            let have = block_device_len(&file)?;
            if have < bytes {
                bail!("{} holds {have} bytes, the device {bytes}", t.display());
            }
        } else if meta.len() != bytes {
            // A byte-for-byte image of the device: no more, no less.
            file.set_len(bytes)
                .with_context(|| format!("sizing {}", t.display()))?;
        }
        if !exists {
            // The new file's name must be durable before the state says it holds anything.
            sync_dir_of(t)?;
        }
        Ok(ImageSink { file, zero: true })
    }

    /// Writes `state` to the state file: a new file, synced, renamed over the old one, and
    /// the rename synced.
    fn save(&self, state: &MirrorState) -> Result<()> {
        let path = &self.opts.state;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_vec_pretty(state)?;
        let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        (&f).write_all(&text)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        sync_dir_of(path)
    }

    /// The status `rewind stats` shows, as of now.
    pub fn status(&self) -> MirrorRecord {
        let now = SystemClock.now_ns();
        let newest = self.newest.as_ref();
        MirrorRecord {
            pid: std::process::id(),
            target: self.opts.target.display().to_string(),
            at: self.state.at,
            at_time_ns: self.state.at_time_ns,
            applying: self.state.applying.as_ref().map(|a| a.to),
            newest: newest.map(|n| n.id),
            lag_safe_points: match (newest, self.state.at) {
                (Some(n), Some(at)) => n.id.0.saturating_sub(at.0),
                (Some(n), None) => n.id.0 + 1,
                _ => 0,
            },
            // How much older the replica's state is than the device's newest.
            lag_ms: match (newest, self.state.at_time_ns) {
                (Some(n), Some(t)) => n.time_ns.saturating_sub(t) / 1_000_000,
                (Some(n), None) => now.saturating_sub(n.time_ns) / 1_000_000,
                _ => 0,
            },
            updated_ns: now,
        }
    }

    /// Writes the status file of device `id`'s mirror.
    pub fn publish(&self) -> Result<()> {
        paths::ensure_run_dir()?;
        let path = paths::mirror_status_path(self.id);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".new");
        std::fs::write(&tmp, serde_json::to_vec(&self.status())?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Removes the status file (the mirror stops).
    pub fn unpublish(&self) {
        let _ = std::fs::remove_file(paths::mirror_status_path(self.id));
    }
}

/// Keeps the bytes read from the device to a rate: before each read, sleeps as long as
/// the bytes read so far need. The clock starts at the first call (after the directory:
/// the rate is for pages), and each read is at most `CHUNK` bytes, so no sleep is long
/// enough for the daemon to give up on a stalled client.
struct RateLimit {
    rate: Option<u64>,
    start: Option<(Instant, u64)>,
}

impl RateLimit {
    fn new(rate: Option<u64>) -> RateLimit {
        RateLimit { rate, start: None }
    }

    fn pace(&mut self, done: u64) {
        let Some(rate) = self.rate else { return };
        let (t0, d0) = *self.start.get_or_insert((Instant::now(), done));
        let due = Duration::from_secs_f64(done.saturating_sub(d0) as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// The smallest `--rate`: at 1 MiB a read (`runtime::export`), a sleep between two reads
/// stays under 16 s, well within what the daemon waits for a client.
pub const MIN_RATE: u64 = 64 << 10;

/// Why a mirror must not go on: the device now serves another image.
#[derive(Debug)]
pub struct NotThisImage(String);

impl std::fmt::Display for NotThisImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotThisImage {}

/// Takes the lock beside the state file `state` (`STATE.lock`), held while the returned
/// file is open; refuses if another mirror holds it.
fn lock_beside(state: &Path) -> Result<File> {
    let mut p = state.to_path_buf().into_os_string();
    p.push(".lock");
    let path = PathBuf::from(p);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another rewind mirror uses the state {} (its lock {} is held)",
            state.display(),
            path.display()
        );
    }
    Ok(file)
}

/// Syncs the directory `path` is in (`.` for a bare name), so that a rename or a new file
/// there is durable.
fn sync_dir_of(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}

/// The status of device `id`'s mirror, if one runs.
pub fn running_status(id: u32) -> Option<MirrorRecord> {
    let bytes = std::fs::read(paths::mirror_status_path(id)).ok()?;
    let s: MirrorRecord = serde_json::from_slice(&bytes).ok()?;
    registry::process_alive(i32::try_from(s.pid).ok()?).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw replica written over a rewind image would ruin it: refused, naming what to do.
    /// Any other file (a raw replica, a new one) is taken.
    #[test]
    fn a_rewind_image_is_no_raw_replica() {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("a.img");
        drop(crate::daemon::backing::formatted_image(&image, 4 << 20));
        let e = check_target(u32::MAX, &image).unwrap_err().to_string();
        assert!(e.contains("holds a rewind image"), "{e}");
        let raw = dir.path().join("replica.img");
        std::fs::write(&raw, vec![0x5a; 8192]).unwrap();
        check_target(u32::MAX, &raw).expect("a raw replica");
        check_target(u32::MAX, &dir.path().join("new.img")).expect("a new replica");
    }
}
