//! Checkpoints: the whole remap table and history window at one journal position.
//!
//! A checkpoint is a header page followed by a body: the map (`u64` words: one per logical
//! page, or, from version 3 on, only those of the leaves written; `MapForm`), the
//! reachable safe points, then the history groups. The header carries the
//! body's CRC32C and the superblock carries the whole checkpoint's, so a torn checkpoint is
//! never trusted; it is only ever written into the slot the superblock does not point at.
//!
//! The map can be as large as the device (8 bytes a page: 2 GiB at 1 TiB), so it is written
//! and read in pieces of `PIECE` bytes, straight from the words given and into the remap table:
//! the encoded checkpoint is never whole in memory (what a commit hands over, a copy of
//! the leaves of the map that exist and of the window, is).

use rewind_remap::{MapSnapshot, Mapping, RemapTable, MAP_LEAF_PAGES};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::format::{
    CheckpointHeader, GroupHeader, HistoryEntry, JournalSeq, Layout, SafePointEntry, CKPT_MAGIC,
    COUNTER_MAX, GROUP_BYTES, HISTORY_ENTRY_BYTES, MAX_LABEL, PAGE_SIZE, SAFE_POINT_BYTES,
    SAFE_POINT_PINNED,
};
use crate::window::{Entry, Group, SafePoint, SafePointId, Trigger, Window};
use crate::{Error, LogicalPage, PhysPage, Store};

/// The unit checkpoints are written and read in: 1 MiB, a multiple of the page and word.
const PIECE: usize = 1 << 20;

/// What a commit hands to `write`: a copy of the map taken with the window, so that both
/// are of the same journal position while writes go on.
pub struct Snapshot {
    /// The remap table.
    pub map: MapSnapshot,
    /// The history window.
    pub window: Window,
    /// The first journal block to replay on top.
    pub journal_seq: JournalSeq,
}

/// Where a written checkpoint ended up, for the superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// Bytes from the header page's start to the end of the body.
    pub len: u64,
    /// CRC32C of all of them.
    pub crc: u32,
}

/// The ways a checkpoint's body holds the map and the history, named by the version in its
/// header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapForm {
    /// Version 1: a narrow word for every logical page.
    Dense,
    /// Version 3: the map's leaves that hold a mapping, each as its number and its narrow
    /// words; every page of another leaf is unwritten.
    Leaves,
    /// Version 4: the leaves form with wide words, and the history in runs, a record each.
    Wide,
}

/// A narrow word's physical page bits (all ones: unmapped); the epoch tag is above them.
const NARROW_PHYS: u64 = u32::MAX as u64;
/// A wide word or entry that reads as zeros.
const WIDE_ZEROS: u64 = u64::MAX;
/// A wide history record's logical page field: the run's first page in the low 48 bits,
/// its length - 1 above.
const RUN_LEN_SHIFT: u32 = 48;
const RUN_FIRST_MASK: u64 = (1 << RUN_LEN_SHIFT) - 1;

impl MapForm {
    /// The checkpoint header's version for this form.
    fn version(self) -> u32 {
        match self {
            MapForm::Dense => 1,
            MapForm::Leaves => 3,
            MapForm::Wide => 4,
        }
    }

