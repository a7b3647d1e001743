//! The journal: a ring of 512-byte blocks holding the metadata changes (remaps, safe points,
//! retirements, pins, rollbacks) since the checkpoint.
//!
//! Records reach the journal once or twice. With `Durability::CompletedWrites` (the
//! default), before a write completes its record is written *unsynced* (flag `UNSYNCED`, no
//! sync): a daemon killed then loses nothing the kernel was told is written, because the
//! host's page cache keeps both the data and the record. A commit then (re)writes the same
//! blocks as synced, after syncing the data they point at; with `FlushedWrites` that is the
//! only write. An unsynced block is trusted only within the boot that wrote it (the
//! superblock records the boot id): after a power cut its data pages may never have reached
//! the disk.
//!
//! Invariants:
//! - a commit always starts a fresh block and never rewrites a block that holds synced
//!   records, so a torn commit can only lose records of that commit;
//! - a record never spans two blocks;
//! - replay takes the longest run of valid blocks with consecutive sequence numbers, the
//!   image's uuid and non-decreasing sessions (and no unsynced block after a reboot): a
//!   prefix of what was recorded, in order.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::format::{
    tag, JournalHeader, JournalSeq, Layout, JOURNAL_BLOCK, JOURNAL_HEADER, JOURNAL_MAGIC,
    MAX_LABEL, RECORD, RECORDS_PER_BLOCK,
};
use crate::window::{SafePoint, SafePointId, Trigger};
use crate::{Error, LogicalPage, PhysPage, Store};

/// One change to the volume's metadata, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `l` now lives at `p`.
    Write { l: LogicalPage, p: PhysPage },
    /// `count` pages from `l` read as zeros.
    Discard { l: LogicalPage, count: u32 },
    /// The open epoch closes with this safe point.
    SafePoint(SafePoint),
    /// Safe point `id` leaves the window (see `Window::retire`).
    Retire { id: SafePointId },
    /// Every logical page goes back to what it held at safe point `to`.
    Rollback { to: SafePointId },
    /// Safe point `id` is kept from retirement (`pinned`) or no longer.
    Pin { id: SafePointId, pinned: bool },
}

type Slot = [u8; RECORD];

fn slot(tag: u8, b1: u8, b2: u8, word: u32, long: u64) -> Slot {
    let mut s = [0u8; RECORD];
    s[0] = tag;
    s[1] = b1;
    s[2] = b2;
    s[4..8].copy_from_slice(&word.to_le_bytes());
    s[8..16].copy_from_slice(&long.to_le_bytes());
    s
}

impl Record {
    /// The slots this record takes; they must stay in one block.
    fn encode(&self, out: &mut Vec<Slot>) {
        match self {
            Record::Write { l, p } => {
                // The physical page's low 32 bits in bytes 4..8, its high 24 in 1..4 (zero
                // in an image of version 1 or 3, where it is at most 32 bits).
                let mut s = slot(tag::WRITE, 0, 0, p.0 as u32, l.0);
                s[1..4].copy_from_slice(&(p.0 >> 32).to_le_bytes()[..3]);
                out.push(s);
            }
            Record::Discard { l, count } => out.push(slot(tag::DISCARD, 0, 0, *count, l.0)),
            Record::Retire { id } => out.push(slot(tag::RETIRE, 0, 0, 0, id.0)),
            Record::Rollback { to } => out.push(slot(tag::ROLLBACK, 0, 0, 0, to.0)),
            Record::Pin { id, pinned } => out.push(slot(tag::PIN, u8::from(*pinned), 0, 0, id.0)),
            Record::SafePoint(sp) => {
                let label = sp.label.as_deref().unwrap_or("").as_bytes();
                assert!(label.len() <= MAX_LABEL, "label checked by the caller");
                out.push(slot(
                    tag::SAFE_POINT,
                    sp.trigger.code(),
                    label.len() as u8,
                    0,
                    sp.id.0,
                ));
                let mut time = [0u8; RECORD];
                time[..8].copy_from_slice(&sp.time_ns.to_le_bytes());
                out.push(time);
                for chunk in label.chunks(RECORD - 1) {
                    let mut s = [0u8; RECORD];
                    s[0] = tag::LABEL;
                    s[1..1 + chunk.len()].copy_from_slice(chunk);
                    out.push(s);
                }
            }
        }
    }

