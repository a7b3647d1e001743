//! The remap table: logical page -> (physical page, was it set in the open epoch).
//!
//! The pages are kept in leaves of `LEAF` pages, each made by the first mapping set in it
//! that is not `Mapping::UNWRITTEN`: a part of the device never written costs no memory but
//! its slot in the leaf table (24 bytes per 16 MiB of device). A leaf has one of two forms:
//! - *sparse*: its stretches, each a run of pages with the same open bit whose physical
//!   pages are consecutive (or all zeros), 16 bytes a stretch. A page not in one is
//!   unwritten. So a leaf written at home costs one stretch, and so does one rewritten by a
//!   sequential write elsewhere, however many pages they hold. A write to a sparse leaf
//!   makes a new one and swaps it in (`arc_swap`: readers keep the one they loaded, and
//!   it is freed once the last of them is done).
//! - *dense*: one `AtomicU64` per page (32 KiB), changed in place, once a leaf would take
//!   more than `SPARSE_MAX` stretches: a leaf of scattered small writes is no longer copied
//!   on each of them. It stays dense while the table lives (an open loads each leaf in the
//!   form that fits it again).
//!
//! Readers take no lock: a dense leaf's word is one load away, a sparse leaf's stretches
//! one load of its `ArcSwapOption`. Writers are serialized by the volume (they also append
//! to the journal), so they need no compare-and-swap; the swap and the word's `Release`
//! store make the data written to a new physical page visible before the mapping that
//! points at it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;

use crate::{LogicalPage, OutOfMemory, PhysPage};

/// The bit of a word that says its mapping was set in the open epoch.
const OPEN: u64 = 1 << 63;
/// The physical page bits of a word; all ones: unmapped.
const PHYS: u64 = OPEN - 1;
/// Pages per leaf: 16 MiB of device (fixed by the checkpoint format, FORMAT.md).
pub const LEAF: u64 = 4096;
/// The most stretches a sparse leaf holds, 512 bytes of them: the most a write to it copies.
const SPARSE_MAX: usize = 32;
/// Pages of one sparse leaf an update changes one at a time, each a splice of at most
/// `SPARSE_MAX` stretches; more build the leaf again from its words, in about the time of
/// this many splices. So an update costs a bounded time a page however its runs fall.
const UPDATE_BY_PAGE: usize = 64;

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

/// Consecutive pages of a leaf set in the same epoch or not (`open`) whose physical pages
/// are consecutive too, or all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stretch {
    /// The first page's place in its leaf.
    first: u16,
    /// Pages, 1 ..= `LEAF`.
    len: u16,
    open: bool,
    /// The first page's physical page, or `PHYS`: zeros.
    phys: u64,
}

impl Stretch {
    /// The stretch of the one page at `i` mapped as `m`.
    fn of(i: usize, m: Mapping) -> Stretch {
        Stretch {
            first: i as u16,
            len: 1,
            open: m.open,
            phys: m.phys.map_or(PHYS, |p| p.0),
        }
    }

    fn end(self) -> usize {
        self.first as usize + self.len as usize
    }

    /// The mapping of page `i` of the leaf, which the stretch holds.
    fn mapping(self, i: usize) -> Mapping {
        let k = (i - self.first as usize) as u64;
        Mapping {
            phys: (self.phys != PHYS).then(|| PhysPage(self.phys + k)),
            open: self.open,
        }
    }

    /// Its pages from `i` on (`i` inside it).
    fn from(self, i: usize) -> Stretch {
        let k = i - self.first as usize;
        Stretch {
            first: i as u16,
            len: self.len - k as u16,
            phys: if self.phys == PHYS {
                PHYS
            } else {
                self.phys + k as u64
            },
            ..self
        }
    }

    /// Its pages before `i` (`i` inside it, after its first).
    fn before(self, i: usize) -> Stretch {
        Stretch {
            len: (i - self.first as usize) as u16,
            ..self
        }
    }

    /// Does `next` continue it: the next pages, the same open bit, the next physical pages?
    fn continued_by(self, next: Stretch) -> bool {
        next.first as usize == self.end()
            && next.open == self.open
            && match (self.phys, next.phys) {
                (PHYS, PHYS) => true,
                (PHYS, _) | (_, PHYS) => false,
                (a, b) => b == a + u64::from(self.len),
            }
    }
}

