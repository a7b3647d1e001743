//! The on-disk format: layout, superblock, journal blocks and records, checkpoints.
//!
//! `FORMAT.md` at the top of the repository describes it byte by byte. Invariants:
//! - every structure read from disk carries a magic and a CRC32C, and is checked before use;
//! - the superblock is kept in two copies (offsets 0 and 4096) with a generation: the valid
//!   copy with the highest generation wins, so a torn superblock write falls back to the other;
//! - a checkpoint slot is only overwritten when the superblock points at the other one;
//! - a journal block that holds committed (synced) records is never rewritten within its lap
//!   of the ring. With `Durability::CompletedWrites` the blocks of records not yet committed
//!   are written UNSYNCED as records come, the last of them again (same sequence) each time
//!   it takes another record; the commit that takes them writes them (again) once, synced; a
//!   commit always starts a fresh block. So a torn write can only damage blocks of records
//!   not yet committed, never committed ones;
//! - all integers are little-endian.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::Error;

/// The size of a logical and a physical page.
pub const PAGE_SIZE: u64 = 4096;
/// The format version this build writes and the newest it reads. It reads versions 1 and 3
/// too, and serves such an image in its own version; version 2 is the pool label's
/// (`FORMAT.md`), never a superblock's.
pub const FORMAT_VERSION: u32 = 4;
/// The superblock magic.
pub const SUPER_MAGIC: [u8; 8] = *b"REWIND\0\x01";
/// Offsets of the two superblock copies.
pub const SUPER_OFFSETS: [u64; 2] = [0, PAGE_SIZE];
/// Where the journal starts.
pub const JOURNAL_OFFSET: u64 = 2 * PAGE_SIZE;
/// The journal's unit: small enough that one sector's atomicity covers it.
pub const JOURNAL_BLOCK: u64 = 512;
/// The largest journal sequence or safe point id an image may record. Both count up by one
/// from 0, so 2^63 is out of reach, and adding to one below it never overflows.
pub const COUNTER_MAX: u64 = 1 << 63;
/// The sequence number of a journal block. Block `s` lives at ring position `s mod J`;
/// sequences count up from 0 and stay at or below `COUNTER_MAX`, so they never wrap. Its
/// own type, so that a sequence never mixes with a safe point id or a page number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JournalSeq(pub u64);

impl std::ops::Add<u64> for JournalSeq {
    type Output = JournalSeq;
    /// The sequence `n` blocks later.
    fn add(self, n: u64) -> JournalSeq {
        JournalSeq(self.0 + n)
    }
}

impl std::ops::AddAssign<u64> for JournalSeq {
    fn add_assign(&mut self, n: u64) {
        self.0 += n;
    }
}

impl std::ops::Sub for JournalSeq {
    type Output = u64;
    /// Blocks from `earlier` up to this one.
    fn sub(self, earlier: JournalSeq) -> u64 {
        self.0 - earlier.0
    }
}

impl std::fmt::Display for JournalSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The journal block magic.
pub const JOURNAL_MAGIC: u32 = u32::from_le_bytes(*b"RWJ1");
/// The checkpoint magic.
pub const CKPT_MAGIC: u32 = u32::from_le_bytes(*b"RWC1");
/// A journal record's size.
pub const RECORD: usize = 16;
/// Records in one journal block.
pub const RECORDS_PER_BLOCK: usize = (JOURNAL_BLOCK as usize - JOURNAL_HEADER) / RECORD;
/// The journal block header's size.
pub const JOURNAL_HEADER: usize = std::mem::size_of::<JournalHeader>();
/// The most safe points the window keeps; older ones are retired beyond it.
pub const MAX_SAFE_POINTS: u64 = 16_384;
/// The longest label of a safe point, in bytes.
pub const MAX_LABEL: usize = 64;
/// The history area when none is asked for: a quarter of the device, but at least this.
pub const DEFAULT_MIN_HISTORY: u64 = 64 << 20;
/// The smallest history area `create` accepts when asked for explicitly.
pub const MIN_HISTORY: u64 = 1 << 20;
/// Data starts on a 1 MiB boundary so the device's pages align with the store's.
const DATA_ALIGN: u64 = 1 << 20;

