//! Safe points and their ids, epochs and the history window, as pure logic.
//!
//! Words (see DESIGN.md): epoch `e` is the writes after safe point `e - 1` up to safe point
//! `e`, so an epoch is named by the [`SafePointId`] of the safe point that closes it; the
//! open epoch is `next_id`, the id the next safe point will get. When a page whose mapping
//! was written in an earlier epoch is written (or discarded) in epoch `c`, its old page
//! becomes a history entry of group `c`: "what this logical page held when `c` began". A
//! page rewritten within its own epoch makes no history; its old page is simply freed.
//!
//! The history is kept as groups, one per epoch, of runs and no index beside them: a run
//! is 16 bytes for up to 65,536 consecutive logical pages that held consecutive physical
//! pages (or zeros), so a page written alone costs 16 bytes and a sequential rewrite of a
//! device laid out at home next to nothing. A closed epoch's group is sorted by logical
//! page, so a page is found in it by binary search; only the open epoch's group, still
//! growing, gets a hash index of which run each page is in, made when a page is first
//! looked up there (a write needs none: the map's open bit tells whether a page is in the
//! open group already).
//!
//! Invariants:
//! - safe point ids in the window ascend and are all below `next_id`;
//! - every group but the open one (`next_id`'s) is sorted by logical page; no group holds a
//!   logical page twice;
//! - the entry of page `l` in group `c` is what `l` read at safe points `c'..c` (`c'` the
//!   group of `l`'s previous entry, or the start of time): it is kept while a reachable
//!   safe point lies in that range, and dropped (its page freed) once none does;
//! - the newest safe point is never retired, so every new entry is needed when it is made.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rewind_remap::{LogicalPage, PhysPage};
use rustc_hash::{FxHashMap, FxHashSet};

/// A group's entries, each a logical page and the page it had when the group's epoch
/// began, kept as runs: in the order written while the epoch is open, sorted by logical
/// page (and adjacent runs joined) once it closed. Two groups are equal when they hold the
/// same entries in the same order, however these are cut into runs.
#[derive(Clone, Debug, Default)]
pub struct Group {
    runs: Vec<Run>,
    /// Entries (pages) over all runs.
    pages: u64,
}

/// Consecutive logical pages from `first` that held consecutive physical pages from
/// `held` (or all zeros): the first page's number in the low 48 bits of `first_len`
/// (`max_physical_pages` keeps every page number below 2^48), the run's length - 1 above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first_len: u64,
    held: u64,
}

const RUN_FIRST_BITS: u32 = 48;
const RUN_FIRST_MASK: u64 = (1 << RUN_FIRST_BITS) - 1;
/// The most pages a run holds.
const RUN_MAX: u64 = 1 << (64 - RUN_FIRST_BITS);

impl Run {
    fn of(e: Entry) -> Run {
        assert!(e.l.0 <= RUN_FIRST_MASK, "logical page {} past 2^48", e.l.0);
        Run {
            first_len: e.l.0,
            held: e.held,
        }
    }

    fn first(self) -> u64 {
        self.first_len & RUN_FIRST_MASK
    }

    fn len(self) -> u64 {
        (self.first_len >> RUN_FIRST_BITS) + 1
    }

    /// The entry of the run's `i`th page.
    fn entry(self, i: u64) -> Entry {
        Entry {
            l: LogicalPage(self.first() + i),
            held: if self.held == ZEROS {
                ZEROS
            } else {
                self.held + i
            },
        }
    }

    /// The entry of page `l`, if the run holds it.
    fn find(self, l: LogicalPage) -> Option<Entry> {
        let i = l.0.checked_sub(self.first())?;
        (i < self.len()).then(|| self.entry(i))
    }

    /// Grows the run by `n` pages that continue it (`next` is the first of them), if they
    /// do and the run has room.
    fn extend(&mut self, next: Entry, n: u64) -> bool {
        let len = self.len();
        let continues = next.l.0 == self.first() + len
            && match (self.held, next.held) {
                (ZEROS, ZEROS) => true,
                (ZEROS, _) | (_, ZEROS) => false,
                (h, p) => p == h + len,
            };
        if !continues || len + n > RUN_MAX {
            return false;
        }
        self.first_len += n << RUN_FIRST_BITS;
        true
    }
}

impl PartialEq for Group {
    fn eq(&self, other: &Group) -> bool {
        self.pages == other.pages && self.entries().eq(other.entries())
    }
}

impl Eq for Group {}

impl Group {
    /// Entries (pages) in the group.
    pub fn len(&self) -> u64 {
        self.pages
    }

