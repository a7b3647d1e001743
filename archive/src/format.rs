//! The archive's bytes: the header, the directory (safe points, then extents) and the
//! records that carry the pages. FORMAT.md ("Archive") describes the same layout for
//! readers of the file; everything is little-endian and checksummed with CRC32C.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use rewind_history::{SafePointId, Trigger, PAGE_SIZE};

use crate::Error;

/// The first 8 bytes of every archive.
pub const MAGIC: [u8; 8] = *b"RWARCHV\x01";
/// The version this code writes and reads.
pub const VERSION: u32 = 1;
/// The first 4 bytes of every record.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RWAR");
/// Pages a record carries at most: 1 MiB, a bounded buffer on both sides.
pub const RECORD_PAGES: u64 = 256;
/// Longest label a safe point carries (as in the image).
pub const MAX_LABEL: usize = 64;
/// The largest device an archive describes, in pages (4 PiB): every size computed from a
/// directory then fits in 64 bits.
pub const MAX_LOGICAL_PAGES: u64 = 1 << 40;
/// The largest directory a reader takes (about 44 million extents), so that a damaged or
/// hostile header cannot make it read without end.
pub const MAX_DIRECTORY_BYTES: u64 = 1 << 30;
/// Header flag: the archive holds no state of its own first safe point's predecessor
/// (`base`): it continues an archive that ends there.
pub const FLAG_INCREMENTAL: u32 = 1;

/// The archive's header: what it holds and how long each part is.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: U32,
    pub page_size: U32,
    /// The uuid of the image exported: an incremental archive continues one of the same.
    pub source_uuid: U64,
    /// The device's size in pages.
    pub logical_pages: U64,
    /// Incremental: the safe point the first segment's changes start from.
    pub base: U64,
    /// Incremental: that safe point's time, ns since the Unix epoch (ids alone do not tell
    /// two copies of one image apart once both made safe points of their own).
    pub base_time_ns: U64,
    pub flags: U32,
    /// Safe points in the directory.
    pub safe_points: U32,
    /// Extents in the directory.
    pub extents: U64,
    /// Records after the directory.
    pub records: U64,
    /// Bytes of the directory.
    pub directory_bytes: U64,
    /// Bytes of all records.
    pub data_bytes: U64,
    /// CRC32C of the directory.
    pub directory_crc: U32,
    /// CRC32C of the bytes before this field.
    pub crc: U32,
}

pub const HEADER_BYTES: u64 = std::mem::size_of::<Header>() as u64;

impl Header {
    /// The checksum `crc` must hold.
    pub fn compute_crc(&self) -> u32 {
        crc32c::crc32c(&self.as_bytes()[..std::mem::size_of::<Header>() - 4])
    }

    /// Bytes of the whole archive.
    pub fn total_bytes(&self) -> u64 {
        HEADER_BYTES
            .saturating_add(self.directory_bytes.get())
            .saturating_add(self.data_bytes.get())
    }
}

/// A safe point in the directory.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SafePointEntry {
    pub id: U64,
    pub time_ns: U64,
    pub trigger: u8,
    pub label_len: u8,
    pub pad: [u8; 6],
    pub label: [u8; MAX_LABEL],
}

pub const SAFE_POINT_BYTES: u64 = std::mem::size_of::<SafePointEntry>() as u64;

/// An extent of the directory: pages of one segment that hold data (carried by records) or
/// read as zeros.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ExtentEntry {
    pub segment: U32,
    pub kind: U32,
    pub first: U64,
    pub count: U64,
}

pub const EXTENT_BYTES: u64 = std::mem::size_of::<ExtentEntry>() as u64;
pub const KIND_DATA: u32 = 1;
pub const KIND_ZEROS: u32 = 2;

/// The header of a record; `count` page checksums and then `count` pages follow it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RecordHeader {
    pub magic: U32,
    pub count: U32,
    /// The directory extent whose pages these are.
    pub extent: U64,
    /// The first logical page.
    pub first: U64,
    /// CRC32C of bytes 0..24 and the page checksums.
    pub crc: U32,
    pub pad: U32,
}

