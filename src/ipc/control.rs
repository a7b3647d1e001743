//! The wire format of a daemon's control socket, `/run/rewind/ublkb<ID>.sock`: one JSON
//! object per line each way. A client sends `{"cmd":"stats"}` and reads one reply line such
//! as `{"ok":true,"stats":{...}}` or `{"ok":false,"error":"..."}`. The commands:
//! - `{"cmd":"stats"}`: the device's figures (`stats`);
//! - `{"cmd":"safepoint","label":"x"}` (label optional): makes a safe point now and
//!   answers with it (`safe_point`);
//! - `{"cmd":"log"}`: the history window, oldest first (`safe_points`), and the figures
//!   (`stats`);
//! - `{"cmd":"rollback","to":12}`: makes safe point 12 the live state again and answers
//!   with the safe point that undoes it (`undo`);
//! - `{"cmd":"open_view","at":12}`: adds a read-only device showing safe point 12 and
//!   answers with it (`view`); `{"cmd":"close_view","device":1}` removes it;
//! - `{"cmd":"pin","id":12,"pinned":true}`: pins (or unpins) a safe point, durably;
//! - `{"cmd":"diff","from":12,"to":15}` (`to` optional: the live device): the logical
//!   extents that changed between them, in bytes (`extents`);
//! - `{"cmd":"ping"}`: the heartbeat of `rewind add --supervise`; answers `pid` once the
//!   engine's state lock could be taken, so a daemon stuck in its engine does not answer.
//!
//! The daemon serves it (`daemon::control`), the command line and the supervisor ask
//! (`runtime::client`). More commands are added as [`ControlRequest`] variants.

use rewind_history::{SafePointId, Stats};
use serde::{Deserialize, Serialize};

use crate::ipc::device::DataPath;
use crate::selector::Candidate;

/// How `Response::busy` begins.
const BUSY: &str = "the daemon is busy";

/// A command to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    /// The device's figures.
    Stats,
    /// Make an explicit safe point now, with an optional label.
    #[serde(rename = "safepoint")]
    SafePoint {
        /// At most 64 bytes, unique in the window.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// The history window.
    Log,
    /// Is the daemon alive and its engine not stuck? Answers with its pid.
    Ping,
    /// Make safe point `to` the live state again (the client has made sure nobody has the
    /// device open exclusively, and drops the kernel's cache afterwards).
    Rollback {
        /// The safe point id.
        to: SafePointId,
    },
    /// Add a read-only device that shows safe point `at` while the live device runs on.
    OpenView {
        /// The safe point id.
        at: SafePointId,
    },
    /// Remove view device `device` (a ublk id) and let its safe point retire again.
    CloseView {
        /// The view's ublk device id.
        device: u32,
    },
    /// The extents that changed between safe points `from` and `to` (`None`: the live
    /// device now), from metadata only.
    Diff {
        /// One safe point.
        from: SafePointId,
        /// The other; the live device when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<SafePointId>,
    },
    /// Keep safe point `id` from retiring (`pinned`), or let it retire again.
    Pin {
        /// The safe point id.
        id: SafePointId,
        /// Pin or unpin.
        pinned: bool,
    },
    /// Write an archive of safe points `from` to `to` (`rewind export`): the answer line
    /// is followed, when it is ok, by the archive's bytes until the connection closes.
    Export {
        /// The first safe point; the oldest in the window when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<SafePointId>,
        /// The last safe point; the newest when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<SafePointId>,
        /// Only the changes after `from` (an archive that continues one ending at `from`).
        #[serde(default)]
        incremental: bool,
        /// With `incremental`: only `to`, with the net change from `from`.
        #[serde(default)]
        net: bool,
    },
    /// Hand the device to the rewind binary `exe` (`rewind upgrade`): make everything
    /// written durable, answer, then replace this process with `exe`, which takes the device
    /// over as `rewind recover` would (same pid; the kernel holds the device's I/O
    /// meanwhile).
    Handover {
        /// The binary, absolute.
        exe: String,
    },
}

