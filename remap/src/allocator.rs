//! The page allocator: one bit per physical page, claimed and released with atomics.
//!
//! There is no global lock: each I/O queue owns a `Stream`, a cursor that walks the bitmap
//! from its own starting point, so one writer's sequential data lands in consecutive physical
//! pages and two queues rarely touch the same word. A write first tries its logical page's
//! home (the physical page with the same index), which keeps an unfragmented device laid out
//! as identity.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::PhysPage;

/// Words of the bitmap `allocate_run` looks through for a free run (64 pages each): 256 MiB
/// of 4 KiB pages, a bounded cost per request however large and fragmented the device.
const SCAN_WORDS: u64 = 1024;

/// The free/used state of every physical page.
pub struct PageAllocator {
    /// Bit set: the page is used (live data, history, or claimed by an in-flight write).
    words: Box<[AtomicU64]>,
    pages: u32,
    free: AtomicU64,
}

/// A cursor one I/O queue allocates from, within an area of the physical pages it prefers
/// (the history area, so the home pages of other logical pages stay free for them).
#[derive(Clone, Debug)]
pub struct Stream {
    next: u32,
    /// The area, `lo..hi`; the cursor wraps within it.
    lo: u32,
    hi: u32,
    /// The cursor over every page, for when the area is full.
    spill: u32,
}

impl PageAllocator {
    /// An allocator of `pages` physical pages, all free.
    pub fn new(pages: u32) -> PageAllocator {
        let nwords = (pages as usize).div_ceil(64);
        let words: Box<[AtomicU64]> = (0..nwords).map(|_| AtomicU64::new(0)).collect();
        // Bits past the last page are marked used so a scan never hands them out.
        if !pages.is_multiple_of(64) {
            words[nwords - 1].store(!0u64 << (pages % 64), Ordering::Relaxed);
        }
        PageAllocator {
            words,
            pages,
            free: AtomicU64::new(u64::from(pages)),
        }
    }

