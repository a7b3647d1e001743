//! Applying journal records: the one function that changes the map and the window, shared by
//! live requests and journal replay.

use rewind_remap::{Mapping, PageRefs, RemapTable};

use crate::format::Layout;
use crate::journal::Record;
use crate::window::{Entry, Window};
use crate::{Error, LogicalPage, PhysPage, Store};

use super::{State, Volume};

/// Hands every record's effect on the map and window to the same code, live and in replay.
pub(super) struct Apply<'a, F: FnMut(PhysPage)> {
    pub(super) map: &'a RemapTable,
    /// Checks each record against it: a record read from disk may point anywhere.
    pub(super) layout: &'a Layout,
    pub(super) window: &'a mut Window,
    /// References to each physical page: the live map and history entries. A rollback
    /// makes a history page live again, so a page can have several.
    pub(super) refs: &'a mut PageRefs,
    /// Receives each page left with no reference. It is not free yet: live, it waits in
    /// `State::pending_free` for the commit that makes its record durable; in replay the
    /// allocator is rebuilt from the references afterwards.
    pub(super) unreferenced: F,
}

/// `pages` in ascending order: often they are already (a rollback to where pages were
/// written at home).
fn sorted(mut pages: Vec<PhysPage>) -> Vec<PhysPage> {
    if !pages.is_sorted() {
        radsort::sort_by_key(&mut pages, |p| p.0);
    }
    pages
}

/// Drops one reference to `p`, handing it to `unreferenced` when none is left.
fn unref(refs: &mut PageRefs, unreferenced: &mut impl FnMut(PhysPage), p: PhysPage) {
    if refs.remove(p) == 0 {
        unreferenced(p);
    }
}

impl<F: FnMut(PhysPage)> Apply<'_, F> {
    /// Points `l` at `new` (`None`: zeros) in the open epoch. The old page becomes a history
    /// entry if it was set in an earlier epoch, else it loses the map's reference.
    fn set_page(&mut self, l: LogicalPage, new: Option<PhysPage>) {
        let prev = self.map.get(l);
        if prev.phys.is_none() && new.is_none() {
            // Zeros stay zeros: no change to record.
            return;
        }
        if let Some(n) = new {
            self.refs.add(n);
        }
        if !prev.open {
            // The old page's reference moves from the map to the history entry.
            self.window.supersede(l, prev.phys);
        } else if let Some(q) = prev.phys {
            unref(self.refs, &mut self.unreferenced, q);
        }
        self.map.set(
            l,
            Mapping {
                phys: new,
                open: true,
            },
        );
    }

    /// `set_page` of each page to the page of its entry, for many pages at once (a
    /// rollback's, in ascending order): the map is visited once a page, a leaf at a time,
    /// and the references are counted afterwards in physical order, the pages gaining one
    /// first, so that a page keeps a reference throughout if it ends with one, and the
    /// counts of pages spread over the store are not each a cache miss.
    fn set_pages(&mut self, pages: &[Entry]) {
        let (mut gained, mut lost) = (Vec::with_capacity(pages.len()), Vec::new());
        let window = &mut *self.window;
        self.map.update_many(
            pages,
            |e| e.l,
            |e, prev| {
                if prev.phys == e.old() {
                    return prev;
                }
                gained.extend(e.old());
                if !prev.open {
                    window.supersede(e.l, prev.phys);
                } else {
                    lost.extend(prev.phys);
                }
                Mapping {
                    phys: e.old(),
                    open: true,
                }
            },
        );
        for p in sorted(gained) {
            self.refs.add(p);
        }
        for p in sorted(lost) {
            unref(self.refs, &mut self.unreferenced, p);
        }
    }

    /// Applies `r`: the map, the window and the page references change as FORMAT.md
    /// ("Effects") says. A record this state cannot take changes nothing and is an error.
    pub(super) fn apply(&mut self, r: &Record) -> Result<(), Error> {
        self.validate(r)?;
        match r {
            Record::Write { l, p } => self.set_page(*l, Some(*p)),
            Record::Discard { l, count } => {
                for i in 0..u64::from(*count) {
                    self.set_page(LogicalPage(l.0 + i), None);
                }
            }
            Record::SafePoint(sp) => {
                // The open epoch closes: its pages are no longer set in the open one.
                for (first, n) in self.window.open_runs() {
                    self.map
                        .update_run(first, n, |_, m| Mapping { open: false, ..m });
                }
                self.window.push_safe_point(sp.clone());
            }
            Record::Retire { id } => {
                let (refs, unreferenced) = (&mut *self.refs, &mut self.unreferenced);
                self.window.retire(*id, |p| unref(refs, unreferenced, p));
            }
            Record::Pin { id, pinned: true } => {
                self.window.pins.insert(*id);
            }
            Record::Pin { id, pinned: false } => {
                self.window.pins.remove(id);
            }
            Record::Rollback { to } => {
                let back = self.window.changed_since(*to, None);
                self.set_pages(&back);
            }
        }
        Ok(())
    }

    /// Refuses a record that does not fit the layout or the window: one read from disk may
    /// say anything.
    fn validate(&self, r: &Record) -> Result<(), Error> {
        let (layout, w) = (self.layout, &*self.window);
        let why = match r {
            Record::Write { l, p }
                if l.0 >= layout.logical_pages || p.0 >= layout.physical_pages =>
            {
                format!(
                    "journal writes logical page {} to physical page {}: out of range",
                    l.0, p.0
                )
            }
            Record::Discard { l, count }
                if l.0.saturating_add(u64::from(*count)) > layout.logical_pages =>
            {
                format!("journal discards {count} pages at {}: out of range", l.0)
            }
            Record::SafePoint(sp) if sp.id != w.next_id => format!(
                "journal has safe point {} where {} was expected",
                sp.id, w.next_id
            ),
            Record::Retire { id }
                if !w.contains(*id) || w.newest().is_some_and(|n| n.id == *id) =>
            {
                format!("journal retires safe point {id}, which is not an older one of the window")
            }
            Record::Pin { id, .. } if !w.contains(*id) => {
                format!("journal pins safe point {id}, which is not in the window")
            }
            Record::Rollback { to } if !w.contains(*to) => {
                format!("journal rolls back to safe point {to}, which is not in the window")
            }
            _ => return Ok(()),
        };
        Err(Error::Corrupt(why))
    }
}

impl<S: Store> Volume<S> {
    /// Applies `r` to the live state and queues it for the next commit: every change a live
    /// request makes goes through here, and so through the code replay runs.
    pub(super) fn apply_locked(&self, st: &mut State, r: Record) -> Result<(), Error> {
        let State {
            window,
            refs,
            pending,
            pending_free,
            ..
        } = st;
        Apply {
            map: &self.map,
            layout: &self.layout,
            window,
            refs,
            unreferenced: |q| pending_free.push(q),
        }
        .apply(&r)?;
        pending.push(&r);
        Ok(())
    }
}
