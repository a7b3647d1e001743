//! The volume: a formatted backing store served as a device with history.
//!
//! Write path: `allocate` claims a free physical page (the logical page's home if free, else
//! from the caller's stream), the caller writes the data there, then `commit_writes` switches
//! the remap table and appends a journal record. `flush` closes the epoch with a safe point and
//! commits: data sync, journal write, journal sync. Nothing on disk is ever overwritten in
//! place except free pages, so a crash leaves every page old or new.
//!
//! Invariants:
//! - every physical page is exactly one of: free, live (mapped), history, claimed by an
//!   in-flight write, or pending (freed by a record not yet durable);
//! - a pending page is only reused after the record that freed it is durable, so the journal
//!   prefix that survives a crash never points at a page that was written again;
//! - the data of a record is durable before the record is (`commit` syncs the store before
//!   writing the journal), and a checkpoint is durable before the superblock points at it.
//!
//! A write's record is also written to the journal unsynced before `commit_writes` returns
//! (see `journal`), so a daemon that dies loses no acknowledged write; a power cut loses
//! what no flush made durable, as the device's volatile write cache promises.
//!
//! Locks: `commit` serializes commits (journal position, superblock); `tail` orders the
//! writes of pending journal blocks; `state` guards the window and the records not yet
//! synced, and is held only for memory work. Order: `commit`, `tail`, `state`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rewind_remap::{EpochTag, Mapping, PageAllocator, RemapTable};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

use crate::checkpoint::{self, Snapshot};
use crate::format::{
    CreateOptions, Layout, Superblock, FORMAT_VERSION, MAX_LABEL, MAX_SAFE_POINTS, PAGE_SIZE,
    RECORDS_PER_BLOCK, SUPER_MAGIC, SUPER_OFFSETS,
};
use crate::journal::{self, Record};
use crate::window::{SafePoint, Trigger, Window};
use crate::{Error, LogicalPage, PhysPage, Store, Stream};

/// Figures for `rewind list` and `rewind stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Pages the device shows.
    pub logical_pages: u64,
    /// Pages of the data area.
    pub physical_pages: u64,
    /// Pages free for new writes, counting those a commit will free.
    pub free_pages: u64,
    /// Pages holding history.
    pub history_pages: u64,
    /// Pages of the history area (physical minus logical).
    pub history_capacity_pages: u64,
    /// Reachable safe points.
    pub safe_points: u64,
    /// The oldest reachable safe point.
    pub oldest_safe_point: Option<u64>,
    /// The newest safe point.
    pub newest_safe_point: Option<u64>,
}

struct State {
    window: Window,
    /// References to each physical page (see `Apply::refs`).
    refs: Vec<u32>,
    /// Records applied in memory and not yet handed to a commit.
    pending: journal::Pending,
    /// The journal sequence of the first pending block.
    first_seq: u64,
    /// Pages freed by those records.
    pending_free: Vec<PhysPage>,
    /// Open views by number: each holds its safe point until closed or dropped.
    views: BTreeMap<u64, View>,
    next_view: u64,
    /// What reclaim had to give up, for the daemon's log.
    notices: Vec<Notice>,
}

/// A view's state: the safe point it shows, and why it was dropped, if it was.
struct View {
    at: u64,
    dropped: Option<String>,
}