    /// Decodes the record starting at `slots[0]`; returns it and the slots it took.
    fn decode(slots: &[Slot]) -> Result<(Record, usize), String> {
        let s = &slots[0];
        let word = u32::from_le_bytes(s[4..8].try_into().expect("4 bytes"));
        let long = u64::from_le_bytes(s[8..16].try_into().expect("8 bytes"));
        match s[0] {
            tag::WRITE => Ok((
                Record::Write {
                    l: LogicalPage(long),
                    p: PhysPage(
                        u64::from(word)
                            | u64::from_le_bytes([s[1], s[2], s[3], 0, 0, 0, 0, 0]) << 32,
                    ),
                },
                1,
            )),
            tag::DISCARD => Ok((
                Record::Discard {
                    l: LogicalPage(long),
                    count: word,
                },
                1,
            )),
            tag::RETIRE => Ok((
                Record::Retire {
                    id: SafePointId(long),
                },
                1,
            )),
            tag::ROLLBACK => Ok((
                Record::Rollback {
                    to: SafePointId(long),
                },
                1,
            )),
            tag::PIN => match s[1] {
                0 | 1 => Ok((
                    Record::Pin {
                        id: SafePointId(long),
                        pinned: s[1] == 1,
                    },
                    1,
                )),
                b => Err(format!("pin record with flag {b}")),
            },
            tag::SAFE_POINT => Record::decode_safe_point(slots),
            t => Err(format!("unknown record tag {t}")),
        }
    }

    /// Decodes a SAFE_POINT record at `slots[0]`: the record, its time, its label's slots.
    fn decode_safe_point(slots: &[Slot]) -> Result<(Record, usize), String> {
        let s = &slots[0];
        let long = u64::from_le_bytes(s[8..16].try_into().expect("8 bytes"));
        let trigger = Trigger::from_code(s[1])
            .ok_or_else(|| format!("unknown safe point trigger {}", s[1]))?;
        let label_len = usize::from(s[2]);
        if label_len > MAX_LABEL {
            return Err(format!("label of {label_len} bytes"));
        }
        let label_slots = label_len.div_ceil(RECORD - 1);
        if slots.len() < 2 + label_slots {
            return Err("safe point record cut short".into());
        }
        let time_ns = u64::from_le_bytes(slots[1][..8].try_into().expect("8 bytes"));
        let mut label = Vec::with_capacity(label_len);
        for ls in &slots[2..2 + label_slots] {
            if ls[0] != tag::LABEL {
                return Err("safe point label slot missing".into());
            }
            let take = (label_len - label.len()).min(RECORD - 1);
            label.extend_from_slice(&ls[1..1 + take]);
        }
        let label = if label_len == 0 {
            None
        } else {
            Some(String::from_utf8(label).map_err(|_| "label is not UTF-8")?)
        };
        Ok((
            Record::SafePoint(SafePoint {
                id: SafePointId(long),
                time_ns,
                trigger,
                label,
            }),
            2 + label_slots,
        ))
    }
}

/// A journal block as written.
pub type Block = [u8; JOURNAL_BLOCK as usize];

/// The records not yet synced, packed into blocks as they come so each write's record can
/// be written at once (`unsynced`, with `Durability::CompletedWrites`) and the whole run at
/// commit (`take_synced`).
#[derive(Debug, Default)]
pub struct Pending {
    /// The slots of each block.
    blocks: Vec<Vec<Slot>>,
    records: usize,
    /// The next `unsynced` hands out the blocks from here on: those that changed since the
    /// last call, and the last block it handed out, which may have taken more records.
    dirty_from: usize,
    /// A record came since the last `unsynced`: without one it has nothing to hand out.
    dirty: bool,
    /// Reused for each record's slots: `push` is on every write's path.
    scratch: Vec<Slot>,
}