/// What `rewind create` was asked for.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// The logical size of the device in bytes: a multiple of the page size.
    pub size: u64,
    /// The size of the history area in bytes; default 25% of `size`, at least 64 MiB.
    pub history: Option<u64>,
    /// The size of the journal in bytes; default `size / 256` within 4 MiB..256 MiB.
    pub journal: Option<u64>,
}

/// Where everything is in the backing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The image's format version: what its records, checkpoints and limits are.
    pub version: u32,
    /// Pages the device shows.
    pub logical_pages: u64,
    /// Pages of the data area: logical pages plus the history area.
    pub physical_pages: u64,
    /// Journal blocks in the ring.
    pub journal_blocks: u64,
    /// Offsets of the two checkpoint slots.
    pub ckpt_offsets: [u64; 2],
    /// Bytes of each checkpoint slot.
    pub ckpt_bytes: u64,
    /// Offset of physical page 0.
    pub data_offset: u64,
}

impl Layout {
    /// Works out the layout of a new image (of `FORMAT_VERSION`) for `opts`, checking the
    /// sizes.
    pub fn for_create(opts: &CreateOptions) -> Result<Layout, Error> {
        Self::for_create_as(opts, FORMAT_VERSION)
    }

    /// `for_create` of an image of format `version`: tests make older ones.
    pub fn for_create_as(opts: &CreateOptions, version: u32) -> Result<Layout, Error> {
        if opts.size == 0 || !opts.size.is_multiple_of(PAGE_SIZE) {
            return Err(Error::BadOption(format!(
                "size {} is not a positive multiple of the page size ({PAGE_SIZE})",
                opts.size
            )));
        }
        let history = opts
            .history
            .unwrap_or((opts.size / 4).max(DEFAULT_MIN_HISTORY));
        if !history.is_multiple_of(PAGE_SIZE) || history < MIN_HISTORY {
            return Err(Error::BadOption(format!(
                "history size {history} must be a multiple of {PAGE_SIZE} and at least {MIN_HISTORY} (1 MiB)"
            )));
        }
        let logical_pages = opts.size / PAGE_SIZE;
        let physical_pages = logical_pages + history / PAGE_SIZE;
        let max = max_physical_pages(version);
        if physical_pages > max {
            return Err(Error::BadOption(format!(
                "size plus history is {} pages ({} GiB), more than the {max} pages ({} GiB) \
                 an image of format version {version} can hold: give a smaller --size or \
                 --history",
                physical_pages,
                physical_pages >> 18,
                max >> 18,
            )));
        }
        // The journal holds the records between two checkpoints: 16 bytes per page written.
        let journal_bytes = opts
            .journal
            .unwrap_or((opts.size / 256).clamp(4 << 20, 256 << 20));
        if !journal_bytes.is_multiple_of(JOURNAL_BLOCK) || journal_bytes < 16 * JOURNAL_BLOCK {
            return Err(Error::BadOption(format!(
                "journal size {journal_bytes} must be a multiple of {JOURNAL_BLOCK} and at least 16 blocks"
            )));
        }
        Ok(Layout::compute(
            version,
            logical_pages,
            physical_pages,
            journal_bytes / JOURNAL_BLOCK,
        ))
    }

