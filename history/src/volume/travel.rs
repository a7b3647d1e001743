//! Time travel: rollback, pins, views, and reading the device as it stood at a safe point.

use crate::journal::Record;
use crate::window::{Entry, SafePointId, Trigger, Window};
use crate::{Error, LogicalPage, PhysPage, Store};

use super::{State, Volume};

/// Closed groups a view's read may search one by one before the view gets an index.
const INDEX_AFTER_GROUPS: usize = 16;
/// History entries all views' indexes may hold beyond twice the history's own count: a
/// little room, so that views of a short history need not take turns.
const INDEX_BUDGET_FLOOR: u64 = 1024;

/// A view's state: the safe point it shows, and why it was dropped, if it was.
pub(super) struct View {
    /// The safe point it shows, held in the window while the view is open.
    pub(super) at: SafePointId,
    /// Why reclaim dropped it (its reads fail from then on), or `None`.
    pub(super) dropped: Option<String>,
    /// What its reads look up instead of searching many groups, once they would.
    pub(super) index: Option<ViewIndex>,
    /// When its reads last came (`State::view_reads`), to take the index of the view
    /// least recently read first when the indexes' budget runs out.
    pub(super) read_at: u64,
}

impl View {
    pub(super) fn new(at: SafePointId) -> View {
        View {
            at,
            dropped: None,
            index: None,
            read_at: 0,
        }
    }
}

/// A view's index: what each page that changed after the view's safe point read there,
/// for the groups of the epochs before `through`, sorted by page. An entry never changes
/// and stays while the view holds its safe point, so the index stays true; groups closed
/// after it was made are searched one by one until there are enough to fold in.
pub(super) struct ViewIndex {
    through: SafePointId,
    pages: Vec<Entry>,
}

impl ViewIndex {
    /// `Some(entry)` for a page the index holds.
    fn get(&self, l: LogicalPage) -> Option<Option<PhysPage>> {
        let i = self.pages.binary_search_by_key(&l, |e| e.l).ok()?;
        Some(self.pages[i].old())
    }

    /// Folds in the closed groups from `through` up to the window's newest safe point: the
    /// pages they changed first, as they read at the view's safe point.
    fn fold(&mut self, w: &Window) {
        let Some(newest) = w.newest().map(|s| s.id) else {
            return;
        };
        if newest < self.through {
            return;
        }
        let since = SafePointId(self.through.0 - 1);
        let new = w.changed_since(since, Some(newest));
        let old = std::mem::take(&mut self.pages);
        let mut merged = Vec::with_capacity(old.len() + new.len());
        let (mut a, mut b) = (old.into_iter().peekable(), new.into_iter().peekable());
        // Both sorted by page; a page in both keeps the older entry, the one `at` reads.
        loop {
            let take_old = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.l == y.l => {
                    b.next();
                    true
                }
                (Some(x), Some(y)) => x.l < y.l,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            merged.extend(if take_old { a.next() } else { b.next() });
        }
        self.pages = merged;
        self.through = newest.next();
    }
}

/// An open view of a past safe point (see `Volume::open_view`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViewId(pub(super) u64);

/// Refuses a safe point that has left the history window (or never was in it), saying
/// what the window holds.
fn require_in_window(w: &Window, id: SafePointId) -> Result<(), Error> {
    if w.contains(id) {
        return Ok(());
    }
    Err(Error::BadOption(format!(
        "safe point {id} is not in the history window (it holds {})",
        describe_window(w)
    )))
}

/// What the window holds, for an error: "safe points 3 to 9".
fn describe_window(w: &Window) -> String {
    match (w.oldest(), w.newest()) {
        (Some(o), Some(n)) if o.id == n.id => format!("safe point {}", o.id),
        (Some(o), Some(n)) => format!("safe points {} to {}", o.id, n.id),
        _ => "no safe point".into(),
    }
}