pub const RECORD_HEADER_BYTES: u64 = std::mem::size_of::<RecordHeader>() as u64;

impl RecordHeader {
    /// The checksum `crc` must hold, given the page checksums that follow.
    pub fn compute_crc(&self, page_crcs: &[u8]) -> u32 {
        let head = crc32c::crc32c(&self.as_bytes()[..24]);
        crc32c::crc32c_append(head, page_crcs)
    }
}

/// The bytes of a record of `count` pages.
pub fn record_bytes(count: u64) -> u64 {
    RECORD_HEADER_BYTES + count * (4 + PAGE_SIZE)
}

/// A safe point as an archive holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedSafePoint {
    pub id: SafePointId,
    /// Wall-clock time, ns since the Unix epoch.
    pub time_ns: u64,
    pub trigger: Trigger,
    pub label: Option<String>,
}

impl ArchivedSafePoint {
    pub(crate) fn encode(&self) -> SafePointEntry {
        let text = self.label.as_deref().unwrap_or("").as_bytes();
        let mut label = [0u8; MAX_LABEL];
        label[..text.len()].copy_from_slice(text);
        SafePointEntry {
            id: U64::new(self.id.0),
            time_ns: U64::new(self.time_ns),
            trigger: self.trigger.code(),
            label_len: text.len() as u8,
            pad: [0; 6],
            label,
        }
    }

    pub(crate) fn decode(e: &SafePointEntry) -> Result<ArchivedSafePoint, Error> {
        let trigger = Trigger::from_code(e.trigger)
            .ok_or_else(|| Error::corrupt(format!("unknown trigger {}", e.trigger)))?;
        let len = usize::from(e.label_len);
        if len > MAX_LABEL || e.pad != [0; 6] {
            return Err(Error::corrupt("a safe point entry is malformed"));
        }
        let label = match len {
            0 => None,
            _ => Some(
                String::from_utf8(e.label[..len].to_vec())
                    .map_err(|_| Error::corrupt("a label is not UTF-8"))?,
            ),
        };
        Ok(ArchivedSafePoint {
            id: SafePointId(e.id.get()),
            time_ns: e.time_ns.get(),
            trigger,
            label,
        })
    }
}

/// What an extent's pages are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Carried by records, in directory order.
    Data,
    /// Read as zeros (discarded, or never written).
    Zeros,
}

/// An extent of the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Index into the safe points: the pages are as they read at that safe point.
    pub segment: u32,
    pub kind: Kind,
    /// The first logical page.
    pub first: u64,
    /// Pages, at least 1.
    pub count: u64,
}

impl Extent {
    pub(crate) fn encode(&self) -> ExtentEntry {
        ExtentEntry {
            segment: U32::new(self.segment),
            kind: U32::new(match self.kind {
                Kind::Data => KIND_DATA,
                Kind::Zeros => KIND_ZEROS,
            }),
            first: U64::new(self.first),
            count: U64::new(self.count),
        }
    }

    pub(crate) fn decode(e: &ExtentEntry) -> Result<Extent, Error> {
        let kind = match e.kind.get() {
            KIND_DATA => Kind::Data,
            KIND_ZEROS => Kind::Zeros,
            k => return Err(Error::corrupt(format!("unknown extent kind {k}"))),
        };
        Ok(Extent {
            segment: e.segment.get(),
            kind,
            first: e.first.get(),
            count: e.count.get(),
        })
    }

    /// One past the last page.
    pub fn end(&self) -> u64 {
        self.first + self.count
    }

    /// Records carrying it: one per `RECORD_PAGES` (none for zeros).
    pub fn records(&self) -> u64 {
        match self.kind {
            Kind::Data => self.count.div_ceil(RECORD_PAGES),
            Kind::Zeros => 0,
        }
    }
}
