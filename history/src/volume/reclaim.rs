//! Reclaim: retiring safe points when free pages run low, and the quarantine that keeps a
//! freed page from a new write while reads that resolved to it are in flight.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rewind_remap::PageAllocator;

use crate::journal::Record;
use crate::window::{SafePointId, Trigger};
use crate::{Error, Store};

use super::report::HISTORY_FULL;
use super::{Notice, State, ViewId, Volume};

/// Tracks one queue's reads in flight, so a page they resolved to is not handed to a new
/// write (and overwritten) before they finish. Not shared between threads.
pub struct ReadTracker {
    /// The oldest round of this queue's reads in flight, shared with `Volume::readers`.
    oldest: Arc<AtomicU64>,
    /// Reads in flight by the round they began in, oldest first. Rounds only grow, and one
    /// thread begins its reads one after another, so a new round goes at the back; an
    /// entry whose reads all ended leaves once it is at the front. A deque, not a map: no
    /// allocation per read once it has grown.
    inflight: std::cell::RefCell<std::collections::VecDeque<(u64, u32)>>,
}

impl ReadTracker {
    fn publish(&self) {
        let min = self.inflight.borrow().front().map(|&(round, _)| round);
        self.oldest.store(min.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Call before resolving the pages of a read; pass the result to `end` when the read's
    /// data has arrived.
    pub fn begin<S: Store>(&self, vol: &Volume<S>) -> u64 {
        let round = vol.free_round.load(Ordering::SeqCst);
        {
            let mut inflight = self.inflight.borrow_mut();
            match inflight.back_mut() {
                Some((r, n)) if *r == round => *n += 1,
                _ => inflight.push_back((round, 1)),
            }
        }
        self.publish();
        // Our round is visible before we load the map: a commit that misses it has
        // switched the map before we look (see `release_quarantine`).
        std::sync::atomic::fence(Ordering::SeqCst);
        round
    }

    /// The read begun in `round` is done.
    pub fn end(&self, round: u64) {
        {
            let mut inflight = self.inflight.borrow_mut();
            if let Some((_, n)) = inflight.iter_mut().find(|(r, _)| *r == round) {
                *n = n.saturating_sub(1);
            }
            while inflight.front().is_some_and(|&(_, n)| n == 0) {
                inflight.pop_front();
            }
        }
        self.publish();
    }
}

impl<S: Store> Volume<S> {
    /// A tracker for one reader thread's reads in flight.
    pub fn read_tracker(&self) -> ReadTracker {
        let oldest = Arc::new(AtomicU64::new(u64::MAX));
        self.readers.lock().push(oldest.clone());
        ReadTracker {
            oldest,
            inflight: Default::default(),
        }
    }

    /// Frees the quarantined pages no read in flight can target.
    pub(super) fn release_quarantine(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        let oldest = self
            .readers
            .lock()
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX);
        let mut q = self.quarantine.lock();
        // Pages quarantined in round r were resolved only by reads begun in rounds <= r.
        q.retain(|(r, pages)| {
            if *r < oldest {
                for p in pages {
                    self.alloc.release(*p);
                }
                false
            } else {
                true
            }
        });
    }

    /// Retires safe points until `enough`: first the oldest held by no pin or view (never the
    /// newest), then, if `close_open_epoch`, the open epoch is closed with a reclaim safe point
    /// so the history it made can go too. Only when that is not enough do views give way
    /// (their reads fail from then on), then pins, each with a notice for the log: the live
    /// device never fails a write to keep history.
    pub(super) fn retire_until(
        &self,
        st: &mut State,
        close_open_epoch: bool,
        enough: impl Fn(&State, &PageAllocator) -> bool,
    ) {
        let mut closed = false;
        while !enough(st, &self.alloc) {
            if self.retire_unheld(st, &enough) {
                continue;
            }
            let open = st.window.next_id;
            if close_open_epoch && !closed && st.window.groups.contains_key(&open) {
                self.close_epoch(st, Trigger::Reclaim, None)
                    .expect("closing the open epoch");
                closed = true;
                continue;
            }
            if drop_oldest_view(st) || self.release_oldest_pin(st) {
                continue;
            }
            return;
        }
    }

    /// Retires the safe points held by no pin or view, oldest first and never the newest,
    /// until `enough`. Returns whether there was any to retire.
    fn retire_unheld(
        &self,
        st: &mut State,
        enough: &impl Fn(&State, &PageAllocator) -> bool,
    ) -> bool {
        let newest = st.window.newest().map_or(SafePointId(0), |s| s.id);
        let held: BTreeSet<SafePointId> = st
            .views
            .values()
            .filter(|v| v.dropped.is_none())
            .map(|v| v.at)
            .chain(st.window.pins.iter().copied())
            .collect();
        let unheld: Vec<SafePointId> = st
            .window
            .safe_points
            .iter()
            .map(|s| s.id)
            .filter(|id| *id != newest && !held.contains(id))
            .collect();
        for &id in &unheld {
            if enough(st, &self.alloc) {
                break;
            }
            self.apply_locked(st, Record::Retire { id })
                .expect("retiring an older safe point of the window");
        }
        !unheld.is_empty()
    }

    /// Releases the pin of the oldest pinned safe point but the newest, with a notice.
    /// Returns whether there was one.
    fn release_oldest_pin(&self, st: &mut State) -> bool {
        let newest = st.window.newest().map_or(SafePointId(0), |s| s.id);
        let pin = st.window.pins.iter().copied().find(|id| *id != newest);
        let Some(id) = pin else {
            return false;
        };
        self.apply_locked(st, Record::Pin { id, pinned: false })
            .expect("unpinning a safe point of the window");
        st.notices.push(Notice::PinReleased { id });
        true
    }

    /// What reclaim gave up since the last call (views dropped, pins released), for the log.
    pub fn take_notices(&self) -> Vec<Notice> {
        std::mem::take(&mut self.state.lock().notices)
    }

    /// Frees pages as `retire_until` does, up to twice the low water mark, then commits so
    /// the freed pages can be reused.
    pub(super) fn reclaim(&self) -> Result<(), Error> {
        let mut c = self.commit.lock();
        if self.alloc.free_pages() >= self.low_water {
            return Ok(()); // another thread reclaimed while we waited
        }
        {
            let mut st = self.state.lock();
            let target = self.low_water * 2;
            self.retire_until(&mut st, true, |st, alloc| {
                alloc.free_pages() + st.pending_free.len() as u64 >= target
            });
        }
        self.commit_locked(&mut c, false)
    }
}

/// Drops the view of the oldest safe point but the newest (its reads fail from now on),
/// with a notice. Returns whether there was one.
fn drop_oldest_view(st: &mut State) -> bool {
    let newest = st.window.newest().map_or(SafePointId(0), |s| s.id);
    let view = st
        .views
        .iter_mut()
        .filter(|(_, v)| v.dropped.is_none() && v.at != newest)
        .min_by_key(|(n, v)| (v.at, **n));
    let Some((n, v)) = view else {
        return false;
    };
    v.dropped = Some(HISTORY_FULL.to_string());
    v.index = None;
    let notice = Notice::ViewDropped {
        view: ViewId(*n),
        at: v.at,
    };
    st.notices.push(notice);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{create, CreateOptions, Layout, MemStore, PAGE_SIZE};

    #[test]
    fn the_oldest_read_in_flight_is_published_until_it_ends_in_any_order() {
        let opts = CreateOptions {
            size: 64 * PAGE_SIZE,
            history: Some(1 << 20),
            journal: None,
        };
        let store = MemStore::new(Layout::for_create(&opts).unwrap().required_bytes());
        let host = crate::sim::host(1);
        create(&store, &opts, &host).unwrap();
        let vol = Volume::open(store, &host).unwrap();
        let t = vol.read_tracker();
        let oldest = || t.oldest.load(Ordering::SeqCst);
        let a = t.begin(&vol);
        // A commit that freed pages starts a new round.
        vol.free_round.fetch_add(1, Ordering::SeqCst);
        let b = t.begin(&vol);
        let c = t.begin(&vol);
        assert_eq!((oldest(), b), (a, a + 1));
        t.end(b);
        assert_eq!(oldest(), a, "a later read ending first keeps the oldest");
        t.end(a);
        assert_eq!(oldest(), c);
        t.end(c);
        assert_eq!(oldest(), u64::MAX);
        assert!(t.inflight.borrow().is_empty());
    }
}
