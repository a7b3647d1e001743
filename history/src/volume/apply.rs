//! Applying journal records: the one function that changes the map and the window, shared by
//! live requests and journal replay.

use rewind_remap::{EpochTag, Mapping, RemapTable};

use crate::format::Layout;
use crate::journal::Record;
use crate::window::Window;
use crate::{Error, LogicalPage, PhysPage, Store};

use super::{State, Volume};

/// Hands every record's effect on the map and window to the same code, live and in replay.
pub(super) struct Apply<'a, F: FnMut(PhysPage)> {
    pub(super) map: &'a RemapTable,
    pub(super) window: &'a mut Window,
    /// References to each physical page: the live map and history entries. A rollback
    /// makes a history page live again, so a page can have several.
    pub(super) refs: &'a mut [u32],
    pub(super) free: F,
}

/// Drops one reference to `p`, handing it to `free` when none is left.
fn unref(refs: &mut [u32], free: &mut impl FnMut(PhysPage), p: PhysPage) {
    let r = &mut refs[p.0 as usize];
    assert!(*r > 0, "physical page {} dereferenced below zero", p.0);
    *r -= 1;
    if *r == 0 {
        free(p);
    }
}

impl<F: FnMut(PhysPage)> Apply<'_, F> {
    pub(super) fn set_page(&mut self, l: LogicalPage, new: Option<PhysPage>) {
        let open = EpochTag::of(self.window.next_id);
        let prev = self.map.get(l);
        if prev.phys.is_none() && new.is_none() {
            // Zeros stay zeros: no change to record.
            return;
        }
        if let Some(n) = new {
            self.refs[n.0 as usize] += 1;
        }
        if prev.epoch != open {
            // The old page's reference moves from the map to the history entry.
            self.window.supersede(l, prev.phys);
        } else if let Some(q) = prev.phys {
            unref(self.refs, &mut self.free, q);
        }
        self.map.set(
            l,
            Mapping {
                phys: new,
                epoch: open,
            },
        );
    }

    pub(super) fn apply(&mut self, r: &Record, layout: &Layout) -> Result<(), Error> {
        match r {
            Record::Write { l, p } => {
                if l.0 >= layout.logical_pages || u64::from(p.0) >= layout.physical_pages {
                    return Err(Error::Corrupt(format!(
                        "journal writes logical page {} to physical page {}: out of range",
                        l.0, p.0
                    )));
                }
                self.set_page(*l, Some(*p));
            }
            Record::Discard { l, count } => {
                if l.0.saturating_add(u64::from(*count)) > layout.logical_pages {
                    return Err(Error::Corrupt(format!(
                        "journal discards {count} pages at {}: out of range",
                        l.0
                    )));
                }
                for i in 0..u64::from(*count) {
                    self.set_page(LogicalPage(l.0 + i), None);
                }
            }
            Record::SafePoint(sp) => {
                if sp.id != self.window.next_id {
                    return Err(Error::Corrupt(format!(
                        "journal has safe point {} where {} was expected",
                        sp.id, self.window.next_id
                    )));
                }
                self.window.push_safe_point(sp.clone());
            }
            Record::Retire { id } => {
                if !self.window.contains(*id) || self.window.newest().is_some_and(|n| n.id == *id) {
                    return Err(Error::Corrupt(format!(
                        "journal retires safe point {id}, which is not an older one of the window"
                    )));
                }
                let (refs, free) = (&mut *self.refs, &mut self.free);
                self.window.retire(*id, |p| unref(refs, free, p));
            }
            Record::Pin { id, pinned } => {
                if !self.window.contains(*id) {
                    return Err(Error::Corrupt(format!(
                        "journal pins safe point {id}, which is not in the window"
                    )));
                }
                if *pinned {
                    self.window.pins.insert(*id);
                } else {
                    self.window.pins.remove(id);
                }
            }
            Record::Rollback { to } => {
                if !self.window.contains(*to) {
                    return Err(Error::Corrupt(format!(
                        "journal rolls back to safe point {to}, which is not in the window"
                    )));
                }
                for (l, then) in self.window.changed_since(*to) {
                    if self.map.get(l).phys != then {
                        self.set_page(l, then);
                    }
                }
            }
        }
        Ok(())
    }
}

impl<S: Store> Volume<S> {
    /// Applies `r` to the live state and queues it for the next commit.
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
            window,
            refs,
            free: |q| pending_free.push(q),
        }
        .apply(&r, &self.layout)?;
        pending.push(&r);
        Ok(())
    }
}
