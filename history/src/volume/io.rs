//! The I/O API the queue threads call: resolve a page, allocate one for a write, make
//! written pages live, discard, and read or write a page through the store.

use crate::format::PAGE_SIZE;
use crate::journal::Record;
use crate::{Error, LogicalPage, PhysPage, Store, Stream};

use super::apply::Apply;
use super::{State, Volume};

impl<S: Store> Volume<S> {
    /// The stream for queue `index` of `count`: each starts at its own share of the history
    /// area, so queues allocate from different places.
    pub fn stream(&self, index: u32, count: u32) -> Stream {
        let area = self.layout.physical_pages - self.layout.logical_pages;
        let start = self.layout.logical_pages + area * u64::from(index) / u64::from(count.max(1));
        self.alloc.stream(start as u32)
    }

    /// The physical page `l` reads from now; `None` reads as zeros.
    pub fn resolve(&self, l: LogicalPage) -> Result<Option<PhysPage>, Error> {
        self.check(l)?;
        Ok(self.map.get(l).phys)
    }

    /// Claims the page `l`'s next data is to be written into. May reclaim history first.
    pub fn allocate(&self, stream: &mut Stream, l: LogicalPage) -> Result<PhysPage, Error> {
        self.check(l)?;
        let home = PhysPage(l.0 as u32);
        for attempt in 0..1000 {
            if self.alloc.free_pages() < self.low_water {
                self.release_quarantine();
                if self.alloc.free_pages() < self.low_water {
                    self.reclaim()?;
                }
            }
            if let Some(p) = self.alloc.allocate(stream, Some(home)) {
                return Ok(p);
            }
            if attempt > 0 {
                // Every page is live or claimed by writes still in flight: they finish soon.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Err(Error::NoSpace)
    }

    /// Gives back a page whose data write failed.
    pub fn abandon(&self, p: PhysPage) {
        self.alloc.release(p);
    }

    /// Makes the pages written by `allocate` + data write live.
    pub fn commit_writes(&self, pages: &[(LogicalPage, PhysPage)]) -> Result<(), Error> {
        let mut st = self.state.lock();
        for &(l, p) in pages {
            self.check(l)?;
            assert!(self.alloc.is_used(p), "commit of unclaimed page {}", p.0);
        }
        let State {
            window,
            refs,
            pending,
            pending_free,
            ..
        } = &mut *st;
        let mut apply = Apply {
            map: &self.map,
            window,
            refs,
            free: |q| pending_free.push(q),
        };
        for &(l, p) in pages {
            apply.set_page(l, Some(p));
            pending.push(&Record::Write { l, p });
        }
        let full = pending.len() > self.commit_threshold;
        drop(st);
        if full {
            self.commit(false)
        } else {
            self.write_unsynced()
        }
    }

    /// Makes `count` pages from `first` read as zeros and frees their pages once no safe
    /// point needs them.
    pub fn discard(&self, first: LogicalPage, count: u64) -> Result<(), Error> {
        if count == 0 {
            return Ok(());
        }
        self.check(first)?;
        self.check(LogicalPage(first.0 + count - 1))?;
        let mut st = self.state.lock();
        let State {
            window,
            refs,
            pending,
            pending_free,
            ..
        } = &mut *st;
        let mut apply = Apply {
            map: &self.map,
            window,
            refs,
            free: |q| pending_free.push(q),
        };
        let mut l = first.0;
        let end = first.0 + count;
        while l < end {
            let n = (end - l).min(u64::from(u32::MAX)) as u32;
            let r = Record::Discard {
                l: LogicalPage(l),
                count: n,
            };
            apply.apply(&r, &self.layout)?;
            pending.push(&r);
            l += u64::from(n);
        }
        let full = pending.len() > self.commit_threshold;
        drop(st);
        if full {
            self.commit(false)
        } else {
            self.write_unsynced()
        }
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
        let p = self.allocate(stream, l)?;
        if let Err(e) = self.store.write_at(self.layout.page_offset(p), data) {
            self.abandon(p);
            return Err(Error::Io {
                what: "writing a data page",
                source: e,
            });
        }
        self.commit_writes(&[(l, p)])
    }
}