impl Pending {
    /// Appends a record.
    pub fn push(&mut self, r: &Record) {
        self.scratch.clear();
        r.encode(&mut self.scratch);
        match self.blocks.last_mut() {
            Some(b) if b.len() + self.scratch.len() <= RECORDS_PER_BLOCK => {
                b.extend_from_slice(&self.scratch)
            }
            _ => {
                let mut b = Vec::with_capacity(RECORDS_PER_BLOCK);
                b.extend_from_slice(&self.scratch);
                self.blocks.push(b);
            }
        }
        self.records += 1;
        self.dirty = true;
    }

    /// Records pending.
    pub fn len(&self) -> usize {
        self.records
    }

    /// The blocks those records fill: what `take_synced` would hand out.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The blocks that changed since the last call, sealed unsynced, numbered from
    /// `first_seq` (the sequence of the first pending block): (sequence of the first, blocks).
    /// None when no record came since: the queues of a device each record their pass, and
    /// one may find its records already written by another's.
    pub fn unsynced(
        &mut self,
        first_seq: JournalSeq,
        uuid: u64,
        session: u32,
    ) -> (JournalSeq, Vec<Block>) {
        if !self.dirty {
            return (first_seq, Vec::new());
        }
        self.dirty = false;
        let from = self.dirty_from.min(self.blocks.len());
        let out = self.blocks[from..]
            .iter()
            .enumerate()
            .map(|(i, b)| seal(b, first_seq + (from + i) as u64, uuid, session, UNSYNCED))
            .collect();
        // The last block may still take records.
        self.dirty_from = self.blocks.len().saturating_sub(1);
        (first_seq + from as u64, out)
    }

    /// Every pending block sealed as synced, numbered from `first_seq`; empties `self`.
    pub fn take_synced(&mut self, first_seq: JournalSeq, uuid: u64, session: u32) -> Vec<Block> {
        let out = self
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| seal(b, first_seq + i as u64, uuid, session, 0))
            .collect();
        *self = Pending::default();
        out
    }
}

/// `JournalHeader::flags`: the block was written before the data its records point at was
/// synced; replay trusts it only within the boot that wrote it.
pub const UNSYNCED: u16 = 1;

fn seal(slots: &[Slot], seq: JournalSeq, uuid: u64, session: u32, flags: u16) -> Block {
    let mut block = [0u8; JOURNAL_BLOCK as usize];
    let header = JournalHeader {
        magic: U32::new(JOURNAL_MAGIC),
        crc: U32::new(0),
        seq: U64::new(seq.0),
        uuid: U64::new(uuid),
        session: U32::new(session),
        count: U16::new(slots.len() as u16),
        flags: U16::new(flags),
    };
    block[..JOURNAL_HEADER].copy_from_slice(header.as_bytes());
    for (i, s) in slots.iter().enumerate() {
        let at = JOURNAL_HEADER + i * RECORD;
        block[at..at + RECORD].copy_from_slice(s);
    }
    let crc = crc32c::crc32c(&block[8..]);
    block[4..8].copy_from_slice(&crc.to_le_bytes());
    block
}

/// Packs records into synced journal blocks numbered from `first_seq`.
#[cfg(test)]
pub fn encode_blocks(
    records: &[Record],
    first_seq: JournalSeq,
    uuid: u64,
    session: u32,
) -> Vec<Block> {
    let mut p = Pending::default();
    for r in records {
        p.push(r);
    }
    p.take_synced(first_seq, uuid, session)
}

/// Writes `blocks` at their ring positions, starting with sequence `first_seq`.
pub fn write_blocks<S: Store>(
    store: &S,
    layout: &Layout,
    first_seq: JournalSeq,
    blocks: &[Block],
) -> Result<(), Error> {
    for (offset, bytes) in block_writes(layout, first_seq, blocks) {
        store
            .write_at(offset, bytes)
            .map_err(Error::io("writing the journal"))?;
    }
    Ok(())
}