    /// The form's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            MapForm::Dense => "dense form of version 1",
            MapForm::Leaves => "leaves form of version 3",
            MapForm::Wide => "wide form of version 4",
        }
    }

    /// The form a checkpoint header's version names, if any.
    fn of_version(version: u32) -> Option<MapForm> {
        match version {
            1 => Some(MapForm::Dense),
            3 => Some(MapForm::Leaves),
            4 => Some(MapForm::Wide),
            _ => None,
        }
    }

    /// The form an image of format `version` takes for `map`: its own (version 1 readers
    /// know only the dense form), but in version 3 the dense one when it is smaller, the
    /// only one its slot's size was worked out for.
    fn for_image(version: u32, map: &MapSnapshot) -> MapForm {
        match version {
            1 => MapForm::Dense,
            3 if MapForm::Leaves.bytes(map) < MapForm::Dense.bytes(map) => MapForm::Leaves,
            3 => MapForm::Dense,
            _ => MapForm::Wide,
        }
    }

    /// The bytes `map` takes in this form.
    fn bytes(self, map: &MapSnapshot) -> u64 {
        match self {
            MapForm::Dense => map.pages() * 8,
            MapForm::Leaves | MapForm::Wide => {
                8 + map
                    .leaves()
                    .map(|(_, w)| 8 + 8 * w.len() as u64)
                    .sum::<u64>()
            }
        }
    }

    /// A map word as this form stores it. A narrow word (versions 1 and 3) carries an
    /// epoch tag, which their readers compare with the open epoch's id mod 2^32 (this
    /// build reads the open group instead): a word set in the open epoch gets the open
    /// epoch's (`open`), any other one that is not. A page that reads as zeros and was not set in the open epoch is stored as
    /// those readers store an unwritten page, `NARROW_PHYS` (tag 0, unless 0 is the open
    /// epoch's), which they keep no memory for.
    fn store_word(self, word: u64, open: u32) -> u64 {
        let m = Mapping::unpack(word);
        match self {
            MapForm::Wide => m.phys.map_or(WIDE_ZEROS, |p| p.0),
            MapForm::Dense | MapForm::Leaves => {
                let tag = match (m.open, m.phys) {
                    (true, _) => open,
                    (false, None) if open != 0 => 0,
                    (false, _) => open.wrapping_sub(1),
                };
                (u64::from(tag) << 32) | m.phys.map_or(NARROW_PHYS, |p| p.0)
            }
        }
    }

    /// The mapping of a stored word, not yet known to be of the open epoch (the open
    /// group says which are: `Volume::load`).
    fn load_word(self, word: u64) -> Option<PhysPage> {
        let (p, none) = match self {
            MapForm::Wide => (word, WIDE_ZEROS),
            MapForm::Dense | MapForm::Leaves => (word & NARROW_PHYS, NARROW_PHYS),
        };
        (p != none).then_some(PhysPage(p))
    }

    /// The records group `g` takes: in the wide form a run each, in a narrow one an entry.
    fn records(self, g: &Group) -> u64 {
        match self {
            MapForm::Wide => g.runs().len() as u64,
            MapForm::Dense | MapForm::Leaves => g.len(),
        }
    }

    /// The records of group `g`, each its first entry and its length: its runs in the
    /// wide form, its entries in a narrow one.
    fn group_records(self, g: &Group) -> Box<dyn Iterator<Item = (Entry, u64)> + '_> {
        match self {
            MapForm::Wide => Box::new(g.runs()),
            MapForm::Dense | MapForm::Leaves => Box::new(g.entries().map(|e| (e, 1))),
        }
    }

    /// A history entry's page as this form stores it.
    fn store_held(self, old: Option<PhysPage>) -> u64 {
        match self {
            MapForm::Wide => old.map_or(WIDE_ZEROS, |p| p.0),
            MapForm::Dense | MapForm::Leaves => old.map_or(NARROW_PHYS, |p| p.0),
        }
    }

    /// The inverse of `store_held`.
    fn load_held(self, held: u64) -> Option<PhysPage> {
        let none = match self {
            MapForm::Wide => WIDE_ZEROS,
            MapForm::Dense | MapForm::Leaves => NARROW_PHYS,
        };
        (held != none).then_some(PhysPage(held))
    }
}

