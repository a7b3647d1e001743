//! Safe points, epochs, the history window and the on-disk format of rewind.
//!
//! Nothing here does I/O of its own: the backing store sits behind the [`Store`] trait, a
//! file or block device in the daemon and a power-cut simulator in tests.

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
pub use format::{CreateOptions, Layout, PAGE_SIZE};
pub use host::{Clock, Host, SystemClock};
pub use rewind_remap::{LogicalPage, PhysPage, Stream};
pub use store::{MemStore, Store};
pub use volume::{
    check, create, inspect, read_superblock, CheckReport, Inspection, Notice, ReadTracker,
    SafePointInfo, Stats, ViewId, Volume,
};
pub use window::{SafePoint, Trigger};