    /// The layout implied by the version and sizes a superblock records.
    pub fn compute(
        version: u32,
        logical_pages: u64,
        physical_pages: u64,
        journal_blocks: u64,
    ) -> Layout {
        // From version 4 on, the map is always in the leaves form: room for every leaf's
        // number and their count besides the words.
        let leaf_numbers = match version {
            1..=3 => 0,
            _ => 8 + 8 * logical_pages.div_ceil(rewind_remap::MAP_LEAF_PAGES),
        };
        let ckpt_bytes = round_up(
            PAGE_SIZE
                + logical_pages * 8
                + leaf_numbers
                + MAX_SAFE_POINTS * SAFE_POINT_BYTES as u64
                + (MAX_SAFE_POINTS + 1) * GROUP_BYTES as u64
                + physical_pages * HISTORY_ENTRY_BYTES as u64,
            PAGE_SIZE,
        );
        let ckpt0 = round_up(JOURNAL_OFFSET + journal_blocks * JOURNAL_BLOCK, PAGE_SIZE);
        let ckpt1 = ckpt0 + ckpt_bytes;
        Layout {
            version,
            logical_pages,
            physical_pages,
            journal_blocks,
            ckpt_offsets: [ckpt0, ckpt1],
            ckpt_bytes,
            data_offset: round_up(ckpt1 + ckpt_bytes, DATA_ALIGN),
        }
    }

    /// About the memory this version of rewind needs to serve an image of this layout once
    /// every page of it was written, in bytes: 16 a logical page (the remap table, and the
    /// copy a checkpoint takes of it) and 4 1/8 a physical page (reference counts and the
    /// page allocator), so about 20 a page of the device and 4 a page of history; the
    /// history window comes on top. A part of the device never
    /// written costs next to nothing.
    pub fn memory_to_serve(&self) -> u64 {
        self.logical_pages * 16 + self.physical_pages * 4 + self.physical_pages / 8
    }

    /// The bytes a backing store needs for this layout.
    pub fn required_bytes(&self) -> u64 {
        self.data_offset + self.physical_pages * PAGE_SIZE
    }

    /// The logical size of the device in bytes.
    pub fn device_bytes(&self) -> u64 {
        self.logical_pages * PAGE_SIZE
    }

    /// Byte offset of a physical page.
    pub fn page_offset(&self, p: rewind_remap::PhysPage) -> u64 {
        self.data_offset + p.0 * PAGE_SIZE
    }

    /// Byte offset of journal block `seq`.
    pub fn journal_block_offset(&self, seq: JournalSeq) -> u64 {
        JOURNAL_OFFSET + (seq.0 % self.journal_blocks) * JOURNAL_BLOCK
    }

    /// Blocks from `seq` to the end of the ring: one contiguous access covers no more.
    pub fn journal_blocks_to_ring_end(&self, seq: JournalSeq) -> u64 {
        self.journal_blocks - seq.0 % self.journal_blocks
    }
}

/// The most physical pages an image of format `version` may have: what 32 bits of page
/// number hold up to version 3 (just under 16 TiB); from version 4 on 2^48 (1 EiB of pages),
/// below what its records hold (`PhysPage::MAX`) so that every byte offset and size of the
/// layout fits 64 bits with room to spare.
pub fn max_physical_pages(version: u32) -> u64 {
    match version {
        1..=3 => rewind_remap::PhysPage::MAX_NARROW,
        _ => 1 << 48,
    }
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// The superblock, as stored in both copies. Each field says what it protects.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Superblock {
    /// Tells a rewind image from anything else.
    pub magic: [u8; 8],
    /// Refuses images of a newer format instead of misreading them.
    pub version: U32,
    /// The page size the layout was computed with.
    pub page_size: U32,
    /// The device size in pages.
    pub logical_pages: U64,
    /// The data area size in pages.
    pub physical_pages: U64,
    /// The journal ring's size in blocks.
    pub journal_blocks: U64,
    /// Identifies this image: journal blocks of an earlier format of the same store are
    /// rejected because they carry another id.
    pub uuid: U64,
    /// When the image was created, nanoseconds since the Unix epoch.
    pub created_ns: U64,
    /// Bumped on every superblock write: the higher valid copy is the current one.
    pub generation: U64,
    /// Bumped on every open; journal blocks carry it so a stale block left after a torn
    /// tail (from the run before the crash) is never replayed after newer ones.
    pub session: U32,
    /// Which checkpoint slot is current (0 or 1).
    pub ckpt_slot: U32,
    /// Bytes of the current checkpoint.
    pub ckpt_len: U64,
    /// CRC32C of the current checkpoint, so a torn checkpoint is never trusted.
    pub ckpt_crc: U32,
    /// 1 when the last daemon closed the image cleanly.
    pub clean: U32,
    /// The first journal block sequence to replay on top of the checkpoint.
    pub ckpt_journal_seq: U64,
    /// The pid of the daemon serving the image (0 when none).
    pub owner_pid: U32,
    /// The session that wrote the current checkpoint: replay rejects older journal blocks,
    /// which are stale leftovers of the run before a crash.
    pub ckpt_session: U32,
    /// The host name of the daemon serving the image, zero-padded.
    pub owner_host: [u8; 64],
    /// The boot the serving daemon started in (64 bits of the kernel's boot id, as
    /// `Host::boot_id`; 0 unknown): unsynced journal blocks are trusted only by a daemon of
    /// the same boot.
    pub boot_id: U64,
    /// Reserved; zero.
    pub reserved: [u8; 24],
    /// CRC32C of every byte above.
    pub crc: U32,
    /// Keeps the size a multiple of 8.
    pub pad: U32,
}

