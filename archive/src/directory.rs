//! The directory: what an archive holds, read and checked before any page is.

use std::io::Read;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use rewind_history::{SafePointId, PAGE_SIZE};

use crate::format::{
    record_bytes, ArchivedSafePoint, Extent, ExtentEntry, Header, Kind, SafePointEntry,
    EXTENT_BYTES, FLAG_INCREMENTAL, HEADER_BYTES, MAGIC, RECORD_PAGES, SAFE_POINT_BYTES, VERSION,
};
use crate::Error;

/// What an archive holds: its header's figures, its safe points and their segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    /// The uuid of the image exported.
    pub source_uuid: u64,
    /// The device's size in pages.
    pub logical_pages: u64,
    /// `Some(b)`: an incremental archive, whose first segment holds the changes after safe
    /// point `b` (an archive that ends at `b` comes before it); `None`: a full archive, whose
    /// first segment is the whole device at its first safe point.
    pub base: Option<SafePointId>,
    /// Ascending ids; segment `i` belongs to `safe_points[i]`.
    pub safe_points: Vec<ArchivedSafePoint>,
    /// Ascending by segment, then by first page, not overlapping within a segment.
    pub extents: Vec<Extent>,
}

/// The part of a directory that belongs to one safe point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Data pages.
    pub data_pages: u64,
    /// Pages that read as zeros.
    pub zero_pages: u64,
}

impl Directory {
    /// Records the directory's data extents take.
    pub fn records(&self) -> u64 {
        self.extents.iter().map(Extent::records).sum()
    }