/// A view device as its daemon reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRecord {
    /// Its ublk device id.
    pub device_id: u32,
    /// `/dev/ublkbN`.
    pub device: String,
    /// The safe point it shows.
    pub at: SafePointId,
    /// Why reclaim dropped it (its reads fail with EIO), if it did.
    pub dropped: Option<String>,
}

/// A safe point as the daemon reports it: the engine's `SafePointInfo`, with the trigger
/// by name so that a client older than the daemon still shows triggers it does not know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafePointRecord {
    /// Its id.
    pub id: SafePointId,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// What made it: `format`, `flush`, `idle`, `user`, `reclaim`, ...
    pub trigger: String,
    /// Its label, if it has one.
    pub label: Option<String>,
    /// Pages first written in the epoch it closed; unknown (`None`) for the oldest.
    pub changed_pages: Option<u64>,
    /// History pages made between it and the next safe point: the original states of the
    /// pages overwritten then, which it (and maybe older safe points) reads. Over the window
    /// these add up to the history in use (`history_pages` of [`DeviceStats`]). Not what
    /// retiring it frees: older safe points may read some of them too.
    pub held_pages: u64,
    /// Kept from retiring by `rewind pin`.
    #[serde(default)]
    pub pinned: bool,
    /// The view devices showing it (ublk ids).
    #[serde(default)]
    pub views: Vec<u32>,
}

impl From<&rewind_history::SafePointInfo> for SafePointRecord {
    fn from(info: &rewind_history::SafePointInfo) -> SafePointRecord {
        let sp = &info.safe_point;
        SafePointRecord {
            id: sp.id,
            time_ns: sp.time_ns,
            trigger: sp.trigger.name().to_string(),
            label: sp.label.clone(),
            changed_pages: info.changed_pages,
            held_pages: info.held_pages,
            pinned: info.pinned,
            views: Vec::new(),
        }
    }
}

/// A device's figures as the daemon reports them: the engine's [`Stats`], between what the
/// daemon knows of the device and what it adds about the window, pacing, pins and views.
/// The JSON is flat: the engine's figures are keys of this object, in their place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStats {
    /// ublk device id.
    pub id: u32,
    /// `/dev/ublkbN`.
    pub device: String,
    /// The backing image or block device.
    pub image: String,
    /// Pid of the daemon.
    pub pid: u32,
    /// True when the data path uses `O_DIRECT`.
    pub direct_io: bool,
    /// The daemon's log file, if it has one.
    pub log: Option<String>,
    /// Bytes per page.
    pub page_size: u64,
    /// Size of the device in bytes.
    pub device_bytes: u64,
    /// The engine's figures: pages, history, the oldest and newest safe point.
    #[serde(flatten)]
    pub engine: Stats,
    /// When the oldest reachable safe point was made, ns since the Unix epoch (absent from
    /// the replies of daemons older than this field).
    #[serde(default)]
    pub oldest_safe_point_time_ns: Option<u64>,
    /// When the newest safe point was made, ns since the Unix epoch.
    #[serde(default)]
    pub newest_safe_point_time_ns: Option<u64>,
    /// Seconds without a write after which the daemon makes an idle safe point; 0: never.
    #[serde(default)]
    pub idle_secs: u64,
    /// Flushes closer than this to the previous safe point make none; 0: every flush does.
    #[serde(default)]
    pub coalesce_ms: u64,
    /// The pinned safe points, oldest first.
    #[serde(default)]
    pub pinned: Vec<SafePointId>,
    /// The view devices this daemon serves.
    #[serde(default)]
    pub views: Vec<ViewRecord>,
    /// The length of the image file or block device, bytes (absent from older daemons).
    #[serde(default)]
    pub image_bytes: Option<u64>,
    /// Bytes the host file system has allocated to an image file (`st_blocks` × 512), read
    /// at each answer: below `image_bytes` the image is sparse. Null for a block device.
    #[serde(default)]
    pub image_allocated_bytes: Option<u64>,
    /// Writes and syncs of the image the host file system refused with ENOSPC since the
    /// daemon started (data and metadata); 0: none.
    #[serde(default)]
    pub host_full_errors: u64,
    /// Bytes of data the daemon wrote to the image since it started (absent from older
    /// daemons).
    #[serde(default)]
    pub image_data_bytes_written: Option<u64>,
    /// Bytes of metadata (journal, checkpoints, superblock) it wrote since it started.
    #[serde(default)]
    pub image_metadata_bytes_written: Option<u64>,
    /// How request data moves between the kernel and the image (absent from older daemons,
    /// which only had the copy path).
    #[serde(default)]
    pub data_path: Option<DataPath>,
    /// The `rewind mirror` of the device running now, if one is (filled in by the client
    /// from the mirror's status file; the daemon knows nothing of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorRecord>,
    /// For a pool (`rewind create --backing`): its files, the image first, and the bytes of
    /// the image each holds; empty (and absent from the JSON) for an image of one file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pool: Vec<PoolFileRecord>,
    /// Set when the daemon serves this safe point of the image read-only (`rewind add
    /// --read-only`) instead of a live device: nothing is written, no safe point is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_at: Option<SafePointId>,
}

