//! The backing store as the engine sees it: a byte-addressed, fixed-size medium with a
//! volatile write cache that `sync` empties.

use std::io;

use parking_lot::Mutex;

/// A backing store. Writes may sit in a volatile cache until `sync` returns.
pub trait Store: Send + Sync {
    /// The size in bytes.
    fn len(&self) -> u64;
    /// True for a store of no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every write that completed before this call durable.
    fn sync(&self) -> io::Result<()>;
}

/// A store in memory, for tests and benchmarks: every write is durable at once.
pub struct MemStore {
    bytes: Mutex<Vec<u8>>,
}

impl MemStore {
    /// A zero-filled store of `len` bytes.
    pub fn new(len: u64) -> MemStore {
        MemStore {
            bytes: Mutex::new(vec![0; len as usize]),
        }
    }

    /// A copy of the whole content.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }

    /// A store holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> MemStore {
        MemStore {
            bytes: Mutex::new(bytes),
        }
    }
}

fn range(len: usize, offset: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    match start.checked_add(n) {
        Some(end) if end <= len => Ok(start..end),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("access of {n} bytes at {offset} past the end ({len})"),
        )),
    }
}

impl Store for MemStore {
    fn len(&self) -> u64 {
        self.bytes.lock().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bytes = self.bytes.lock();
        let r = range(bytes.len(), offset, buf.len())?;
        buf.copy_from_slice(&bytes[r]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut bytes = self.bytes.lock();
        let r = range(bytes.len(), offset, buf.len())?;
        bytes[r].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        (**self).write_at(offset, buf)
    }
    fn sync(&self) -> io::Result<()> {
        (**self).sync()
    }
}