/// Appends `s` (after every stretch of `out`) to `out`, into its last stretch if `s`
/// continues it: stretches built this way are as few as they can be.
fn push_joined(out: &mut Vec<Stretch>, s: Stretch) {
    match out.last_mut() {
        Some(last) if last.continued_by(s) => last.len += s.len,
        _ => out.push(s),
    }
}

/// The words of a leaf of `stretches`, a page each.
fn expand(stretches: &[Stretch]) -> Vec<u64> {
    let mut words = Vec::with_capacity(LEAF as usize);
    expand_onto(stretches, &mut words);
    words
}

/// Appends the words of a leaf of `stretches` to `out`.
fn expand_onto(stretches: &[Stretch], out: &mut Vec<u64>) {
    let at = out.len();
    out.resize(at + LEAF as usize, UNWRITTEN_WORD);
    for s in stretches {
        let first = at + s.first as usize;
        for (k, w) in out[first..at + s.end()].iter_mut().enumerate() {
            *w = s.mapping(s.first as usize + k).pack();
        }
    }
}

/// The words of a dense leaf.
type Words = [AtomicU64; LEAF as usize];

/// A leaf: `LEAF` pages, in one of two forms (see the module doc). A leaf with neither is
/// unwritten. Once dense it stays dense, and its words stay where they are, as long as the
/// table: the read path finds them with one load, as it would in a plain array.
#[derive(Default)]
struct Leaf {
    dense: OnceLock<Box<Words>>,
    /// Sorted, not overlapping, each as long as it can be; at most `SPARSE_MAX`; none once
    /// the leaf is dense.
    sparse: ArcSwapOption<Vec<Stretch>>,
}

/// The stretches of `words` (`LEAF` of them), or `None` if they would be more than
/// `SPARSE_MAX`.
fn stretches_of(words: &[u64]) -> Option<Vec<Stretch>> {
    let mut stretches = Vec::new();
    for (i, &w) in words.iter().enumerate() {
        if w != UNWRITTEN_WORD {
            push_joined(&mut stretches, Stretch::of(i, Mapping::unpack(w)));
            if stretches.len() > SPARSE_MAX {
                return None;
            }
        }
    }
    Some(stretches)
}

/// The mapping of page `i` of a leaf of `stretches`.
fn find(stretches: &[Stretch], i: usize) -> Mapping {
    let after = stretches.partition_point(|s| s.first as usize <= i);
    match after.checked_sub(1).map(|k| stretches[k]) {
        Some(s) if i < s.end() => s.mapping(i),
        _ => Mapping::UNWRITTEN,
    }
}

/// `stretches` with page `i` set to `m`, as few as they can be: a copy of the others, the
/// cost of a write to a sparse leaf.
fn spliced(stretches: &[Stretch], i: usize, m: Mapping) -> Vec<Stretch> {
    let mut out = Vec::with_capacity(stretches.len() + 2);
    let before = stretches.partition_point(|s| s.end() <= i);
    out.extend_from_slice(&stretches[..before]);
    let mut rest = &stretches[before..];
    let mut tail = None;
    if let Some(&s) = rest.first().filter(|s| s.first as usize <= i) {
        if (s.first as usize) < i {
            out.push(s.before(i));
        }
        tail = (i + 1 < s.end()).then(|| s.from(i + 1));
        rest = &rest[1..];
    }
    if m != Mapping::UNWRITTEN {
        push_joined(&mut out, Stretch::of(i, m));
    }
    for &s in tail.iter().chain(rest) {
        push_joined(&mut out, s);
    }
    out
}

impl Leaf {
    /// The mapping of its page `i`.
    fn get(&self, i: usize) -> Mapping {
        if let Some(words) = self.dense.get() {
            return Mapping::unpack(words[i].load(Ordering::Acquire));
        }
        match &*self.sparse.load() {
            Some(stretches) => find(stretches, i),
            // Made dense since the first look (the words are set before the stretches go).
            None => match self.dense.get() {
                Some(words) => Mapping::unpack(words[i].load(Ordering::Acquire)),
                None => Mapping::UNWRITTEN,
            },
        }
    }