/// Something reclaim gave up so the live device's writes would not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A view was dropped: its reads fail from now on.
    ViewDropped {
        /// The view.
        view: ViewId,
        /// The safe point it showed.
        at: u64,
    },
    /// A pin was released and its safe point may retire.
    PinReleased {
        /// The safe point.
        id: u64,
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

const HISTORY_FULL: &str =
    "the history area is full and views and pins held all of it (writes to the live device come first)";

/// An open view of a past safe point (see `Volume::open_view`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViewId(u64);

struct CommitState {
    sb: Superblock,
    /// The sequence of the next journal block to write.
    next_seq: u64,
}

fn describe_window(w: &Window) -> String {
    match (w.oldest(), w.newest()) {
        (Some(o), Some(n)) if o.id == n.id => format!("safe point {}", o.id),
        (Some(o), Some(n)) => format!("safe points {} to {}", o.id, n.id),
        _ => "no safe point".into(),
    }
}

/// What `load` rebuilds from disk.
struct Loaded {
    sb: Superblock,
    layout: Layout,
    map: RemapTable,
    window: Window,
    alloc: PageAllocator,
    refs: Vec<u32>,
    next_seq: u64,
    /// Whether unsynced journal blocks were replayed.
    unsynced: bool,
}

/// Counts the references to each physical page and checks that every page belongs to one
/// logical page only: the live map and history entries of one page may share a physical
/// page (after a rollback), two logical pages never.
fn count_refs(layout: &Layout, map: &RemapTable, window: &Window) -> Result<Vec<u32>, Error> {
    let mut refs = vec![0u32; layout.physical_pages as usize];
    let mut owner = vec![u64::MAX; layout.physical_pages as usize];
    let mut take = |p: PhysPage, l: LogicalPage, what: &dyn Fn() -> String| {
        let i = p.0 as usize;
        if owner[i] != u64::MAX && owner[i] != l.0 {
            return Err(Error::Corrupt(format!(
                "physical page {} belongs to logical pages {} and {} ({})",
                p.0,
                owner[i],
                l.0,
                what()
            )));
        }
        owner[i] = l.0;
        refs[i] += 1;
        Ok(())
    };
    for l in 0..layout.logical_pages {
        if let Some(p) = map.get(LogicalPage(l)).phys {
            take(p, LogicalPage(l), &|| "live".into())?;
        }
    }
    for (epoch, entries) in &window.groups {
        for (l, p) in entries {
            if let Some(p) = p {
                take(*p, *l, &|| format!("history group {epoch}"))?;
            }
        }
    }
    Ok(refs)
}

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

/// Checks every piece of metadata of an image without writing: both superblock copies,
/// the checkpoint, the journal, the remap table and history (each physical page belongs to
/// one logical page, and is live, history or free). An error is a corruption.
pub fn check<S: Store>(store: &S) -> Result<CheckReport, Error> {
    let mut superblocks: [Result<u64, String>; 2] = [Err(String::new()), Err(String::new())];
    for (i, off) in SUPER_OFFSETS.iter().enumerate() {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        superblocks[i] = match store.read_at(*off, &mut page) {
            Err(e) => Err(format!("unreadable: {e}")),
            Ok(()) => Superblock::validate(&page)
                .map(|sb| sb.generation.get())
                .map_err(|e| e.to_string()),
        };
    }
    let l = Volume::load(store, boot_id())?;
    let mut live = 0u64;
    for p in 0..l.layout.logical_pages {
        live += u64::from(l.map.get(LogicalPage(p)).phys.is_some());
    }
    let used = l.refs.iter().filter(|r| **r > 0).count() as u64;
    if used != l.layout.physical_pages - l.alloc.free_pages() {
        return Err(Error::Corrupt(format!(
            "{used} pages referenced but {} claimed",
            l.layout.physical_pages - l.alloc.free_pages()
        )));
    }
    Ok(CheckReport {
        superblocks,
        checkpoint_slot: l.sb.ckpt_slot.get(),
        journal_blocks: l.next_seq - l.sb.ckpt_journal_seq.get(),
        live_pages: live,
        history_only_pages: used - live,
        free_pages: l.alloc.free_pages(),
        physical_pages: l.layout.physical_pages,
        safe_points: l.window.safe_points.len() as u64,
        clean: l.sb.clean.get() == 1,
    })
}

/// Reads an image's history without serving it or writing a byte: `rewind log IMAGE`.
pub fn inspect<S: Store>(store: &S) -> Result<Inspection, Error> {
    let l = Volume::load(store, boot_id())?;
    let stats = Stats {
        logical_pages: l.layout.logical_pages,
        physical_pages: l.layout.physical_pages,
        free_pages: l.alloc.free_pages(),
        history_pages: l.window.history_pages,
        history_capacity_pages: l.layout.physical_pages - l.layout.logical_pages,
        safe_points: l.window.safe_points.len() as u64,
        oldest_safe_point: l.window.oldest().map(|s| s.id),
        newest_safe_point: l.window.newest().map(|s| s.id),
    };
    Ok(Inspection {
        layout: l.layout,
        safe_points: safe_point_infos(&l.window),
        stats,
        clean: l.sb.clean.get() == 1,
    })
}

fn safe_point_infos(w: &Window) -> Vec<SafePointInfo> {
    let pages = |g: &Vec<(LogicalPage, Option<PhysPage>)>| -> u64 {
        g.iter().filter(|(_, p)| p.is_some()).count() as u64
    };
    w.safe_points
        .iter()
        .enumerate()
        .map(|(i, sp)| SafePointInfo {
            safe_point: sp.clone(),
            changed_pages: w.groups.get(&sp.id).map(|g| g.len() as u64).or(
                // Group `id` is dropped once `id` is the oldest; an empty epoch has none.
                (i > 0).then_some(0),
            ),
            held_pages: w
                .groups
                .range(sp.id + 1..=w.safe_points.get(i + 1).map_or(w.next_id, |n| n.id))
                .map(|(_, g)| pages(g))
                .sum(),
            pinned: w.pins.contains(&sp.id),
        })
        .collect()
}

/// A served image. `Send + Sync`: queue threads share it.
pub struct Volume<S: Store> {
    store: S,
    layout: Layout,
    uuid: u64,
    session: u32,
    map: RemapTable,
    alloc: PageAllocator,
    state: Mutex<State>,
    commit: Mutex<CommitState>,
    /// Orders writes of pending journal blocks: an unsynced write of a block never lands
    /// after the commit's synced write of it. Taken before `state`, after `commit`.
    tail: Mutex<()>,
    /// Below this many free pages, allocation reclaims first.
    low_water: u64,
    /// Records buffered beyond this are committed without waiting for a flush, so one commit
    /// always fits the journal.
    commit_threshold: usize,
    /// Set when a metadata write failed: the in-memory state is then ahead of the disk, so
    /// every later request fails rather than pretend.
    failed: AtomicBool,
    /// Pages freed by durable records, waiting for the reads that may still target them.
    quarantine: Mutex<Vec<(u64, Vec<PhysPage>)>>,
    /// Bumped after each commit's frees are quarantined: a read that began at generation
    /// `g` may have resolved to a page quarantined at any generation `>= g`.
    read_gen: AtomicU64,
    /// Per reader (I/O queue): the oldest generation of its reads in flight, `u64::MAX`
    /// when none.
    readers: Mutex<Vec<Arc<AtomicU64>>>,
}

/// Tracks one queue's reads in flight, so a page they resolved to is not handed to a new
/// write (and overwritten) before they finish. Not shared between threads.
pub struct ReadTracker {
    oldest: Arc<AtomicU64>,
    inflight: std::cell::RefCell<std::collections::BTreeMap<u64, u32>>,
}

impl ReadTracker {
    fn publish(&self) {
        let min = self.inflight.borrow().keys().next().copied();
        self.oldest.store(min.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Call before resolving the pages of a read; pass the result to `end` when the read's
    /// data has arrived.
    pub fn begin<S: Store>(&self, vol: &Volume<S>) -> u64 {
        let g = vol.read_gen.load(Ordering::SeqCst);
        *self.inflight.borrow_mut().entry(g).or_default() += 1;
        self.publish();
        // Our generation is visible before we load the map: a commit that misses it has
        // switched the map before we look (see `release_quarantine`).
        std::sync::atomic::fence(Ordering::SeqCst);
        g
    }

    /// The read begun at `g` is done.
    pub fn end(&self, g: u64) {
        let mut m = self.inflight.borrow_mut();
        if let Some(n) = m.get_mut(&g) {
            *n -= 1;
            if *n == 0 {
                m.remove(&g);
            }
        }
        drop(m);
        self.publish();
    }
}

/// This host's name, zero padded, for the superblock's owner: with the pid it tells a
/// live owner from one that crashed (see `format::Superblock::owner`).
fn host_name() -> [u8; 64] {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim().as_bytes();
    let mut out = [0u8; 64];
    let n = name.len().min(64);
    out[..n].copy_from_slice(&name[..n]);
    out
}

/// This boot of the kernel: 64 bits of its random boot id (0 if unknown, which trusts no
/// unsynced block).
fn boot_id() -> u64 {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    u64::from_str_radix(&hex, 16).map_or(0, |b| b | 1)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.write_u32(std::process::id());
    h.finish()
}

/// Formats `store` as an empty device of `opts.size` bytes whose history holds one safe
/// point, the empty device itself.
pub fn create<S: Store>(store: &S, opts: &CreateOptions) -> Result<Layout, Error> {
    let layout = Layout::for_create(opts)?;
    if store.len() < layout.required_bytes() {
        return Err(Error::TooSmall {
            need: layout.required_bytes(),
            have: store.len(),
        });
    }
    let uuid = random_u64();
    let mut window = Window::new(0);
    window.push_safe_point(SafePoint {
        id: 0,
        time_ns: now_ns(),
        trigger: Trigger::Format,
        label: None,
    });
    let snapshot = Snapshot {
        map: vec![Mapping::UNWRITTEN.pack(); layout.logical_pages as usize],
        window,
        journal_seq: 0,
    };
    let bytes = checkpoint::encode(&snapshot, uuid);
    store
        .write_at(layout.ckpt_offsets[0], &bytes)
        .map_err(Error::io("writing the first checkpoint"))?;
    store
        .sync()
        .map_err(Error::io("syncing the first checkpoint"))?;
    let mut sb = Superblock {
        magic: SUPER_MAGIC,
        version: U32::new(FORMAT_VERSION),
        page_size: U32::new(PAGE_SIZE as u32),
        logical_pages: U64::new(layout.logical_pages),
        physical_pages: U64::new(layout.physical_pages),
        journal_blocks: U64::new(layout.journal_blocks),
        uuid: U64::new(uuid),
        created_ns: U64::new(now_ns()),
        generation: U64::new(0),
        session: U32::new(0),
        ckpt_slot: U32::new(0),
        ckpt_len: U64::new(bytes.len() as u64),
        ckpt_crc: U32::new(crc32c::crc32c(&bytes)),
        clean: U32::new(1),
        ckpt_journal_seq: U64::new(0),
        owner_pid: U32::new(0),
        ckpt_session: U32::new(0),
        owner_host: [0; 64],
        boot_id: U64::new(0),
        reserved: [0; 24],
        crc: U32::new(0),
        pad: U32::new(0),
    };
    write_superblock(store, &mut sb)?;
    Ok(layout)
}

/// Writes both superblock copies, one at a time, so at most one is ever torn.
fn write_superblock<S: Store>(store: &S, sb: &mut Superblock) -> Result<(), Error> {
    sb.generation = U64::new(sb.generation.get() + 1);
    sb.crc = U32::new(sb.compute_crc());
    let mut page = vec![0u8; PAGE_SIZE as usize];
    page[..std::mem::size_of::<Superblock>()].copy_from_slice(sb.as_bytes());
    for off in SUPER_OFFSETS {
        store
            .write_at(off, &page)
            .map_err(Error::io("writing the superblock"))?;
        store.sync().map_err(Error::io("syncing the superblock"))?;
    }
    Ok(())
}

/// Reads the current superblock: the valid copy with the highest generation.
pub fn read_superblock<S: Store>(store: &S) -> Result<Superblock, Error> {
    if store.len() < 2 * PAGE_SIZE {
        return Err(Error::TooSmall {
            need: 2 * PAGE_SIZE,
            have: store.len(),
        });
    }
    let mut best: Option<Superblock> = None;
    let mut first_err = None;
    for off in SUPER_OFFSETS {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        store
            .read_at(off, &mut page)
            .map_err(Error::io("reading the superblock"))?;
        match Superblock::validate(&page) {
            Ok(sb) => {
                if best.is_none_or(|b| sb.generation.get() > b.generation.get()) {
                    best = Some(sb);
                }
            }
            Err(e) => {
                // A newer version or a clear corruption says more than "not rewind".
                let better = matches!(first_err, None | Some(Error::NotRewind));
                if better {
                    first_err = Some(e);
                }
            }
        }
    }
    best.ok_or_else(|| first_err.unwrap_or(Error::NotRewind))
}

/// Hands every record's effect on the map and window to the same code, live and in replay.
struct Apply<'a, F: FnMut(PhysPage)> {
    map: &'a RemapTable,
    window: &'a mut Window,
    /// References to each physical page: the live map and history entries. A rollback
    /// makes a history page live again, so a page can have several.
    refs: &'a mut [u32],
    free: F,
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
    fn set_page(&mut self, l: LogicalPage, new: Option<PhysPage>) {
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

    fn apply(&mut self, r: &Record, layout: &Layout) -> Result<(), Error> {
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
    /// Rebuilds the state of a formatted store from its checkpoint and the journal's valid
    /// prefix, writing nothing.
    fn load(store: &S, boot: u64) -> Result<Loaded, Error> {
        let sb = read_superblock(store)?;
        // Unsynced journal blocks hold what the host's page cache held when the daemon died;
        // after a reboot they may point at data that never reached the disk.
        let trust_unsynced = boot != 0 && sb.boot_id.get() == boot;
        let layout = sb.layout();
        if store.len() < layout.required_bytes() {
            return Err(Error::TooSmall {
                need: layout.required_bytes(),
                have: store.len(),
            });
        }
        let uuid = sb.uuid.get();
        let slot = sb.ckpt_slot.get() as usize;
        let mut bytes = vec![0u8; sb.ckpt_len.get() as usize];
        store
            .read_at(layout.ckpt_offsets[slot], &mut bytes)
            .map_err(Error::io("reading the checkpoint"))?;
        if crc32c::crc32c(&bytes) != sb.ckpt_crc.get() {
            return Err(Error::Corrupt(format!(
                "checkpoint in slot {slot} does not match the superblock's checksum"
            )));
        }
        let snap = checkpoint::decode(&bytes, &layout, uuid)?;
        drop(bytes);
        if snap.journal_seq != sb.ckpt_journal_seq.get() {
            return Err(Error::Corrupt(format!(
                "checkpoint starts the journal at {}, the superblock at {}",
                snap.journal_seq,
                sb.ckpt_journal_seq.get()
            )));
        }
        let map = RemapTable::new(layout.logical_pages);
        for (l, word) in snap.map.iter().enumerate() {
            map.set(LogicalPage(l as u64), Mapping::unpack(*word));
        }
        let mut window = snap.window;
        let mut refs = count_refs(&layout, &map, &window)?;
        let end = journal::replay(
            store,
            &layout,
            uuid,
            snap.journal_seq,
            sb.ckpt_session.get(),
            trust_unsynced,
            |r| {
                Apply {
                    map: &map,
                    window: &mut window,
                    refs: &mut refs,
                    free: |_| {},
                }
                .apply(&r, &layout)
            },
        )?;
        // Open starts a session above the superblock's, and replay after the next checkpoint
        // rejects blocks below it: a journal block of a later session would come back.
        if end.last_session > sb.session.get() {
            return Err(Error::Corrupt(format!(
                "the journal holds blocks of session {}, after the superblock's session {}",
                end.last_session,
                sb.session.get()
            )));
        }
        if window.newest().is_none() {
            return Err(Error::Corrupt(
                "the history window holds no safe point".into(),
            ));
        }
        // Recount from scratch: this also checks what replay built.
        let refs = count_refs(&layout, &map, &window)?;
        let alloc = PageAllocator::new(layout.physical_pages as u32);
        for (p, r) in refs.iter().enumerate() {
            if *r > 0 {
                alloc.claim(PhysPage(p as u32));
            }
        }
        Ok(Loaded {
            sb,
            layout,
            map,
            window,
            alloc,
            refs,
            next_seq: end.next_seq,
            unsynced: end.unsynced,
        })
    }

    /// Opens a formatted store: the checkpoint plus the journal's valid prefix rebuild the
    /// remap table and the window, then a new session starts.
    pub fn open(store: S) -> Result<Volume<S>, Error> {
        Self::open_in_boot(store, boot_id())
    }

    /// `open` as a daemon of boot `boot` would (0: unknown, trusting no unsynced block).
    /// Tests use it to tell a power cut (another boot) from a killed daemon (the same).
    pub fn open_in_boot(store: S, boot: u64) -> Result<Volume<S>, Error> {
        let Loaded {
            mut sb,
            layout,
            map,
            window,
            alloc,
            refs,
            next_seq,
            unsynced,
        } = Self::load(&store, boot)?;
        let uuid = sb.uuid.get();
        // Never wraps: blocks of the new session must not rank below older ones.
        let session = sb.session.get().checked_add(1).ok_or_else(|| {
            Error::Corrupt(format!(
                "superblock session {} is at its limit",
                sb.session.get()
            ))
        })?;
        sb.session = U32::new(session);
        sb.clean = U32::new(0);
        sb.owner_pid = U32::new(std::process::id());
        sb.owner_host = host_name();
        sb.boot_id = U64::new(boot);
        write_superblock(&store, &mut sb)?;
        let history_area = layout.physical_pages - layout.logical_pages;
        let vol = Volume {
            low_water: (history_area / 8).clamp(64, 65_536),
            commit_threshold: (layout.journal_blocks as usize * RECORDS_PER_BLOCK) / 8,
            store,
            layout,
            uuid,
            session,
            map,
            alloc,
            state: Mutex::new(State {
                window,
                refs,
                pending: journal::Pending::default(),
                first_seq: next_seq,
                pending_free: Vec::new(),
                views: BTreeMap::new(),
                next_view: 0,
                notices: Vec::new(),
            }),
            commit: Mutex::new(CommitState { sb, next_seq }),
            tail: Mutex::new(()),
            failed: AtomicBool::new(false),
            quarantine: Mutex::new(Vec::new()),
            read_gen: AtomicU64::new(0),
            readers: Mutex::new(Vec::new()),
        };
        if unsynced {
            // Make what the dead daemon left unsynced durable now, in a checkpoint: a later
            // boot would not trust those blocks.
            vol.commit(true)?;
        }
        Ok(vol)
    }

    /// Where everything is in the store.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The backing store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The stream for queue `index` of `count`: each starts at its own share of the history
    /// area, so queues allocate from different places.
    pub fn stream(&self, index: u32, count: u32) -> Stream {
        let area = self.layout.physical_pages - self.layout.logical_pages;
        let start = self.layout.logical_pages + area * u64::from(index) / u64::from(count.max(1));
        self.alloc.stream(start as u32)
    }

    fn check(&self, l: LogicalPage) -> Result<(), Error> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(Error::Corrupt(
                "an earlier metadata write failed; the volume refuses further I/O".into(),
            ));
        }
        if l.0 >= self.layout.logical_pages {
            return Err(Error::OutOfRange {
                page: l.0,
                pages: self.layout.logical_pages,
            });
        }
        Ok(())
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
    fn release_quarantine(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        let oldest = self
            .readers
            .lock()
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX);
        let mut q = self.quarantine.lock();
        // Pages quarantined at generation g were resolved only by reads begun at <= g.
        q.retain(|(g, pages)| {
            if *g < oldest {
                for p in pages {
                    self.alloc.release(*p);
                }
                false
            } else {
                true
            }
        });
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

    /// FLUSH: closes the epoch with a safe point (if anything was written since the last)
    /// and makes it and every write completed before durable.
    pub fn flush(&self) -> Result<(), Error> {
        self.safe_point(Trigger::Flush, None).map(|_| ())
    }

    /// Makes a safe point now and commits it; returns its id. A flush or idle point with
    /// nothing written since the newest safe point makes none and returns that one.
    pub fn safe_point(&self, trigger: Trigger, label: Option<String>) -> Result<u64, Error> {
        if let Some(l) = &label {
            if l.len() > MAX_LABEL {
                return Err(Error::BadOption(format!(
                    "label of {} bytes; at most {MAX_LABEL}",
                    l.len()
                )));
            }
        }
        let id = {
            let mut st = self.state.lock();
            let open = st.window.next_id;
            let dirty = st.window.groups.contains_key(&open);
            // Flush and idle points mark a state; with nothing written since the newest
            // safe point, that one already is it.
            if dirty || !matches!(trigger, Trigger::Flush | Trigger::Idle) {
                let sp = SafePoint {
                    id: open,
                    time_ns: now_ns(),
                    trigger,
                    label,
                };
                st.pending.push(&Record::SafePoint(sp.clone()));
                st.window.push_safe_point(sp);
                self.retire_until(&mut st, false, |st, _| {
                    (st.window.safe_points.len() as u64) < MAX_SAFE_POINTS
                });
                open
            } else {
                st.window.newest().map_or(0, |s| s.id)
            }
        };
        self.commit(false)?;
        Ok(id)
    }

    /// Retires safe points until `enough`: first the oldest held by no pin or view (never the
    /// newest), then, if `close_open_epoch`, the open epoch is closed with a reclaim safe point
    /// so the history it made can go too. Only when that is not enough do views give way
    /// (their reads fail from then on), then pins, each with a notice for the log: the live
    /// device never fails a write to keep history.
    fn retire_until(
        &self,
        st: &mut State,
        close_open_epoch: bool,
        enough: impl Fn(&State, &PageAllocator) -> bool,
    ) {
        let mut closed = false;
        while !enough(st, &self.alloc) {
            let newest = st.window.newest().map_or(0, |s| s.id);
            let held: BTreeSet<u64> = st
                .views
                .values()
                .filter(|v| v.dropped.is_none())
                .map(|v| v.at)
                .chain(st.window.pins.iter().copied())
                .collect();
            let unheld: Vec<u64> = st
                .window
                .safe_points
                .iter()
                .map(|s| s.id)
                .filter(|id| *id != newest && !held.contains(id))
                .collect();
            if !unheld.is_empty() {
                for id in unheld {
                    if enough(st, &self.alloc) {
                        return;
                    }
                    self.apply_locked(st, Record::Retire { id })
                        .expect("retiring an older safe point of the window");
                }
                continue;
            }
            let open = st.window.next_id;
            if close_open_epoch && !closed && st.window.groups.contains_key(&open) {
                let sp = SafePoint {
                    id: open,
                    time_ns: now_ns(),
                    trigger: Trigger::Reclaim,
                    label: None,
                };
                self.apply_locked(st, Record::SafePoint(sp))
                    .expect("closing the open epoch");
                closed = true;
                continue;
            }
            let view = st
                .views
                .iter_mut()
                .filter(|(_, v)| v.dropped.is_none() && v.at != newest)
                .min_by_key(|(n, v)| (v.at, **n));
            if let Some((n, v)) = view {
                v.dropped = Some(HISTORY_FULL.to_string());
                let notice = Notice::ViewDropped {
                    view: ViewId(*n),
                    at: v.at,
                };
                st.notices.push(notice);
                continue;
            }
            let pin = st.window.pins.iter().copied().find(|id| *id != newest);
            if let Some(id) = pin {
                self.apply_locked(st, Record::Pin { id, pinned: false })
                    .expect("unpinning a safe point of the window");
                st.notices.push(Notice::PinReleased { id });
                continue;
            }
            return;
        }
    }

    /// Applies `r` to the live state and queues it for the next commit.
    fn apply_locked(&self, st: &mut State, r: Record) -> Result<(), Error> {
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

    /// Makes safe point `to` the live state again. Metadata only: no data is copied. The
    /// state being left becomes a safe point of its own (returned), so the rollback can be
    /// undone by rolling back to it while the window holds it. Durable when it returns.
    pub fn rollback(&self, to: u64) -> Result<u64, Error> {
        let mut c = self.commit.lock();
        let before = {
            let mut st = self.state.lock();
            if !st.window.contains(to) {
                return Err(Error::BadOption(format!(
                    "safe point {to} is not in the history window (it holds {})",
                    describe_window(&st.window)
                )));
            }
            let id = st.window.next_id;
            self.apply_locked(
                &mut st,
                Record::SafePoint(SafePoint {
                    id,
                    time_ns: now_ns(),
                    trigger: Trigger::Rollback,
                    label: None,
                }),
            )?;
            self.apply_locked(&mut st, Record::Rollback { to })?;
            id
        };
        self.commit_locked(&mut c, false)?;
        Ok(before)
    }

    /// The physical page `l` read from at safe point `at` (`None`: zeros), for views.
    pub fn resolve_at(&self, l: LogicalPage, at: u64) -> Result<Option<PhysPage>, Error> {
        self.check(l)?;
        let st = self.state.lock();
        if !st.window.contains(at) {
            return Err(Error::BadOption(format!(
                "safe point {at} is not in the history window (it holds {})",
                describe_window(&st.window)
            )));
        }
        Ok(match st.window.page_at(l, at) {
            Some(then) => then,
            None => self.map.get(l).phys,
        })
    }

    /// Reads page `l` as it was at safe point `at`, through the store (tests and tools).
    pub fn read_page_at(&self, l: LogicalPage, at: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.read_phys(self.resolve_at(l, at)?, buf)
    }

    /// Pins safe point `id` (or unpins it): a pinned safe point is kept from retirement
    /// until views and other pins have given way. Durable when it returns.
    pub fn pin(&self, id: u64, pinned: bool) -> Result<(), Error> {
        let mut c = self.commit.lock();
        {
            let mut st = self.state.lock();
            if !st.window.contains(id) {
                return Err(Error::BadOption(format!(
                    "safe point {id} is not in the history window (it holds {})",
                    describe_window(&st.window)
                )));
            }
            if st.window.pins.contains(&id) == pinned {
                return Ok(());
            }
            self.apply_locked(&mut st, Record::Pin { id, pinned })?;
        }
        self.commit_locked(&mut c, false)
    }

    /// Opens a view of safe point `at`: it holds `at` in the window until `close_view`, or
    /// until reclaim drops it because views and pins hold the whole history area.
    pub fn open_view(&self, at: u64) -> Result<ViewId, Error> {
        let mut st = self.state.lock();
        if !st.window.contains(at) {
            return Err(Error::BadOption(format!(
                "safe point {at} is not in the history window (it holds {})",
                describe_window(&st.window)
            )));
        }
        let n = st.next_view;
        st.next_view += 1;
        st.views.insert(n, View { at, dropped: None });
        Ok(ViewId(n))
    }

    /// Closes a view: its safe point can retire again.
    pub fn close_view(&self, v: ViewId) {
        self.state.lock().views.remove(&v.0);
    }

    /// The physical page `l` read from at the view's safe point (`None`: zeros), or
    /// `Error::ViewDropped` once the view gave way to the live device.
    pub fn resolve_view(&self, v: ViewId, l: LogicalPage) -> Result<Option<PhysPage>, Error> {
        self.check(l)?;
        let st = self.state.lock();
        let view = st.views.get(&v.0).ok_or_else(|| Error::ViewDropped {
            at: 0,
            why: "the view was closed".into(),
        })?;
        if let Some(why) = &view.dropped {
            return Err(Error::ViewDropped {
                at: view.at,
                why: why.clone(),
            });
        }
        Ok(match st.window.page_at(l, view.at) {
            Some(then) => then,
            None => self.map.get(l).phys,
        })
    }

    /// Reads page `l` of view `v` through the store (tests and tools).
    pub fn read_view_page(&self, v: ViewId, l: LogicalPage, buf: &mut [u8]) -> Result<(), Error> {
        self.read_phys(self.resolve_view(v, l)?, buf)
    }

    /// What reclaim gave up since the last call (views dropped, pins released), for the log.
    pub fn take_notices(&self) -> Vec<Notice> {
        std::mem::take(&mut self.state.lock().notices)
    }

    /// Fills `buf` with physical page `p`, or zeros.
    fn read_phys(&self, p: Option<PhysPage>, buf: &mut [u8]) -> Result<(), Error> {
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

    /// Frees pages by retiring the oldest safe points, closing the open epoch if even that
    /// is not enough, then commits so the freed pages can be reused.
    fn reclaim(&self) -> Result<(), Error> {
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

    /// Writes the records not yet in the journal as unsynced blocks, so they survive the
    /// daemon's death (not a power cut) before the writes they record are acknowledged.
    fn write_unsynced(&self) -> Result<(), Error> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(Error::Corrupt(
                "an earlier metadata write failed; the volume refuses further I/O".into(),
            ));
        }
        let _tail = self.tail.lock();
        let (seq, blocks) = {
            let mut st = self.state.lock();
            let first = st.first_seq;
            st.pending.unsynced(first, self.uuid, self.session)
        };
        if blocks.is_empty() {
            return Ok(());
        }
        let result = journal::write_blocks(&self.store, &self.layout, seq, &blocks);
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Makes every record so far durable.
    pub fn commit(&self, force_checkpoint: bool) -> Result<(), Error> {
        let mut c = self.commit.lock();
        self.commit_locked(&mut c, force_checkpoint)
    }

    fn commit_locked(&self, c: &mut CommitState, force_checkpoint: bool) -> Result<(), Error> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(Error::Corrupt(
                "an earlier metadata write failed; the volume refuses further I/O".into(),
            ));
        }
        let (blocks, frees, snapshot) = {
            let mut st = self.state.lock();
            debug_assert_eq!(st.first_seq, c.next_seq);
            let blocks = st.pending.take_synced(c.next_seq, self.uuid, self.session);
            let frees = std::mem::take(&mut st.pending_free);
            let after = c.next_seq + blocks.len() as u64;
            st.first_seq = after;
            let used = after - c.sb.ckpt_journal_seq.get();
            let snapshot =
                (force_checkpoint || used > self.layout.journal_blocks / 2).then(|| Snapshot {
                    map: self.map.snapshot(),
                    window: st.window.clone(),
                    journal_seq: after,
                });
            (blocks, frees, snapshot)
        };
        if blocks.is_empty() && snapshot.is_none() {
            debug_assert!(frees.is_empty());
            return Ok(());
        }
        let result = self.write_commit(c, &blocks, snapshot.as_ref());
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
            return result;
        }
        if !frees.is_empty() {
            let g = self.read_gen.fetch_add(1, Ordering::SeqCst);
            self.quarantine.lock().push((g, frees));
        }
        self.release_quarantine();
        Ok(())
    }

    fn write_commit(
        &self,
        c: &mut CommitState,
        blocks: &[[u8; 512]],
        snapshot: Option<&Snapshot>,
    ) -> Result<(), Error> {
        if !blocks.is_empty() {
            // The data the records point at must be durable before the records are.
            self.store.sync().map_err(Error::io("syncing data"))?;
            {
                // After any unsynced write of these blocks that began before we took them.
                let _tail = self.tail.lock();
                journal::write_blocks(&self.store, &self.layout, c.next_seq, blocks)?;
            }
            self.store
                .sync()
                .map_err(Error::io("syncing the journal"))?;
            c.next_seq += blocks.len() as u64;
        }
        if let Some(s) = snapshot {
            self.write_checkpoint(c, s)?;
        }
        Ok(())
    }

    fn write_checkpoint(&self, c: &mut CommitState, s: &Snapshot) -> Result<(), Error> {
        let bytes = checkpoint::encode(s, self.uuid);
        if bytes.len() as u64 > self.layout.ckpt_bytes {
            return Err(Error::Corrupt(format!(
                "checkpoint of {} bytes does not fit its slot of {}",
                bytes.len(),
                self.layout.ckpt_bytes
            )));
        }
        let slot = 1 - c.sb.ckpt_slot.get() as usize;
        self.store
            .write_at(self.layout.ckpt_offsets[slot], &bytes)
            .map_err(Error::io("writing a checkpoint"))?;
        self.store
            .sync()
            .map_err(Error::io("syncing a checkpoint"))?;
        c.sb.ckpt_slot = U32::new(slot as u32);
        c.sb.ckpt_len = U64::new(bytes.len() as u64);
        c.sb.ckpt_crc = U32::new(crc32c::crc32c(&bytes));
        c.sb.ckpt_journal_seq = U64::new(s.journal_seq);
        c.sb.ckpt_session = U32::new(self.session);
        write_superblock(&self.store, &mut c.sb)
    }

    /// Figures for `list` and `stats`.
    pub fn stats(&self) -> Stats {
        let st = self.state.lock();
        let w = &st.window;
        Stats {
            logical_pages: self.layout.logical_pages,
            physical_pages: self.layout.physical_pages,
            free_pages: self.alloc.free_pages()
                + st.pending_free.len() as u64
                + self
                    .quarantine
                    .lock()
                    .iter()
                    .map(|(_, p)| p.len() as u64)
                    .sum::<u64>(),
            history_pages: w.history_pages,
            history_capacity_pages: self.layout.physical_pages - self.layout.logical_pages,
            safe_points: w.safe_points.len() as u64,
            oldest_safe_point: w.oldest().map(|s| s.id),
            newest_safe_point: w.newest().map(|s| s.id),
        }
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

    /// Shuts down cleanly: commits everything with a checkpoint and marks the image clean.
    pub fn close(self) -> Result<(), Error> {
        let mut c = self.commit.lock();
        self.commit_locked(&mut c, true)?;
        c.sb.clean = U32::new(1);
        c.sb.owner_pid = U32::new(0);
        write_superblock(&self.store, &mut c.sb)
    }
}
