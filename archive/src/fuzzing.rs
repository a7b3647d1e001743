//! The fuzz target's entry point (`fuzz/fuzz_targets/archive.rs`): any bytes as an archive.

use std::io::Cursor;

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

use crate::format::{Header, HEADER_BYTES};
use crate::{restore, verify, Base, Directory, Error, PageSink};

/// A sink that checks every page it is given is inside the device, and keeps nothing.
struct Bounds(u64);

impl PageSink for Bounds {
    fn write_pages(&mut self, first: u64, data: &[u8]) -> std::io::Result<()> {
        let pages = data.len() as u64 / rewind_history::PAGE_SIZE;
        assert!(first + pages <= self.0, "a restore wrote past the device");
        Ok(())
    }

    fn zero_pages(&mut self, first: u64, count: u64) -> std::io::Result<()> {
        assert!(first + count <= self.0, "a restore zeroed past the device");
        Ok(())
    }
}

/// `archive` of `data` as it is, and again with the header's and the directory's checksums
/// made right, so that the fuzzer reaches the checks behind them (counts, order, sizes).
pub fn archive_and_fixed(data: &[u8]) -> Result<(), Error> {
    let plain = archive(data);
    if data.len() >= HEADER_BYTES as usize {
        let mut fixed = data.to_vec();
        let (mut h, _) = Header::read_from_prefix(&fixed).expect("long enough");
        let start = HEADER_BYTES as usize;
        let end = start.saturating_add(h.directory_bytes.get().min(fixed.len() as u64) as usize);
        let dir = &fixed[start..end.min(fixed.len())];
        h.directory_crc = U32::new(crc32c::crc32c(dir));
        h.crc = U32::new(h.compute_crc());
        fixed[..start].copy_from_slice(h.as_bytes());
        let _ = archive(&fixed);
    }
    plain
}

/// Reads `data` as an archive: its directory, then every record (`verify`), then a restore
/// of each safe point. Checks that none panics, that only errors come back, and that an
/// archive `verify` accepts restores at every one of its safe points. Returns what `verify`
/// said.
pub fn archive(data: &[u8]) -> Result<(), Error> {
    let mut r = Cursor::new(data);
    let dir = Directory::read(&mut r)?;
    let verified = verify(&mut r, &dir, &mut |_| {}).map(|_| ());
    // The first, the last and one between: every path of restore, in bounded time.
    let sps = &dir.safe_points;
    let some = [0, sps.len() / 2, sps.len() - 1].map(|i| sps[i].clone());
    for sp in some {
        let mut r = Cursor::new(data);
        let d = Directory::read(&mut r).expect("read once already");
        let mut chain = [(d, r)];
        let restored = restore(
            &mut chain,
            sp.id,
            Base::Empty { zero_rest: true },
            &mut Bounds(dir.logical_pages),
            &mut |_| {},
        );
        if verified.is_ok() && dir.base.is_none() {
            restored.expect("a verified full archive restores at each of its safe points");
        }
    }
    verified
}
