//! The remap table: logical page -> (physical page, epoch it was written in).
//!
//! One `AtomicU64` per logical page, so the read path resolves a page with one load and no
//! lock. Writers are serialized by the volume (they also append to the journal), so stores
//! need no compare-and-swap; `Release`/`Acquire` make the data written to the new physical
//! page visible before the mapping that points at it.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{EpochTag, LogicalPage, PhysPage};

const UNMAPPED: u32 = u32::MAX;

/// Where a logical page lives and when it was last written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// `None`: the page was never written or was discarded, and reads as zeros.
    pub phys: Option<PhysPage>,
    /// The epoch of the write (or discard) that set this mapping.
    pub epoch: EpochTag,
}

impl Mapping {
    /// The state of every page of a freshly formatted device.
    pub const UNWRITTEN: Mapping = Mapping {
        phys: None,
        epoch: EpochTag(0),
    };

    /// Packs into one word: physical page in the low half, epoch tag in the high half.
    pub fn pack(self) -> u64 {
        let p = self.phys.map_or(UNMAPPED, |p| p.0);
        (u64::from(self.epoch.0) << 32) | u64::from(p)
    }

    /// The inverse of `pack`.
    pub fn unpack(word: u64) -> Mapping {
        let p = word as u32;
        Mapping {
            phys: (p != UNMAPPED).then_some(PhysPage(p)),
            epoch: EpochTag((word >> 32) as u32),
        }
    }
}

/// The lock-free remap table.
pub struct RemapTable {
    entries: Box<[AtomicU64]>,
}

impl RemapTable {
    /// A table of `pages` logical pages, all unwritten.
    pub fn new(pages: u64) -> RemapTable {
        Self::try_new(pages).expect("memory for the remap table")
    }

    /// `new`, or an error when the memory cannot be had (8 bytes a page): a device too
    /// large for the machine is refused, not aborted.
    pub fn try_new(pages: u64) -> Result<RemapTable, std::collections::TryReserveError> {
        let word = Mapping::UNWRITTEN.pack();
        let mut entries = Vec::new();
        entries.try_reserve_exact(usize::try_from(pages).unwrap_or(usize::MAX))?;
        entries.extend((0..pages).map(|_| AtomicU64::new(word)));
        Ok(RemapTable {
            entries: entries.into_boxed_slice(),
        })
    }

    /// The number of logical pages.
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// True for a device of no pages (never made by `rewind create`).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The current mapping of `l`. Panics if `l` is out of range: callers check bounds first.
    pub fn get(&self, l: LogicalPage) -> Mapping {
        Mapping::unpack(self.entries[l.0 as usize].load(Ordering::Acquire))
    }

    /// Sets the mapping of `l`. Only the volume's writer (under its lock) calls this.
    pub fn set(&self, l: LogicalPage, m: Mapping) {
        self.entries[l.0 as usize].store(m.pack(), Ordering::Release);
    }

    /// A copy of every entry, packed, for a checkpoint; `None` when the memory cannot be had.
    pub fn snapshot(&self) -> Option<Vec<u64>> {
        let mut out = Vec::new();
        out.try_reserve_exact(self.entries.len()).ok()?;
        out.extend(self.entries.iter().map(|e| e.load(Ordering::Acquire)));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_roundtrips_mapped_and_unmapped() {
        for m in [
            Mapping::UNWRITTEN,
            Mapping {
                phys: Some(PhysPage(7)),
                epoch: EpochTag(9),
            },
            Mapping {
                phys: Some(PhysPage(PhysPage::MAX)),
                epoch: EpochTag(u32::MAX),
            },
        ] {
            assert_eq!(Mapping::unpack(m.pack()), m);
        }
    }

    #[test]
    fn new_table_is_unwritten_and_set_is_visible() {
        let t = RemapTable::new(4);
        assert_eq!(t.get(LogicalPage(3)), Mapping::UNWRITTEN);
        let m = Mapping {
            phys: Some(PhysPage(2)),
            epoch: EpochTag(1),
        };
        t.set(LogicalPage(3), m);
        assert_eq!(t.get(LogicalPage(3)), m);
        assert_eq!(t.snapshot().expect("memory")[3], m.pack());
    }
}
