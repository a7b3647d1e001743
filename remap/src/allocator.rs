//! The page allocator: one bit per physical page, claimed and released with atomics.
//!
//! There is no global lock: each I/O queue owns a `Stream`, a cursor that walks the bitmap
//! from its own starting point, so one writer's sequential data lands in consecutive physical
//! pages and two queues rarely touch the same word. A write first tries its logical page's
//! home (the physical page with the same index), which keeps an unfragmented device laid out
//! as identity.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::PhysPage;

/// The free/used state of every physical page.
pub struct PageAllocator {
    /// Bit set: the page is used (live data, history, or claimed by an in-flight write).
    words: Box<[AtomicU64]>,
    pages: u32,
    free: AtomicU64,
}

/// A cursor one I/O queue allocates from.
#[derive(Clone, Debug)]
pub struct Stream {
    next: u32,
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

    /// A stream that starts its scan at `start`.
    pub fn stream(&self, start: u32) -> Stream {
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
        let nwords = self.words.len();
        let mut w = (stream.next / 64) as usize;
        // Skip the bits below the cursor in its first word, so consecutive allocations ascend.
        let mut mask = !0u64 << (stream.next % 64);
        // One more word than the bitmap has, so the first word is seen again whole.
        for _ in 0..=nwords {
            loop {
                let word = self.words[w].load(Ordering::Acquire);
                let candidates = !word & mask;
                if candidates == 0 {
                    break;
                }
                let bit = candidates.trailing_zeros();
                let p = PhysPage(w as u32 * 64 + bit);
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
