//! A version 4 image with more physical pages than 32 bits number: a 16 TiB device with
//! 1 TiB of history (2^32 + 2^28 pages), on a sparse store in memory. Its history area
//! starts at page 2^32, so every overwrite lands past 32 bits: such pages must be written,
//! kept in history, read at safe points, checkpointed, replayed from the journal after a
//! kill, rolled back to, and pass `check`.

mod common;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use common::{decode, page_data};
use parking_lot::Mutex;
use rewind_history::{
    check, create, read_superblock, sim, CreateOptions, Durability, Layout, LogicalPage,
    SafePointId, Store, Trigger, Volume, PAGE_SIZE,
};

/// Bytes of a chunk of the sparse store.
const CHUNK: u64 = 512;

/// A store of any size that keeps only the chunks written with something other than zeros.
struct SparseStore {
    len: u64,
    chunks: Mutex<HashMap<u64, Box<[u8]>>>,
}

impl SparseStore {
    fn new(len: u64) -> SparseStore {
        SparseStore {
            len,
            chunks: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses an access of `n` bytes at `offset` that goes past the end.
    fn in_range(&self, offset: u64, n: usize) -> io::Result<()> {
        match offset.checked_add(n as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::other(format!(
                "{n} bytes at {offset}: past the end"
            ))),
        }
    }
}

impl Store for SparseStore {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.in_range(offset, buf.len())?;
        let chunks = self.chunks.lock();
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (c, from) = (at / CHUNK, (at % CHUNK) as usize);
            let n = (CHUNK as usize - from).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match chunks.get(&c) {
                Some(bytes) => out.copy_from_slice(&bytes[from..from + n]),
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.in_range(offset, buf.len())?;
        let mut chunks = self.chunks.lock();
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (c, from) = (at / CHUNK, (at % CHUNK) as usize);
            let n = (CHUNK as usize - from).min(buf.len() - done);
            let chunk = chunks
                .entry(c)
                .or_insert_with(|| vec![0; CHUNK as usize].into());
            chunk[from..from + n].copy_from_slice(&buf[done..done + n]);
            if chunk.iter().all(|&b| b == 0) {
                chunks.remove(&c);
            }
            done += n;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

const TIB: u64 = 1 << 40;

/// Reads page `l` live (`at` None) or at a safe point, as the version its data says.
fn read(vol: &Volume<Arc<SparseStore>>, l: u64, at: Option<SafePointId>) -> Option<u8> {
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    match at {
        None => vol.read_page(LogicalPage(l), &mut buf),
        Some(id) => vol.read_page_at(LogicalPage(l), id, &mut buf),
    }
    .unwrap();
    decode(l, &buf)
}

#[test]
fn pages_past_32_bits_are_written_kept_replayed_and_rolled_back() {
    let opts = CreateOptions {
        size: 16 * TIB,
        history: Some(TIB),
        journal: None,
    };
    let layout = Layout::for_create(&opts).unwrap();
    assert!(
        layout.physical_pages > 1 << 32,
        "more pages than 32 bits number"
    );
    let store = Arc::new(SparseStore::new(layout.required_bytes()));
    let host = sim::host(1);
    create(&store, &opts, &host).unwrap();
    assert_eq!(read_superblock(&store).unwrap().version.get(), 4);

    let vol = Volume::open(store.clone(), &host).unwrap();
    vol.set_durability(Durability::CompletedWrites);
    let mut s = vol.stream(0, 1);
    let last = layout.logical_pages - 1;
    let write = |s: &mut _, l: u64, v: u8| {
        vol.write_page(s, LogicalPage(l), &page_data(l, v)).unwrap();
    };
    write(&mut s, 5, 1);
    write(&mut s, last, 1);
    let a = vol.safe_point(Trigger::User, Some("a".into())).unwrap();
    // Overwrites leave home: into the history area, past page 2^32.
    write(&mut s, 5, 2);
    write(&mut s, last, 2);
    for l in [5, last] {
        let p = vol.resolve(LogicalPage(l)).unwrap().unwrap();
        assert!(p.0 >= 1 << 32, "page {l} now at {}", p.0);
    }
    let b = vol.safe_point(Trigger::User, Some("b".into())).unwrap();
    write(&mut s, 5, 3);
    let expect = |vol: &Volume<Arc<SparseStore>>, live5: u8| {
        assert_eq!(read(vol, 5, Some(a)), Some(1));
        assert_eq!(read(vol, 5, Some(b)), Some(2));
        assert_eq!(read(vol, last, Some(a)), Some(1));
        assert_eq!(read(vol, last, Some(b)), Some(2));
        assert_eq!(read(vol, 5, None), Some(live5));
        assert_eq!(read(vol, 6, None), None);
    };
    expect(&vol, 3);

    // Killed: the completed write after `b` is replayed from the journal.
    drop(vol);
    let vol = Volume::open(store.clone(), &host).unwrap();
    expect(&vol, 3);
    // Closed cleanly: everything comes from the checkpoint.
    vol.close().unwrap();
    check(&store, &host).unwrap();
    let vol = Volume::open(store.clone(), &host).unwrap();
    expect(&vol, 3);

    // Rolled back to `a`, which reads its pages again, then killed and opened again.
    vol.rollback(a).unwrap();
    assert_eq!(read(&vol, 5, None), Some(1));
    assert_eq!(read(&vol, last, None), Some(1));
    drop(vol);
    let vol = Volume::open(store.clone(), &host).unwrap();
    assert_eq!(read(&vol, 5, None), Some(1));
    assert_eq!(read(&vol, last, None), Some(1));
    assert_eq!(read(&vol, 5, Some(b)), Some(2));
    vol.close().unwrap();
    check(&store, &host).unwrap();
}