/// One file of a pool, as `rewind stats` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolFileRecord {
    /// Where the daemon opened it.
    pub path: String,
    /// A block device (else a regular file).
    pub block_device: bool,
    /// The bytes of the image it holds: the metadata for the first, data for the others.
    pub bytes: u64,
}

impl DeviceStats {
    /// Sets `mirror`, its lag measured against this device's newest safe point: the mirror
    /// writes its status after each step, and newer safe points may have come since.
    pub fn set_mirror(&mut self, mirror: Option<MirrorRecord>) {
        self.mirror = mirror.map(|mut m| {
            if let Some(newest) = self.engine.newest_safe_point {
                m.newest = Some(newest);
                m.lag_safe_points = match m.at {
                    Some(at) => newest.0.saturating_sub(at.0),
                    None => newest.0 + 1,
                };
            }
            if let (Some(n), Some(a)) = (self.newest_safe_point_time_ns, m.at_time_ns) {
                m.lag_ms = n.saturating_sub(a) / 1_000_000;
            }
            m
        });
    }
}

/// A running `rewind mirror`, as its status file says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorRecord {
    /// The mirror's process.
    pub pid: u32,
    /// The replica.
    pub target: String,
    /// The safe point the replica holds (`None`: none yet).
    pub at: Option<SafePointId>,
    /// Its time, ns since the Unix epoch.
    #[serde(default)]
    pub at_time_ns: Option<u64>,
    /// An apply under way: the replica holds a mix of two safe points until it ends.
    pub applying: Option<SafePointId>,
    /// The newest safe point of the device when the mirror last looked.
    pub newest: Option<SafePointId>,
    /// Safe points the replica is behind the newest.
    pub lag_safe_points: u64,
    /// Milliseconds between the replica's safe point and when this was written.
    pub lag_ms: u64,
    /// When this was written, ns since the Unix epoch.
    pub updated_ns: u64,
}

impl DeviceStats {
    /// What `rewind list` and `rewind stats` say when the host file system refused writes
    /// of the image for lack of space.
    pub fn host_full_warning(&self) -> Option<String> {
        (self.host_full_errors > 0).then(|| {
            format!(
                "host filesystem full (ENOSPC): writes failing ({} refused since the daemon \
                 started)",
                self.host_full_errors
            )
        })
    }

    /// True when the image file has fewer bytes allocated than its length (created with
    /// `--sparse`, or on a file system that cannot preallocate); `None` when not known (a
    /// block device, an older daemon).
    pub fn image_sparse(&self) -> Option<bool> {
        Some(self.image_allocated_bytes? < self.image_bytes?)
    }
}

/// The reply to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// True when the request succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer to `stats`, and the figures that go with `log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<DeviceStats>,
    /// The answer to `safepoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_point: Option<SafePointRecord>,
    /// The answer to `log`: the window, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_points: Option<Vec<SafePointRecord>>,
    /// The answer to `rollback`: the safe point of the state it left (the way back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<SafePointId>,
    /// The answer to `ping`: the daemon's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The answer to `ping`: when the program answering started serving (ns since the
    /// Unix epoch). A handover keeps the pid and changes this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_since_ns: Option<u64>,
    /// The answer to `open_view`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<ViewRecord>,
    /// The answer to `diff`: ascending, not touching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<Extent>>,
}