    /// Bytes of all records.
    pub fn data_bytes(&self) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.kind == Kind::Data)
            .map(|e| {
                let full = e.count / RECORD_PAGES;
                let rest = e.count % RECORD_PAGES;
                full * record_bytes(RECORD_PAGES) + if rest > 0 { record_bytes(rest) } else { 0 }
            })
            .sum()
    }

    /// Bytes of the directory itself.
    pub fn directory_bytes(&self) -> u64 {
        self.safe_points.len() as u64 * SAFE_POINT_BYTES + self.extents.len() as u64 * EXTENT_BYTES
    }

    /// Bytes of the whole archive.
    pub fn total_bytes(&self) -> u64 {
        HEADER_BYTES + self.directory_bytes() + self.data_bytes()
    }

    /// The pages of each segment, by safe point.
    pub fn segments(&self) -> Vec<Segment> {
        let mut out = vec![
            Segment {
                data_pages: 0,
                zero_pages: 0
            };
            self.safe_points.len()
        ];
        for e in &self.extents {
            let s = &mut out[e.segment as usize];
            match e.kind {
                Kind::Data => s.data_pages += e.count,
                Kind::Zeros => s.zero_pages += e.count,
            }
        }
        out
    }

    /// The last safe point: where an incremental archive after this one starts.
    pub fn last(&self) -> SafePointId {
        self.safe_points.last().map_or(SafePointId(0), |s| s.id)
    }

    /// Header and directory, as written at the start of the archive.
    pub fn encode(&self) -> Vec<u8> {
        let mut dir = Vec::with_capacity(self.directory_bytes() as usize);
        for sp in &self.safe_points {
            dir.extend_from_slice(sp.encode().as_bytes());
        }
        for e in &self.extents {
            dir.extend_from_slice(e.encode().as_bytes());
        }
        let mut h = Header {
            magic: MAGIC,
            version: U32::new(VERSION),
            page_size: U32::new(PAGE_SIZE as u32),
            source_uuid: U64::new(self.source_uuid),
            logical_pages: U64::new(self.logical_pages),
            base: U64::new(self.base.map_or(0, |b| b.0)),
            flags: U32::new(if self.base.is_some() {
                FLAG_INCREMENTAL
            } else {
                0
            }),
            safe_points: U32::new(self.safe_points.len() as u32),
            extents: U64::new(self.extents.len() as u64),
            records: U64::new(self.records()),
            directory_bytes: U64::new(dir.len() as u64),
            data_bytes: U64::new(self.data_bytes()),
            directory_crc: U32::new(crc32c::crc32c(&dir)),
            crc: U32::new(0),
        };
        h.crc = U32::new(h.compute_crc());
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(&dir);
        out
    }

    /// Reads and checks the header and directory at the start of `r`.
    pub fn read(r: &mut impl Read) -> Result<Directory, Error> {
        let mut head = [0u8; HEADER_BYTES as usize];
        let got = read_full(r, &mut head)?;
        if got < MAGIC.len() || head[..MAGIC.len() - 1] != MAGIC[..MAGIC.len() - 1] {
            return Err(Error::NotArchive);
        }
        if got < head.len() {
            return Err(Error::Truncated {
                at: got as u64,
                expected: HEADER_BYTES,
            });
        }
        let h = Header::read_from_bytes(&head).expect("the header's size");
        if h.crc.get() != h.compute_crc() {
            return Err(Error::corrupt("header checksum mismatch"));
        }
        if h.version.get() > VERSION || h.magic != MAGIC {
            return Err(Error::NewerVersion(h.version.get()));
        }
        if u64::from(h.page_size.get()) != PAGE_SIZE {
            return Err(Error::corrupt(format!(
                "page size {}, this rewind uses {PAGE_SIZE}",
                h.page_size.get()
            )));
        }
        let dir_len = h.directory_bytes.get();
        let mut dir = Vec::new();
        r.take(dir_len)
            .read_to_end(&mut dir)
            .map_err(Error::io("reading the archive's directory"))?;
        if (dir.len() as u64) < dir_len {
            return Err(Error::Truncated {
                at: HEADER_BYTES + dir.len() as u64,
                expected: h.total_bytes(),
            });
        }
        if crc32c::crc32c(&dir) != h.directory_crc.get() {
            return Err(Error::corrupt("directory checksum mismatch"));
        }
        let d = Self::decode(&h, &dir)?;
        d.check(&h)?;
        Ok(d)
    }

    /// The directory `h` describes, from its bytes (checksum already checked).
    fn decode(h: &Header, dir: &[u8]) -> Result<Directory, Error> {
        let sps = u64::from(h.safe_points.get());
        let expect = sps
            .checked_mul(SAFE_POINT_BYTES)
            .and_then(|a| h.extents.get().checked_mul(EXTENT_BYTES).map(|b| (a, b)))
            .and_then(|(a, b)| a.checked_add(b));
        if expect != Some(dir.len() as u64) {
            return Err(Error::corrupt(
                "the directory's size does not match its counts",
            ));
        }
        let (sp_bytes, ext_bytes) = dir.split_at((sps * SAFE_POINT_BYTES) as usize);
        let safe_points = sp_bytes
            .chunks_exact(SAFE_POINT_BYTES as usize)
            .map(|c| ArchivedSafePoint::decode(&SafePointEntry::read_from_bytes(c).expect("size")))
            .collect::<Result<Vec<_>, _>>()?;
        let extents = ext_bytes
            .chunks_exact(EXTENT_BYTES as usize)
            .map(|c| Extent::decode(&ExtentEntry::read_from_bytes(c).expect("size")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Directory {
            source_uuid: h.source_uuid.get(),
            logical_pages: h.logical_pages.get(),
            base: (h.flags.get() & FLAG_INCREMENTAL != 0).then_some(SafePointId(h.base.get())),
            safe_points,
            extents,
        })
    }

    /// Checks what the directory says against itself and its header.
    fn check(&self, h: &Header) -> Result<(), Error> {
        if h.flags.get() & !FLAG_INCREMENTAL != 0 {
            return Err(Error::corrupt(format!(
                "unknown flags {:#x}",
                h.flags.get()
            )));
        }
        if self.safe_points.is_empty() {
            return Err(Error::corrupt("no safe point"));
        }
        let mut prev = self.base;
        for sp in &self.safe_points {
            if prev.is_some_and(|p| p >= sp.id) {
                return Err(Error::corrupt(format!("safe point {} out of order", sp.id)));
            }
            prev = Some(sp.id);
        }
        let mut last: Option<&Extent> = None;
        for e in &self.extents {
            if e.count == 0
                || e.first
                    .checked_add(e.count)
                    .is_none_or(|end| end > self.logical_pages)
            {
                return Err(Error::corrupt(format!(
                    "extent of {} pages at page {} is outside the device of {} pages",
                    e.count, e.first, self.logical_pages
                )));
            }
            if e.segment as usize >= self.safe_points.len() {
                return Err(Error::corrupt(format!(
                    "extent of unknown segment {}",
                    e.segment
                )));
            }
            if let Some(l) = last {
                let ordered =
                    l.segment < e.segment || (l.segment == e.segment && l.end() <= e.first);
                if !ordered {
                    return Err(Error::corrupt("extents out of order or overlapping"));
                }
            }
            last = Some(e);
        }
        if self.records() != h.records.get() || self.data_bytes() != h.data_bytes.get() {
            return Err(Error::corrupt(
                "the header's record counts do not match the directory",
            ));
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, Error> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the archive")(e)),
        }
    }
    Ok(got)
}
