//! The directory: what an archive holds, read and checked before any page is.

use std::io::Read;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use rewind_history::{SafePointId, PAGE_SIZE};

use crate::format::{
    record_bytes, ArchivedSafePoint, Extent, ExtentEntry, Header, Kind, SafePointEntry,
    EXTENT_BYTES, FLAG_INCREMENTAL, HEADER_BYTES, MAGIC, MAX_DIRECTORY_BYTES, MAX_LOGICAL_PAGES,
    RECORD_PAGES, SAFE_POINT_BYTES, VERSION,
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
    /// The time of safe point `base` (0 for a full archive): an archive continues another
    /// only if that one ends with a safe point of this id and this time.
    pub base_time_ns: u64,
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
    /// Records and record bytes the data extents take, `None` if they do not fit in 64
    /// bits (a damaged directory; `read` refuses it).
    fn sizes(&self) -> Option<(u64, u64)> {
        let (mut records, mut bytes) = (0u64, 0u64);
        for e in self.extents.iter().filter(|e| e.kind == Kind::Data) {
            let (full, rest) = (e.count / RECORD_PAGES, e.count % RECORD_PAGES);
            let b = full
                .checked_mul(record_bytes(RECORD_PAGES))?
                .checked_add(if rest > 0 { record_bytes(rest) } else { 0 })?;
            records = records.checked_add(e.records())?;
            bytes = bytes.checked_add(b)?;
        }
        Some((records, bytes))
    }

    /// Records the directory's data extents take.
    pub fn records(&self) -> u64 {
        self.sizes().map_or(u64::MAX, |(r, _)| r)
    }

    /// Bytes of all records.
    pub fn data_bytes(&self) -> u64 {
        self.sizes().map_or(u64::MAX, |(_, b)| b)
    }

    /// Bytes of the directory itself.
    pub fn directory_bytes(&self) -> u64 {
        self.safe_points.len() as u64 * SAFE_POINT_BYTES + self.extents.len() as u64 * EXTENT_BYTES
    }

    /// Bytes of the whole archive.
    pub fn total_bytes(&self) -> u64 {
        HEADER_BYTES
            .saturating_add(self.directory_bytes())
            .saturating_add(self.data_bytes())
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
            base_time_ns: U64::new(self.base_time_ns),
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
        if h.version.get() > VERSION || h.magic[MAGIC.len() - 1] > MAGIC[MAGIC.len() - 1] {
            return Err(Error::NewerVersion(h.version.get()));
        }
        if h.version.get() != VERSION || h.magic != MAGIC {
            return Err(Error::corrupt(format!(
                "unknown version {}",
                h.version.get()
            )));
        }
        if u64::from(h.page_size.get()) != PAGE_SIZE {
            return Err(Error::corrupt(format!(
                "page size {}, this rewind uses {PAGE_SIZE}",
                h.page_size.get()
            )));
        }
        let dir_len = h.directory_bytes.get();
        let expect = u64::from(h.safe_points.get())
            .checked_mul(SAFE_POINT_BYTES)
            .zip(h.extents.get().checked_mul(EXTENT_BYTES))
            .and_then(|(a, b)| a.checked_add(b));
        if expect != Some(dir_len) {
            return Err(Error::corrupt(
                "the directory's size does not match its counts",
            ));
        }
        if dir_len > MAX_DIRECTORY_BYTES {
            return Err(Error::corrupt(format!(
                "a directory of {dir_len} bytes; this rewind reads at most {MAX_DIRECTORY_BYTES}"
            )));
        }
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
            base_time_ns: h.base_time_ns.get(),
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
        if self.logical_pages == 0 || self.logical_pages > MAX_LOGICAL_PAGES {
            return Err(Error::corrupt(format!(
                "a device of {} pages (at most {MAX_LOGICAL_PAGES})",
                self.logical_pages
            )));
        }
        if self.base.is_none() && (h.base.get() != 0 || self.base_time_ns != 0) {
            return Err(Error::corrupt("a full archive names a base safe point"));
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
        if self.sizes() != Some((h.records.get(), h.data_bytes.get())) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Kind;
    use rewind_history::Trigger;

    fn one_safe_point() -> Vec<ArchivedSafePoint> {
        vec![ArchivedSafePoint {
            id: SafePointId(3),
            time_ns: 1,
            trigger: Trigger::Flush,
            label: None,
        }]
    }

    /// The sizes FORMAT.md gives.
    #[test]
    fn entry_sizes_are_those_documented() {
        assert_eq!((HEADER_BYTES, SAFE_POINT_BYTES, EXTENT_BYTES), (96, 88, 24));
        assert_eq!(crate::format::RECORD_HEADER_BYTES, 32);
    }

    /// A directory whose sizes would overflow 64 bits (a device past the limit, pages
    /// whose offsets wrap) is refused, not read into wrapped offsets.
    #[test]
    fn a_device_past_the_limit_is_refused() {
        for pages in [0, MAX_LOGICAL_PAGES + 1, (1 << 52) + 1, u64::MAX] {
            let d = Directory {
                source_uuid: 1,
                logical_pages: pages,
                base: None,
                base_time_ns: 0,
                safe_points: one_safe_point(),
                extents: vec![Extent {
                    segment: 0,
                    kind: Kind::Zeros,
                    first: pages.saturating_sub(1),
                    count: 1,
                }],
            };
            let bytes = d.encode();
            let err = Directory::read(&mut &bytes[..]).unwrap_err().to_string();
            assert!(err.contains("pages (at most"), "{pages}: {err}");
        }
    }

    /// A header whose directory size does not match its counts is refused before any of
    /// the directory is read.
    #[test]
    fn a_directory_size_that_does_not_match_the_counts_is_refused_first() {
        let d = Directory {
            source_uuid: 1,
            logical_pages: 16,
            base: None,
            base_time_ns: 0,
            safe_points: one_safe_point(),
            extents: vec![],
        };
        let mut bytes = d.encode();
        let mut h = Header::read_from_prefix(&bytes).unwrap().0;
        h.directory_bytes = U64::new(u64::MAX);
        h.crc = U32::new(h.compute_crc());
        bytes[..HEADER_BYTES as usize].copy_from_slice(h.as_bytes());
        // An endless stream after the header: read would never end if it read first.
        let mut endless = std::io::Cursor::new(bytes).chain(std::io::repeat(0));
        let err = Directory::read(&mut endless).unwrap_err().to_string();
        assert!(err.contains("does not match its counts"), "{err}");
    }
}
