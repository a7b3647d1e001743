//! Safe points, epochs and the history window, as pure logic.
//!
//! Words (see DESIGN.md): epoch `e` is the writes after safe point `e - 1` up to safe point
//! `e`; the open epoch is `next_id`, the id the next safe point will get. When a page whose
//! mapping was written in an earlier epoch is written (or discarded) in epoch `c`, its old
//! page becomes a history entry of group `c`: "what this logical page held when `c` began".
//! A page rewritten within its own epoch makes no history; its old page is simply freed.
//!
//! Invariants:
//! - safe point ids in the window ascend and are all below `next_id`;
//! - group `c` is needed by the reachable safe points older than `c`; once the oldest
//!   reachable safe point is `c` or newer, the group is dropped and its pages freed.

use std::collections::{BTreeMap, VecDeque};

use rewind_remap::{LogicalPage, PhysPage};

/// What made a safe point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The empty device `rewind create` made.
    Format,
    /// A FLUSH or FUA from the kernel.
    Flush,
    /// No write for the idle interval.
    Idle,
    /// Asked for by `rewind safepoint`.
    User,
    /// Made by reclaim to close a long epoch whose history filled the area.
    Reclaim,
    /// The state just before a rollback, kept so the rollback can be undone.
    Rollback,
}

impl Trigger {
    /// The byte stored on disk.
    pub fn code(self) -> u8 {
        match self {
            Trigger::Format => 0,
            Trigger::Flush => 1,
            Trigger::Idle => 2,
            Trigger::User => 3,
            Trigger::Reclaim => 4,
            Trigger::Rollback => 5,
        }
    }

    /// The trigger of a stored byte, `None` for an unknown one.
    pub fn from_code(code: u8) -> Option<Trigger> {
        Some(match code {
            0 => Trigger::Format,
            1 => Trigger::Flush,
            2 => Trigger::Idle,
            3 => Trigger::User,
            4 => Trigger::Reclaim,
            5 => Trigger::Rollback,
            _ => return None,
        })
    }

    /// The word shown to users.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Format => "format",
            Trigger::Flush => "flush",
            Trigger::Idle => "idle",
            Trigger::User => "user",
            Trigger::Reclaim => "reclaim",
            Trigger::Rollback => "rollback",
        }
    }
}

/// An instant the device can be read or rolled back at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafePoint {
    /// Monotonic id.
    pub id: u64,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// What made it.
    pub trigger: Trigger,
    /// An optional label, at most `MAX_LABEL` bytes.
    pub label: Option<String>,
}

/// The history window: reachable safe points and the history groups they need.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// The id the next safe point gets; also the open epoch.
    pub next_id: u64,
    /// Reachable safe points, oldest first.
    pub safe_points: VecDeque<SafePoint>,
    /// Superseding epoch -> (logical page, the page it had when that epoch began).
    pub groups: BTreeMap<u64, Vec<(LogicalPage, Option<PhysPage>)>>,
    /// Entries over all groups that hold a physical page.
    pub history_pages: u64,
    /// Entries over all groups.
    pub history_entries: u64,
    /// The same entries by (logical page, superseding epoch), to read a page at a safe point.
    index: BTreeMap<(u64, u64), Option<PhysPage>>,
}

impl Window {
    /// An empty window whose open epoch is `next_id`.
    pub fn new(next_id: u64) -> Window {
        Window {
            next_id,
            ..Window::default()
        }
    }

    /// Records that `l`, which held `old` when the open epoch began, was overwritten.
    pub fn supersede(&mut self, l: LogicalPage, old: Option<PhysPage>) {
        self.load_entry(self.next_id, l, old);
    }

    /// Adds an entry of group `epoch` (a checkpoint being read, or `supersede`). A logical
    /// page has at most one entry per epoch.
    pub fn load_entry(&mut self, epoch: u64, l: LogicalPage, old: Option<PhysPage>) -> bool {
        if self.index.insert((l.0, epoch), old).is_some() {
            return false;
        }
        self.groups.entry(epoch).or_default().push((l, old));
        self.history_entries += 1;
        self.history_pages += u64::from(old.is_some());
        true
    }

