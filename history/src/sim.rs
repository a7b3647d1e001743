//! Simulated runs: a power-cut simulator (a store with a volatile write cache that can lose
//! power), a fixed host and a simulated clock. Feature `testing`.
//!
//! Every write lands in a cache of pending writes; `sync` makes them durable. At any moment a
//! test can ask for the image a power cut would leave: each 512-byte sector holds its durable
//! content or the content of some prefix of the pending writes that touched it, chosen at
//! random per sector. That covers dropped writes, writes reordered against each other, and
//! writes torn at sector granularity. Hooks let a test take such images, or the image a
//! killed process leaves (`kill_image`: every write, synced or not), at every sync and write.
//!
//! Simulated runs also open images as a fixed host with a simulated clock (`host`), so
//! nothing in them depends on the machine they run on.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{Clock, Host, Store};

/// The sector size a power cut tears at.
pub const SECTOR: u64 = 512;

struct Inner {
    durable: Vec<u8>,
    /// Writes since the last sync, in issue order.
    pending: Vec<(u64, Vec<u8>)>,
    syncs: u64,
}

/// A store whose writes are volatile until `sync`.
pub struct SimStore {
    inner: Mutex<Inner>,
    /// Called at the start of every sync and write, while the cache still holds what a cut
    /// at that instant would lose.
    #[allow(clippy::type_complexity)]
    hook: Mutex<Option<Box<dyn FnMut(&SimStore, Event) + Send>>>,
}

/// What the store is about to do when the hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A write is about to enter the cache.
    Write,
    /// The cache is about to be made durable.
    Sync,
}

/// A clock that starts at 2024-01-01 00:00 UTC and moves on one millisecond at every
/// reading: times ascend and a run replays exactly.
#[derive(Debug)]
pub struct SimClock(AtomicU64);

impl SimClock {
    /// The first reading.
    pub const START_NS: u64 = 1_704_067_200_000_000_000;

    /// A clock at `START_NS`.
    pub fn new() -> SimClock {
        SimClock(AtomicU64::new(SimClock::START_NS))
    }
}

impl Default for SimClock {
    fn default() -> SimClock {
        SimClock::new()
    }
}

impl Clock for SimClock {
    fn now_ns(&self) -> u64 {
        self.0.fetch_add(1_000_000, Ordering::Relaxed)
    }
}

/// Formats `store` as an image of an older format `version` (1 or 3), as a build of that
/// version did (its superblock says so and its checkpoints take that version's forms), to
/// test how this build serves one.
pub fn create_version<S: Store>(
    store: &S,
    opts: &crate::CreateOptions,
    host: &Host,
    version: u32,
) -> Result<crate::Layout, crate::Error> {
    crate::volume::create_as(store, opts, host, version)
}

/// A fixed host ("sim", pid 1) of boot `boot_id` with a fresh `SimClock`. A daemon killed
/// and replaced within one boot reopens with the same `boot_id`; a power cut reopens with
/// another.
pub fn host(boot_id: u64) -> Host {
    Host {
        boot_id,
        name: "sim".into(),
        pid: 1,
        clock: Arc::new(SimClock::new()),
    }
}

/// A small deterministic generator, so every simulated run replays from its seed.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

impl SimStore {
    /// A zeroed store of `len` bytes.
    pub fn new(len: u64) -> SimStore {
        SimStore::from_bytes(vec![0; len as usize])
    }

    /// A store whose durable content is `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> SimStore {
        SimStore {
            inner: Mutex::new(Inner {
                durable: bytes,
                pending: Vec::new(),
                syncs: 0,
            }),
            hook: Mutex::new(None),
        }
    }

    /// Calls `f` at every write and sync, before it takes effect.
    pub fn set_hook(&self, f: impl FnMut(&SimStore, Event) + Send + 'static) {
        *self.hook.lock() = Some(Box::new(f));
    }

    /// Syncs so far.
    pub fn syncs(&self) -> u64 {
        self.inner.lock().syncs
    }

    /// The image a power cut now would leave.
    pub fn crash_image(&self, rng: &mut Rng) -> Vec<u8> {
        let inner = self.inner.lock();
        let mut image = inner.durable.clone();
        // For each sector any pending write touched: how many of those writes survive.
        let mut touched: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
        for (i, (off, data)) in inner.pending.iter().enumerate() {
            let first = off / SECTOR;
            let last = (off + data.len() as u64 - 1) / SECTOR;
            for s in first..=last {
                touched.entry(s).or_default().push(i);
            }
        }
        for (sector, writes) in touched {
            let keep = rng.below(writes.len() as u64 + 1) as usize;
            for &i in &writes[..keep] {
                let (off, data) = &inner.pending[i];
                let s_start = sector * SECTOR;
                let lo = s_start.max(*off);
                let hi = (s_start + SECTOR).min(off + data.len() as u64);
                image[lo as usize..hi as usize]
                    .copy_from_slice(&data[(lo - off) as usize..(hi - off) as usize]);
            }
        }
        image
    }

    /// The image a process killed now leaves, its machine running on: every write so far,
    /// synced or not (the host's page cache keeps them).
    pub fn kill_image(&self) -> Vec<u8> {
        // What reads see is exactly that: the durable bytes with every pending write over them.
        let mut image = vec![0; self.len() as usize];
        self.read_at(0, &mut image)
            .expect("a read of the whole store is in range");
        image
    }

    /// The content with every pending write applied (what reads see).
    fn apply_pending(inner: &mut Inner) {
        for (off, data) in std::mem::take(&mut inner.pending) {
            inner.durable[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
    }

    fn run_hook(&self, event: Event) {
        let mut hook = self.hook.lock();
        if let Some(f) = hook.as_mut() {
            f(self, event);
        }
    }
}

impl Store for SimStore {
    fn len(&self) -> u64 {
        self.inner.lock().durable.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let inner = self.inner.lock();
        let end = offset as usize + buf.len();
        if end > inner.durable.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&inner.durable[offset as usize..end]);
        // Reads see the cache: newest pending write wins.
        for (off, data) in &inner.pending {
            let (lo, hi) = (
                (*off).max(offset),
                (off + data.len() as u64).min(end as u64),
            );
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&data[(lo - off) as usize..(hi - off) as usize]);
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.run_hook(Event::Write);
        let mut inner = self.inner.lock();
        if offset as usize + buf.len() > inner.durable.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        inner.pending.push((offset, buf.to_vec()));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.run_hook(Event::Sync);
        let mut inner = self.inner.lock();
        inner.syncs += 1;
        SimStore::apply_pending(&mut inner);
        Ok(())
    }
}

/// Does the caller's steps of `staged` through `store`, as a daemon's queue does them on
/// its ring: a sync, the journal writes, a sync. With `cut_short`, stops half way through
/// the first journal write and reports it not done, which `finish` has to make good.
pub fn staged_steps<S: Store>(
    store: &S,
    staged: &crate::StagedCommit<'_, S>,
    cut_short: bool,
) -> crate::Steps {
    let steps = (|| {
        store.sync()?;
        for (offset, bytes) in staged.journal_writes() {
            if cut_short {
                store.write_at(offset, &bytes[..bytes.len() / 2])?;
                return Err(io::Error::other("cut short"));
            }
            store.write_at(offset, bytes)?;
        }
        store.sync()
    })();
    match steps {
        Ok(()) => crate::Steps::Done,
        Err(e) => crate::Steps::NotDone(e),
    }
}