/// A run of the device's bytes, as `diff` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// The first byte.
    pub offset: u64,
    /// Bytes, a whole number of pages.
    pub length: u64,
}

impl Response {
    fn ok() -> Response {
        Response {
            ok: true,
            error: None,
            stats: None,
            safe_point: None,
            safe_points: None,
            undo: None,
            pid: None,
            serving_since_ns: None,
            view: None,
            extents: None,
        }
    }

    /// A failure saying why.
    pub fn error(why: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(why.into()),
            ..Response::ok()
        }
    }

    /// The answer of a daemon that serves as many control connections as it may: it is
    /// alive, just busy (the supervisor counts it as a heartbeat, see `is_busy`).
    pub fn busy(open: usize) -> Response {
        Response::error(format!("{BUSY}: {open} control connections open"))
    }

    /// True for `busy`'s answer.
    pub fn is_busy(&self) -> bool {
        !self.ok && self.error.as_deref().is_some_and(|e| e.starts_with(BUSY))
    }

    /// The answer to `stats`.
    pub fn stats(stats: DeviceStats) -> Response {
        Response {
            stats: Some(stats),
            ..Response::ok()
        }
    }

    /// The answer to `safepoint`: the new safe point, and the figures after it.
    pub fn safe_point(safe_point: SafePointRecord, stats: DeviceStats) -> Response {
        Response {
            safe_point: Some(safe_point),
            stats: Some(stats),
            ..Response::ok()
        }
    }

    /// The answer to `ping`.
    pub fn pong(pid: u32, serving_since_ns: u64) -> Response {
        Response {
            pid: Some(pid),
            serving_since_ns: Some(serving_since_ns),
            ..Response::ok()
        }
    }

    /// A success that carries nothing (`close_view`, `pin`).
    pub fn done() -> Response {
        Response::ok()
    }

    /// The answer to `open_view`.
    pub fn view(view: ViewRecord) -> Response {
        Response {
            view: Some(view),
            ..Response::ok()
        }
    }

    /// The answer to `diff`.
    pub fn diff(extents: Vec<Extent>) -> Response {
        Response {
            extents: Some(extents),
            ..Response::ok()
        }
    }

    /// The answer to `rollback`.
    pub fn rollback(undo: SafePointId) -> Response {
        Response {
            undo: Some(undo),
            ..Response::ok()
        }
    }

    /// The answer to `log`.
    pub fn log(safe_points: Vec<SafePointRecord>, stats: DeviceStats) -> Response {
        Response {
            safe_points: Some(safe_points),
            stats: Some(stats),
            ..Response::ok()
        }
    }
}

impl Candidate for SafePointRecord {
    fn id(&self) -> SafePointId {
        self.id
    }

    fn time_ns(&self) -> u64 {
        self.time_ns
    }

    fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
}