    /// What `l` held at safe point `at`: `Some(page)` from its history, or `None` when it
    /// has not changed since and reads as it does live.
    pub fn page_at(&self, l: LogicalPage, at: u64) -> Option<Option<PhysPage>> {
        self.index
            .range((l.0, at + 1)..=(l.0, u64::MAX))
            .next()
            .map(|(_, p)| *p)
    }

    /// Every logical page that changed after safe point `at`, with what it held then.
    pub fn changed_since(&self, at: u64) -> Vec<(LogicalPage, Option<PhysPage>)> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        // Ascending epochs: the first entry of a page after `at` is its state at `at`.
        for (_, g) in self.groups.range(at + 1..) {
            for &(l, p) in g {
                if seen.insert(l) {
                    out.push((l, p));
                }
            }
        }
        out
    }

    /// Is safe point `id` in the window?
    pub fn contains(&self, id: u64) -> bool {
        self.safe_points.binary_search_by_key(&id, |s| s.id).is_ok()
    }

    /// Closes the open epoch with `sp`, whose id must be `next_id`.
    pub fn push_safe_point(&mut self, sp: SafePoint) {
        assert_eq!(sp.id, self.next_id, "safe point ids must follow the epoch");
        self.next_id = sp.id + 1;
        self.safe_points.push_back(sp);
    }

    /// The newest safe point, if any is reachable.
    pub fn newest(&self) -> Option<&SafePoint> {
        self.safe_points.back()
    }

    /// The oldest safe point, if any is reachable.
    pub fn oldest(&self) -> Option<&SafePoint> {
        self.safe_points.front()
    }

    /// Retires every safe point older than `up_to`, and hands each physical page no
    /// reachable safe point needs any more to `free`.
    pub fn retire(&mut self, up_to: u64, mut free: impl FnMut(PhysPage)) {
        while self.safe_points.front().is_some_and(|sp| sp.id < up_to) {
            self.safe_points.pop_front();
        }
        // Group c serves the safe points older than c; none of them is reachable now.
        while let Some(entry) = self.groups.first_entry() {
            if *entry.key() > up_to {
                break;
            }
            let epoch = *entry.key();
            for (l, old) in entry.remove() {
                self.index.remove(&(l.0, epoch));
                self.history_entries -= 1;
                if let Some(p) = old {
                    self.history_pages -= 1;
                    free(p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(id: u64) -> SafePoint {
        SafePoint {
            id,
            time_ns: id,
            trigger: Trigger::Flush,
            label: None,
        }
    }

    #[test]
    fn retire_frees_groups_only_once_unreachable() {
        let mut w = Window {
            next_id: 1,
            ..Window::default()
        };
        w.push_safe_point(sp(1));
        w.supersede(LogicalPage(0), Some(PhysPage(10))); // group 2, needed by sp 1
        w.push_safe_point(sp(2));
        w.supersede(LogicalPage(0), Some(PhysPage(11))); // group 3, needed by sp 1 and 2
        w.supersede(LogicalPage(1), None);
        let mut freed = Vec::new();
        w.retire(2, |p| freed.push(p));
        assert_eq!(freed, vec![PhysPage(10)]);
        assert_eq!(w.oldest().map(|s| s.id), Some(2));
        assert_eq!(w.history_pages, 1);
        assert_eq!(w.history_entries, 2);
        w.retire(3, |p| freed.push(p));
        assert_eq!(freed, vec![PhysPage(10), PhysPage(11)]);
        assert_eq!(w.history_entries, 0);
    }

    #[test]
    fn trigger_codes_roundtrip() {
        for t in [
            Trigger::Format,
            Trigger::Flush,
            Trigger::Idle,
            Trigger::User,
            Trigger::Reclaim,
            Trigger::Rollback,
        ] {
            assert_eq!(Trigger::from_code(t.code()), Some(t));
        }
        assert_eq!(Trigger::from_code(200), None);
    }
}
