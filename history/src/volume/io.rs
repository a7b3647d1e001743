//! The I/O API the queue threads call: resolve a page, allocate one for a write, make
//! written pages live, discard, and read or write a page through the store.

use crate::format::PAGE_SIZE;
use crate::journal::Record;
use crate::{Error, LogicalPage, PhysPage, Store, Stream};

use super::{CommitDue, Volume};

/// Tries an allocation makes before it fails with `Error::NoSpace` when every page stays in
/// use, and the wait between two.
pub const ALLOCATE_ATTEMPTS: u32 = 1000;
pub const ALLOCATE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

impl<S: Store> Volume<S> {
    /// The stream for queue `index` of `count`: each starts at its own share of the history
    /// area, so queues allocate from different places.
    pub fn stream(&self, index: u32, count: u32) -> Stream {
        let area = self.layout.physical_pages - self.layout.logical_pages;
        let start = self.layout.logical_pages + area * u64::from(index) / u64::from(count.max(1));
        self.alloc.stream(start)
    }

    /// The physical page `l` reads from now; `None` reads as zeros.
    pub fn resolve(&self, l: LogicalPage) -> Result<Option<PhysPage>, Error> {
        self.check_in_range(l)?;
        Ok(self.map.get(l).phys)
    }

    /// `resolve` of `count` pages from `first`, appended to `out`.
    pub fn resolve_pages(
        &self,
        first: LogicalPage,
        count: usize,
        out: &mut Vec<Option<PhysPage>>,
    ) -> Result<(), Error> {
        self.check_run_in_range(first, count as u64)?;
        out.extend((0..count as u64).map(|i| self.map.get(LogicalPage(first.0 + i)).phys));
        Ok(())
    }

    /// Claims the page `l`'s next data is to be written into. May reclaim history first
    /// (`reclaim_if_low`). When every page is in use (claimed by writes in flight, or
    /// quarantined for reads in flight, which finish soon) it waits for one, sleeping: tests
    /// and tools. The daemon calls `try_allocate_run`, has its flusher thread reclaim, and
    /// waits on its ring instead.
    pub fn allocate(&self, stream: &mut Stream, l: LogicalPage) -> Result<PhysPage, Error> {
        let mut one = Vec::with_capacity(1);
        for attempt in 0..ALLOCATE_ATTEMPTS {
            self.reclaim_if_low()?;
            if self.try_allocate_run(stream, l, 1, &mut one)? == 1 {
                return Ok(one[0]);
            }
            if attempt > 0 {
                std::thread::sleep(ALLOCATE_RETRY_DELAY);
            }
        }
        Err(Error::NoSpace)
    }

    /// True when free pages are below the low water mark: a `reclaim_if_low` would retire
    /// history now. Cheap: the I/O path asks it on every allocation.
    pub fn reclaim_due(&self) -> bool {
        self.alloc.free_pages() < self.low_water
    }

    /// If free pages are below the low water mark, frees some: the quarantined pages no
    /// read needs any more, then, if still below, history up to twice the mark (the oldest
    /// safe points first, see `retire_until`) and a commit that makes the freed pages
    /// reusable. Waits for a commit in progress and commits: not for a queue thread, which
    /// leaves it to the daemon's flusher thread.
    pub fn reclaim_if_low(&self) -> Result<(), Error> {
        if self.reclaim_due() {
            self.release_quarantine();
            if self.reclaim_due() {
                self.reclaim()?;
            }
        }
        Ok(())
    }

    /// Claims the pages the `count` pages from `first` of one write are to be written into,
    /// as one extent where it can, without waiting and without reclaiming: claims pages for
    /// `first`, `first + 1`, ... that are consecutive on the store, appends them to `out` and
    /// returns how many (at least 1, at most `count`; 0 when no page is free now, or `count`
    /// is 0). The caller calls again for the rest; when none is free, it has pages
    /// reclaimed (`reclaim_if_low`, here or on another thread) and tries again after
    /// `ALLOCATE_RETRY_DELAY`, giving up at some point with `Error::NoSpace` (`allocate`:
    /// after `ALLOCATE_ATTEMPTS`).
    ///
    /// The pages are the home pages while those are free (an unfragmented device stays laid
    /// out as identity), else the first free run long enough after the stream's cursor
    /// (`PageAllocator::allocate_run`, a bounded search), else the next free page after
    /// it. A sequential rewrite thus lands in few extents, written and later read
    /// with one op each, wherever free runs that long exist.
    pub fn try_allocate_run(
        &self,
        stream: &mut Stream,
        first: LogicalPage,
        count: usize,
        out: &mut Vec<PhysPage>,
    ) -> Result<usize, Error> {
        let want = count.min(u32::MAX as usize) as u32;
        if want == 0 {
            return Ok(0);
        }
        self.check_run_in_range(first, u64::from(want))?;
        if self.reclaim_due() {
            // Cheap, and it may be enough: the pages a commit freed, once no read needs them.
            self.release_quarantine();
        }
        let home = PhysPage(first.0);
        if self.alloc.claim(home) {
            // At home: go on at home while the home pages are free.
            out.push(home);
            let more = (1..u64::from(want))
                .take_while(|&i| self.alloc.claim(PhysPage(home.0 + i)))
                .inspect(|&i| out.push(PhysPage(home.0 + i)))
                .count();
            return Ok(1 + more);
        }
        if want > 1 {
            if let Some((p, n)) = self.alloc.allocate_run(stream, want) {
                out.extend((0..u64::from(n)).map(|i| PhysPage(p.0 + i)));
                return Ok(n as usize);
            }
        }
        match self.alloc.allocate(stream, None) {
            Some(p) => {
                out.push(p);
                Ok(1)
            }
            None => Ok(0),
        }
    }