/// Before a read of view `v`: makes or extends its index when the read would otherwise
/// search more than `INDEX_AFTER_GROUPS` closed groups one by one. All views' indexes
/// together hold at most twice as many entries as the history has (plus
/// `INDEX_BUDGET_FLOOR`), so that any two views keep theirs (one holds at most an entry a
/// history entry) and two devices read in turn never rebuild each other's; beyond that,
/// the indexes of the views read least recently give way first.
fn index_view(st: &mut State, v: ViewId) {
    st.view_reads += 1;
    let State {
        window,
        views,
        view_reads,
        ..
    } = st;
    let view = views.get_mut(&v.0).expect("a live view");
    view.read_at = *view_reads;
    let from = view.index.as_ref().map_or(view.at.next(), |i| i.through);
    if window.closed_groups_from(from) <= INDEX_AFTER_GROUPS {
        return;
    }
    let index = view.index.get_or_insert(ViewIndex {
        through: view.at.next(),
        pages: Vec::new(),
    });
    index.fold(window);
    let budget = 2 * window.history_entries + INDEX_BUDGET_FLOOR;
    loop {
        let held: u64 = views
            .values()
            .filter_map(|w| w.index.as_ref())
            .map(|i| i.pages.len() as u64)
            .sum();
        let lru = views
            .iter_mut()
            .filter(|(n, w)| **n != v.0 && w.index.is_some())
            .min_by_key(|(_, w)| w.read_at);
        match lru {
            Some((_, w)) if held > budget => w.index = None,
            _ => break,
        }
    }
}

/// The safe point view `v` shows, or why it shows nothing any more.
fn live_view(st: &State, v: ViewId) -> Result<SafePointId, Error> {
    let view = st.views.get(&v.0).ok_or_else(|| Error::ViewDropped {
        at: SafePointId(0),
        why: "the view was closed".into(),
    })?;
    match &view.dropped {
        Some(why) => Err(Error::ViewDropped {
            at: view.at,
            why: why.clone(),
        }),
        None => Ok(view.at),
    }
}

impl<S: Store> Volume<S> {
    /// Makes safe point `to` the live state again. Metadata only: no data is copied. The
    /// state being left becomes a safe point of its own (returned), so the rollback can be
    /// undone by rolling back to it while the window holds it. Durable when it returns.
    pub fn rollback(&self, to: SafePointId) -> Result<SafePointId, Error> {
        let mut c = self.commit.lock();
        let before = {
            let mut st = self.state.lock();
            require_in_window(&st.window, to)?;
            let id = self.close_epoch(&mut st, Trigger::Rollback, None)?;
            self.apply_locked(&mut st, Record::Rollback { to })?;
            id
        };
        self.commit_locked(&mut c, false)?;
        Ok(before)
    }

    /// The logical extents (first page, page count; ascending, not touching) that may read
    /// differently at safe points `a` and `b` (`None`: the live device now), in either order,
    /// from the metadata alone: a page is in one where it reads from a different physical
    /// page at the two, or from a page at one and as zeros at the other. A page rewritten
    /// with the same bytes counts as changed; a page not written between them never does.
    pub fn diff(
        &self,
        a: SafePointId,
        b: Option<SafePointId>,
    ) -> Result<Vec<(LogicalPage, u64)>, Error> {
        let st = self.state.lock();
        let w = &st.window;
        require_in_window(w, a)?;
        if let Some(b) = b {
            require_in_window(w, b)?;
        }
        // The older of the two; the newer is `b`, or the live device.
        let (older, newer) = match b {
            Some(b) if b < a => (b, Some(a)),
            _ => (a, b),
        };
        // What the pages that changed after `newer` held at `newer`, sorted by page; the
        // others read live.
        let at_newer = match newer {
            Some(n) => w.changed_since(n, None),
            None => Vec::new(),
        };
        // Sorted by page, as `changed_since` gives them.
        let changed: Vec<LogicalPage> = w
            .changed_since(older, newer)
            .into_iter()
            .filter(|e| {
                let now = match at_newer.binary_search_by_key(&e.l, |n| n.l) {
                    Ok(i) => at_newer[i].old(),
                    Err(_) => self.map.get(e.l).phys,
                };
                e.old() != now
            })
            .map(|e| e.l)
            .collect();
        drop(st);
        let mut extents: Vec<(LogicalPage, u64)> = Vec::new();
        for l in changed {
            match extents.last_mut() {
                Some((first, n)) if first.0 + *n == l.0 => *n += 1,
                _ => extents.push((l, 1)),
            }
        }
        Ok(extents)
    }