    /// Is a page of it written (or discarded in the open epoch)?
    fn is_written(&self) -> bool {
        self.dense.get().is_some() || self.sparse.load().is_some()
    }

    /// Its words, a page each, or `None` if it is unwritten.
    fn words(&self) -> Option<Vec<u64>> {
        let mut words = Vec::new();
        self.copy_words(&mut words).then_some(words)
    }

    /// Appends its words to `out`, a page each, if it is written; says whether it was.
    fn copy_words(&self, out: &mut Vec<u64>) -> bool {
        if let Some(words) = self.dense.get() {
            out.extend(words.iter().map(|w| w.load(Ordering::Acquire)));
            return true;
        }
        match &*self.sparse.load() {
            Some(stretches) => {
                expand_onto(stretches, out);
                true
            }
            None => false,
        }
    }

    /// Makes it hold `stretches`: sparse if they are few enough, else dense for good.
    /// Only the writer calls this, on a leaf not dense.
    fn store(&self, stretches: Vec<Stretch>) {
        if stretches.len() <= SPARSE_MAX {
            let keep = !stretches.is_empty();
            self.sparse.store(keep.then(|| Arc::new(stretches)));
        } else {
            self.make_dense(&expand(&stretches));
        }
    }

    /// Makes it hold `words` (`LEAF` of them), in the form that fits. Only the writer calls
    /// this, on a leaf not dense.
    fn store_words(&self, words: &[u64]) {
        match stretches_of(words) {
            Some(stretches) => self.store(stretches),
            None => self.make_dense(words),
        }
    }

    fn make_dense(&self, words: &[u64]) {
        let words: Box<[AtomicU64]> = words.iter().map(|&w| AtomicU64::new(w)).collect();
        let words: Box<Words> = words.try_into().expect("a leaf's words");
        assert!(self.dense.set(words).is_ok(), "a leaf made dense twice");
        // Only now: a reader that finds no stretches looks for the words again.
        self.sparse.store(None);
    }

    /// Its pages that map to physical pages, as runs (first page, its physical page,
    /// pages) in order, each as long as the leaf allows; `base` is its first page's number.
    fn mapped_runs(&self, base: u64) -> Vec<(LogicalPage, PhysPage, u64)> {
        let Some(words) = self.dense.get() else {
            let stretches = self.sparse.load_full().unwrap_or_default();
            let mut runs: Vec<(LogicalPage, PhysPage, u64)> = Vec::new();
            for s in stretches.iter().filter(|s| s.phys != PHYS) {
                let (l, p) = (base + u64::from(s.first), s.phys);
                match runs.last_mut() {
                    // Two stretches that differ only in their open bit.
                    Some((l0, p0, n)) if l0.0 + *n == l && p0.0 + *n == p => *n += u64::from(s.len),
                    _ => runs.push((LogicalPage(l), PhysPage(p), u64::from(s.len))),
                }
            }
            return runs;
        };
        let mut runs: Vec<(LogicalPage, PhysPage, u64)> = Vec::new();
        for (i, w) in words.iter().enumerate() {
            let Some(p) = Mapping::unpack(w.load(Ordering::Acquire)).phys else {
                continue;
            };
            let l = base + i as u64;
            match runs.last_mut() {
                Some((l0, p0, n)) if l0.0 + *n == l && p0.0 + *n == p.0 => *n += 1,
                _ => runs.push((LogicalPage(l), p, 1)),
            }
        }
        runs
    }

    /// Bytes of memory it takes beyond its slot.
    fn bytes(&self) -> usize {
        if self.dense.get().is_some() {
            return std::mem::size_of::<Words>();
        }
        self.sparse.load().as_deref().map_or(0, |s| {
            s.capacity() * std::mem::size_of::<Stretch>() + std::mem::size_of::<Vec<Stretch>>() + 16
        })
    }
}

