//! What a daemon leaves for others to find about its device: rewind's data in the json
//! libublk exports for the device (which tells rewind's devices from other ublk targets),
//! the daemon's pid file, the `--on-crash` policy both record (and the durability of a
//! completed write it asks of the engine), and the data path between the kernel and the
//! image (`--data-path`).

use libublk::sys;
use rewind_history::{Durability, SafePointId};

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
    /// Set on a device that serves this safe point of its image read-only (`rewind add
    /// --read-only`), with no live device: tools that would write to it, or mirror it, know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_at: Option<SafePointId>,
    /// How request data moves between the kernel and the image (absent from older daemons'
    /// json, which only had the copy path).
    #[serde(default)]
    pub data_path: Option<DataPath>,
}

impl TargetData {
    /// The daemon's log: the one it recorded, else where a daemon of its image logs.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.log.as_ref().map_or_else(
            || crate::ipc::paths::log_path(std::path::Path::new(&self.image)),
            std::path::PathBuf::from,
        )
    }
}

/// The json key of [`TargetData`] in libublk's `target_data`.
pub const TARGET_DATA_KEY: &str = "rewind";

/// What the kernel does with a device's I/O when its daemon dies (`rewind add --on-crash`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCrash {
    /// User recovery with reissue: the device is quiesced, new and in-flight I/O waits
    /// until `rewind recover` starts a new daemon, which reissues it. The application sees
    /// a pause, no error. For that, a write completes only once its journal record is
    /// written (unsynced, `Durability::CompletedWrites`): the new daemon finds every write
    /// the kernel was told is done.
    #[default]
    Queue,
    /// No recovery: the kernel fails the device's I/O and removes its disk; the image is
    /// recovered by the next `rewind add` (after `rewind del`). A write completes without
    /// its journal record (`Durability::FlushedWrites`), as on a disk with a volatile write
    /// cache: only a FLUSH (or a FUA write) makes writes durable, and the daemon's death,
    /// like a power cut, loses the writes since the last FLUSH (a prefix of them may
    /// survive). The device goes with its daemon, so nobody reads it in between.
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
    /// keeps what it wrote, so a completed write must survive the daemon's death (see
    /// [`OnCrash::durability`]).
    pub fn survives_daemon(self) -> bool {
        self != OnCrash::Stop
    }

    /// What the engine must make of a completed write under this policy: survive the
    /// daemon's death when the device outlives it, else only what a flush made durable.
    pub fn durability(self) -> Durability {
        if self.survives_daemon() {
            Durability::CompletedWrites
        } else {
            Durability::FlushedWrites
        }
    }
}

/// How a request's data moves between the kernel and the image (`rewind add --data-path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataPath {
    /// The daemon has a buffer per request in flight; the kernel copies the data of a write
    /// into it and the data of a read out of it. Every ublk driver does this.
    Copy,
    /// The kernel lends the request's own pages to the daemon's io_uring (ublk's
    /// `UBLK_F_AUTO_BUF_REG`, Linux 6.16 and later): the image is read into them and
    /// written from them directly, with no copy and no buffer in the daemon.
    ZeroCopy,
}

impl DataPath {
    /// The name `--data-path` takes and the json shows.
    pub fn name(self) -> &'static str {
        match self {
            DataPath::Copy => "copy",
            DataPath::ZeroCopy => "zero-copy",
        }
    }

    /// The ublk device flags for this data path. Zero copy asks for automatic buffer
    /// registration together with the driver's zero copy support, as rublk's `-z` does.
    /// Should the automatic registration of a request's pages fail, the daemon fails that
    /// request (with a log line); it does not register buffers itself.
    pub fn ublk_flags(self) -> u64 {
        match self {
            DataPath::Copy => 0,
            DataPath::ZeroCopy => {
                u64::from(sys::UBLK_F_AUTO_BUF_REG | sys::UBLK_F_SUPPORT_ZERO_COPY)
            }
        }
    }

    /// The data path of a device with ublk flags `flags`, as the kernel reports them: a
    /// driver without automatic buffer registration drops the flag, so this is the path the
    /// device really has.
    pub fn of_device_flags(flags: u64) -> DataPath {
        if flags & u64::from(sys::UBLK_F_AUTO_BUF_REG) != 0 {
            DataPath::ZeroCopy
        } else {
            DataPath::Copy
        }
    }
}

impl std::fmt::Display for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_that_outlives_its_daemon_keeps_every_completed_write() {
        assert_eq!(OnCrash::Queue.durability(), Durability::CompletedWrites);
        assert_eq!(OnCrash::Stop.durability(), Durability::FlushedWrites);
        assert_eq!(OnCrash::default().durability(), Durability::CompletedWrites);
    }

    #[test]
    fn the_data_path_follows_the_flags_the_kernel_kept() {
        for path in [DataPath::Copy, DataPath::ZeroCopy] {
            let flags = path.ublk_flags() | OnCrash::Queue.ublk_flags();
            assert_eq!(DataPath::of_device_flags(flags), path);
        }
        // A driver without zero copy clears the flags it does not know.
        assert_eq!(
            DataPath::of_device_flags(u64::from(sys::UBLK_F_USER_RECOVERY)),
            DataPath::Copy
        );
        assert_eq!(
            serde_json::to_string(&DataPath::ZeroCopy).unwrap(),
            r#""zero-copy""#
        );
        assert_eq!(serde_json::to_string(&DataPath::Copy).unwrap(), r#""copy""#);
        // An older daemon's json has no data path.
        let old = r#"{"image":"/a.img","direct_io":true,"socket":"/run/rewind/ublkb0.sock",
                      "log":null,"version":"0.1.0"}"#;
        let data: TargetData = serde_json::from_str(old).unwrap();
        assert_eq!(data.data_path, None);
    }
}