    /// True for a group of no entry.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Every entry, run by run.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.runs
            .iter()
            .flat_map(|r| (0..r.len()).map(move |i| r.entry(i)))
    }

    /// Its runs in their order: each its first entry and its length.
    pub fn runs(&self) -> impl ExactSizeIterator<Item = (Entry, u64)> + '_ {
        self.runs.iter().map(|r| (r.entry(0), r.len()))
    }

    /// Appends `e`, to the last run when it continues it.
    fn push(&mut self, e: Entry) {
        self.push_run(e, 1);
    }

    /// Appends the run of `len` pages (1 ..= `RUN_MAX`) from `first`, to the last run
    /// when it continues it and both fit one.
    pub fn push_run(&mut self, first: Entry, len: u64) {
        assert!((1..=RUN_MAX).contains(&len), "a run of {len} pages");
        self.pages += len;
        if let Some(last) = self.runs.last_mut() {
            if last.extend(first, len) {
                return;
            }
        }
        let mut run = Run::of(first);
        run.first_len += (len - 1) << RUN_FIRST_BITS;
        self.runs.push(run);
    }

    /// A group of `entries`, in their order.
    pub fn of(entries: impl IntoIterator<Item = Entry>) -> Group {
        let mut g = Group::default();
        for e in entries {
            g.push(e);
        }
        g
    }

    /// Sorts the runs by logical page and joins the adjacent ones, as a closed group keeps
    /// them (a group holds a page at most once, so runs never overlap).
    fn seal(&mut self) {
        self.runs.sort_unstable_by_key(|r| r.first());
        let mut joined: Vec<Run> = Vec::with_capacity(self.runs.len());
        for r in self.runs.drain(..) {
            let joins = joined
                .last_mut()
                .is_some_and(|last| last.extend(r.entry(0), r.len()));
            if !joins {
                joined.push(r);
            }
        }
        joined.shrink_to_fit();
        self.runs = joined;
    }

    /// The entry of `l` in this closed (sorted) group, if it holds one.
    fn find_sorted(&self, l: LogicalPage) -> Option<Entry> {
        let i = self.runs.partition_point(|r| r.first() <= l.0);
        self.runs.get(i.checked_sub(1)?)?.find(l)
    }

    /// Bytes of memory the runs take, as allocated.
    fn bytes(&self) -> usize {
        self.runs.capacity() * std::mem::size_of::<Run>()
    }
}

/// A history entry: logical page `l` and the physical page it held when its group's epoch
/// began, or zeros, in 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The logical page.
    pub l: LogicalPage,
    /// The physical page it held, or `ZEROS`.
    held: u64,
}

/// `Entry::held` of a page that read as zeros: past `PhysPage::MAX`.
const ZEROS: u64 = u64::MAX;

impl Entry {
    /// The entry of `l`, which held `old` (`None`: zeros).
    pub fn new(l: LogicalPage, old: Option<PhysPage>) -> Entry {
        Entry {
            l,
            held: old.map_or(ZEROS, |p| p.0),
        }
    }

    /// The page `l` held (`None`: zeros).
    pub fn old(self) -> Option<PhysPage> {
        (self.held != ZEROS).then_some(PhysPage(self.held))
    }
}

/// The id of a safe point. Ids count up by one from 0 (the safe point `create` makes) and
/// stay at or below `format::COUNTER_MAX`, so they never wrap. An epoch is named by the id
/// of the safe point that closes it (see the module doc), so the window's history groups
/// are keyed by this type too. Its own type, so that an id never mixes with a journal
/// sequence, a page number or a count; it prints as the bare number, and with the feature
/// `serde` it is the bare number in JSON as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(transparent)
)]
pub struct SafePointId(pub u64);

impl SafePointId {
    /// The id of the safe point after this one; also the first epoch after it.
    pub fn next(self) -> SafePointId {
        SafePointId(self.0 + 1)
    }
}

impl std::fmt::Display for SafePointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

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
    pub id: SafePointId,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// What made it.
    pub trigger: Trigger,
    /// An optional label, at most `MAX_LABEL` bytes.
    pub label: Option<String>,
}

/// The history window: reachable safe points and the history groups they need.
#[derive(Clone, Debug)]
pub struct Window {
    /// The id the next safe point gets; also the open epoch.
    pub next_id: SafePointId,
    /// Reachable safe points, oldest first.
    pub safe_points: VecDeque<SafePoint>,
    /// Superseding epoch (named by the safe point that closes it) -> (logical page, the
    /// page it had when that epoch began); sorted by logical page once the epoch closed.
    pub groups: BTreeMap<SafePointId, Group>,
    /// Entries over all groups that hold a physical page.
    pub history_pages: u64,
    /// Entries over all groups.
    pub history_entries: u64,
    /// Safe points kept from retirement by `rewind pin`.
    pub pins: BTreeSet<SafePointId>,
    /// Which run of the open epoch's group each of its pages is in: made by the first
    /// lookup there (`page_at`), kept up to date from then on, dropped when the epoch
    /// closes.
    open_index: Option<FxHashMap<LogicalPage, usize>>,
}

