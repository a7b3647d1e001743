//! What the engine needs from the machine it runs on, handed in by its caller: who creates,
//! serves or reads an image (host name, boot, process) and what time it is. The crate asks
//! the operating system nothing itself: the `rewind` binary reads `/proc` (`rewind::host`),
//! tests pass a fixed host with a simulated clock (`sim::host`).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A wall clock: the time of safe points and of an image's creation.
pub trait Clock: Send + Sync {
    /// Nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u64;
}

/// The system's wall clock (`SystemTime`); 0 before the Unix epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

/// The machine and process an image is created, served or read by.
///
/// `Volume::open` records `name`, `pid` and `boot_id` in the superblock: with the image's
/// lock they tell a live owner from one that died (`format::Superblock::owner`). Replay
/// trusts unsynced journal blocks only when the superblock names the same non-zero
/// `boot_id`: the host's page cache then still held what they point at.
#[derive(Clone)]
pub struct Host {
    /// This boot of the kernel (the binary takes 64 bits of its random boot id); 0 when
    /// unknown, which trusts no unsynced journal block.
    pub boot_id: u64,
    /// The host name; the superblock keeps its first 64 bytes.
    pub name: String,
    /// The process that serves the image.
    pub pid: u32,
    /// The wall clock of the safe points this process makes, and of `create`.
    pub clock: Arc<dyn Clock>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("boot_id", &self.boot_id)
            .field("name", &self.name)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}
