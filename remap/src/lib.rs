//! The remap table, the page allocator and streams: everything the I/O path needs to decide
//! where a page lives, with no I/O of its own.
//!
//! Invariants kept here:
//! - a logical page maps to at most one physical page, or to nothing (it reads as zeros);
//! - a physical page is claimed by at most one owner: `PageAllocator::claim` is the only way
//!   from free to used, and it is a compare-and-swap on the page's bit;
//! - readers of the remap table take no lock.

mod allocator;
mod refs;
mod table;

pub use allocator::{PageAllocator, Stream};
pub use refs::PageRefs;
pub use table::{MapSnapshot, Mapping, RemapTable, LEAF as MAP_LEAF_PAGES};

/// Memory a structure asked for and the machine could not give: `bytes` of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfMemory {
    /// The size of the allocation that failed.
    pub bytes: u64,
}

impl OutOfMemory {
    /// The error of a failed reservation of `n` values of `T`.
    pub(crate) fn of<T>(n: usize) -> OutOfMemory {
        OutOfMemory {
            bytes: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
        }
    }
}

/// A leaf table: `n` empty slots (`T::default()`: no leaf yet), or the memory it would take.
pub(crate) fn leaf_table<T: Default>(n: usize) -> Result<Vec<T>, OutOfMemory> {
    let mut slots = Vec::new();
    slots
        .try_reserve_exact(n)
        .map_err(|_| OutOfMemory::of::<T>(n))?;
    slots.resize_with(n, T::default);
    Ok(slots)
}

/// A page of the device as the kernel addresses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogicalPage(pub u64);

/// A page of the data area of the backing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysPage(pub u64);

impl PhysPage {
    /// The largest page index a backing store may have: a journal record holds 56 bits of
    /// it (FORMAT.md), and all ones there is kept.
    pub const MAX: u64 = (1 << 56) - 2;
    /// The largest page index of an image of format version 1 or 3, whose records and
    /// checkpoints hold 32 bits of it, `u32::MAX` meaning "unmapped".
    pub const MAX_NARROW: u64 = u32::MAX as u64 - 1;
}