/// Where `blocks`, from sequence `first_seq`, go in the store: (byte offset, bytes), one
/// write per run contiguous up to the end of the ring, so at most two.
pub fn block_writes<'b>(
    layout: &Layout,
    first_seq: JournalSeq,
    blocks: &'b [Block],
) -> Vec<(u64, &'b [u8])> {
    let mut out = Vec::with_capacity(2);
    let mut i = 0;
    while i < blocks.len() {
        let seq = first_seq + i as u64;
        let n = (layout.journal_blocks_to_ring_end(seq) as usize).min(blocks.len() - i);
        out.push((
            layout.journal_block_offset(seq),
            blocks[i..i + n].as_flattened(),
        ));
        i += n;
    }
    out
}

/// Where replay stopped.
#[derive(Debug)]
pub struct ReplayEnd {
    /// The sequence of the first block that was not valid: the next to write.
    pub next_seq: JournalSeq,
    /// Whether unsynced blocks were replayed: their records must be made durable.
    pub unsynced: bool,
    /// The session of the last block replayed (`min_session` when none was).
    pub last_session: u32,
}

/// Replays the valid prefix of the journal from `first_seq`, handing each record to `apply`.
/// Unsynced blocks are part of it only if `trust_unsynced` (the same boot wrote them).
pub fn replay<S: Store>(
    store: &S,
    layout: &Layout,
    uuid: u64,
    first_seq: JournalSeq,
    min_session: u32,
    trust_unsynced: bool,
    mut apply: impl FnMut(Record) -> Result<(), Error>,
) -> Result<ReplayEnd, Error> {
    const BATCH: u64 = 256;
    let mut buf = vec![0u8; (BATCH * JOURNAL_BLOCK) as usize];
    let mut end = ReplayEnd {
        next_seq: first_seq,
        unsynced: false,
        last_session: min_session,
    };
    let mut slots: Vec<Slot> = Vec::with_capacity(RECORDS_PER_BLOCK);
    // Bounded: the ring cannot hold more than its size of valid blocks.
    while end.next_seq - first_seq < layout.journal_blocks {
        let seq = end.next_seq;
        let room = layout.journal_blocks_to_ring_end(seq);
        let n = BATCH
            .min(room)
            .min(layout.journal_blocks - (seq - first_seq));
        let bytes = &mut buf[..(n * JOURNAL_BLOCK) as usize];
        store
            .read_at(layout.journal_block_offset(seq), bytes)
            .map_err(Error::io("reading the journal"))?;
        for block in bytes.chunks_exact(JOURNAL_BLOCK as usize) {
            let Some(h) = valid_header(block, &end, uuid, trust_unsynced) else {
                return Ok(end);
            };
            end.unsynced |= h.flags.get() & UNSYNCED != 0;
            end.last_session = h.session.get();
            replay_block(block, &h, end.next_seq, &mut slots, &mut apply)?;
            end.next_seq += 1;
        }
    }
    Ok(end)
}

/// Rewrites the unsynced blocks from `from` up to `to` (a prefix replay took) as synced:
/// each the same block, its flag cleared and its checksum made again, written in place;
/// a synced block is never written. Returns how many it rewrote. The caller syncs the
/// store before (so the data the records point at is durable: step 1 of a commit) and
/// after. A crash in between leaves some blocks synced and some not, a journal replay
/// still takes as a prefix.
pub fn mark_synced<S: Store>(
    store: &S,
    layout: &Layout,
    from: JournalSeq,
    to: JournalSeq,
) -> Result<u64, Error> {
    const BATCH: u64 = 256;
    let block = JOURNAL_BLOCK as usize;
    let mut buf = vec![0u8; BATCH as usize * block];
    let (mut seq, mut rewritten) = (from, 0);
    while seq < to {
        let n = BATCH
            .min(layout.journal_blocks_to_ring_end(seq))
            .min(to - seq);
        let bytes = &mut buf[..n as usize * block];
        let at = layout.journal_block_offset(seq);
        store
            .read_at(at, bytes)
            .map_err(Error::io("reading the journal"))?;
        let mut unsynced = Vec::new();
        for (i, b) in bytes.chunks_exact_mut(block).enumerate() {
            let flags = u16::from_le_bytes([b[30], b[31]]);
            if flags & UNSYNCED != 0 {
                b[30..32].copy_from_slice(&(flags & !UNSYNCED).to_le_bytes());
                let crc = crc32c::crc32c(&b[8..]);
                b[4..8].copy_from_slice(&crc.to_le_bytes());
                unsynced.push(i);
            }
        }
        // Runs of consecutive unsynced blocks, a write each.
        for run in unsynced.chunk_by(|a, b| a + 1 == *b) {
            let (first, len) = (run[0], run.len());
            store
                .write_at(
                    at + (first * block) as u64,
                    &bytes[first * block..(first + len) * block],
                )
                .map_err(Error::io("writing the journal"))?;
            rewritten += len as u64;
        }
        seq += n;
    }
    Ok(rewritten)
}