/// Writes checkpoint `s` of an image of format `version` at `offset` of `store`, in
/// pieces: the body first, then the header page that vouches for it. The map goes in the
/// form `MapForm::for_image` picks. `slot_bytes` is the room there is: a checkpoint that
/// would not fit is refused before anything is written. The store is not synced.
pub fn write<S: Store>(
    store: &S,
    offset: u64,
    slot_bytes: u64,
    s: &Snapshot,
    version: u32,
    uuid: u64,
) -> Result<Written, Error> {
    let form = MapForm::for_image(version, &s.map);
    let map_len = form.bytes(&s.map);
    let open = s.window.next_id.0 as u32;
    let tail = encode_window(&s.window, form);
    let body_len = map_len + tail.len() as u64;
    if PAGE_SIZE + body_len > slot_bytes {
        return Err(Error::Corrupt(format!(
            "checkpoint of {} bytes does not fit its slot of {slot_bytes}",
            PAGE_SIZE + body_len
        )));
    }
    let mut at = offset + PAGE_SIZE;
    let mut body_crc = 0;
    let mut piece = Vec::with_capacity(PIECE);
    // Appends to the piece, writing it out whenever it is full (and at the end, `flush`).
    let mut put = |bytes: &[u8], flush: bool| -> Result<(), Error> {
        piece.extend_from_slice(bytes);
        if piece.len() >= PIECE || flush {
            body_crc = crc32c::crc32c_append(body_crc, &piece);
            store
                .write_at(at, &piece)
                .map_err(Error::io("writing a checkpoint"))?;
            at += piece.len() as u64;
            piece.clear();
        }
        Ok(())
    };
    match form {
        MapForm::Dense => {
            for word in s.map.words() {
                put(&form.store_word(word, open).to_le_bytes(), false)?;
            }
        }
        MapForm::Leaves | MapForm::Wide => {
            put(&(s.map.leaves().count() as u64).to_le_bytes(), false)?;
            for (n, words) in s.map.leaves() {
                put(&n.to_le_bytes(), false)?;
                for &word in words {
                    put(&form.store_word(word, open).to_le_bytes(), false)?;
                }
            }
        }
    }
    put(&tail, true)?;
    let w = &s.window;
    let mut h = CheckpointHeader {
        magic: U32::new(CKPT_MAGIC),
        version: U32::new(form.version()),
        uuid: U64::new(uuid),
        journal_seq: U64::new(s.journal_seq.0),
        next_safe_point: U64::new(w.next_id.0),
        logical_pages: U64::new(s.map.pages()),
        safe_points: U64::new(w.safe_points.len() as u64),
        groups: U64::new(w.groups.len() as u64),
        entries: U64::new(w.history_entries),
        body_len: U64::new(body_len),
        body_crc: U32::new(body_crc),
        crc: U32::new(0),
    };
    h.crc = U32::new(h.compute_crc());
    let mut page = vec![0u8; PAGE_SIZE as usize];
    page[..std::mem::size_of::<CheckpointHeader>()].copy_from_slice(h.as_bytes());
    store
        .write_at(offset, &page)
        .map_err(Error::io("writing a checkpoint"))?;
    let crc = crc32c::crc32c_combine(crc32c::crc32c(&page), body_crc, body_len as usize);
    Ok(Written {
        len: PAGE_SIZE + body_len,
        crc,
    })
}

/// The part of the body after the map: the safe points, then the history groups.
fn encode_window(w: &Window, form: MapForm) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        w.safe_points.len() * SAFE_POINT_BYTES
            + w.groups.len() * GROUP_BYTES
            + w.groups.values().map(|g| form.records(g)).sum::<u64>() as usize
                * HISTORY_ENTRY_BYTES,
    );
    for sp in &w.safe_points {
        let mut label = [0u8; MAX_LABEL];
        let text = sp.label.as_deref().unwrap_or("").as_bytes();
        label[..text.len()].copy_from_slice(text);
        let e = SafePointEntry {
            id: U64::new(sp.id.0),
            time_ns: U64::new(sp.time_ns),
            trigger: sp.trigger.code(),
            label_len: text.len() as u8,
            flags: if w.pins.contains(&sp.id) {
                SAFE_POINT_PINNED
            } else {
                0
            },
            pad: [0; 5],
            label,
        };
        out.extend_from_slice(e.as_bytes());
    }
    for (epoch, entries) in &w.groups {
        let g = GroupHeader {
            epoch: U64::new(epoch.0),
            count: U64::new(form.records(entries)),
        };
        out.extend_from_slice(g.as_bytes());
        for (first, len) in form.group_records(entries) {
            let e = HistoryEntry {
                logical: U64::new(first.l.0 | (len - 1) << RUN_LEN_SHIFT),
                phys: U64::new(form.store_held(first.old())),
            };
            out.extend_from_slice(e.as_bytes());
        }
    }
    out
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::Corrupt(format!("checkpoint: {}", what.into()))
}

/// What `read` found besides the map.
pub struct Read {
    /// The form the map came in.
    pub form: MapForm,
    /// The history window.
    pub window: Window,
    /// The first journal block to replay on top.
    pub journal_seq: JournalSeq,
}

