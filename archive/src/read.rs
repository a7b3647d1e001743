//! Reading an archive's records: `verify` checks them all, `restore` writes one safe point
//! of a chain of archives into a sink in one sequential read.

use std::io::Read;

use zerocopy::FromBytes;

use rewind_history::{SafePointId, PAGE_SIZE};

use crate::directory::{read_full, Directory};
use crate::format::{
    record_bytes, Extent, Kind, RecordHeader, HEADER_BYTES, RECORD_HEADER_BYTES, RECORD_MAGIC,
    RECORD_PAGES,
};
use crate::ranges::Ranges;
use crate::Error;

/// Where `restore` puts the pages: an image file, a block device, memory in tests.
pub trait PageSink {
    /// Writes whole pages from logical page `first`.
    fn write_pages(&mut self, first: u64, data: &[u8]) -> std::io::Result<()>;
    /// Makes `count` pages from `first` read as zeros.
    fn zero_pages(&mut self, first: u64, count: u64) -> std::io::Result<()>;
}

/// What `verify` read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Records, each checked.
    pub records: u64,
    /// Pages, each checked against its checksum.
    pub pages: u64,
    /// Bytes of the whole archive.
    pub bytes: u64,
}

/// What `restore` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The safe point restored.
    pub at: SafePointId,
    /// Pages written with data.
    pub data_pages: u64,
    /// Pages made zeros.
    pub zero_pages: u64,
    /// Bytes read from the archives.
    pub bytes_read: u64,
}

/// The records of one archive, read in order and each checked against the directory.
struct Records<'a, R: Read> {
    r: &'a mut R,
    dir: &'a Directory,
    /// Bytes of the archive read so far.
    at: u64,
    buf: Vec<u8>,
}

impl<'a, R: Read> Records<'a, R> {
    /// The records of `dir`, whose header and directory `r` was read past.
    fn new(r: &'a mut R, dir: &'a Directory) -> Records<'a, R> {
        Records {
            r,
            dir,
            at: HEADER_BYTES + dir.directory_bytes(),
            buf: Vec::new(),
        }
    }

    /// Reads the next record, which must carry the `count` pages from `first` of extent
    /// `index`, and returns its pages, each checked.
    fn next(&mut self, index: usize, first: u64, count: u64) -> Result<&[u8], Error> {
        let len = record_bytes(count) as usize;
        self.buf.resize(len, 0);
        let got = read_full(self.r, &mut self.buf)?;
        if got < len {
            return Err(Error::Truncated {
                at: self.at + got as u64,
                expected: self.dir.total_bytes(),
            });
        }
        let where_ = format!("the record at byte {}", self.at);
        self.at += len as u64;
        let (h, rest) = RecordHeader::read_from_prefix(&self.buf).expect("record header size");
        let (crcs, data) = rest.split_at(4 * count as usize);
        if h.magic.get() != RECORD_MAGIC || h.crc.get() != h.compute_crc(crcs) {
            return Err(Error::corrupt(format!("{where_} is damaged")));
        }
        if h.extent.get() != index as u64
            || h.first.get() != first
            || u64::from(h.count.get()) != count
        {
            return Err(Error::corrupt(format!(
                "{where_} carries pages {}.. of extent {}; the directory puts pages {first}.. of extent {index} there (records out of order?)",
                h.first.get(),
                h.extent.get()
            )));
        }
        for (i, (page, crc)) in data
            .chunks_exact(PAGE_SIZE as usize)
            .zip(crcs.chunks_exact(4))
            .enumerate()
        {
            if crc32c::crc32c(page) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
                return Err(Error::corrupt(format!(
                    "page {} in {where_} does not match its checksum",
                    first + i as u64
                )));
            }
        }
        Ok(&self.buf[RECORD_HEADER_BYTES as usize + 4 * count as usize..])
    }

    /// Checks that nothing follows the last record.
    fn end(&mut self) -> Result<(), Error> {
        let mut one = [0u8; 1];
        if read_full(self.r, &mut one)? != 0 {
            return Err(Error::corrupt(format!(
                "bytes follow the last record, at byte {}",
                self.at
            )));
        }
        Ok(())
    }
}

/// The records of each data extent in order: (extent index, first page, pages).
fn record_spans(extents: &[Extent]) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
    extents
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == Kind::Data)
        .flat_map(|(i, e)| {
            (e.first..e.end())
                .step_by(RECORD_PAGES as usize)
                .map(move |f| (i, f, (e.end() - f).min(RECORD_PAGES)))
        })
}

/// Reads and checks every record of the archive whose directory `dir` was read from `r`,
/// and that nothing follows them; `progress` gets the bytes read so far.
pub fn verify(
    r: &mut impl Read,
    dir: &Directory,
    progress: &mut dyn FnMut(u64),
) -> Result<Verified, Error> {
    let mut records = Records::new(r, dir);
    let (mut n, mut pages) = (0, 0);
    for (index, first, count) in record_spans(&dir.extents) {
        records.next(index, first, count)?;
        n += 1;
        pages += count;
        progress(records.at);
    }
    records.end()?;
    Ok(Verified {
        records: n,
        pages,
        bytes: records.at,
    })
}