/// The header of `block` if the block continues the journal where `end` stands: magic,
/// checksum, the expected sequence, the image's uuid, a session that does not go down, a
/// sane record count, and not unsynced unless trusted. `None` ends the journal.
fn valid_header(
    block: &[u8],
    end: &ReplayEnd,
    uuid: u64,
    trust_unsynced: bool,
) -> Option<JournalHeader> {
    let Ok((h, _)) = JournalHeader::read_from_prefix(block) else {
        unreachable!("a block is larger than its header")
    };
    let crc_ok = crc32c::crc32c(&block[8..]) == h.crc.get();
    let valid = h.magic.get() == JOURNAL_MAGIC
        && crc_ok
        && h.seq.get() == end.next_seq.0
        && h.uuid.get() == uuid
        && h.session.get() >= end.last_session
        && usize::from(h.count.get()) <= RECORDS_PER_BLOCK
        && (h.flags.get() & UNSYNCED == 0 || trust_unsynced);
    valid.then_some(h)
}

/// Decodes the records of a valid block (sequence `seq`) into `apply`; `slots` is scratch.
/// A record that does not decode in a block whose checksum holds is a corruption.
fn replay_block(
    block: &[u8],
    h: &JournalHeader,
    seq: JournalSeq,
    slots: &mut Vec<Slot>,
    apply: &mut impl FnMut(Record) -> Result<(), Error>,
) -> Result<(), Error> {
    slots.clear();
    for i in 0..usize::from(h.count.get()) {
        let at = JOURNAL_HEADER + i * RECORD;
        slots.push(block[at..at + RECORD].try_into().expect("16 bytes"));
    }
    let mut i = 0;
    while i < slots.len() {
        let (record, used) = Record::decode(&slots[i..])
            .map_err(|e| Error::Corrupt(format!("journal block {seq} (valid checksum): {e}")))?;
        apply(record)?;
        i += used;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{CreateOptions, FORMAT_VERSION};
    use crate::MemStore;

    fn layout() -> Layout {
        Layout::compute(FORMAT_VERSION, 1024, 2048, 16)
    }

    fn sample() -> Vec<Record> {
        let mut v = Vec::new();
        for i in 0..70 {
            v.push(Record::Write {
                l: LogicalPage(i),
                // Past 32 bits for some, as in a version 4 image.
                p: PhysPage(i + 5 + ((i % 3) << 50)),
            });
        }
        v.push(Record::Discard {
            l: LogicalPage(3),
            count: 9,
        });
        v.push(Record::SafePoint(SafePoint {
            id: SafePointId(7),
            time_ns: 123,
            trigger: Trigger::User,
            label: Some("before-upgrade with a rather long label".into()),
        }));
        v.push(Record::Retire { id: SafePointId(6) });
        v.push(Record::Pin {
            id: SafePointId(7),
            pinned: true,
        });
        v.push(Record::Pin {
            id: SafePointId(7),
            pinned: false,
        });
        v
    }

    fn collect(
        store: &MemStore,
        l: &Layout,
        first: JournalSeq,
        trust: bool,
    ) -> (Vec<Record>, ReplayEnd) {
        let mut got = Vec::new();
        let end = replay(store, l, 42, first, 0, trust, |r| {
            got.push(r);
            Ok(())
        })
        .unwrap();
        (got, end)
    }

    #[test]
    fn records_roundtrip_across_blocks_and_the_ring_end() {
        let l = layout();
        let store = MemStore::new(l.data_offset);
        let records = sample();
        let first = JournalSeq(14); // wraps: the ring has 16 blocks
        let blocks = encode_blocks(&records, first, 42, 1);
        assert!(blocks.len() > 2);
        write_blocks(&store, &l, first, &blocks).unwrap();
        let (got, end) = collect(&store, &l, first, false);
        assert_eq!(got, records);
        assert_eq!(end.next_seq, first + blocks.len() as u64);
    }

    #[test]
    fn a_torn_block_ends_replay_at_a_prefix() {
        let l = layout();
        let store = MemStore::new(l.data_offset);
        let records = sample();
        let blocks = encode_blocks(&records, JournalSeq(0), 42, 1);
        write_blocks(&store, &l, JournalSeq(0), &blocks).unwrap();
        // Tear the second block: its second sector is lost.
        store
            .write_at(l.journal_block_offset(JournalSeq(1)) + 256, &[0u8; 256])
            .unwrap();
        let (got, end) = collect(&store, &l, JournalSeq(0), false);
        assert_eq!(end.next_seq, JournalSeq(1));
        assert_eq!(got[..], records[..RECORDS_PER_BLOCK]);
    }

    #[test]
    fn a_stale_block_of_an_older_session_is_not_replayed() {
        let l = layout();
        let store = MemStore::new(l.data_offset);
        let old = encode_blocks(&sample(), JournalSeq(0), 42, 1);
        write_blocks(&store, &l, JournalSeq(0), &old).unwrap();
        // The new session rewrites block 0 only (a crash cut the rest).
        let new = encode_blocks(
            &[Record::Retire { id: SafePointId(1) }],
            JournalSeq(0),
            42,
            2,
        );
        write_blocks(&store, &l, JournalSeq(0), &new).unwrap();
        let (got, end) = collect(&store, &l, JournalSeq(0), false);
        assert_eq!(got, vec![Record::Retire { id: SafePointId(1) }]);
        assert_eq!(end.next_seq, JournalSeq(1));
    }

    #[test]
    fn unsynced_blocks_are_replayed_only_when_trusted_and_synced_ones_replace_them() {
        let l = layout();
        let store = MemStore::new(l.data_offset);
        let records = sample();
        let mut p = Pending::default();
        for r in &records[..40] {
            p.push(r);
            let (seq, blocks) = p.unsynced(JournalSeq(3), 42, 1);
            write_blocks(&store, &l, seq, &blocks).unwrap();
        }
        let (got, end) = collect(&store, &l, JournalSeq(3), true);
        assert_eq!(
            got,
            records[..40],
            "every record written unsynced, in the same boot"
        );
        assert!(end.unsynced);
        let (got, end) = collect(&store, &l, JournalSeq(3), false);
        assert!(
            got.is_empty(),
            "after a reboot unsynced records are not trusted"
        );
        assert_eq!(end.next_seq, JournalSeq(3));
        for r in &records[40..] {
            p.push(r);
        }
        let blocks = p.take_synced(JournalSeq(3), 42, 1);
        write_blocks(&store, &l, JournalSeq(3), &blocks).unwrap();
        let (got, end) = collect(&store, &l, JournalSeq(3), false);
        assert_eq!(got, records);
        assert!(!end.unsynced);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn blocks_of_another_image_are_ignored() {
        let l = Layout::for_create(&CreateOptions {
            size: 1 << 20,
            history: None,
            journal: None,
        })
        .unwrap();
        let store = MemStore::new(l.data_offset);
        let blocks = encode_blocks(&sample(), JournalSeq(0), 7, 1);
        write_blocks(&store, &l, JournalSeq(0), &blocks).unwrap();
        let (got, end) = collect(&store, &l, JournalSeq(0), false);
        assert!(got.is_empty());
        assert_eq!(end.next_seq, JournalSeq(0));
    }
}
