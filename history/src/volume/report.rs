//! What the volume reports: figures, safe points with their sizes, what reclaim gave up, and
//! what `inspect` and `check` found.

use crate::format::Layout;
use crate::window::{Group, SafePoint, SafePointId, Window};
use crate::Store;

use super::{ViewId, Volume};

/// Figures for `rewind list` and `rewind stats`. With the feature `serde`, the binary puts
/// them on its control socket and in its JSON output as they are: the field names are keys
/// there, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Stats {
    /// Pages the device shows.
    pub logical_pages: u64,
    /// Pages of the data area.
    pub physical_pages: u64,
    /// Pages free for new writes, counting those waiting for a commit or for reads in
    /// flight.
    pub free_pages: u64,
    /// Pages holding history.
    pub history_pages: u64,
    /// Pages of the history area (physical minus logical).
    pub history_capacity_pages: u64,
    /// Reachable safe points.
    pub safe_points: u64,
    /// The oldest reachable safe point.
    pub oldest_safe_point: Option<SafePointId>,
    /// The newest safe point.
    pub newest_safe_point: Option<SafePointId>,
}

impl Stats {
    /// The figures of an image of `layout` whose window is `w`, with `free_pages` free.
    pub(super) fn of(layout: &Layout, w: &Window, free_pages: u64) -> Stats {
        Stats {
            logical_pages: layout.logical_pages,
            physical_pages: layout.physical_pages,
            free_pages,
            history_pages: w.history_pages,
            history_capacity_pages: layout.physical_pages - layout.logical_pages,
            safe_points: w.safe_points.len() as u64,
            oldest_safe_point: w.oldest().map(|s| s.id),
            newest_safe_point: w.newest().map(|s| s.id),
        }
    }
}

/// Something reclaim gave up so the live device's writes would not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A view was dropped: its reads fail from now on.
    ViewDropped {
        /// The view.
        view: ViewId,
        /// The safe point it showed.
        at: SafePointId,
    },
    /// A pin was released and its safe point may retire.
    PinReleased {
        /// The safe point.
        id: SafePointId,
    },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::ViewDropped { at, .. } => {
                write!(f, "view of safe point {at} dropped: {HISTORY_FULL}")
            }
            Notice::PinReleased { id } => {
                write!(f, "pin on safe point {id} released: {HISTORY_FULL}")
            }
        }
    }
}

pub(super) const HISTORY_FULL: &str =
    "the history area is full and views and pins held all of it (writes to the live device come first)";

/// A safe point with the space figures `rewind log` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafePointInfo {
    /// The safe point.
    pub safe_point: SafePoint,
    /// Pages first written in the epoch it closed (unknown for the oldest: `None`).
    pub changed_pages: Option<u64>,
    /// History pages made between it and the next safe point: the original states of
    /// the pages overwritten then, which it (and maybe older safe points) reads. Over the
    /// window these add up to the history in use.
    pub held_pages: u64,
    /// Kept from retirement by `rewind pin`.
    pub pinned: bool,
}

/// An image as it stands on disk, read without opening it for service.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// Where everything is.
    pub layout: Layout,
    /// The window, oldest first.
    pub safe_points: Vec<SafePointInfo>,
    /// The figures `stats` shows.
    pub stats: Stats,
    /// Whether the last daemon closed it cleanly.
    pub clean: bool,
}

/// What `rewind check` found: every figure it checked.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Per superblock copy: its generation, or why it is not valid.
    pub superblocks: [Result<u64, String>; 2],
    /// The checkpoint slot in use.
    pub checkpoint_slot: u32,
    /// Journal blocks replayed on top of the checkpoint.
    pub journal_blocks: u64,
    /// Physical pages the live map points at.
    pub live_pages: u64,
    /// Physical pages only history points at.
    pub history_only_pages: u64,
    /// Physical pages nobody points at.
    pub free_pages: u64,
    /// Physical pages in all.
    pub physical_pages: u64,
    /// Safe points in the window.
    pub safe_points: u64,
    /// Whether the last daemon closed the image cleanly.
    pub clean: bool,
}

/// The safe points of `w` with their space figures, oldest first.
pub(super) fn safe_point_infos(w: &Window) -> Vec<SafePointInfo> {
    let pages = |g: &Group| -> u64 { g.entries().filter(|e| e.old().is_some()).count() as u64 };
    w.safe_points
        .iter()
        .enumerate()
        .map(|(i, sp)| SafePointInfo {
            safe_point: sp.clone(),
            changed_pages: w.groups.get(&sp.id).map(Group::len).or(
                // Group `id` is dropped once `id` is the oldest; an empty epoch has none.
                (i > 0).then_some(0),
            ),
            held_pages: w
                .groups
                .range(sp.id.next()..=w.safe_points.get(i + 1).map_or(w.next_id, |n| n.id))
                .map(|(_, g)| pages(g))
                .sum(),
            pinned: w.pins.contains(&sp.id),
        })
        .collect()
}

impl<S: Store> Volume<S> {
    /// The bytes of memory the history's entries and index take (`Window::index_bytes`):
    /// 16 per run of history entries (at most 16 per entry).
    pub fn history_index_bytes(&self) -> u64 {
        self.state.lock().window.index_bytes()
    }

    /// Figures for `list` and `stats`.
    pub fn stats(&self) -> Stats {
        let st = self.state.lock();
        // Pages freed by records not yet durable, or waiting for reads in flight, are free
        // as soon as the next commit or those reads are done.
        let waiting = st.pending_free.len() as u64
            + self
                .quarantine
                .lock()
                .iter()
                .map(|(_, p)| p.len() as u64)
                .sum::<u64>();
        Stats::of(&self.layout, &st.window, self.alloc.free_pages() + waiting)
    }

    /// The reachable safe points with their space figures, oldest first.
    pub fn safe_point_infos(&self) -> Vec<SafePointInfo> {
        safe_point_infos(&self.state.lock().window)
    }

    /// The reachable safe points, oldest first.
    pub fn safe_points(&self) -> Vec<SafePoint> {
        self.state
            .lock()
            .window
            .safe_points
            .iter()
            .cloned()
            .collect()
    }
}