    /// Gives back a page whose data write failed.
    pub fn abandon(&self, p: PhysPage) {
        self.alloc.release(p);
    }

    /// Makes the pages written by `allocate` + data write live: `stage_writes`, then
    /// `record_staged`.
    pub fn commit_writes(&self, pages: &[(LogicalPage, PhysPage)]) -> Result<(), Error> {
        let due = self.stage_writes(pages)?;
        self.commit_if(due)?;
        self.record_staged()
    }

    /// After a staging on this thread, outside the daemon: commits when one is due, unless
    /// this thread's own staged commit is under way (`CommitDue::Wait`), which takes these
    /// records' turn: its `finish` comes first.
    fn commit_if(&self, due: CommitDue) -> Result<(), Error> {
        match due {
            CommitDue::Soon => self.commit(false),
            CommitDue::No | CommitDue::Wait => Ok(()),
        }
    }

    /// Makes `count` pages from `first` read as zeros and frees their pages once no safe
    /// point needs them: `stage_discard`, then `record_staged`.
    pub fn discard(&self, first: LogicalPage, count: u64) -> Result<(), Error> {
        let due = self.stage_discard(first, count)?;
        self.commit_if(due)?;
        self.record_staged()
    }

    /// Makes the pages written by `allocate` + data write live in memory and queues their
    /// records. The request completes only after a `record_staged` that began after this
    /// returned: the daemon stages the writes of one pass of a queue's ring and records
    /// them with one journal write (group commit). Returns whether a commit is due: the
    /// caller makes one, now or soon, or waits for one (`commit_due`).
    pub fn stage_writes(&self, pages: &[(LogicalPage, PhysPage)]) -> Result<CommitDue, Error> {
        let mut st = self.state.lock();
        for &(l, p) in pages {
            self.check_in_range(l)?;
            assert!(self.alloc.is_used(p), "commit of unclaimed page {}", p.0);
        }
        for &(l, p) in pages {
            self.apply_locked(&mut st, Record::Write { l, p })?;
        }
        self.commit_due(st)
    }

    /// `stage_writes` for a discard of `count` pages from `first`.
    pub fn stage_discard(&self, first: LogicalPage, count: u64) -> Result<CommitDue, Error> {
        if count == 0 {
            return Ok(CommitDue::No);
        }
        self.check_run_in_range(first, count)?;
        let mut st = self.state.lock();
        let mut l = first.0;
        let end = first.0 + count;
        while l < end {
            // A record counts at most `u32::MAX` pages.
            let n = (end - l).min(u64::from(u32::MAX)) as u32;
            let r = Record::Discard {
                l: LogicalPage(l),
                count: n,
            };
            self.apply_locked(&mut st, r)?;
            l += u64::from(n);
        }
        self.commit_due(st)
    }

    /// Fills `buf` with physical page `p`, or zeros.
    pub(super) fn read_phys(&self, p: Option<PhysPage>, buf: &mut [u8]) -> Result<(), Error> {
        assert_eq!(buf.len() as u64, PAGE_SIZE);
        match p {
            None => buf.fill(0),
            Some(p) => self
                .store
                .read_at(self.layout.page_offset(p), buf)
                .map_err(Error::io("reading a data page"))?,
        }
        Ok(())
    }

    /// Reads page `l` through the store (tests and tools; the daemon reads via io_uring).
    pub fn read_page(&self, l: LogicalPage, buf: &mut [u8]) -> Result<(), Error> {
        self.read_phys(self.resolve(l)?, buf)
    }

    /// Writes page `l` through the store (tests and tools; the daemon writes via io_uring).
    pub fn write_page(
        &self,
        stream: &mut Stream,
        l: LogicalPage,
        data: &[u8],
    ) -> Result<(), Error> {
        assert_eq!(data.len() as u64, PAGE_SIZE);
        self.write_pages(stream, l, data)
    }

    /// Writes `data`, whole pages, from page `first` through the store, as one request:
    /// allocated by `try_allocate_run` (waiting, sleeping, while no page is free), written,
    /// then made live together (tests and tools; the daemon writes via io_uring).
    pub fn write_pages(
        &self,
        stream: &mut Stream,
        first: LogicalPage,
        data: &[u8],
    ) -> Result<(), Error> {
        assert!(
            (data.len() as u64).is_multiple_of(PAGE_SIZE),
            "a write of part of a page"
        );
        let count = data.len() / PAGE_SIZE as usize;
        let mut phys = Vec::with_capacity(count);
        let give_back = |phys: &[PhysPage]| phys.iter().for_each(|&p| self.abandon(p));
        let mut waits = 0;
        while phys.len() < count {
            let l = LogicalPage(first.0 + phys.len() as u64);
            let tried = self
                .reclaim_if_low()
                .and_then(|()| self.try_allocate_run(stream, l, count - phys.len(), &mut phys));
            match tried {
                Ok(0) if waits + 1 >= ALLOCATE_ATTEMPTS => {
                    give_back(&phys);
                    return Err(Error::NoSpace);
                }
                Ok(0) => {
                    waits += 1;
                    if waits > 1 {
                        std::thread::sleep(ALLOCATE_RETRY_DELAY);
                    }
                }
                Ok(_) => waits = 0,
                Err(e) => {
                    give_back(&phys);
                    return Err(e);
                }
            }
        }
        for (p, page) in phys.iter().zip(data.chunks(PAGE_SIZE as usize)) {
            if let Err(e) = self.store.write_at(self.layout.page_offset(*p), page) {
                give_back(&phys);
                return Err(Error::io("writing a data page")(e));
            }
        }
        let pages: Vec<_> = (first.0..)
            .map(LogicalPage)
            .zip(phys.iter().copied())
            .collect();
        self.commit_writes(&pages)
    }
}
