//! The remap table: logical page -> (physical page, was it set in the open epoch).
//!
//! One `AtomicU64` per logical page, so the read path resolves a page with two loads (its
//! leaf, then its word) and no lock. Writers are serialized by the volume (they also append to the journal), so stores
//! need no compare-and-swap; `Release`/`Acquire` make the data written to the new physical
//! page visible before the mapping that points at it.
//!
//! The words live in leaves of `LEAF` pages, each made by the first mapping set in it that
//! is not `Mapping::UNWRITTEN`: a part of the device never written costs no memory but its
//! slot in the leaf table (24 bytes per 16 MiB of device), and a leaf, once made, lives as
//! long as the table, so a reader never sees one go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::{LogicalPage, OutOfMemory, PhysPage};

/// The bit of a word that says its mapping was set in the open epoch.
const OPEN: u64 = 1 << 63;
/// The physical page bits of a word; all ones: unmapped.
const PHYS: u64 = OPEN - 1;
/// Pages per leaf: 32 KiB of words for 16 MiB of device.
pub const LEAF: u64 = 4096;

/// Where a logical page lives, and whether that was set in the open epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// `None`: the page was never written or was discarded, and reads as zeros.
    pub phys: Option<PhysPage>,
    /// Set by a write (or discard) of the open epoch, so the page is in the open epoch's
    /// history group already: a second write in the epoch makes no history. Cleared when
    /// the epoch closes (the volume clears it on the pages of the group it closes).
    pub open: bool,
}

impl Mapping {
    /// The state of every page of a freshly formatted device.
    pub const UNWRITTEN: Mapping = Mapping {
        phys: None,
        open: false,
    };

    /// Packs into one word: the open bit on top, the physical page below (all ones: none).
    pub fn pack(self) -> u64 {
        let p = self.phys.map_or(PHYS, |p| p.0 & PHYS);
        if self.open {
            OPEN | p
        } else {
            p
        }
    }

    /// The inverse of `pack`.
    pub fn unpack(word: u64) -> Mapping {
        let p = word & PHYS;
        Mapping {
            phys: (p != PHYS).then_some(PhysPage(p)),
            open: word & OPEN != 0,
        }
    }
}

/// The packed word of `Mapping::UNWRITTEN`.
const UNWRITTEN_WORD: u64 = PHYS;

/// The lock-free remap table.
pub struct RemapTable {
    leaves: Box<[OnceLock<Box<[AtomicU64]>>]>,
    pages: u64,
}

/// A copy of the table taken at one instant, for a checkpoint: the leaves that exist, their
/// words in one allocation (so that, once the checkpoint is written, its memory goes back to
/// the system whole rather than as thousands of small blocks the heap keeps).
#[derive(PartialEq, Eq, Debug)]
pub struct MapSnapshot {
    /// The words of the leaves copied, `LEAF` each, in leaf order.
    words: Vec<u64>,
    /// For each leaf of the table, where its words start in `words` (`LEAF` times its
    /// rank), or `None` for a leaf not made.
    leaves: Vec<Option<usize>>,
    pages: u64,
}

impl MapSnapshot {
    /// A table of `pages` pages all unwritten, as a fresh device's.
    pub fn unwritten(pages: u64) -> MapSnapshot {
        MapSnapshot {
            words: Vec::new(),
            leaves: vec![None; pages.div_ceil(LEAF) as usize],
            pages,
        }
    }

    /// The number of logical pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The leaves that exist, by leaf number (leaf `n` holds pages `n * LEAF` on); the
    /// last one's words past the last page are not part of the table.
    pub fn leaves(&self) -> impl Iterator<Item = (u64, &[u64])> + '_ {
        self.leaves.iter().enumerate().filter_map(|(n, at)| {
            let at = (*at)?;
            let len = (self.pages - n as u64 * LEAF).min(LEAF) as usize;
            Some((n as u64, &self.words[at..at + len]))
        })
    }

    /// Every packed word, in page order.
    pub fn words(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        (0..self.pages as usize).map(|l| {
            let (leaf, i) = split(l as u64);
            self.leaves[leaf].map_or(UNWRITTEN_WORD, |at| self.words[at + i])
        })
    }
}

/// A leaf of `LEAF` unwritten pages.
fn new_leaf() -> Box<[AtomicU64]> {
    (0..LEAF).map(|_| AtomicU64::new(UNWRITTEN_WORD)).collect()
}