impl Window {
    /// An empty window whose open epoch is `next_id`.
    pub fn new(next_id: SafePointId) -> Window {
        Window {
            next_id,
            safe_points: VecDeque::new(),
            groups: BTreeMap::new(),
            history_pages: 0,
            history_entries: 0,
            pins: BTreeSet::new(),
            open_index: None,
        }
    }

    /// Records that `l`, which held `old` when the open epoch began, was overwritten. The
    /// caller supersedes a page at most once an epoch: the map's open bit says whether it
    /// did (set on `open_runs` when a checkpoint is loaded).
    pub fn supersede(&mut self, l: LogicalPage, old: Option<PhysPage>) {
        // The open group is the last: found down the right edge of the tree, with no
        // comparison on the way (a rollback supersedes a million pages at once).
        if self.groups.last_key_value().map(|(&e, _)| e) != Some(self.next_id) {
            self.groups.insert(self.next_id, Group::default());
        }
        let g = self.groups.last_entry().expect("the open group").into_mut();
        g.push(Entry::new(l, old));
        if let Some(index) = &mut self.open_index {
            index.insert(l, g.runs.len() - 1);
        }
        self.count(old, 1, true);
    }

    /// The pages of the open epoch's group, as runs: first page and length.
    pub fn open_runs(&self) -> impl Iterator<Item = (LogicalPage, u64)> + '_ {
        self.groups
            .get(&self.next_id)
            .into_iter()
            .flat_map(|g| g.runs())
            .map(|(e, n)| (e.l, n))
    }

    /// Adds the group of `epoch` read from a checkpoint, its runs in any order (the open
    /// group's in the order written): `Err(l)` if it holds logical page `l` twice. Groups
    /// come in ascending epochs, up to the open one.
    pub fn load_group(&mut self, epoch: SafePointId, mut g: Group) -> Result<(), LogicalPage> {
        // A page held twice is where two runs overlap, once sorted (sealing joins only runs
        // that continue each other, never two that overlap). The open group keeps the
        // order written, so it is checked on a sorted copy.
        let overlap = |sorted: &[Run]| {
            let w = sorted
                .windows(2)
                .find(|w| w[0].first() + w[0].len() > w[1].first())?;
            Some(LogicalPage(w[1].first()))
        };
        let twice = if epoch == self.next_id {
            let mut copy = g.clone();
            copy.seal();
            overlap(&copy.runs)
        } else {
            g.seal();
            overlap(&g.runs)
        };
        if let Some(l) = twice {
            return Err(l);
        }
        for r in &g.runs {
            self.count(r.entry(0).old(), r.len(), true);
        }
        self.groups.insert(epoch, g);
        Ok(())
    }

    /// The bytes the history's entries and index take in memory: the groups' runs as
    /// allocated, and the open group's index if it was made (its buckets and their control
    /// bytes). The map of groups itself, a node per group, is left out.
    pub fn index_bytes(&self) -> u64 {
        let groups: usize = self.groups.values().map(Group::bytes).sum();
        let slot = std::mem::size_of::<(LogicalPage, usize)>() + 1;
        let index = self.open_index.as_ref().map_or(0, |i| i.capacity() * slot);
        (groups + index) as u64
    }

    /// Counts `n` entries holding pages (`old` is some) or zeros in (or out of) the totals.
    fn count(&mut self, old: Option<PhysPage>, n: u64, add: bool) {
        let pages = if old.is_some() { n } else { 0 };
        if add {
            self.history_entries += n;
            self.history_pages += pages;
        } else {
            self.history_entries -= n;
            self.history_pages -= pages;
        }
    }

    /// What `l` held at safe point `at`: `Some(page)` from its history, or `None` when it
    /// has not changed since and reads as it does live.
    pub fn page_at(&mut self, l: LogicalPage, at: SafePointId) -> Option<Option<PhysPage>> {
        self.first_entry_from(l, at.next())
    }

    /// The first entry of `l` in the groups of epochs `from` on: a binary search in each
    /// closed group, then a look in the open one.
    pub fn first_entry_from(
        &mut self,
        l: LogicalPage,
        from: SafePointId,
    ) -> Option<Option<PhysPage>> {
        if from > self.next_id {
            return None;
        }
        let closed = self.groups.range(from..self.next_id);
        if let Some(then) = closed.into_iter().find_map(|(_, g)| g.find_sorted(l)) {
            return Some(then.old());
        }
        let g = self.groups.get(&self.next_id)?;
        let index = self.open_index.get_or_insert_with(|| open_index(g));
        g.runs[*index.get(&l)?].find(l).map(Entry::old)
    }

    /// Every logical page that changed after safe point `at`, with what it held then: up to
    /// safe point `until` (`None`: up to now); sorted by page, so that whoever applies them
    /// walks the map and the counts in order.
    pub fn changed_since(&self, at: SafePointId, until: Option<SafePointId>) -> Vec<Entry> {
        let end = until.unwrap_or(SafePointId(u64::MAX));
        if end <= at {
            return Vec::new();
        }
        // Ascending epochs: the first entry of a page after `at` is its state at `at`. A page
        // whose first entry is in an epoch after `until` did not change up to `until`. The
        // groups are merged (each sorted by page; the open one is sorted first), the lowest
        // epoch first for a page, so the result holds each page once and never more.
        let mut open = match self.groups.get(&self.next_id) {
            Some(g) if self.next_id <= end => g.clone(),
            _ => Group::default(),
        };
        open.seal();
        let last = end.min(self.next_id);
        let closed = (at < last).then(|| self.groups.range(at.next()..=last));
        let groups: Vec<&Group> = closed
            .into_iter()
            .flatten()
            .filter(|(&e, _)| e != self.next_id)
            .map(|(_, g)| g)
            .chain(std::iter::once(&open))
            .collect();
        merge_first(&groups)
    }

    /// How many closed groups there are of epochs `from` on: the binary searches a lookup
    /// from there makes at most.
    pub fn closed_groups_from(&self, from: SafePointId) -> usize {
        if from >= self.next_id {
            return 0;
        }
        self.groups.range(from..self.next_id).count()
    }

    /// Is safe point `id` in the window?
    pub fn contains(&self, id: SafePointId) -> bool {
        self.safe_points.binary_search_by_key(&id, |s| s.id).is_ok()
    }

    /// Closes the open epoch with `sp`, whose id must be `next_id`: its group is sorted by
    /// logical page, its index dropped.
    pub fn push_safe_point(&mut self, sp: SafePoint) {
        assert_eq!(sp.id, self.next_id, "safe point ids must follow the epoch");
        if let Some(g) = self.groups.get_mut(&sp.id) {
            g.seal();
        }
        self.open_index = None;
        self.next_id = sp.id.next();
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

    /// Retires safe point `id`, which must be in the window and not the newest, and hands
    /// each physical page no reachable safe point needs any more to `free`.
    pub fn retire(&mut self, id: SafePointId, mut free: impl FnMut(PhysPage)) {
        let i = self
            .safe_points
            .binary_search_by_key(&id, |s| s.id)
            .expect("retiring a safe point of the window");
        assert!(
            i + 1 < self.safe_points.len(),
            "the newest safe point stays"
        );
        let mut going = self.only_needed_by(i).into_iter().peekable();
        while let Some(&(epoch, _)) = going.peek() {
            let mut pages = FxHashSet::default();
            while let Some((_, l)) = going.next_if(|(e, _)| *e == epoch) {
                pages.insert(l);
            }
            let g = self.groups.get_mut(&epoch).expect("group of an entry");
            let dropped = if pages.len() as u64 == g.len() {
                std::mem::take(g)
            } else {
                // A closed group: its entries stay sorted, so the kept ones are runs as
                // joined as a sealed group's.
                let (gone, kept): (Vec<Entry>, Vec<Entry>) =
                    g.entries().partition(|e| pages.contains(&e.l));
                *g = Group::of(kept);
                Group::of(gone)
            };
            if g.is_empty() {
                self.groups.remove(&epoch);
            }
            for e in dropped.entries() {
                self.count(e.old(), 1, false);
                if let Some(p) = e.old() {
                    free(p);
                }
            }
        }
        self.safe_points.remove(i);
        self.pins.remove(&id);
    }

    /// The entries (group, page) that safe point `safe_points[i]` alone needs: those of the
    /// groups after it up to the next safe point whose range starts after the previous one.
    /// (Two entries of one page cannot both be there: the later one would be needed by no
    /// safe point, and such entries are always dropped.)
    fn only_needed_by(&self, i: usize) -> Vec<(SafePointId, LogicalPage)> {
        let id = self.safe_points[i].id;
        let prev = i.checked_sub(1).map(|j| self.safe_points[j].id);
        let next = self.safe_points.get(i + 1).map_or(self.next_id, |s| s.id);
        let mut out = Vec::new();
        // The pages with an entry after `prev` and before the group at hand: an entry whose
        // page has one there is needed by no safe point before `id` (`prev` reads that
        // later one), so `id` alone needs it. Grown group by group, so each entry is
        // looked at once.
        let mut after_prev: FxHashSet<LogicalPage> = match prev {
            Some(p) => self
                .groups
                .range(p.next()..=id)
                .flat_map(|(_, g)| g.entries().map(|e| e.l))
                .collect(),
            None => FxHashSet::default(),
        };
        for (&epoch, g) in self.groups.range(id.next()..=next) {
            for e in g.entries() {
                if prev.is_none() || after_prev.contains(&e.l) {
                    out.push((epoch, e.l));
                }
            }
            if prev.is_some() {
                after_prev.extend(g.entries().map(|e| e.l));
            }
        }
        out
    }
}