/// The lock-free remap table.
pub struct RemapTable {
    leaves: Box<[Leaf]>,
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
        self.leaves[leaf].get(i)
    }

    /// Sets the mapping of `l`. Only the volume's writer (under its lock) calls this.
    pub fn set(&self, l: LogicalPage, m: Mapping) {
        assert!(l.0 < self.pages, "page {} of {}", l.0, self.pages);
        let (leaf, i) = split(l.0);
        let leaf = &self.leaves[leaf];
        if let Some(words) = leaf.dense.get() {
            words[i].store(m.pack(), Ordering::Release);
            return;
        }
        let now = leaf.sparse.load();
        if now.is_none() && m == Mapping::UNWRITTEN {
            return;
        }
        leaf.store(spliced(now.as_deref().map_or(&[], |s| s), i, m));
    }

    /// Sets the mapping of each page of the run from `first` to what `f` makes of it (given
    /// the page and its mapping now), a leaf at a time. Only the volume's writer calls this.
    pub fn update_run(
        &self,
        first: LogicalPage,
        n: u64,
        mut f: impl FnMut(LogicalPage, Mapping) -> Mapping,
    ) {
        let end = first.0 + n;
        assert!(end <= self.pages, "pages up to {end} of {}", self.pages);
        let mut l = first.0;
        while l < end {
            let (leaf, i) = split(l);
            let k = (end - l).min(LEAF - i as u64) as usize;
            let base = l - i as u64;
            self.update_leaf(leaf, i..i + k, |j, m| f(LogicalPage(base + j as u64), m));
            l += k as u64;
        }
    }

    /// Sets the page of each item of `items` (ascending pages, each once) to what `f` makes
    /// of it (given the item and the page's mapping now), a leaf at a time: one visit to each
    /// page for a rollback's changes. Only the volume's writer calls this.
    pub fn update_many<T>(
        &self,
        items: &[T],
        page: impl Fn(&T) -> LogicalPage,
        mut f: impl FnMut(&T, Mapping) -> Mapping,
    ) {
        for chunk in items.chunk_by(|a, b| page(a).0 / LEAF == page(b).0 / LEAF) {
            let leaf = split(page(&chunk[0]).0).0;
            assert!(
                chunk.windows(2).all(|w| page(&w[0]) < page(&w[1])),
                "pages in order, each once"
            );
            assert!(chunk.last().is_some_and(|t| page(t).0 < self.pages));
            let mut items = chunk.iter();
            let places = chunk.iter().map(|t| split(page(t).0).1);
            self.update_leaf(leaf, places, |_, m| {
                f(items.next().expect("an item a page"), m)
            });
        }
    }

    /// Sets each page `i` of `places` (ascending) in leaf `leaf` to `f(i, its mapping now)`,
    /// calling `f` once a page, in order: in place in a dense leaf, page by page in a sparse
    /// one for a few pages, else by building the leaf again (from the mappings alone if it
    /// was unwritten, as an open's leaves are).
    fn update_leaf(
        &self,
        leaf: usize,
        places: impl ExactSizeIterator<Item = usize>,
        mut f: impl FnMut(usize, Mapping) -> Mapping,
    ) {
        let base = leaf as u64 * LEAF;
        let leaf = &self.leaves[leaf];
        if let Some(words) = leaf.dense.get() {
            for i in places {
                let m = f(i, Mapping::unpack(words[i].load(Ordering::Acquire)));
                words[i].store(m.pack(), Ordering::Release);
            }
        } else if places.len() <= UPDATE_BY_PAGE {
            for i in places {
                let l = LogicalPage(base + i as u64);
                self.set(l, f(i, self.get(l)));
            }
        } else if !leaf.is_written() {
            // A leaf an open loads: its stretches straight from the mappings.
            let mut stretches = Vec::new();
            for i in places {
                let m = f(i, Mapping::UNWRITTEN);
                if m != Mapping::UNWRITTEN {
                    push_joined(&mut stretches, Stretch::of(i, m));
                }
            }
            leaf.store(stretches);
        } else {
            let mut words = leaf.words().expect("a written leaf");
            for i in places {
                words[i] = f(i, Mapping::unpack(words[i])).pack();
            }
            leaf.store_words(&words);
        }
    }

    /// Sets the mappings of the pages from `first` on to `maps`, a leaf at a time: how an
    /// open loads the map. A leaf is made only for a part that holds a mapping that is not
    /// `Mapping::UNWRITTEN`, in the form that fits it.
    pub fn set_run(&self, first: LogicalPage, maps: &[Mapping]) {
        self.update_run(first, maps.len() as u64, |l, _| {
            maps[(l.0 - first.0) as usize]
        });
    }

    /// Every page that maps to a physical page, with it, in order: a walk of the leaves
    /// that exist (a page of a leaf never made is unwritten).
    pub fn mapped(&self) -> impl Iterator<Item = (LogicalPage, PhysPage)> + '_ {
        self.mapped_runs()
            .flat_map(|(l, p, n)| (0..n).map(move |k| (LogicalPage(l.0 + k), PhysPage(p.0 + k))))
    }

    /// `mapped` as runs of consecutive pages on consecutive physical pages (first page, its
    /// physical page, pages), in order; a run does not cross leaves, and one of a sparse
    /// leaf costs what its stretch does.
    pub fn mapped_runs(&self) -> impl Iterator<Item = (LogicalPage, PhysPage, u64)> + '_ {
        self.leaves
            .iter()
            .enumerate()
            .flat_map(|(n, leaf)| leaf.mapped_runs(n as u64 * LEAF))
    }

    /// A copy of the leaves that exist, for a checkpoint, or the allocation that failed.
    /// The caller keeps the table from changing meanwhile (the volume's lock).
    pub fn snapshot(&self) -> Result<MapSnapshot, OutOfMemory> {
        let made = self.leaves.iter().filter(|l| l.is_written()).count();
        let mut leaves = Vec::new();
        leaves
            .try_reserve_exact(self.leaves.len())
            .map_err(|_| OutOfMemory::of::<Option<usize>>(self.leaves.len()))?;
        let mut words = Vec::new();
        let n = made * LEAF as usize;
        words
            .try_reserve_exact(n)
            .map_err(|_| OutOfMemory::of::<u64>(n))?;
        for leaf in self.leaves.iter() {
            let at = words.len();
            leaves.push(leaf.copy_words(&mut words).then_some(at));
        }
        Ok(MapSnapshot {
            words,
            leaves,
            pages: self.pages,
        })
    }

    /// Bytes of memory the table takes: the leaf table and the leaves made.
    pub fn memory_bytes(&self) -> u64 {
        let slots = self.leaves.len() * std::mem::size_of::<Leaf>();
        let made: usize = self.leaves.iter().map(Leaf::bytes).sum();
        (slots + made) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        assert!(t.memory_bytes() < empty + 128, "one page, one stretch");
        let mapped: Vec<(LogicalPage, PhysPage)> = t.mapped().collect();
        assert_eq!(mapped, [(LogicalPage(pages - 1), PhysPage(9))]);
        let snap = t.snapshot().expect("memory");
        assert_eq!(snap.words().len() as u64, pages);
        assert_eq!(snap.words().last(), Some(m.pack()));
        assert_eq!(snap.words().filter(|&w| w != UNWRITTEN_WORD).count(), 1);
        // Set back to unwritten, the leaf goes (a reader still holding it reads it whole).
        t.set(LogicalPage(pages - 1), Mapping::UNWRITTEN);
        assert_eq!(t.get(LogicalPage(pages - 1)), Mapping::UNWRITTEN);
        assert_eq!(t.memory_bytes(), empty);
    }

    /// A leaf written at home, or rewritten elsewhere in one sequential stretch, is one
    /// stretch of 16 bytes whatever its pages; scattered single pages make it dense.
    #[test]
    fn runs_cost_a_stretch_and_scattered_pages_a_word_each() {
        let t = RemapTable::new(4 * LEAF);
        let empty = t.memory_bytes();
        let at = |p: u64, open| Mapping {
            phys: Some(PhysPage(p)),
            open,
        };
        for l in 0..LEAF {
            t.set(LogicalPage(l), at(l, true));
        }
        t.update_run(LogicalPage(0), LEAF, |_, m| Mapping { open: false, ..m });
        for l in LEAF..2 * LEAF {
            t.set(LogicalPage(l), at(1_000_000 + l, false));
        }
        let two_stretches = t.memory_bytes() - empty;
        assert!(
            two_stretches < 200,
            "{two_stretches} bytes for two leaves of one stretch"
        );
        for k in 0..LEAF / 2 {
            let l = 2 * LEAF + 2 * k;
            t.set(LogicalPage(l), at(5_000_000 + 7 * k, false));
        }
        assert!(
            t.memory_bytes() - empty - two_stretches >= LEAF * 8,
            "dense"
        );
        for l in 0..3 * LEAF {
            let want = match l / LEAF {
                0 => at(l, false),
                1 => at(1_000_000 + l, false),
                _ if l % 2 == 0 => at(5_000_000 + 7 * ((l - 2 * LEAF) / 2), false),
                _ => Mapping::UNWRITTEN,
            };
            assert_eq!(t.get(LogicalPage(l)), want, "page {l}");
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Set(u64, Mapping),
        Run(u64, Vec<Mapping>),
        Open(u64, u64, bool),
        Many(Vec<(u64, Mapping)>),
    }

    fn mapping() -> impl Strategy<Value = Mapping> {
        // Few physical pages near each other, so that stretches join and split.
        (0u64..6, 0u64..40, any::<bool>()).prop_map(|(kind, p, open)| Mapping {
            phys: (kind != 0).then_some(PhysPage(p)),
            open: kind == 1 || open,
        })
    }

    fn op(pages: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..pages, mapping()).prop_map(|(l, m)| Op::Set(l, m)),
            1 => (0..pages, proptest::collection::vec(mapping(), 1..200)).prop_map(move |(l, v)| {
                let n = v.len().min((pages - l) as usize);
                Op::Run(l, v[..n].to_vec())
            }),
            1 => (0..pages, 1u64..3000, any::<bool>()).prop_map(move |(l, n, o)| Op::Open(l, n.min(pages - l), o)),
            1 => proptest::collection::btree_map(0..pages, mapping(), 1..100)
                .prop_map(|m| Op::Many(m.into_iter().collect())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        /// Whatever the writes, each page reads as a plain array of mappings says, and so
        /// do `mapped` and a snapshot; sparse and dense leaves alike (a thousand single
        /// pages in one leaf make it dense in most cases).
        #[test]
        fn the_table_reads_as_an_array_of_mappings(ops in proptest::collection::vec(op(LEAF + 50), 1..1500)) {
            let pages = LEAF + 50;
            let t = RemapTable::new(pages);
            let mut model = vec![Mapping::UNWRITTEN; pages as usize];
            for op in ops {
                match op {
                    Op::Set(l, m) => {
                        t.set(LogicalPage(l), m);
                        model[l as usize] = m;
                    }
                    Op::Run(l, v) => {
                        t.set_run(LogicalPage(l), &v);
                        model[l as usize..l as usize + v.len()].copy_from_slice(&v);
                    }
                    Op::Many(pages) => {
                        t.update_many(&pages, |&(l, _)| LogicalPage(l), |&(_, m), _| m);
                        for (l, m) in pages {
                            model[l as usize] = m;
                        }
                    }
                    Op::Open(l, n, open) => {
                        t.update_run(LogicalPage(l), n, |_, m| Mapping { open, ..m });
                        for m in &mut model[l as usize..(l + n) as usize] {
                            *m = Mapping { open, ..*m };
                        }
                    }
                }
            }
            for (l, m) in model.iter().enumerate() {
                prop_assert_eq!(t.get(LogicalPage(l as u64)), *m, "page {}", l);
            }
            let want: Vec<_> = model
                .iter()
                .enumerate()
                .filter_map(|(l, m)| Some((LogicalPage(l as u64), m.phys?)))
                .collect();
            prop_assert_eq!(t.mapped().collect::<Vec<_>>(), want);
            let words: Vec<u64> = t.snapshot().expect("memory").words().collect();
            prop_assert_eq!(words, model.iter().map(|m| m.pack()).collect::<Vec<_>>());
        }
    }
}