/// Figures for tests: a 1 GiB device with two safe points.
#[cfg(test)]
pub fn sample_stats() -> DeviceStats {
    DeviceStats {
        id: 3,
        device: "/dev/ublkb3".into(),
        image: "/tmp/a.img".into(),
        pid: 42,
        direct_io: true,
        log: None,
        page_size: 4096,
        device_bytes: 1 << 30,
        engine: Stats {
            logical_pages: 262_144,
            physical_pages: 327_680,
            free_pages: 65_536,
            history_pages: 10,
            history_capacity_pages: 65_536,
            safe_points: 2,
            oldest_safe_point: Some(SafePointId(0)),
            newest_safe_point: Some(SafePointId(1)),
        },
        oldest_safe_point_time_ns: Some(1_700_000_000_000_000_000),
        newest_safe_point_time_ns: Some(1_700_000_001_000_000_000),
        idle_secs: 2,
        coalesce_ms: 100,
        pinned: vec![],
        views: vec![],
        image_bytes: Some(1_409_286_144),
        image_allocated_bytes: Some(1_409_286_144),
        host_full_errors: 0,
        image_data_bytes_written: None,
        image_metadata_bytes_written: None,
        data_path: Some(DataPath::ZeroCopy),
        mirror: None,
        pool: Vec::new(),
        read_only_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mirror's lag is measured against the device's newest safe point as the daemon
    /// reports it, not against what the mirror saw at its last step.
    #[test]
    fn mirror_lag_is_measured_against_the_newest_safe_point() {
        let mut s = sample_stats();
        let record = |at: Option<u64>, at_time_ns| MirrorRecord {
            pid: 1,
            target: "/r.img".into(),
            at: at.map(SafePointId),
            at_time_ns,
            applying: None,
            newest: at.map(SafePointId),
            lag_safe_points: 0,
            lag_ms: 0,
            updated_ns: 0,
        };
        s.set_mirror(Some(record(Some(0), Some(1_700_000_000_000_000_000))));
        let m = s.mirror.clone().unwrap();
        assert_eq!(
            (m.newest, m.lag_safe_points, m.lag_ms),
            (Some(SafePointId(1)), 1, 1000)
        );
        s.set_mirror(Some(record(None, None)));
        assert_eq!(
            s.mirror.unwrap().lag_safe_points,
            2,
            "safe points 0 and 1 to go"
        );
    }

    #[test]
    fn wire_format() {
        assert_eq!(
            serde_json::to_string(&ControlRequest::Stats).unwrap(),
            r#"{"cmd":"stats"}"#
        );
        assert_eq!(
            serde_json::from_str::<ControlRequest>(r#"{"cmd":"stats"}"#).unwrap(),
            ControlRequest::Stats
        );
        assert!(serde_json::from_str::<ControlRequest>(r#"{"cmd":"format_everything"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&ControlRequest::Rollback {
                to: SafePointId(12)
            })
            .unwrap(),
            r#"{"cmd":"rollback","to":12}"#
        );
        assert!(serde_json::from_str::<ControlRequest>(r#"{"cmd":"rollback"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&ControlRequest::SafePoint {
                label: Some("before".into())
            })
            .unwrap(),
            r#"{"cmd":"safepoint","label":"before"}"#
        );
        assert_eq!(
            serde_json::from_str::<ControlRequest>(r#"{"cmd":"safepoint"}"#).unwrap(),
            ControlRequest::SafePoint { label: None }
        );
        assert_eq!(
            serde_json::from_str::<ControlRequest>(r#"{"cmd":"log"}"#).unwrap(),
            ControlRequest::Log
        );
        assert_eq!(
            serde_json::to_string(&ControlRequest::Ping).unwrap(),
            r#"{"cmd":"ping"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::pong(7, 9)).unwrap(),
            r#"{"ok":true,"pid":7,"serving_since_ns":9}"#
        );
        assert_eq!(
            serde_json::to_string(&ControlRequest::Handover {
                exe: "/usr/local/bin/rewind".into()
            })
            .unwrap(),
            r#"{"cmd":"handover","exe":"/usr/local/bin/rewind"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::error("nope")).unwrap(),
            r#"{"ok":false,"error":"nope"}"#
        );
    }

    /// The figures as `rewind stats --json` and `rewind list --json` print them and the
    /// control socket carries them: every key, in this order, with bare numbers for ids.
    #[test]
    fn stats_json_keys_and_order() {
        let mut s = sample_stats();
        s.pinned = vec![SafePointId(0)];
        s.views = vec![ViewRecord {
            device_id: 4,
            device: "/dev/ublkb4".into(),
            at: SafePointId(1),
            dropped: None,
        }];
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"id":3,"device":"/dev/ublkb3","image":"/tmp/a.img","pid":42,"#,
                r#""direct_io":true,"log":null,"page_size":4096,"device_bytes":1073741824,"#,
                r#""logical_pages":262144,"physical_pages":327680,"free_pages":65536,"#,
                r#""history_pages":10,"history_capacity_pages":65536,"safe_points":2,"#,
                r#""oldest_safe_point":0,"newest_safe_point":1,"#,
                r#""oldest_safe_point_time_ns":1700000000000000000,"#,
                r#""newest_safe_point_time_ns":1700000001000000000,"idle_secs":2,"#,
                r#""coalesce_ms":100,"pinned":[0],"#,
                r#""views":[{"device_id":4,"device":"/dev/ublkb4","at":1,"dropped":null}],"#,
                r#""image_bytes":1409286144,"image_allocated_bytes":1409286144,"#,
                r#""host_full_errors":0,"image_data_bytes_written":null,"#,
                r#""image_metadata_bytes_written":null,"data_path":"zero-copy"}"#,
            )
        );
        assert_eq!(serde_json::from_str::<DeviceStats>(&text).unwrap(), s);
        let mut empty = sample_stats();
        empty.engine.oldest_safe_point = None;
        empty.engine.newest_safe_point = None;
        let v = serde_json::to_value(&empty).unwrap();
        assert!(v["oldest_safe_point"].is_null() && v["newest_safe_point"].is_null());
        assert_eq!(serde_json::from_value::<DeviceStats>(v).unwrap(), empty);
    }

    /// A safe point, a rollback's answer and the requests that name a safe point, as the
    /// control socket carries them: ids are bare numbers.
    #[test]
    fn safe_point_ids_on_the_wire() {
        let r = SafePointRecord {
            id: SafePointId(7),
            time_ns: 1_700_000_000_000_000_000,
            trigger: "user".into(),
            label: Some("before".into()),
            changed_pages: None,
            held_pages: 3,
            pinned: true,
            views: vec![1],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"id":7,"time_ns":1700000000000000000,"trigger":"user","label":"before","#,
                r#""changed_pages":null,"held_pages":3,"pinned":true,"views":[1]}"#
            )
        );
        assert_eq!(serde_json::from_str::<SafePointRecord>(&text).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Response::rollback(SafePointId(13))).unwrap(),
            r#"{"ok":true,"undo":13}"#
        );
        for (request, text) in [
            (
                ControlRequest::OpenView { at: SafePointId(5) },
                r#"{"cmd":"open_view","at":5}"#,
            ),
            (
                ControlRequest::Pin {
                    id: SafePointId(5),
                    pinned: false,
                },
                r#"{"cmd":"pin","id":5,"pinned":false}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&request).unwrap(), text);
            assert_eq!(
                serde_json::from_str::<ControlRequest>(text).unwrap(),
                request
            );
        }
    }

    #[test]
    fn stats_of_an_older_daemon_still_parse() {
        // A reply without the fields added with `rewind log`.
        let mut v = serde_json::to_value(sample_stats()).unwrap();
        for k in [
            "oldest_safe_point_time_ns",
            "newest_safe_point_time_ns",
            "idle_secs",
            "coalesce_ms",
            "image_bytes",
            "image_allocated_bytes",
            "host_full_errors",
            "image_data_bytes_written",
            "image_metadata_bytes_written",
            "data_path",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        let s: DeviceStats = serde_json::from_value(v).unwrap();
        assert_eq!(s.oldest_safe_point_time_ns, None);
        assert_eq!(s.idle_secs, 0);
        assert_eq!((s.host_full_errors, s.host_full_warning()), (0, None));
        assert_eq!(s.image_sparse(), None);
        assert_eq!(s.data_path, None);
    }

    #[test]
    fn a_full_host_and_a_sparse_image_are_told() {
        let mut s = sample_stats();
        assert_eq!(
            (s.host_full_warning(), s.image_sparse()),
            (None, Some(false))
        );
        s.host_full_errors = 3;
        s.image_allocated_bytes = Some(1 << 20);
        assert_eq!(
            s.host_full_warning().as_deref(),
            Some("host filesystem full (ENOSPC): writes failing (3 refused since the daemon started)")
        );
        assert_eq!(s.image_sparse(), Some(true));
        s.image_allocated_bytes = None; // a block device
        assert_eq!(s.image_sparse(), None);
    }
}