/// Which run of the open group `g` each of its pages is in.
fn open_index(g: &Group) -> FxHashMap<LogicalPage, usize> {
    g.runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| (0..r.len()).map(move |k| (r.entry(k).l, i)))
        .collect()
}

/// How far `merge_first` has taken a group's entries: its runs not all taken yet, and how
/// many pages of the first one were.
struct Cursor<'a> {
    runs: &'a [Run],
    taken: u64,
}

impl Cursor<'_> {
    fn of(g: &Group) -> Cursor<'_> {
        Cursor {
            runs: &g.runs,
            taken: 0,
        }
    }

    /// Appends to `out` the group's entries not taken yet whose page is below `end`.
    fn take_below(&mut self, end: u64, out: &mut Vec<Entry>) {
        while let Some((&r, rest)) = self.runs.split_first() {
            let below = end.saturating_sub(r.first()).min(r.len());
            out.extend((self.taken..below).map(|i| r.entry(i)));
            if below < r.len() {
                self.taken = self.taken.max(below);
                return;
            }
            (self.runs, self.taken) = (rest, 0);
        }
    }
}

/// Entries `merge_first` sorts at a time, about: 1 MiB of them.
const MERGE_SLICE: u64 = 1 << 16;

/// The entries of `groups` (each sorted by page, in ascending epochs) by page, the first
/// group's entry for a page that several hold. The pages are taken a slice of the page
/// range at a time, each slice about `MERGE_SLICE` entries if they are spread evenly: a
/// slice is gathered from every group and sorted, so the memory beyond the output is a
/// slice's (a heap of one entry per group, merging, took twice as long).
fn merge_first(groups: &[&Group]) -> Vec<Entry> {
    let mut held = groups.iter().filter(|g| !g.is_empty());
    if let (Some(only), None) = (held.next(), held.next()) {
        return only.entries().collect();
    }
    let bounds = groups.iter().filter_map(|g| {
        let first = g.runs.first()?.first();
        let last = g.runs.last()?;
        Some((first, last.first() + last.len() - 1))
    });
    let Some((lo, hi)) = bounds.reduce(|(a, b), (c, d)| (a.min(c), b.max(d))) else {
        return Vec::new();
    };
    let total: u64 = groups.iter().map(|g| g.len()).sum();
    let step = ((hi - lo + 1) / total.div_ceil(MERGE_SLICE)).max(1);
    let mut groups: Vec<Cursor> = groups.iter().map(|g| Cursor::of(g)).collect();
    let (mut out, mut slice) = (Vec::new(), Vec::new());
    let mut end = lo;
    while end <= hi {
        let start = end;
        end = end.saturating_add(step);
        for g in &mut groups {
            g.take_below(end, &mut slice);
        }
        // Stable: a page's entries stay in the order of the groups, the lowest epoch's
        // (the page as it read at the safe point) first, and that one is kept. A radix sort
        // of the page's place in the slice: a comparison sort of runs that short took as
        // long as the heap.
        radsort::sort_by_key(&mut slice, |e: &Entry| e.l.0 - start);
        slice.dedup_by_key(|e| e.l);
        out.append(&mut slice);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(id: u64) -> SafePoint {
        SafePoint {
            id: SafePointId(id),
            time_ns: id,
            trigger: Trigger::Flush,
            label: None,
        }
    }

    #[test]
    fn retiring_the_oldest_frees_what_only_it_needed() {
        let mut w = Window::new(SafePointId(1));
        w.push_safe_point(sp(1));
        w.supersede(LogicalPage(0), Some(PhysPage(10))); // group 2, needed by sp 1
        w.push_safe_point(sp(2));
        w.supersede(LogicalPage(0), Some(PhysPage(11))); // group 3, needed by sp 2
        w.supersede(LogicalPage(1), None); // group 3, needed by sp 1 and 2
        w.push_safe_point(sp(3));
        let mut freed = Vec::new();
        w.retire(SafePointId(1), |p| freed.push(p));
        assert_eq!(freed, vec![PhysPage(10)]);
        assert_eq!(w.oldest().map(|s| s.id), Some(SafePointId(2)));
        assert_eq!((w.history_pages, w.history_entries), (1, 2));
        w.retire(SafePointId(2), |p| freed.push(p));
        assert_eq!(freed, vec![PhysPage(10), PhysPage(11)]);
        assert_eq!(w.history_entries, 0);
    }

    #[test]
    fn retiring_between_two_kept_safe_points_frees_only_its_own_history() {
        let mut w = Window::new(SafePointId(1));
        w.push_safe_point(sp(1));
        w.supersede(LogicalPage(0), Some(PhysPage(10))); // 0 at sp 1
        w.push_safe_point(sp(2));
        w.supersede(LogicalPage(0), Some(PhysPage(11))); // 0 at sp 2 (written in epoch 2)
        w.supersede(LogicalPage(1), Some(PhysPage(20))); // 1 at sp 1 and 2
        w.push_safe_point(sp(3));
        w.supersede(LogicalPage(2), Some(PhysPage(30))); // 2 at sp 1, 2 and 3
        w.push_safe_point(sp(4));
        let mut freed = Vec::new();
        w.retire(SafePointId(2), |p| freed.push(p));
        assert_eq!(
            freed,
            vec![PhysPage(11)],
            "only page 0 as of sp 2 was its alone"
        );
        let ids: Vec<SafePointId> = w.safe_points.iter().map(|s| s.id).collect();
        assert_eq!(ids, [1, 3, 4].map(SafePointId));
        // Safe point 1 still reads its pages; 3 reads page 0 live and the rest from history.
        assert_eq!(
            w.page_at(LogicalPage(0), SafePointId(1)),
            Some(Some(PhysPage(10)))
        );
        assert_eq!(
            w.page_at(LogicalPage(1), SafePointId(1)),
            Some(Some(PhysPage(20)))
        );
        assert_eq!(w.page_at(LogicalPage(0), SafePointId(3)), None);
        assert_eq!(
            w.page_at(LogicalPage(2), SafePointId(3)),
            Some(Some(PhysPage(30)))
        );
        w.retire(SafePointId(3), |p| freed.push(p));
        assert_eq!(freed.len(), 1, "sp 1 still needs all that is left");
        w.retire(SafePointId(1), |p| freed.push(p));
        freed.sort();
        assert_eq!(
            freed,
            vec![PhysPage(10), PhysPage(11), PhysPage(20), PhysPage(30)]
        );
        assert_eq!((w.history_pages, w.history_entries), (0, 0));
    }

    #[test]
    fn changed_since_gives_each_page_once_as_it_was_then_sorted_by_page() {
        let p = |n| Some(PhysPage(n));
        let mut w = Window::new(SafePointId(1));
        w.push_safe_point(sp(1));
        w.supersede(LogicalPage(5), p(10)); // group 2
        w.supersede(LogicalPage(1), p(11));
        w.push_safe_point(sp(2));
        w.supersede(LogicalPage(1), p(21)); // group 3
        w.supersede(LogicalPage(2), p(22));
        w.push_safe_point(sp(3));
        w.supersede(LogicalPage(5), p(30)); // open group 4, unsorted
        w.supersede(LogicalPage(3), None);
        let l = LogicalPage;
        let changed = |at, until: Option<u64>| -> Vec<(LogicalPage, Option<PhysPage>)> {
            w.changed_since(SafePointId(at), until.map(SafePointId))
                .iter()
                .map(|e| (e.l, e.old()))
                .collect()
        };
        assert_eq!(
            changed(1, None),
            [(l(1), p(11)), (l(2), p(22)), (l(3), None), (l(5), p(10))]
        );
        assert_eq!(changed(2, Some(3)), [(l(1), p(21)), (l(2), p(22))]);
        assert_eq!(changed(1, Some(2)), [(l(1), p(11)), (l(5), p(10))]);
        assert_eq!(changed(3, None), [(l(3), None), (l(5), p(30))]);
        assert!(changed(3, Some(3)).is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
        /// `changed_since` over groups large enough to be merged a slice at a time (some
        /// pages in several groups, some in runs) is each page's first entry after the safe
        /// point, by page: what a walk of the epochs one by one gives.
        #[test]
        fn changed_since_is_each_pages_first_entry_after_the_safe_point(
            seed in 1u64..u64::MAX,
            epochs in 2u64..6,
            per_epoch in 20_000u64..60_000,
            sparse in 1u64..8,
        ) {
            // Pages spread over `sparse` times as many as an epoch writes.
            let spread = per_epoch * sparse + 8;
            let mut x = seed;
            let mut w = Window::new(SafePointId(1));
            w.push_safe_point(sp(1));
            // Each epoch's writes, as (page, what it held), for the model.
            let mut written: Vec<Vec<(LogicalPage, Option<PhysPage>)>> = Vec::new();
            let mut live: std::collections::HashMap<LogicalPage, Option<PhysPage>> =
                std::collections::HashMap::new();
            for e in 0..epochs {
                let mut pages = Vec::new();
                // Each page once an epoch, as the map's open bit makes it.
                let mut seen = std::collections::HashSet::new();
                while (pages.len() as u64) < per_epoch {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // A run of up to 8 pages from a page in 0..spread, at home or not.
                    let (first, len) = (x % spread, 1 + (x >> 40) % 8);
                    for l in (first..first + len).map(LogicalPage) {
                        if seen.insert(l) {
                            let old = live.get(&l).copied().flatten();
                            live.insert(l, Some(PhysPage(spread * e + l.0)));
                            pages.push((l, old));
                        }
                    }
                }
                for &(l, old) in &pages {
                    w.supersede(l, old);
                }
                written.push(pages);
                if e + 1 < epochs {
                    w.push_safe_point(sp(2 + e));
                }
            }
            for at in 1..epochs + 1 {
                let mut first: BTreeMap<LogicalPage, Option<PhysPage>> = BTreeMap::new();
                for pages in &written[(at - 1) as usize..] {
                    for &(l, old) in pages {
                        first.entry(l).or_insert(old);
                    }
                }
                let want: Vec<_> = first.into_iter().collect();
                let got: Vec<_> = w
                    .changed_since(SafePointId(at), None)
                    .iter()
                    .map(|e| (e.l, e.old()))
                    .collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    /// Pages superseded together, with the pages they held consecutive (or all zeros), take
    /// one run however they were written; each is still found with its own page.
    #[test]
    fn consecutive_pages_share_a_run_and_are_found_one_by_one() {
        let mut w = Window::new(SafePointId(1));
        w.push_safe_point(sp(1));
        // Written backwards in two halves: 100..200 at home, then 0..100 at home.
        for l in (100..200).chain(0..100) {
            w.supersede(LogicalPage(l), Some(PhysPage(1000 + l)));
        }
        // Zeros after them, and a page alone.
        for l in 200..300 {
            w.supersede(LogicalPage(l), None);
        }
        w.supersede(LogicalPage(400), Some(PhysPage(7)));
        let open = &w.groups[&SafePointId(2)];
        assert_eq!(
            (open.len(), open.runs.len()),
            (301, 4),
            "in the order written"
        );
        for l in [0, 99, 100, 199] {
            let got = w.page_at(LogicalPage(l), SafePointId(1));
            assert_eq!(got, Some(Some(PhysPage(1000 + l))), "open page {l}");
        }
        w.push_safe_point(sp(2));
        let closed = &w.groups[&SafePointId(2)];
        assert_eq!(closed.runs.len(), 3, "the two halves joined");
        assert_eq!(w.index_bytes(), 3 * 16);
        for l in [0, 150, 199] {
            let got = w.page_at(LogicalPage(l), SafePointId(1));
            assert_eq!(got, Some(Some(PhysPage(1000 + l))), "closed page {l}");
        }
        assert_eq!(w.page_at(LogicalPage(250), SafePointId(1)), Some(None));
        assert_eq!(
            w.page_at(LogicalPage(400), SafePointId(1)),
            Some(Some(PhysPage(7)))
        );
        assert_eq!(w.page_at(LogicalPage(300), SafePointId(1)), None);
        assert_eq!(w.page_at(LogicalPage(399), SafePointId(1)), None);
        let changed = w.changed_since(SafePointId(1), None);
        assert_eq!(changed.len(), 301);
        assert!(changed.windows(2).all(|p| p[0].l < p[1].l));
        assert_eq!((w.history_entries, w.history_pages), (301, 201));
    }

    /// The open group's index follows the writes made after it was built: a page that
    /// extends a run and one that starts a new run are both found.
    #[test]
    fn the_open_index_follows_later_writes() {
        let mut w = Window::new(SafePointId(1));
        w.push_safe_point(sp(1));
        for l in 10..20 {
            w.supersede(LogicalPage(l), Some(PhysPage(l)));
        }
        assert_eq!(
            w.page_at(LogicalPage(15), SafePointId(1)),
            Some(Some(PhysPage(15)))
        );
        w.supersede(LogicalPage(20), Some(PhysPage(20))); // extends the run
        w.supersede(LogicalPage(5), None); // a run of its own
        assert_eq!(w.groups[&SafePointId(2)].runs.len(), 2);
        assert_eq!(
            w.page_at(LogicalPage(20), SafePointId(1)),
            Some(Some(PhysPage(20)))
        );
        assert_eq!(w.page_at(LogicalPage(5), SafePointId(1)), Some(None));
        assert_eq!(w.page_at(LogicalPage(21), SafePointId(1)), None);
        assert_eq!(w.page_at(LogicalPage(9), SafePointId(1)), None);
    }

    /// Retiring part of a closed group cuts its runs: the pages on either side of a
    /// dropped one are still found, the dropped one no longer.
    #[test]
    fn retiring_part_of_a_run_keeps_the_rest_found() {
        let mut w = Window::new(SafePointId(1));
        w.push_safe_point(sp(1));
        w.supersede(LogicalPage(50), Some(PhysPage(500))); // group 2: 50 as at sp 1
        w.push_safe_point(sp(2));
        for l in 0..100 {
            w.supersede(LogicalPage(l), Some(PhysPage(1000 + l))); // group 3
        }
        w.push_safe_point(sp(3));
        w.supersede(LogicalPage(200), None);
        w.push_safe_point(sp(4));
        // Safe point 2 alone needs page 50's entry of group 3 (sp 1 reads group 2's).
        let mut freed = Vec::new();
        w.retire(SafePointId(2), |p| freed.push(p));
        assert_eq!(freed, [PhysPage(1050)]);
        assert_eq!(w.groups[&SafePointId(3)].runs.len(), 2, "cut at 50");
        for l in [0, 49, 51, 99] {
            assert_eq!(
                w.page_at(LogicalPage(l), SafePointId(1)),
                Some(Some(PhysPage(1000 + l))),
                "page {l}"
            );
        }
        assert_eq!(
            w.page_at(LogicalPage(50), SafePointId(1)),
            Some(Some(PhysPage(500)))
        );
        assert_eq!(w.page_at(LogicalPage(50), SafePointId(3)), None);
        assert_eq!((w.history_entries, w.history_pages), (101, 100));
    }

    /// Groups read from a checkpoint: a page held twice is refused, in the open group and
    /// in a closed one; runs given out of order are sorted and joined in a closed group.
    #[test]
    fn loading_a_group_refuses_a_page_held_twice() {
        let run = |l: u64, p: u64, len: u64| {
            let mut g = Group::default();
            g.push_run(Entry::new(LogicalPage(l), Some(PhysPage(p))), len);
            g
        };
        let two = |a: Group, b: Group| Group::of(a.entries().chain(b.entries()));
        let mut w = Window::new(SafePointId(3));
        assert_eq!(
            w.load_group(SafePointId(1), two(run(10, 0, 10), run(19, 50, 1))),
            Err(LogicalPage(19))
        );
        assert_eq!(
            w.load_group(SafePointId(3), two(run(30, 0, 1), run(25, 50, 10))),
            Err(LogicalPage(30))
        );
        // Out of order, and continuing each other: one run once sealed.
        w.load_group(SafePointId(2), two(run(20, 120, 10), run(10, 110, 10)))
            .unwrap();
        assert_eq!(w.groups[&SafePointId(2)].runs.len(), 1);
        assert_eq!(
            w.page_at(LogicalPage(25), SafePointId(1)),
            Some(Some(PhysPage(125)))
        );
        assert_eq!((w.history_entries, w.history_pages), (20, 20));
    }

    /// Sealing joins runs up to `RUN_MAX` pages together and no further.
    #[test]
    fn sealing_joins_runs_up_to_run_max() {
        for (a, b, runs) in [(RUN_MAX - 10, 10, 1), (RUN_MAX - 10, 11, 2)] {
            let mut w = Window::new(SafePointId(1));
            w.push_safe_point(sp(1));
            // The second stretch first, so the open group holds two runs.
            for l in (a..a + b).chain(0..a) {
                w.supersede(LogicalPage(l), Some(PhysPage(l)));
            }
            w.push_safe_point(sp(2));
            assert_eq!(w.groups[&SafePointId(2)].runs.len(), runs, "{a} + {b}");
            for l in [0, a - 1, a, a + b - 1] {
                let got = w.page_at(LogicalPage(l), SafePointId(1));
                assert_eq!(got, Some(Some(PhysPage(l))), "page {l}");
            }
        }
    }

    /// A run holds at most `RUN_MAX` pages: longer stretches are cut, and every page on
    /// either side of a cut is found.
    #[test]
    fn long_stretches_are_cut_into_runs_of_at_most_run_max() {
        let mut w = Window::new(SafePointId(1));
        w.push_safe_point(sp(1));
        let n = RUN_MAX + 10;
        for l in 0..n {
            w.supersede(LogicalPage(l), Some(PhysPage(l)));
        }
        w.push_safe_point(sp(2));
        let g = &w.groups[&SafePointId(2)];
        assert_eq!((g.len(), g.runs.len()), (n, 2));
        for l in [0, RUN_MAX - 1, RUN_MAX, n - 1] {
            let got = w.page_at(LogicalPage(l), SafePointId(1));
            assert_eq!(got, Some(Some(PhysPage(l))), "page {l}");
        }
        // Retiring drops them all.
        w.push_safe_point(sp(3));
        let mut freed = 0;
        w.retire(SafePointId(1), |_| freed += 1);
        assert_eq!(freed, n);
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