impl Superblock {
    /// The daemon that last opened the image for service, as (pid, host), or `None` when it
    /// was closed cleanly. A flock held by nobody with an owner here means that daemon died.
    pub fn owner(&self) -> Option<(u32, String)> {
        let pid = self.owner_pid.get();
        let end = self.owner_host.iter().position(|b| *b == 0).unwrap_or(64);
        let host = String::from_utf8_lossy(&self.owner_host[..end]).into_owned();
        (pid != 0).then_some((pid, host))
    }

    /// The CRC the superblock should carry.
    pub fn compute_crc(&self) -> u32 {
        let bytes = self.as_bytes();
        crc32c::crc32c(&bytes[..bytes.len() - 8])
    }

    /// The journal sequence replay starts at: the current checkpoint's.
    pub fn replay_from(&self) -> JournalSeq {
        JournalSeq(self.ckpt_journal_seq.get())
    }

    /// The layout this superblock describes.
    pub fn layout(&self) -> Layout {
        Layout::compute(
            self.version.get(),
            self.logical_pages.get(),
            self.physical_pages.get(),
            self.journal_blocks.get(),
        )
    }

    /// Validates a copy read from disk: magic, CRC, version, and sane sizes.
    pub fn validate(bytes: &[u8]) -> Result<Superblock, Error> {
        let (sb, _) = Superblock::read_from_prefix(bytes)
            .map_err(|_| Error::Corrupt("superblock shorter than its structure".into()))?;
        if sb.magic != SUPER_MAGIC {
            return Err(Error::NotRewind);
        }
        if sb.crc.get() != sb.compute_crc() {
            return Err(Error::Corrupt(format!(
                "superblock checksum mismatch: stored {:#010x}, computed {:#010x}",
                sb.crc.get(),
                sb.compute_crc()
            )));
        }
        match sb.version.get() {
            1 | 3 | 4 => {}
            0 => return Err(Error::Corrupt("superblock of format version 0".into())),
            2 => {
                return Err(Error::Corrupt(
                    "version 2 at the superblock's place: this is the label of a file of a \
                     rewind pool, not an image's superblock"
                        .into(),
                ))
            }
            found => {
                return Err(Error::UnsupportedVersion {
                    found,
                    supported: FORMAT_VERSION,
                })
            }
        }
        if u64::from(sb.page_size.get()) != PAGE_SIZE {
            return Err(Error::Corrupt(format!(
                "page size {} (this build uses {PAGE_SIZE})",
                sb.page_size.get()
            )));
        }
        let (l, p, j) = (
            sb.logical_pages.get(),
            sb.physical_pages.get(),
            sb.journal_blocks.get(),
        );
        if l == 0
            || p < l
            || p > max_physical_pages(sb.version.get())
            || !(16..=1 << 32).contains(&j)
        {
            return Err(Error::Corrupt(format!(
                "superblock sizes out of range: {l} logical pages, {p} physical pages, {j} journal blocks"
            )));
        }
        if sb.ckpt_session.get() > sb.session.get() {
            return Err(Error::Corrupt(format!(
                "checkpoint written in session {}, after the superblock's session {}",
                sb.ckpt_session.get(),
                sb.session.get()
            )));
        }
        if sb.ckpt_journal_seq.get() > COUNTER_MAX {
            return Err(Error::Corrupt(format!(
                "checkpoint journal sequence {} is past {COUNTER_MAX}",
                sb.ckpt_journal_seq.get()
            )));
        }
        if sb.ckpt_slot.get() > 1 || sb.ckpt_len.get() > sb.layout().ckpt_bytes {
            return Err(Error::Corrupt(format!(
                "checkpoint slot {} of {} bytes does not fit the layout",
                sb.ckpt_slot.get(),
                sb.ckpt_len.get()
            )));
        }
        Ok(sb)
    }
}