/// The leaf of page `l` and its place there.
fn split(l: u64) -> (usize, usize) {
    ((l / LEAF) as usize, (l % LEAF) as usize)
}

impl RemapTable {
    /// A table of `pages` logical pages, all unwritten.
    pub fn new(pages: u64) -> RemapTable {
        Self::try_new(pages).expect("memory for the remap table")
    }

    /// `new`, or an error when the memory for the leaf table cannot be had: a device too
    /// large for the machine is refused, not aborted.
    pub fn try_new(pages: u64) -> Result<RemapTable, OutOfMemory> {
        let n = usize::try_from(pages.div_ceil(LEAF)).unwrap_or(usize::MAX);
        Ok(RemapTable {
            leaves: crate::leaf_table(n)?.into_boxed_slice(),
            pages,
        })
    }

    /// The number of logical pages.
    pub fn len(&self) -> u64 {
        self.pages
    }

    /// True for a device of no pages (never made by `rewind create`).
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// The current mapping of `l`. Panics if `l` is out of range: callers check bounds first.
    pub fn get(&self, l: LogicalPage) -> Mapping {
        assert!(l.0 < self.pages, "page {} of {}", l.0, self.pages);
        let (leaf, i) = split(l.0);
        match self.leaves[leaf].get() {
            Some(words) => Mapping::unpack(words[i].load(Ordering::Acquire)),
            None => Mapping::UNWRITTEN,
        }
    }

    /// Sets the mapping of `l`. Only the volume's writer (under its lock) calls this.
    pub fn set(&self, l: LogicalPage, m: Mapping) {
        assert!(l.0 < self.pages, "page {} of {}", l.0, self.pages);
        let (leaf, i) = split(l.0);
        let word = m.pack();
        let slot = &self.leaves[leaf];
        if slot.get().is_none() && word == UNWRITTEN_WORD {
            return;
        }
        let words = slot.get_or_init(new_leaf);
        words[i].store(word, Ordering::Release);
    }

    /// Sets the mappings of the pages from `first` on to `maps`, a leaf at a time: how an
    /// open loads the map. A leaf is made only for a part that holds a mapping that is not
    /// `Mapping::UNWRITTEN`.
    pub fn set_run(&self, first: LogicalPage, maps: &[Mapping]) {
        let end = first.0 + maps.len() as u64;
        assert!(end <= self.pages, "pages up to {end} of {}", self.pages);
        let (mut l, mut rest) = (first.0, maps);
        while !rest.is_empty() {
            let (leaf, i) = split(l);
            let (part, tail) = rest.split_at((LEAF as usize - i).min(rest.len()));
            let slot = &self.leaves[leaf];
            if slot.get().is_some() || part.iter().any(|m| *m != Mapping::UNWRITTEN) {
                let words = slot.get_or_init(new_leaf);
                for (w, m) in words[i..i + part.len()].iter().zip(part) {
                    w.store(m.pack(), Ordering::Release);
                }
            }
            l += part.len() as u64;
            rest = tail;
        }
    }