    /// The number of physical pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Pages neither used nor claimed right now.
    pub fn free_pages(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// A stream over every page that starts its scan at `start`.
    pub fn stream(&self, start: u32) -> Stream {
        self.stream_in(start, 0..self.pages)
    }

    /// A stream that prefers the pages of `area` and starts its scan at `start` (moved into
    /// the area if outside it). An empty area, or one past the last page, is every page.
    pub fn stream_in(&self, start: u32, area: std::ops::Range<u32>) -> Stream {
        let (lo, hi) = if area.start < area.end.min(self.pages) {
            (area.start, area.end.min(self.pages))
        } else {
            (0, self.pages)
        };
        let next = if (lo..hi).contains(&start) { start } else { lo };
        Stream {
            next,
            lo,
            hi,
            spill: next,
        }
    }

    /// Is `p` used?
    pub fn is_used(&self, p: PhysPage) -> bool {
        let (w, b) = Self::locate(p);
        self.words[w].load(Ordering::Acquire) & b != 0
    }

    /// Claims `p` if it is free. Returns whether this call claimed it.
    pub fn claim(&self, p: PhysPage) -> bool {
        assert!(p.0 < self.pages, "claim of page {} of {}", p.0, self.pages);
        let (w, b) = Self::locate(p);
        let old = self.words[w].fetch_or(b, Ordering::AcqRel);
        if old & b == 0 {
            self.free.fetch_sub(1, Ordering::Relaxed);
            true
        } else {
            false
        }
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
        let old = self.words[w].fetch_and(!b, Ordering::AcqRel);
        assert!(old & b != 0, "double free of physical page {}", p.0);
        self.free.fetch_add(1, Ordering::Relaxed);
    }

    /// Claims a free page: `home` if it is free, else the next free page after the stream's
    /// cursor in its area, else (the area full) the first free page anywhere. `None` when
    /// every page is used.
    pub fn allocate(&self, stream: &mut Stream, home: Option<PhysPage>) -> Option<PhysPage> {
        if let Some(h) = home {
            if h.0 < self.pages && self.claim(h) {
                return Some(h);
            }
        }
        if let Some(p) = self.claim_first_free(stream.next, stream.lo, stream.hi) {
            stream.next = if p.0 + 1 == stream.hi {
                stream.lo
            } else {
                p.0 + 1
            };
            return Some(p);
        }
        if (stream.lo, stream.hi) == (0, self.pages) {
            return None;
        }
        let p = self.claim_first_free(stream.spill, 0, self.pages)?;
        stream.spill = (p.0 + 1) % self.pages;
        Some(p)
    }

    /// Claims the first free page of `lo..hi` at or after `from`, wrapping to `lo`.
    fn claim_first_free(&self, from: u32, lo: u32, hi: u32) -> Option<PhysPage> {
        if lo >= hi {
            return None;
        }
        let (first_word, last_word) = (lo as usize / 64, (hi as usize - 1) / 64);
        // Bits of word `w` inside `lo..hi`.
        let in_area = |w: usize| {
            let mut m = !0u64;
            if w == first_word {
                m &= !0u64 << (lo % 64);
            }
            if w == last_word && !hi.is_multiple_of(64) {
                m &= !(!0u64 << (hi % 64));
            }
            m
        };
        let mut w = from as usize / 64;
        // Skip the bits below the cursor in its first word, so consecutive allocations ascend.
        let mut mask = in_area(w) & (!0u64 << (from % 64));
        // One more word than the area has, so the first word is seen again whole.
        for _ in 0..=(last_word - first_word + 1) {
            loop {
                let word = self.words[w].load(Ordering::Acquire);
                let candidates = !word & mask;
                if candidates == 0 {
                    break;
                }
                let p = PhysPage(w as u32 * 64 + candidates.trailing_zeros());
                if self.claim(p) {
                    return Some(p);
                }
                // Another stream took it between our load and claim: look again.
            }
            w = if w == last_word { first_word } else { w + 1 };
            mask = in_area(w);
        }
        None
    }

    /// Claims up to `want` consecutive pages at or after the stream's cursor: the first run
    /// of `want` free pages within the next `SCAN_WORDS` words of the bitmap (wrapping), so a
    /// multi-page write lands in one extent and is one data op, then read back as one. Returns
    /// the run's first page and length, which is shorter than `want` only when another stream
    /// claimed a page of it meanwhile; `None` when no run that long is free in the window
    /// (the caller then allocates page by page, `allocate`).
    pub fn allocate_run(&self, stream: &mut Stream, want: u32) -> Option<(PhysPage, u32)> {
        let (lo, hi) = (stream.lo, stream.hi);
        if want == 0 || want > hi - lo {
            return None;
        }
        let span = u64::from(hi - lo);
        let scan = (SCAN_WORDS * 64).min(span);
        // `p` counts pages scanned from the cursor; `pos` is where that is in the area.
        let mut p = u64::from(stream.next - lo);
        let end = p + scan;
        while p < end {
            let pos = lo + (p % span) as u32;
            let (w, _) = Self::locate(PhysPage(pos));
            let candidates = !self.words[w].load(Ordering::Acquire) & (!0u64 << (pos % 64));
            if candidates == 0 {
                // Nothing free in the rest of this word (or of the area, which wraps).
                p += u64::from((64 - pos % 64).min(hi - pos));
                continue;
            }
            let at = w as u32 * 64 + candidates.trailing_zeros();
            p += u64::from(at - pos);
            if at >= hi {
                // The free bit is past the area's end, in its last word: wrap.
                p += u64::from(hi - pos);
                continue;
            }
            let free = self.free_run(at, want.min(hi - at));
            if free >= want {
                let got = self.claim_run(PhysPage(at), want);
                if got > 0 {
                    stream.next = if at + got == hi { lo } else { at + got };
                    return Some((PhysPage(at), got));
                }
                p += 1;
            } else {
                // The run from `at` is too short: skip it and the used page that ends it
                // (or wrap, if the area ends it).
                p += u64::from((free + 1).min(hi - at));
            }
        }
        None
    }

    /// How many pages from `at` are free, counting up to `max` and not past the last page.
    fn free_run(&self, at: u32, max: u32) -> u32 {
        let limit = max.min(self.pages - at);
        let mut n = 0;
        while n < limit {
            let (w, _) = Self::locate(PhysPage(at + n));
            let bit = (at + n) % 64;
            let used = self.words[w].load(Ordering::Acquire) >> bit;
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
            .take_while(|&i| self.claim(PhysPage(first.0 + i)))
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
    fn a_stream_keeps_to_its_area_until_the_area_is_full() {
        let a = PageAllocator::new(100);
        let mut s = a.stream_in(90, 80..100);
        let got: Vec<u32> = (0..20)
            .map(|_| a.allocate(&mut s, None).unwrap().0)
            .collect();
        assert_eq!(
            got,
            (90..100).chain(80..90).collect::<Vec<_>>(),
            "wraps in the area"
        );
        // The area is full: any free page, from the stream's own cursor.
        assert_eq!(a.allocate(&mut s, None), Some(PhysPage(0)));
        assert_eq!(a.allocate(&mut s, None), Some(PhysPage(1)));
        // Room in the area again: it is preferred.
        a.release(PhysPage(85));
        assert_eq!(a.allocate(&mut s, None), Some(PhysPage(85)));
        assert_eq!(a.allocate(&mut s, None), Some(PhysPage(2)));
        // Runs come from the area only.
        a.release(PhysPage(86));
        a.release(PhysPage(87));
        assert_eq!(a.allocate_run(&mut s, 3), None);
        assert_eq!(a.allocate_run(&mut s, 2), Some((PhysPage(86), 2)));
        // An empty area is every page; a start outside the area starts at its beginning.
        let b = PageAllocator::new(10);
        let mut t = b.stream_in(5, 3..3);
        assert_eq!(b.allocate(&mut t, None), Some(PhysPage(5)));
        let mut u = b.stream_in(1, 4..8);
        assert_eq!(b.allocate(&mut u, None), Some(PhysPage(4)));
    }

    #[test]
    fn runs_never_cross_the_end_or_hand_out_a_page_twice() {
        let a = PageAllocator::new(130);
        let mut s = a.stream(100);
        let mut seen = HashSet::new();
        for want in [7u32, 13, 1, 64, 3, 29, 2, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1] {
            if let Some((p, n)) = a.allocate_run(&mut s, want) {
                assert_eq!(n, want);
                assert!(p.0 + n <= 130, "run {p:?}+{n} crosses the end");
                for i in 0..n {
                    assert!(seen.insert(p.0 + i), "page {} handed out twice", p.0 + i);
                }
            }
        }
        assert_eq!(seen.len() as u64 + a.free_pages(), 130);
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