    /// The physical page `l` read from at safe point `at` (`None`: zeros), for views.
    pub fn resolve_at(&self, l: LogicalPage, at: SafePointId) -> Result<Option<PhysPage>, Error> {
        self.check_in_range(l)?;
        let mut st = self.state.lock();
        require_in_window(&st.window, at)?;
        Ok(self.page_at(&mut st.window, l, at))
    }

    /// Reads page `l` as it was at safe point `at`, through the store (tests and tools).
    pub fn read_page_at(
        &self,
        l: LogicalPage,
        at: SafePointId,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        self.read_phys(self.resolve_at(l, at)?, buf)
    }

    /// Pins safe point `id` (or unpins it): a pinned safe point is kept from retirement
    /// until views and other pins have given way. Durable when it returns.
    pub fn pin(&self, id: SafePointId, pinned: bool) -> Result<(), Error> {
        let mut c = self.commit.lock();
        {
            let mut st = self.state.lock();
            require_in_window(&st.window, id)?;
            if st.window.pins.contains(&id) == pinned {
                return Ok(());
            }
            self.apply_locked(&mut st, Record::Pin { id, pinned })?;
        }
        self.commit_locked(&mut c, false)
    }

    /// Opens a view of safe point `at`: it holds `at` in the window until `close_view`, or
    /// until reclaim drops it because views and pins hold the whole history area.
    pub fn open_view(&self, at: SafePointId) -> Result<ViewId, Error> {
        let mut st = self.state.lock();
        require_in_window(&st.window, at)?;
        let n = st.next_view;
        st.next_view += 1;
        st.views.insert(n, View::new(at));
        Ok(ViewId(n))
    }

    /// Closes a view: its safe point can retire again.
    pub fn close_view(&self, v: ViewId) {
        self.state.lock().views.remove(&v.0);
    }

    /// The physical page `l` read from at the view's safe point (`None`: zeros), or
    /// `Error::ViewDropped` once the view gave way to the live device.
    pub fn resolve_view(&self, v: ViewId, l: LogicalPage) -> Result<Option<PhysPage>, Error> {
        let mut out = Vec::with_capacity(1);
        self.resolve_view_pages(v, l, 1, &mut out)?;
        Ok(out[0])
    }

    /// `resolve_view` of `count` pages from `first`, appended to `out`: one look at the
    /// window for a whole request.
    pub fn resolve_view_pages(
        &self,
        v: ViewId,
        first: LogicalPage,
        count: usize,
        out: &mut Vec<Option<PhysPage>>,
    ) -> Result<(), Error> {
        if count == 0 {
            return Ok(());
        }
        self.check_run_in_range(first, count as u64)?;
        let mut st = self.state.lock();
        let at = live_view(&st, v)?;
        index_view(&mut st, v);
        let State { window, views, .. } = &mut *st;
        let index = views.get(&v.0).expect("a live view").index.as_ref();
        // The groups the view's index does not cover: those after its safe point, or those
        // closed since the index was last folded.
        let from = index.map_or(at.next(), |i| i.through);
        out.extend((0..count as u64).map(|i| {
            let l = LogicalPage(first.0 + i);
            index
                .and_then(|i| i.get(l))
                .or_else(|| window.first_entry_from(l, from))
                .unwrap_or_else(|| self.map.get(l).phys)
        }));
        Ok(())
    }

    /// Fails once view `v` was closed or dropped, as its reads do. A reader that resolved
    /// pages of a view without a read tracker calls this after reading them: the view was
    /// still open then, so no page it resolved had been freed and written again.
    pub fn check_view(&self, v: ViewId) -> Result<(), Error> {
        live_view(&self.state.lock(), v).map(|_| ())
    }

    /// The physical page `l` read from at safe point `at` of window `w`: its history entry
    /// after `at`, or, when it has not changed since, its live page.
    fn page_at(&self, w: &mut Window, l: LogicalPage, at: SafePointId) -> Option<PhysPage> {
        match w.page_at(l, at) {
            Some(then) => then,
            None => self.map.get(l).phys,
        }
    }

    /// Reads page `l` of view `v` through the store (tests and tools).
    pub fn read_view_page(&self, v: ViewId, l: LogicalPage, buf: &mut [u8]) -> Result<(), Error> {
        self.read_phys(self.resolve_view(v, l)?, buf)
    }
}