    /// Every page that maps to a physical page, with it, in order: a walk of the leaves
    /// that exist (a page of a leaf never made is unwritten).
    pub fn mapped(&self) -> impl Iterator<Item = (LogicalPage, PhysPage)> + '_ {
        self.leaves
            .iter()
            .enumerate()
            .filter_map(|(n, leaf)| Some((n as u64 * LEAF, leaf.get()?)))
            .flat_map(|(first, words)| {
                words.iter().enumerate().filter_map(move |(i, w)| {
                    let p = Mapping::unpack(w.load(Ordering::Acquire)).phys?;
                    Some((LogicalPage(first + i as u64), p))
                })
            })
    }

    /// A copy of the leaves that exist, for a checkpoint, or the allocation that failed.
    /// The caller keeps leaves from being made meanwhile (the volume's lock).
    pub fn snapshot(&self) -> Result<MapSnapshot, OutOfMemory> {
        let made = self.leaves.iter().filter(|l| l.get().is_some()).count();
        let mut leaves = Vec::new();
        leaves
            .try_reserve_exact(self.leaves.len())
            .map_err(|_| OutOfMemory::of::<Option<usize>>(self.leaves.len()))?;
        let mut words = Vec::new();
        let n = made * LEAF as usize;
        words
            .try_reserve_exact(n)
            .map_err(|_| OutOfMemory::of::<u64>(n))?;
        for slot in self.leaves.iter() {
            leaves.push(slot.get().map(|leaf| {
                let at = words.len();
                words.extend(leaf.iter().map(|w| w.load(Ordering::Acquire)));
                at
            }));
        }
        Ok(MapSnapshot {
            words,
            leaves,
            pages: self.pages,
        })
    }

    /// Bytes of memory the table takes: the leaf table and the leaves made.
    pub fn memory_bytes(&self) -> u64 {
        let slots = self.leaves.len() * std::mem::size_of::<OnceLock<Box<[AtomicU64]>>>();
        let made = self.leaves.iter().filter(|l| l.get().is_some()).count();
        (slots + made * LEAF as usize * 8) as u64
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
                open: true,
            },
            Mapping {
                phys: Some(PhysPage(PhysPage::MAX)),
                open: false,
            },
            Mapping {
                phys: None,
                open: true,
            },
        ] {
            assert_eq!(Mapping::unpack(m.pack()), m);
        }
        assert_eq!(Mapping::UNWRITTEN.pack(), UNWRITTEN_WORD);
    }

    #[test]
    fn new_table_is_unwritten_and_set_is_visible() {
        let t = RemapTable::new(4);
        assert_eq!(t.get(LogicalPage(3)), Mapping::UNWRITTEN);
        let m = Mapping {
            phys: Some(PhysPage(2)),
            open: true,
        };
        t.set(LogicalPage(3), m);
        assert_eq!(t.get(LogicalPage(3)), m);
        let words: Vec<u64> = t.snapshot().expect("memory").words().collect();
        assert_eq!(
            words,
            [UNWRITTEN_WORD, UNWRITTEN_WORD, UNWRITTEN_WORD, m.pack()]
        );
    }

    /// `set_run` sets what `set` would, page by page, across leaves, and makes no leaf for
    /// a part all unwritten.
    #[test]
    fn set_run_is_set_page_by_page() {
        let pages = 3 * LEAF;
        let (a, b) = (RemapTable::new(pages), RemapTable::new(pages));
        let maps: Vec<Mapping> = (0..LEAF + 20)
            .map(|i| Mapping {
                phys: (i % 3 != 0).then_some(PhysPage(i * 7)),
                open: i % 5 == 0,
            })
            .collect();
        let first = LEAF - 10;
        a.set_run(LogicalPage(first), &maps);
        for (i, m) in maps.iter().enumerate() {
            b.set(LogicalPage(first + i as u64), *m);
        }
        assert!(a.snapshot().unwrap() == b.snapshot().unwrap());
        let c = RemapTable::new(pages);
        c.set_run(LogicalPage(5), &[Mapping::UNWRITTEN; 100]);
        assert_eq!(c.memory_bytes(), RemapTable::new(pages).memory_bytes());
    }

    #[test]
    fn only_leaves_with_a_mapping_take_memory() {
        let pages = 10 * LEAF + 5;
        let t = RemapTable::new(pages);
        let empty = t.memory_bytes();
        assert!(empty < 1024, "{empty} bytes for an unwritten table");
        t.set(LogicalPage(LEAF + 1), Mapping::UNWRITTEN);
        assert_eq!(t.memory_bytes(), empty, "unwritten stays free");
        let m = Mapping {
            phys: Some(PhysPage(9)),
            open: false,
        };
        t.set(LogicalPage(pages - 1), m);
        assert_eq!(t.memory_bytes(), empty + LEAF * 8);
        let mapped: Vec<(LogicalPage, PhysPage)> = t.mapped().collect();
        assert_eq!(mapped, [(LogicalPage(pages - 1), PhysPage(9))]);
        let snap = t.snapshot().expect("memory");
        assert_eq!(snap.words().len() as u64, pages);
        assert_eq!(snap.words().last(), Some(m.pack()));
        assert_eq!(snap.words().filter(|&w| w != UNWRITTEN_WORD).count(), 1);
        // Setting it back to unwritten keeps the leaf (it may still be read) and reads so.
        t.set(LogicalPage(pages - 1), Mapping::UNWRITTEN);
        assert_eq!(t.get(LogicalPage(pages - 1)), Mapping::UNWRITTEN);
    }
}
