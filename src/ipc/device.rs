//! What a daemon leaves for others to find about its device: rewind's data in the json
//! libublk exports for the device (which tells rewind's devices from other ublk targets),
//! the daemon's pid file, and the `--on-crash` policy both record.

use libublk::sys;
use rewind_history::SafePointId;

/// What the daemon stores in the device's exported json, under the key `rewind`, so that
/// `rewind list`, `rewind del` and `rewind recover` can tell rewind's devices from other
/// ublk targets and find the image, the log and the options. (The socket is recorded for
/// whoever reads the json; rewind's clients find it by the device id, `paths::socket_path`.)
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetData {
    /// The backing image or block device, absolute.
    pub image: String,
    /// True when the data path uses `O_DIRECT`.
    pub direct_io: bool,
    /// The daemon's control socket.
    pub socket: String,
    /// The daemon's log file, if it has one.
    pub log: Option<String>,
    /// The version of the daemon.
    pub version: String,
    /// What the kernel does if the daemon dies (absent from older daemons' json).
    #[serde(default)]
    pub on_crash: Option<OnCrash>,
    /// `--idle`, for `rewind recover` to serve the device as it was.
    #[serde(default)]
    pub idle_secs: Option<u64>,
    /// `--coalesce`, likewise.
    #[serde(default)]
    pub coalesce_ms: Option<u64>,
    /// Set on a view device (`rewind view`): the device it is a view of, and the safe
    /// point. Such a device lives only as long as that device's daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<ViewOf>,
}

/// The json key of [`TargetData`] in libublk's `target_data`.
pub const TARGET_DATA_KEY: &str = "rewind";

/// What the kernel does with a device's I/O when its daemon dies (`rewind add --on-crash`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCrash {
    /// User recovery with reissue: the device is quiesced, new and in-flight I/O waits
    /// until `rewind recover` starts a new daemon, which reissues it. The application sees
    /// a pause, no error.
    #[default]
    Queue,
    /// No recovery: the kernel fails the device's I/O and removes its disk; the image is
    /// recovered by the next `rewind add` (after `rewind del`). The write path is the same
    /// as with `Queue`: a write completes once its journal record is written, so after the
    /// daemon's death `rewind add` finds every completed write (a power cut, in either
    /// mode, loses what no FLUSH made durable).
    Stop,
}

impl OnCrash {
    /// The name `--on-crash` takes.
    pub fn name(self) -> &'static str {
        match self {
            OnCrash::Queue => "queue",
            OnCrash::Stop => "stop",
        }
    }

    /// The ublk device flags for this policy.
    pub fn ublk_flags(self) -> u64 {
        match self {
            OnCrash::Queue => {
                u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE)
            }
            OnCrash::Stop => 0,
        }
    }

    /// True when the device outlives its daemon: the kernel's page cache above the device
    /// keeps what it wrote, so a completed write must survive the daemon's death (the
    /// engine's unsynced journal blocks see to it).
    pub fn survives_daemon(self) -> bool {
        self != OnCrash::Stop
    }
}

/// Which device a view shows, in the view device's exported json.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ViewOf {
    /// The ublk id of the live device whose daemon serves the view.
    pub of: u32,
    /// The safe point it shows.
    pub at: SafePointId,
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
