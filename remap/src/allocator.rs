//! The page allocator: one bit per physical page, claimed and released with atomics.
//!
//! There is no global lock: each I/O queue owns a `Stream`, a cursor that walks the bitmap
//! from its own starting point, so one writer's sequential data lands in consecutive physical
//! pages and two queues rarely touch the same word. A write first tries its logical page's
//! home (the physical page with the same index), which keeps an unfragmented device laid out
//! as identity.
//!
//! The bitmap's words live in leaves of `LEAF_WORDS`, each made by the first claim in it: a
//! leaf not made is all free, so a store never written costs no memory but the leaf table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::{OutOfMemory, PhysPage};

/// Words per leaf: 4 KiB of bitmap for 32,768 pages (128 MiB of 4 KiB pages).
const LEAF_WORDS: usize = 512;

/// Words of the bitmap `allocate_run` looks through for a free run (64 pages each): 256 MiB
/// of 4 KiB pages, a bounded cost per request however large the device.
const SCAN_WORDS: u64 = 1024;
/// Free runs too short for the request that `allocate_run` measures before it gives up: a
/// bounded cost however fragmented the free pages are.
const SCAN_RUNS: u32 = 32;

/// The free/used state of every physical page.
pub struct PageAllocator {
    /// Bit set: the page is used (live data, history, or claimed by an in-flight write).
    /// Leaves of `LEAF_WORDS` words; one not made yet is all free.
    leaves: Box<[OnceLock<Box<[AtomicU64]>>]>,
    /// Words of the whole bitmap.
    nwords: usize,
    pages: u64,
    free: AtomicU64,
}

/// A cursor one I/O queue allocates from.
#[derive(Clone, Debug)]
pub struct Stream {
    next: u64,
}

impl PageAllocator {
    /// An allocator of `pages` physical pages, all free.
    pub fn new(pages: u64) -> PageAllocator {
        Self::try_new(pages).expect("memory for the page allocator")
    }

    /// `new`, or an error when the memory for the leaf table cannot be had.
    pub fn try_new(pages: u64) -> Result<PageAllocator, OutOfMemory> {
        let nwords = usize::try_from(pages.div_ceil(64)).unwrap_or(usize::MAX);
        Ok(PageAllocator {
            leaves: crate::leaf_table(nwords.div_ceil(LEAF_WORDS))?.into_boxed_slice(),
            nwords,
            pages,
            free: AtomicU64::new(pages),
        })
    }

    /// Bits past the last page in word `w`: always used, so a scan never hands them out.
    fn past_end(&self, w: usize) -> u64 {
        if w + 1 == self.nwords && !self.pages.is_multiple_of(64) {
            !0u64 << (self.pages % 64)
        } else {
            0
        }
    }

    /// Word `w` of the bitmap as it is now.
    fn load(&self, w: usize) -> u64 {
        match self.leaves[w / LEAF_WORDS].get() {
            Some(leaf) => leaf[w % LEAF_WORDS].load(Ordering::Acquire),
            None => self.past_end(w),
        }
    }

    /// Word `w` of the bitmap, its leaf made if it was not.
    fn word(&self, w: usize) -> &AtomicU64 {
        let leaf = self.leaves[w / LEAF_WORDS].get_or_init(|| {
            let first = w / LEAF_WORDS * LEAF_WORDS;
            (first..(first + LEAF_WORDS).min(self.nwords))
                .map(|v| AtomicU64::new(self.past_end(v)))
                .collect()
        });
        &leaf[w % LEAF_WORDS]
    }

    /// Bytes of memory the bitmap takes: the leaf table and the leaves made.
    pub fn memory_bytes(&self) -> u64 {
        let slots = self.leaves.len() * std::mem::size_of::<OnceLock<Box<[AtomicU64]>>>();
        let made = self.leaves.iter().filter(|l| l.get().is_some()).count();
        (slots + made * LEAF_WORDS * 8) as u64
    }