/// The header of a 512-byte journal block; records follow it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct JournalHeader {
    /// Tells a journal block from stale data.
    pub magic: U32,
    /// CRC32C of the block from byte 8 on: a torn or stale block is rejected.
    pub crc: U32,
    /// The block's sequence number: its position is `seq % journal_blocks`, and replay
    /// stops at the first block whose sequence is not the one expected.
    pub seq: U64,
    /// The image's uuid, so blocks of an earlier format of the same store are rejected.
    pub uuid: U64,
    /// The session that wrote the block: replay stops if it ever goes down.
    pub session: U32,
    /// Records in this block.
    pub count: U16,
    /// Bit 0: unsynced (`journal::UNSYNCED`); the other bits are zero.
    pub flags: U16,
}

/// The kind of a journal record, in its first byte.
pub mod tag {
    /// `map[l] = p`: a page write.
    pub const WRITE: u8 = 1;
    /// `map[l..l+count] = unmapped`: a discard or write-zeroes.
    pub const DISCARD: u8 = 2;
    /// A safe point: closes the current epoch. Two slots (this one, then the time), then
    /// the label's.
    pub const SAFE_POINT: u8 = 3;
    /// Safe point `id` leaves the window; history only it needed is freed.
    pub const RETIRE: u8 = 4;
    /// Raw label bytes following a safe point.
    pub const LABEL: u8 = 5;
    /// Every logical page goes back to what it held at safe point `id`.
    pub const ROLLBACK: u8 = 6;
    /// Safe point `id` is pinned (byte 1 = 1) or unpinned (byte 1 = 0).
    pub const PIN: u8 = 7;
}

/// One checkpoint's header, in the first page of its slot.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CheckpointHeader {
    /// Tells a checkpoint from stale data.
    pub magic: U32,
    /// The form of its map and history: 1 dense, 3 leaves, 4 wide leaves
    /// (`checkpoint::MapForm`).
    pub version: U32,
    /// The image's uuid.
    pub uuid: U64,
    /// The first journal block to replay on top of this checkpoint.
    pub journal_seq: U64,
    /// The id the next safe point gets, which is also the open epoch.
    pub next_safe_point: U64,
    /// Logical pages in the map that follows.
    pub logical_pages: U64,
    /// Safe points in the window.
    pub safe_points: U64,
    /// History groups (one per epoch that superseded pages).
    pub groups: U64,
    /// History entries over all groups.
    pub entries: U64,
    /// Bytes after this header.
    pub body_len: U64,
    /// CRC32C of the body.
    pub body_crc: U32,
    /// CRC32C of the header fields above.
    pub crc: U32,
}

impl CheckpointHeader {
    /// The CRC the header should carry.
    pub fn compute_crc(&self) -> u32 {
        let bytes = self.as_bytes();
        crc32c::crc32c(&bytes[..bytes.len() - 4])
    }
}

