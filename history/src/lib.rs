//! Safe points, epochs, the history window and the on-disk format of rewind: the engine
//! under the `rewind` binary, over the remap table and page allocator of `rewind-remap`.
//!
//! It owns the format ([`mod@format`]: layout, superblock, journal blocks, checkpoints) and the
//! code that reads and writes it, the history window (safe points, epochs, retirement) and
//! the [`Volume`], which serves an image: the write path, flushes and commits, reclaim,
//! rollback, pins and views; and [`create`], [`check`] and [`inspect`] for images not
//! served.
//!
//! Nothing here does I/O of its own: the backing store sits behind the [`Store`] trait (a
//! file or block device in the daemon, memory or a power-cut simulator in tests), and what
//! it needs of the machine comes in as a [`Host`]: its boot, name, pid and [`Clock`].
//!
//! The feature `testing` adds `sim` (the power-cut simulator, a fixed host and a simulated
//! clock) and `fuzzing` (the entry points of the fuzz targets); no engine code uses them.
//! The feature `serde` derives `Serialize` and `Deserialize` for the types the binary
//! sends over its control socket ([`SafePointId`], a bare number; [`Stats`], by field
//! name).

mod checkpoint;
mod error;
pub mod format;
#[cfg(any(test, feature = "testing"))]
pub mod fuzzing;
mod host;
mod journal;
#[cfg(any(test, feature = "testing"))]
pub mod sim;
mod store;
mod volume;
mod window;

pub use error::Error;
pub use format::{CreateOptions, Layout, FORMAT_VERSION, PAGE_SIZE};
pub use host::{Clock, Host, SystemClock};
pub use rewind_remap::{LogicalPage, PhysPage, Stream};
pub use store::{MemStore, Store};
pub use volume::{
    check, create, inspect, read_superblock, CheckReport, CommitDue, Durability, Inspection,
    Notice, ReadTracker, SafePointInfo, StagedCommit, Stats, Steps, ViewId, Volume,
    ALLOCATE_ATTEMPTS, ALLOCATE_RETRY_DELAY,
};
pub use window::{SafePoint, SafePointId, Trigger};