    /// The number of physical pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Pages neither used nor claimed right now.
    pub fn free_pages(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// A stream that starts its scan at `start`.
    pub fn stream(&self, start: u64) -> Stream {
        Stream {
            next: if self.pages == 0 {
                0
            } else {
                start % self.pages
            },
        }
    }

    /// Is `p` used?
    pub fn is_used(&self, p: PhysPage) -> bool {
        let (w, b) = Self::locate(p);
        self.load(w) & b != 0
    }

    /// Claims `p` if it is free. Returns whether this call claimed it.
    pub fn claim(&self, p: PhysPage) -> bool {
        assert!(p.0 < self.pages, "claim of page {} of {}", p.0, self.pages);
        let (w, b) = Self::locate(p);
        let old = self.word(w).fetch_or(b, Ordering::AcqRel);
        if old & b == 0 {
            self.free.fetch_sub(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Claims the pages of `bits` in word `w` of the bitmap (bit `b`: page `64 w + b`),
    /// those not claimed yet: how an open claims every page referenced, 64 at a time.
    pub fn claim_word(&self, w: usize, bits: u64) {
        assert!(
            w < self.nwords && bits & self.past_end(w) == 0,
            "claim of word {w} ({bits:#x}) of {} pages",
            self.pages
        );
        let old = self.word(w).fetch_or(bits, Ordering::AcqRel);
        self.free
            .fetch_sub(u64::from((bits & !old).count_ones()), Ordering::Relaxed);
    }

    /// Returns `p` to the free pool. Releasing a free page is a bug of the caller's accounting.
    pub fn release(&self, p: PhysPage) {
        assert!(
            p.0 < self.pages,
            "release of page {} of {}",
            p.0,
            self.pages
        );
        let (w, b) = Self::locate(p);
        let old = self.word(w).fetch_and(!b, Ordering::AcqRel);
        assert!(old & b != 0, "double free of physical page {}", p.0);
        self.free.fetch_add(1, Ordering::Relaxed);
    }

    /// Claims a free page: `home` if it is free, else the next free page after the stream's
    /// cursor. `None` when every page is used.
    pub fn allocate(&self, stream: &mut Stream, home: Option<PhysPage>) -> Option<PhysPage> {
        if let Some(h) = home {
            if h.0 < self.pages && self.claim(h) {
                return Some(h);
            }
        }
        if self.pages == 0 {
            return None;
        }
        let nwords = self.nwords;
        let mut w = (stream.next / 64) as usize;
        // Skip the bits below the cursor in its first word, so consecutive allocations ascend.
        let mut mask = !0u64 << (stream.next % 64);
        // One more word than the bitmap has, so the first word is seen again whole.
        for _ in 0..=nwords {
            loop {
                let word = self.load(w);
                let candidates = !word & mask;
                if candidates == 0 {
                    break;
                }
                let bit = candidates.trailing_zeros();
                let p = PhysPage(w as u64 * 64 + u64::from(bit));
                if self.claim(p) {
                    stream.next = (p.0 + 1) % self.pages;
                    return Some(p);
                }
                // Another stream took it between our load and claim: look again.
            }
            w = (w + 1) % nwords;
            mask = !0;
        }
        None
    }

    /// Claims up to `want` consecutive pages at or after the stream's cursor: the first run
    /// of `want` free pages it meets (wrapping), so a multi-page write lands in one extent
    /// and is one data op, then read back as one. Returns the run's first page and length,
    /// which is shorter than `want` only when another stream claimed a page of it meanwhile;
    /// `None` when it finds no run that long (the caller then allocates page by page).
    ///
    /// The search is bounded, so that a fragmented bitmap costs little: it looks at most
    /// `SCAN_WORDS` words ahead and measures at most `SCAN_RUNS` free runs that turn out too
    /// short.
    pub fn allocate_run(&self, stream: &mut Stream, want: u32) -> Option<(PhysPage, u32)> {
        if want == 0 || u64::from(want) > self.pages {
            return None;
        }
        let pages = self.pages;
        // `p` counts pages looked at from the cursor; `pos` is where that is in the bitmap.
        let mut p = stream.next;
        let end = p + (SCAN_WORDS * 64).min(pages);
        let mut short_runs = 0;
        while p < end && short_runs < SCAN_RUNS {
            let pos = p % pages;
            let (w, _) = Self::locate(PhysPage(pos));
            let candidates = !self.load(w) & (!0u64 << (pos % 64));
            if candidates == 0 {
                // Nothing free in the rest of this word. (Bits past the last page are used,
                // so the last word ends here too and the next position wraps to 0.)
                p += (64 - pos % 64).min(self.pages - pos);
                continue;
            }
            let at = w as u64 * 64 + u64::from(candidates.trailing_zeros());
            p += at - pos;
            let free = self.free_run(at, want);
            if free >= want {
                let got = self.claim_run(PhysPage(at), want);
                if got > 0 {
                    stream.next = (at + u64::from(got)) % self.pages;
                    return Some((PhysPage(at), got));
                }
                p += 1;
            } else {
                // Too short: skip it and the used page that ends it (or wrap, if the bitmap
                // ends it).
                short_runs += 1;
                p += (u64::from(free) + 1).min(self.pages - at);
            }
        }
        None
    }

    /// How many pages from `at` are free, counting up to `max` and not past the last page.
    fn free_run(&self, at: u64, max: u32) -> u32 {
        let limit = u64::from(max).min(self.pages - at) as u32;
        let mut n = 0;
        while n < limit {
            let (w, _) = Self::locate(PhysPage(at + u64::from(n)));
            let bit = ((at + u64::from(n)) % 64) as u32;
            let used = self.load(w) >> bit;
            // Free bits from `bit` up: trailing zeros of the used bits (64 - bit if none).
            let free_here = if used == 0 {
                64 - bit
            } else {
                used.trailing_zeros()
            };
            n += free_here;
            if free_here < 64 - bit {
                break;
            }
        }
        n.min(limit)
    }

    /// Claims `count` pages from `first` in order, stopping at the first that another stream
    /// took; returns how many it claimed.
    fn claim_run(&self, first: PhysPage, count: u32) -> u32 {
        (0..count)
            .take_while(|&i| self.claim(PhysPage(first.0 + u64::from(i))))
            .count() as u32
    }

    fn locate(p: PhysPage) -> (usize, u64) {
        ((p.0 / 64) as usize, 1u64 << (p.0 % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn home_first_then_stream_order() {
        let a = PageAllocator::new(100);
        let mut s = a.stream(50);
        assert_eq!(a.allocate(&mut s, Some(PhysPage(3))), Some(PhysPage(3)));
        assert_eq!(a.allocate(&mut s, Some(PhysPage(3))), Some(PhysPage(50)));
        assert_eq!(a.allocate(&mut s, None), Some(PhysPage(51)));
        assert_eq!(a.free_pages(), 97);
    }

    #[test]
    fn exhausts_every_page_exactly_once_and_wraps() {
        let a = PageAllocator::new(130);
        let mut s = a.stream(129);
        let mut seen = HashSet::new();
        while let Some(p) = a.allocate(&mut s, None) {
            assert!(p.0 < 130);
            assert!(seen.insert(p), "page {p:?} handed out twice");
        }
        assert_eq!(seen.len(), 130);
        assert_eq!(a.free_pages(), 0);
        a.release(PhysPage(7));
        assert_eq!(a.allocate(&mut s, None), Some(PhysPage(7)));
    }

    #[test]
    fn runs_come_from_the_first_free_extent_long_enough() {
        let a = PageAllocator::new(200);
        // Used: 10..=12 and 20; free runs 0..10, 13..20, 21..200.
        for p in [10, 11, 12, 20] {
            assert!(a.claim(PhysPage(p)));
        }
        let mut s = a.stream(5);
        assert_eq!(a.allocate_run(&mut s, 5), Some((PhysPage(5), 5)));
        assert_eq!(a.allocate_run(&mut s, 7), Some((PhysPage(13), 7)));
        assert_eq!(a.allocate_run(&mut s, 100), Some((PhysPage(21), 100)));
        // 121..200 is 79 pages; 0..5 is 5: no run of 80 anywhere.
        assert_eq!(a.allocate_run(&mut s, 80), None);
        // Wraps to the start for a run that fits there.
        assert_eq!(a.allocate_run(&mut s, 79), Some((PhysPage(121), 79)));
        assert_eq!(a.allocate_run(&mut s, 5), Some((PhysPage(0), 5)));
        assert_eq!(a.free_pages(), 0);
        assert_eq!(a.allocate_run(&mut s, 1), None);
        assert_eq!(a.allocate_run(&mut s, 0), None);
    }

    #[test]
    fn a_fragmented_bitmap_gives_up_soon_and_single_pages_still_come() {
        let a = PageAllocator::new(64 * 64);
        // Every other page used: free runs of one page only, then a free run of 8 far off.
        for p in 0..64 * 32 {
            if p % 2 == 0 || p >= 64 * 32 - 8 {
                assert!(a.claim(PhysPage(p)));
            }
        }
        for p in 64 * 32..64 * 64 {
            assert!(a.claim(PhysPage(p)));
        }
        for p in 64 * 40..64 * 40 + 8 {
            a.release(PhysPage(p));
        }
        let mut s = a.stream(0);
        // The run of 8 lies past SCAN_RUNS short runs: not found.
        assert_eq!(a.allocate_run(&mut s, 8), None);
        assert_eq!(a.allocate(&mut s, None), Some(PhysPage(1)));
        // From right before it, it is.
        let mut t = a.stream(64 * 40 - 3);
        assert_eq!(a.allocate_run(&mut t, 8), Some((PhysPage(64 * 40), 8)));
    }

    #[test]
    fn runs_never_cross_the_end_or_hand_out_a_page_twice() {
        let a = PageAllocator::new(130);
        let mut s = a.stream(100);
        let mut seen = HashSet::new();
        for want in [7u32, 13, 1, 64, 3, 29, 2, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1] {
            if let Some((p, n)) = a.allocate_run(&mut s, want) {
                assert_eq!(n, want);
                assert!(p.0 + u64::from(n) <= 130, "run {p:?}+{n} crosses the end");
                for i in 0..u64::from(n) {
                    assert!(seen.insert(p.0 + i), "page {} handed out twice", p.0 + i);
                }
            }
        }
        assert_eq!(seen.len() as u64 + a.free_pages(), 130);
    }

    #[test]
    fn only_leaves_claimed_in_take_memory_and_the_end_stays_used() {
        let pages = (3 * LEAF_WORDS * 64 + 70) as u64;
        let a = PageAllocator::new(pages);
        let empty = a.memory_bytes();
        assert!(empty < 1024, "{empty} bytes for an untouched bitmap");
        assert!(!a.is_used(PhysPage(pages - 1)));
        // The last page: its leaf is made with the bits past the end used.
        let mut s = a.stream(pages - 1);
        assert_eq!(a.allocate(&mut s, None), Some(PhysPage(pages - 1)));
        assert_eq!(a.memory_bytes(), empty + LEAF_WORDS as u64 * 8);
        // Wrapping, the next page comes from the start: nothing past the end is handed out.
        assert_eq!(a.allocate(&mut s, None), Some(PhysPage(0)));
        assert_eq!(
            a.allocate_run(&mut a.stream(pages - 3), 5),
            Some((PhysPage(1), 5))
        );
        assert_eq!(a.free_pages(), pages - 7);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let a = PageAllocator::new(10);
        assert!(a.claim(PhysPage(1)));
        a.release(PhysPage(1));
        a.release(PhysPage(1));
    }

    #[test]
    fn concurrent_streams_never_share_a_page() {
        let a = std::sync::Arc::new(PageAllocator::new(10_000));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let a = a.clone();
                std::thread::spawn(move || {
                    let mut s = a.stream(i * 2500);
                    let mut got = Vec::new();
                    while let Some(p) = a.allocate(&mut s, None) {
                        got.push(p);
                    }
                    got
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for p in h.join().unwrap() {
                assert!(all.insert(p));
            }
        }
        assert_eq!(all.len(), 10_000);
    }
}