/// A safe point as stored in a checkpoint.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SafePointEntry {
    /// Its id.
    pub id: U64,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: U64,
    /// What made it (see `Trigger`).
    pub trigger: u8,
    /// Bytes of `label` in use.
    pub label_len: u8,
    /// Bit 0: pinned (`SAFE_POINT_PINNED`); the other bits are zero.
    pub flags: u8,
    /// Reserved; zero.
    pub pad: [u8; 5],
    /// The label, zero-padded.
    pub label: [u8; MAX_LABEL],
}

/// `SafePointEntry::flags`: kept from retirement by `rewind pin`.
pub const SAFE_POINT_PINNED: u8 = 1;

/// The bytes of a safe point entry.
pub const SAFE_POINT_BYTES: usize = std::mem::size_of::<SafePointEntry>();

/// The header of a history group in a checkpoint.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct GroupHeader {
    /// The epoch whose writes superseded these pages, named by the id of the safe point
    /// that closes it (`SafePointId`).
    pub epoch: U64,
    /// Records that follow: entries in a narrow checkpoint (versions 1 and 3), runs in a
    /// wide one (version 4).
    pub count: U64,
}

/// The bytes of a group header.
pub const GROUP_BYTES: usize = std::mem::size_of::<GroupHeader>();

/// A history record: an entry (the page `logical` had when `epoch` began) in a narrow
/// checkpoint, a run of entries in a wide one (FORMAT.md).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct HistoryEntry {
    /// The logical page; in a wide checkpoint, the run's first in bits 0..48 and its
    /// length - 1 in bits 48..64.
    pub logical: U64,
    /// Its physical page then; when it read as zeros, `u64::MAX` in a wide checkpoint
    /// (version 4), `u32::MAX` in an older one (whose high 32 bits are zero).
    pub phys: U64,
}

/// The bytes of a history entry.
pub const HISTORY_ENTRY_BYTES: usize = std::mem::size_of::<HistoryEntry>();

const _: () = assert!(std::mem::size_of::<Superblock>() <= PAGE_SIZE as usize);
const _: () = assert!(std::mem::size_of::<CheckpointHeader>() <= PAGE_SIZE as usize);
const _: () = assert!(JOURNAL_HEADER == 32);
const _: () = assert!(RECORDS_PER_BLOCK == 30);
const _: () = assert!(SAFE_POINT_BYTES == 88);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_history_is_a_quarter_with_a_floor() {
        let l = Layout::for_create(&CreateOptions {
            size: 8 << 30,
            history: None,
            journal: None,
        })
        .unwrap();
        assert_eq!(l.physical_pages - l.logical_pages, (2 << 30) / PAGE_SIZE);
        let small = Layout::for_create(&CreateOptions {
            size: 16 << 20,
            history: None,
            journal: None,
        })
        .unwrap();
        assert_eq!(
            small.physical_pages - small.logical_pages,
            DEFAULT_MIN_HISTORY / PAGE_SIZE
        );
    }

    #[test]
    fn regions_do_not_overlap() {
        let l = Layout::for_create(&CreateOptions {
            size: 1 << 30,
            history: None,
            journal: None,
        })
        .unwrap();
        assert!(JOURNAL_OFFSET + l.journal_blocks * JOURNAL_BLOCK <= l.ckpt_offsets[0]);
        assert!(l.ckpt_offsets[0] + l.ckpt_bytes <= l.ckpt_offsets[1]);
        assert!(l.ckpt_offsets[1] + l.ckpt_bytes <= l.data_offset);
        assert_eq!(l.data_offset % DATA_ALIGN, 0);
    }

    #[test]
    fn sizes_not_a_page_multiple_are_refused() {
        let e = Layout::for_create(&CreateOptions {
            size: 4097,
            history: None,
            journal: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("multiple of the page size"), "{e}");
    }
}
