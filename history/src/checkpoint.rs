//! Checkpoints: the whole remap table and history window at one journal position.
//!
//! A checkpoint is a header page followed by a body: the map (one packed `u64` per logical
//! page), the reachable safe points, then the history groups. The header carries the
//! body's CRC32C and the superblock carries the whole checkpoint's, so a torn checkpoint is
//! never trusted; it is only ever written into the slot the superblock does not point at.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::format::{
    CheckpointHeader, GroupHeader, HistoryEntry, JournalSeq, Layout, SafePointEntry, CKPT_MAGIC,
    COUNTER_MAX, FORMAT_VERSION, GROUP_BYTES, HISTORY_ENTRY_BYTES, MAX_LABEL, PAGE_SIZE,
    SAFE_POINT_BYTES, SAFE_POINT_PINNED,
};
use crate::window::{SafePoint, SafePointId, Trigger, Window};
use crate::{Error, LogicalPage, PhysPage};

/// The state a checkpoint holds.
pub struct Snapshot {
    /// The packed remap table (`rewind_remap::Mapping::pack`).
    pub map: Vec<u64>,
    /// The history window.
    pub window: Window,
    /// The first journal block to replay on top.
    pub journal_seq: JournalSeq,
}

/// Serializes a snapshot: header page, then body.
pub fn encode(s: &Snapshot, uuid: u64) -> Vec<u8> {
    let w = &s.window;
    let mut out = vec![0u8; PAGE_SIZE as usize];
    out.reserve(
        s.map.len() * 8
            + w.safe_points.len() * SAFE_POINT_BYTES
            + w.groups.len() * GROUP_BYTES
            + w.history_entries as usize * HISTORY_ENTRY_BYTES,
    );
    for word in &s.map {
        out.extend_from_slice(&word.to_le_bytes());
    }
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
            count: U64::new(entries.len() as u64),
        };
        out.extend_from_slice(g.as_bytes());
        for (l, p) in entries {
            let e = HistoryEntry {
                logical: U64::new(l.0),
                phys: U32::new(p.map_or(u32::MAX, |p| p.0)),
                pad: U32::new(0),
            };
            out.extend_from_slice(e.as_bytes());
        }
    }
    let body = &out[PAGE_SIZE as usize..];
    let mut h = CheckpointHeader {
        magic: U32::new(CKPT_MAGIC),
        version: U32::new(FORMAT_VERSION),
        uuid: U64::new(uuid),
        journal_seq: U64::new(s.journal_seq.0),
        next_safe_point: U64::new(w.next_id.0),
        logical_pages: U64::new(s.map.len() as u64),
        safe_points: U64::new(w.safe_points.len() as u64),
        groups: U64::new(w.groups.len() as u64),
        entries: U64::new(w.history_entries),
        body_len: U64::new(body.len() as u64),
        body_crc: U32::new(crc32c::crc32c(body)),
        crc: U32::new(0),
    };
    h.crc = U32::new(h.compute_crc());
    out[..std::mem::size_of::<CheckpointHeader>()].copy_from_slice(h.as_bytes());
    out
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::Corrupt(format!("checkpoint: {}", what.into()))
}

/// Parses and checks a checkpoint read from disk: the header, then the body's map, safe
/// points and history groups in turn.
pub fn decode(bytes: &[u8], layout: &Layout, uuid: u64) -> Result<Snapshot, Error> {
    let h = decode_header(bytes, layout, uuid)?;
    let mut body = Body {
        bytes: checked_body(bytes, &h)?,
        at: 0,
    };
    let map = decode_map(&mut body, layout)?;
    let mut window = Window::new(SafePointId(h.next_safe_point.get()));
    decode_safe_points(&mut body, h.safe_points.get(), &mut window)?;
    decode_groups(&mut body, h.groups.get(), layout, &mut window)?;
    if window.history_entries != h.entries.get() {
        return Err(corrupt("entry count does not match the header"));
    }
    Ok(Snapshot {
        map,
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

/// The body the header describes, checked against its checksum.
fn checked_body<'a>(bytes: &'a [u8], h: &CheckpointHeader) -> Result<&'a [u8], Error> {
    let body_len = usize::try_from(h.body_len.get()).map_err(|_| corrupt("body too long"))?;
    let body = (PAGE_SIZE as usize)
        .checked_add(body_len)
        .and_then(|end| bytes.get(PAGE_SIZE as usize..end))
        .ok_or_else(|| corrupt("body longer than the slot"))?;
    if crc32c::crc32c(body) != h.body_crc.get() {
        return Err(corrupt("body checksum mismatch"));
    }
    Ok(body)
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

/// The packed map, one word per logical page, each pointing inside the data area.
fn decode_map(body: &mut Body<'_>, layout: &Layout) -> Result<Vec<u64>, Error> {
    let map: Vec<u64> = body
        .take(layout.logical_pages as usize * 8)?
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    for (l, word) in map.iter().enumerate() {
        let m = rewind_remap::Mapping::unpack(*word);
        if let Some(p) = m.phys {
            if u64::from(p.0) >= layout.physical_pages {
                return Err(corrupt(format!(
                    "logical page {l} maps to physical page {} of {}",
                    p.0, layout.physical_pages
                )));
            }
        }
    }
    Ok(map)
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
/// each entry inside the layout and at most one per logical page.
fn decode_groups(
    body: &mut Body<'_>,
    count: u64,
    layout: &Layout,
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
        for chunk in raw.chunks_exact(HISTORY_ENTRY_BYTES) {
            let (e, _) = HistoryEntry::read_from_prefix(chunk).map_err(|_| corrupt("entry"))?;
            let l = e.logical.get();
            let p = e.phys.get();
            if l >= layout.logical_pages || (p != u32::MAX && u64::from(p) >= layout.physical_pages)
            {
                return Err(corrupt(format!(
                    "history entry ({l}, {p}) out of range in group {epoch}"
                )));
            }
            let p = (p != u32::MAX).then_some(PhysPage(p));
            if !window.load_entry(epoch, LogicalPage(l), p) {
                return Err(corrupt(format!(
                    "logical page {l} has two entries in history group {epoch}"
                )));
            }
        }
    }
    Ok(())
}