/// Reads and checks the checkpoint of `len` bytes at `offset` of `store`: the header, then
/// the body's map (set into `map`, a table of the layout's size), safe points and history
/// groups in turn. With `crc`, the whole checkpoint must have that CRC32C (the superblock's
/// word for it). On an error `map` holds part of the checkpoint and is of no use.
pub fn read<S: Store>(
    store: &S,
    offset: u64,
    len: u64,
    crc: Option<u32>,
    layout: &Layout,
    uuid: u64,
    map: &RemapTable,
) -> Result<Read, Error> {
    if len < PAGE_SIZE {
        return Err(corrupt("too short"));
    }
    let mut page = vec![0u8; PAGE_SIZE as usize];
    store
        .read_at(offset, &mut page)
        .map_err(Error::io("reading the checkpoint"))?;
    let h = decode_header(&page, layout, uuid)?;
    let form = MapForm::of_version(h.version.get())
        .ok_or_else(|| corrupt(format!("unknown version {}", h.version.get())))?;
    let body_len = h.body_len.get();
    if body_len != len - PAGE_SIZE {
        return Err(corrupt(format!(
            "its header gives it {body_len} bytes of body, its length {}",
            len - PAGE_SIZE
        )));
    }
    let mut body_crc = 0;
    let mut at = offset + PAGE_SIZE;
    // Reads the next `n` bytes of the body (no further than its end) into `buf`.
    let mut get = |buf: &mut Vec<u8>, n: u64| -> Result<(), Error> {
        if n > offset + len - at {
            return Err(corrupt("body shorter than its counts"));
        }
        buf.resize(n as usize, 0);
        store
            .read_at(at, buf)
            .map_err(Error::io("reading the checkpoint"))?;
        body_crc = crc32c::crc32c_append(body_crc, buf);
        at += n;
        Ok(())
    };
    // Sets the words in `piece` into the map from page `first` on.
    let mut maps = Vec::with_capacity(PIECE / 8);
    let mut set = |piece: &[u8], first: u64| -> Result<(), Error> {
        maps.clear();
        for (i, word) in piece.chunks_exact(8).enumerate() {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            let phys = form.load_word(word);
            if let Some(p) = phys.filter(|p| p.0 >= layout.physical_pages) {
                return Err(corrupt(format!(
                    "logical page {} maps to physical page {} of {}",
                    first + i as u64,
                    p.0,
                    layout.physical_pages
                )));
            }
            maps.push(Mapping { phys, open: false });
        }
        map.set_run(LogicalPage(first), &maps);
        Ok(())
    };
    let word = |piece: &[u8]| u64::from_le_bytes(piece[..8].try_into().expect("8 bytes"));
    let mut piece = Vec::with_capacity(PIECE);
    let pages = layout.logical_pages;
    let map_len = match form {
        MapForm::Dense => {
            let mut l = 0u64;
            while l < pages {
                let words = (pages - l).min((PIECE / 8) as u64);
                get(&mut piece, words * 8)?;
                set(&piece, l)?;
                l += words;
            }
            pages * 8
        }
        MapForm::Leaves | MapForm::Wide => {
            get(&mut piece, 8)?;
            let count = word(&piece);
            let mut bytes = 8;
            let mut next = 0;
            for _ in 0..count {
                get(&mut piece, 8)?;
                let n = word(&piece);
                let first = n.saturating_mul(MAP_LEAF_PAGES);
                if n < next || first >= pages {
                    return Err(corrupt(format!("map leaf {n} out of place")));
                }
                next = n + 1;
                let words = (pages - first).min(MAP_LEAF_PAGES);
                get(&mut piece, words * 8)?;
                set(&piece, first)?;
                bytes += 8 + words * 8;
            }
            bytes
        }
    };
    let mut tail = Vec::new();
    get(&mut tail, body_len - map_len)?;
    if body_crc != h.body_crc.get() {
        return Err(corrupt("body checksum mismatch"));
    }
    let whole = crc32c::crc32c_combine(crc32c::crc32c(&page), body_crc, body_len as usize);
    if crc.is_some_and(|c| c != whole) {
        return Err(corrupt("does not match the superblock's checksum"));
    }
    let mut body = Body {
        bytes: &tail,
        at: 0,
    };
    let mut window = Window::new(SafePointId(h.next_safe_point.get()));
    decode_safe_points(&mut body, h.safe_points.get(), &mut window)?;
    decode_groups(&mut body, h.groups.get(), layout, form, &mut window)?;
    if window.history_entries != h.entries.get() {
        return Err(corrupt("entry count does not match the header"));
    }
    Ok(Read {
        form,
        window,
        journal_seq: JournalSeq(h.journal_seq.get()),
    })
}

/// The header, checked: magic, checksum, the image's uuid and size, and a next safe point
/// id that cannot wrap.
fn decode_header(bytes: &[u8], layout: &Layout, uuid: u64) -> Result<CheckpointHeader, Error> {
    let (h, _) = CheckpointHeader::read_from_prefix(bytes).map_err(|_| corrupt("too short"))?;
    if h.magic.get() != CKPT_MAGIC {
        return Err(corrupt("bad magic"));
    }
    if h.crc.get() != h.compute_crc() {
        return Err(corrupt("header checksum mismatch"));
    }
    if h.uuid.get() != uuid {
        return Err(corrupt("belongs to another image (uuid differs)"));
    }
    if h.logical_pages.get() != layout.logical_pages {
        return Err(corrupt(format!(
            "{} logical pages, the superblock says {}",
            h.logical_pages.get(),
            layout.logical_pages
        )));
    }
    if h.next_safe_point.get() > COUNTER_MAX {
        return Err(corrupt(format!(
            "next safe point id {} is past {COUNTER_MAX}",
            h.next_safe_point.get(),
        )));
    }
    Ok(h)
}

