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
//! While it runs, the mirror writes its status (the safe point, the lag) to a file in the
//! runtime directory, which `rewind stats` and `rewind list --json` show.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rewind_archive::{restore, Base, Directory, ExportOptions, PageSink};
use rewind_history::{Clock, SafePointId, SystemClock, PAGE_SIZE};
use serde::{Deserialize, Serialize};

use crate::daemon::backing::{block_device_len, zero_range};
use crate::ipc::control::{ControlRequest, MirrorRecord, SafePointRecord};
use crate::ipc::paths;
use crate::runtime::client::ask;
use crate::runtime::export;

/// How long asking the daemon for its window may take.
const WINDOW_TIMEOUT: Duration = Duration::from_secs(30);

/// What the mirror's state file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorState {
    /// The uuid of the image mirrored (hex), once the first archive named it.
    pub source_uuid: Option<String>,
    /// The device's size in bytes.
    pub device_bytes: u64,
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
}

impl Mirror {
    /// The mirror of device `id` into `opts.target`, resuming from its state file if it has
    /// one.
    pub fn open(id: u32, opts: MirrorOptions) -> Result<Mirror> {
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
        if self.state.at == Some(newest.id) {
            return Ok(Step::UpToDate(newest.id));
        }
        let from = self
            .state
            .at
            .filter(|at| window.iter().any(|s| s.id == *at));
        let options = ExportOptions {
            from: from.or(Some(newest.id)),
            to: Some(newest.id),
            incremental: from.is_some(),
        };
        let bytes = self.fetch(options)?;
        self.state.applying = Some(Applying {
            to: newest.id,
            to_time_ns: newest.time_ns,
        });
        if from.is_none() {
            self.state.at = None;
            self.state.at_time_ns = None;
        }
        self.save()?;
        self.finish_apply(bytes, from.is_none())
    }

    /// The device's history window, oldest first, from its daemon.
    fn window(&self) -> Result<Vec<SafePointRecord>> {
        match ask(
            "rewind mirror",
            self.id,
            &ControlRequest::Log,
            WINDOW_TIMEOUT,
        )? {
            Ok(reply) => Ok(reply.safe_points.unwrap_or_default()),
            Err(why) => bail!(
                "reading the history of {}: {why}",
                paths::device_path(self.id).display()
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
            self.state.applying = None;
            self.state.at = None;
            self.state.at_time_ns = None;
            self.save()?;
            return Err(e.context("the log of the step under way is unusable: the next step rewrites the replica whole"));
        }
        Err(e)
    }

    /// Fetches the archive `options` names into the log, synced; returns its size.
    fn fetch(&mut self, options: ExportOptions) -> Result<u64> {
        let log = self.log_path();
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        let started = Instant::now();
        let rate = self.opts.rate;
        let d = export::fetch("rewind mirror", self.id, options, &mut w, &mut |done, _| {
            pace(rate, started, done)
        })?;
        w.flush().context("writing the mirror's log")?;
        drop(w);
        file.sync_all().context("syncing the mirror's log")?;
        let uuid = format!("{:016x}", d.source_uuid);
        match &self.state.source_uuid {
            Some(u) if *u != uuid => bail!(
                "{} mirrors image {u}, but {} now serves image {uuid}: give another --state",
                self.opts.target.display(),
                paths::device_path(self.id).display()
            ),
            _ => {}
        }
        self.state.source_uuid = Some(uuid);
        self.state.device_bytes = d.logical_pages * PAGE_SIZE;
        Ok(d.total_bytes())
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
                bail!("the log continues safe point {b}, but the state says the replica holds none")
            }
        };
        let mut replica = self.open_target(d.logical_pages * PAGE_SIZE)?;
        restore(&mut [(d, r)], applying.to, base, &mut replica, &mut |_| {}).with_context(
            || {
                format!(
                    "applying {} to {}",
                    log.display(),
                    self.opts.target.display()
                )
            },
        )?;
        replica.0.sync_all().context("syncing the replica")?;
        self.state.at = Some(applying.to);
        self.state.at_time_ns = Some(applying.to_time_ns);
        self.state.applying = None;
        self.save()?;
        let _ = std::fs::remove_file(&log);
        Ok(Step::Advanced {
            to: applying.to,
            bytes,
            full,
        })
    }

    /// The replica, checked to hold a device of `bytes`: a missing file is made that size.
    fn open_target(&self, bytes: u64) -> Result<Replica> {
        let t = &self.opts.target;
        let file = OpenOptions::new()
            .write(true)
            .create(!t.exists())
            .truncate(false)
            .open(t)
            .with_context(|| format!("opening {}", t.display()))?;
        let meta = file.metadata()?;
        let have = if meta.file_type().is_block_device() {
            block_device_len(&file)?
        } else {
            if meta.len() < bytes {
                file.set_len(bytes)
                    .with_context(|| format!("sizing {}", t.display()))?;
            }
            bytes
        };
        if have < bytes {
            bail!("{} holds {} bytes, the device {bytes}", t.display(), have);
        }
        Ok(Replica(file))
    }

    /// Writes the state file: a new file renamed over the old one, synced.
    fn save(&self) -> Result<()> {
        let path = &self.opts.state;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_vec_pretty(&self.state)?;
        let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        (&f).write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The status `rewind stats` shows, as of now.
    pub fn status(&self) -> MirrorRecord {
        let now = SystemClock.now_ns();
        let newest = self.newest.as_ref();
        MirrorRecord {
            pid: std::process::id(),
            target: self.opts.target.display().to_string(),
            at: self.state.at,
            applying: self.state.applying.as_ref().map(|a| a.to),
            newest: newest.map(|n| n.id),
            lag_safe_points: match (newest, self.state.at) {
                (Some(n), Some(at)) => n.id.0.saturating_sub(at.0),
                (Some(n), None) => n.id.0 + 1,
                _ => 0,
            },
            lag_ms: self
                .state
                .at_time_ns
                .map_or(0, |t| now.saturating_sub(t) / 1_000_000),
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

/// Sleeps as long as reading `done` bytes since `started` at `rate` bytes per second needs.
fn pace(rate: Option<u64>, started: Instant, done: u64) {
    if let Some(rate) = rate.filter(|r| *r > 0) {
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// The status of device `id`'s mirror, if one runs.
pub fn running_status(id: u32) -> Option<MirrorRecord> {
    let bytes = std::fs::read(paths::mirror_status_path(id)).ok()?;
    let s: MirrorRecord = serde_json::from_slice(&bytes).ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(s.pid as libc::pid_t, 0) } == 0;
    alive.then_some(s)
}

/// The replica as an apply writes it.
struct Replica(File);

impl PageSink for Replica {
    fn write_pages(&mut self, first: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all_at(data, first * PAGE_SIZE)
    }

    fn zero_pages(&mut self, first: u64, count: u64) -> std::io::Result<()> {
        zero_range(&self.0, first * PAGE_SIZE, count * PAGE_SIZE)
    }
}