/// Checks that `chain` is a full archive followed by incremental ones, each continuing the
/// one before, of one image; returns the archive and segment that hold safe point `at`.
fn locate(chain: &[&Directory], at: SafePointId, base: Base) -> Result<(usize, usize), Error> {
    let Some(first) = chain.first() else {
        return Err(Error::Refused("no archive given".into()));
    };
    match (base, first.base) {
        (Base::Empty { .. }, None) => {}
        (Base::Empty { .. }, Some(b)) => {
            return Err(Error::Refused(format!(
                "the first archive is incremental (it holds the changes after safe point {b}): give the archive that ends at {b} before it"
            )))
        }
        (Base::Holding { id, time_ns }, Some(b)) if id == b && time_ns == first.base_time_ns => {}
        (Base::Holding { id: h, .. }, b) => {
            return Err(Error::Refused(format!(
                "the first archive does not continue safe point {h}: it {}",
                match b {
                    Some(b) => format!("holds the changes after safe point {b}"),
                    None => "is a full archive".into(),
                }
            )))
        }
    }
    for (k, pair) in chain.windows(2).enumerate() {
        let (a, b) = (pair[0], pair[1]);
        if b.source_uuid != a.source_uuid || b.logical_pages != a.logical_pages {
            return Err(Error::Refused(format!(
                "archive {} is of another image than archive {}",
                k + 2,
                k + 1
            )));
        }
        let a_last_time = a.safe_points.last().map_or(0, |s| s.time_ns);
        if b.base != Some(a.last()) || b.base_time_ns != a_last_time {
            return Err(Error::Refused(format!(
                "archive {} does not continue archive {}: it {}, and archive {} ends at safe point {}",
                k + 2,
                k + 1,
                match b.base {
                    Some(s) => format!("holds the changes after safe point {s}"),
                    None => "is a full archive".into(),
                },
                k + 1,
                a.last()
            )));
        }
    }
    for (k, d) in chain.iter().enumerate() {
        if let Some(i) = d.safe_points.iter().position(|s| s.id == at) {
            return Ok((k, i));
        }
    }
    Err(Error::Refused(format!(
        "safe point {at} is in none of the archives (they hold {})",
        chain
            .iter()
            .map(|d| format!("{}..={}", d.safe_points[0].id, d.last()))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// What a sink holds before a restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// Nothing: the chain starts with a full archive, and the pages none of it has read as
    /// zeros; `zero_rest` zeroes them (for a sink that does not start as zeros, a block
    /// device).
    Empty {
        /// Zero the pages no archive has.
        zero_rest: bool,
    },
    /// A safe point of the image, named by its id and time: the chain starts with an
    /// incremental archive of the changes after it, and the pages it lacks keep what the
    /// sink holds (a mirror's replica).
    Holding {
        /// The safe point's id.
        id: SafePointId,
        /// Its time, ns since the Unix epoch.
        time_ns: u64,
    },
}

/// Restores safe point `at` from `chain` (a full archive, or an incremental one after what
/// the sink holds per `base`, then incremental archives each continuing the one before,
/// each reader past its directory) into `sink`, reading each archive once, front to back,
/// and only as far as `at` needs. Each page is written once, from the newest segment at or
/// before `at` that has it. Every record read is checked before its pages are used: a
/// damaged archive ends the restore with an error, after which the sink holds a mix and
/// must not be used.
pub fn restore<R: Read>(
    chain: &mut [(Directory, R)],
    at: SafePointId,
    base: Base,
    sink: &mut dyn PageSink,
    progress: &mut dyn FnMut(u64),
) -> Result<Restored, Error> {
    let dirs: Vec<&Directory> = chain.iter().map(|(d, _)| d).collect();
    let (last, last_segment) = locate(&dirs, at, base)?;
    let zero_rest = base == Base::Empty { zero_rest: true };
    let used = |k: usize, e: &Extent| k < last || e.segment as usize <= last_segment;
    // Newest first, so each page goes to the newest extent that has it.
    let mut decided = Ranges::default();
    let mut plan: Vec<Vec<Vec<(u64, u64)>>> = dirs
        .iter()
        .map(|d| vec![Vec::new(); d.extents.len()])
        .collect();
    for k in (0..=last).rev() {
        for (i, e) in dirs[k].extents.iter().enumerate().rev() {
            if used(k, e) {
                plan[k][i] = decided.add(e.first, e.end());
            }
        }
    }
    let mut done = Restored {
        at,
        data_pages: 0,
        zero_pages: 0,
        bytes_read: 0,
    };
    let logical_pages = dirs[0].logical_pages;
    let zero = |sink: &mut dyn PageSink, done: &mut Restored, (s, e): (u64, u64)| {
        done.zero_pages += e - s;
        sink.zero_pages(s, e - s)
            .map_err(Error::io("zeroing pages of the restored image"))
    };
    let mut before = 0;
    for (k, (dir, r)) in chain.iter_mut().enumerate().take(last + 1) {
        for (i, e) in dir.extents.iter().enumerate() {
            if e.kind == Kind::Zeros && used(k, e) {
                for &range in &plan[k][i] {
                    zero(sink, &mut done, range)?;
                }
            }
        }
        let mut records = Records::new(r, dir);
        let mut whole = true;
        for (index, first, count) in record_spans(&dir.extents) {
            if !used(k, &dir.extents[index]) {
                whole = false;
                break;
            }
            let data = records.next(index, first, count)?;
            for &(s, e) in &plan[k][index] {
                let (s, e) = (s.max(first), e.min(first + count));
                if s < e {
                    let bytes = &data
                        [((s - first) * PAGE_SIZE) as usize..((e - first) * PAGE_SIZE) as usize];
                    sink.write_pages(s, bytes)
                        .map_err(Error::io("writing the restored image"))?;
                    done.data_pages += e - s;
                }
            }
            progress(before + records.at);
        }
        if whole {
            records.end()?;
        }
        before += records.at;
    }
    done.bytes_read = before;
    if zero_rest {
        for range in decided.gaps(logical_pages) {
            zero(sink, &mut done, range)?;
        }
    }
    Ok(done)
}