/// The body, read front to back.
struct Body<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Body<'a> {
    /// The next `n` bytes; a body shorter than its counts say is a corruption.
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .at
            .checked_add(n)
            .ok_or_else(|| corrupt("size overflow"))?;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| corrupt("body shorter than its counts"))?;
        self.at = end;
        Ok(s)
    }
}

/// `count` safe points into `window`, whose ids must ascend below its open epoch.
fn decode_safe_points(body: &mut Body<'_>, count: u64, window: &mut Window) -> Result<(), Error> {
    for _ in 0..count {
        let (e, _) = SafePointEntry::read_from_prefix(body.take(SAFE_POINT_BYTES)?)
            .map_err(|_| corrupt("safe point"))?;
        let trigger = Trigger::from_code(e.trigger)
            .ok_or_else(|| corrupt(format!("unknown trigger {}", e.trigger)))?;
        let len = usize::from(e.label_len);
        if len > MAX_LABEL {
            return Err(corrupt("label too long"));
        }
        let label = if len == 0 {
            None
        } else {
            Some(
                String::from_utf8(e.label[..len].to_vec())
                    .map_err(|_| corrupt("label is not UTF-8"))?,
            )
        };
        let id = SafePointId(e.id.get());
        if window.safe_points.back().is_some_and(|b| b.id >= id) || id >= window.next_id {
            return Err(corrupt(format!("safe point {id} out of order")));
        }
        if e.flags & !SAFE_POINT_PINNED != 0 {
            return Err(corrupt(format!("unknown safe point flags {:#x}", e.flags)));
        }
        if e.flags & SAFE_POINT_PINNED != 0 {
            window.pins.insert(id);
        }
        window.safe_points.push_back(SafePoint {
            id,
            time_ns: e.time_ns.get(),
            trigger,
            label,
        });
    }
    Ok(())
}

/// `count` history groups into `window`: ascending epochs up to its open one, none empty,
/// each entry inside the layout and at most one per logical page. A record of the wide
/// form is a run of entries, of a narrow one an entry.
fn decode_groups(
    body: &mut Body<'_>,
    count: u64,
    layout: &Layout,
    form: MapForm,
    window: &mut Window,
) -> Result<(), Error> {
    for _ in 0..count {
        let (g, _) =
            GroupHeader::read_from_prefix(body.take(GROUP_BYTES)?).map_err(|_| corrupt("group"))?;
        let epoch = SafePointId(g.epoch.get());
        if epoch > window.next_id || window.groups.contains_key(&epoch) || g.count.get() == 0 {
            return Err(corrupt(format!("history group {epoch} out of place")));
        }
        let count = usize::try_from(g.count.get()).map_err(|_| corrupt("group too large"))?;
        let raw = body.take(
            count
                .checked_mul(HISTORY_ENTRY_BYTES)
                .ok_or_else(|| corrupt("group too large"))?,
        )?;
        let mut group = Group::default();
        for chunk in raw.chunks_exact(HISTORY_ENTRY_BYTES) {
            let (e, _) = HistoryEntry::read_from_prefix(chunk).map_err(|_| corrupt("entry"))?;
            let (l, len) = match form {
                MapForm::Wide => {
                    let x = e.logical.get();
                    (x & RUN_FIRST_MASK, (x >> RUN_LEN_SHIFT) + 1)
                }
                MapForm::Dense | MapForm::Leaves => (e.logical.get(), 1),
            };
            let old = form.load_held(e.phys.get());
            let past = |first: u64, end: u64| first.checked_add(len).is_none_or(|e| e > end);
            if past(l, layout.logical_pages)
                || old.is_some_and(|p| past(p.0, layout.physical_pages))
            {
                return Err(corrupt(format!(
                    "history entry ({l}, {}) of {len} pages out of range in group {epoch}",
                    e.phys.get()
                )));
            }
            group.push_run(Entry::new(LogicalPage(l), old), len);
        }
        window.load_group(epoch, group).map_err(|l| {
            corrupt(format!(
                "logical page {} has two entries in history group {epoch}",
                l.0
            ))
        })?;
    }
    Ok(())
}
