//! The volume: a formatted backing store served as a device with history. This file holds
//! the `Volume`, its state and the lock order; its concerns live in the submodules: `io`
//! (the requests of the queue threads), `apply` (the one function that applies records),
//! `commit` (safe points and the commit protocol), `reclaim` (retiring history, and the
//! quarantine of pages reads may still target), `travel` (rollback, pins, views),
//! `recovery` (create, open, close, check, inspect) and `report` (the figures).
//!
//! Write path: `allocate` claims a free physical page (the logical page's home if free, else
//! from the caller's stream), the caller writes the data there, then `stage_writes` switches
//! the remap table and queues a journal record, and `record_staged` puts the records of every
//! request staged so far where the durability wants them before those requests complete
//! (`commit_writes` does both, for one request). `flush` closes the epoch with a safe point and
//! commits: data sync, journal write, journal sync (and a checkpoint when the journal since
//! the last one passes half the ring). A data page is only ever written while it is free,
//! never in place, so a crash leaves every logical page old or new.
//!
//! Invariants:
//! - every physical page is free; or referenced: live (mapped), history, or both (a rollback
//!   makes a history page live again); or claimed by an in-flight write; or pending (left
//!   without a reference by a record not yet durable); or quarantined (left so by a durable
//!   record, while reads in flight may still target it);
//! - a pending page is only reused after the record that freed it is durable, so the journal
//!   prefix that survives a crash never points at a page that was written again;
//! - the data of a synced journal block's records is durable before the block is (a commit
//!   syncs the store first); an unsynced block may come first, which is why only the boot
//!   that wrote it trusts it; a checkpoint is durable before the superblock points at it.
//!
//! What a completed write survives is the caller's choice ([`Durability`]). By default
//! (`CompletedWrites`) its record is also written to the journal unsynced by `record_staged`
//! before it completes (see `journal`), so a process that dies loses no completed write.
//! With `FlushedWrites` the record stays in memory until a commit: only a flush (or FUA)
//! makes writes durable, and the death of the process, like a power cut, loses what no flush
//! made durable, as the device's volatile write cache allows. A power cut loses that in
//! either mode.
//!
//! Locks: `commit` serializes commits (journal position, superblock); `tail` orders the
//! writes of pending journal blocks; `state` guards the window and the records not yet
//! synced, and is held only for memory work; `quarantine` guards the pages waiting for reads
//! in flight; `readers` the list of read trackers. Order: `commit`, `tail`, `state`,
//! `quarantine`. `readers` is taken last and alone: nothing else is taken while it is held
//! (it may be taken while `commit` is).

mod apply;
mod commit;
mod io;
mod reclaim;
mod recovery;
mod report;
mod travel;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rewind_remap::{PageAllocator, PageRefs, RemapTable};

use crate::format::{JournalSeq, Layout, Superblock};
use crate::journal;
use crate::{Clock, Error, LogicalPage, PhysPage, Store};

pub use commit::{CommitDue, StagedCommit, Steps};
pub use io::{ALLOCATE_ATTEMPTS, ALLOCATE_RETRY_DELAY};
pub use reclaim::ReadTracker;
#[cfg(any(test, feature = "testing"))]
pub(crate) use recovery::create_as;
pub use recovery::{check, create, inspect, read_superblock};
pub use report::{CheckReport, Inspection, Notice, SafePointInfo, Stats};
pub use travel::ViewId;

use travel::View;

/// What a completed write survives, besides a flush (which makes everything before it
/// durable whatever this says): the choice of `Volume::set_durability`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Each write's (and discard's) journal record is written, unsynced, by `record_staged`
    /// before the request completes: a process that dies loses no completed write (the
    /// host's page cache keeps what it wrote); a power cut loses what no flush made durable.
    /// One journal write more per `record_staged` (a pass of a queue's ring). For a device that outlives its daemon
    /// (`--on-crash queue`).
    #[default]
    CompletedWrites,
    /// Records stay in memory until a commit (a flush, a safe point, a full buffer): only
    /// a flush makes writes durable, as on a disk with a volatile write cache. A process that
    /// dies loses, like a power cut, the writes since the last flush, except a prefix of them
    /// that a commit took. For a device that dies with its daemon (`--on-crash stop`).
    FlushedWrites,
}

/// What requests change under the `state` lock: held for memory work only.
struct State {
    window: crate::window::Window,
    /// References to each physical page (see `Apply::refs`).
    refs: PageRefs,
    /// Records applied in memory and not yet handed to a commit.
    pending: journal::Pending,
    /// The journal sequence of the first pending block.
    first_seq: JournalSeq,
    /// Pages those records left without a reference: free once a commit has made the
    /// records durable and no read in flight targets them.
    pending_free: Vec<PhysPage>,
    /// Open views by number: each holds its safe point until closed or dropped.
    views: BTreeMap<u64, View>,
    next_view: u64,
    /// Reads of views so far: the clock of `View::read_at`.
    view_reads: u64,
    /// What reclaim had to give up, for the daemon's log.
    notices: Vec<Notice>,
}

/// What commits change under the `commit` lock.
struct CommitState {
    sb: Superblock,
    /// The sequence of the next journal block to write.
    next_seq: JournalSeq,
}

/// A served image. `Send + Sync`: queue threads share it.
pub struct Volume<S: Store> {
    store: S,
    layout: Layout,
    uuid: u64,
    session: u32,
    map: RemapTable,
    alloc: PageAllocator,
    state: Mutex<State>,
    commit: Mutex<CommitState>,
    /// Orders writes of pending journal blocks: an unsynced write of a block never lands
    /// after the commit's synced write of it. Taken before `state`, after `commit`.
    tail: Mutex<()>,
    /// Below this many free pages, reclaim is due (`reclaim_due`, `reclaim_if_low`).
    low_water: u64,
    /// Records buffered beyond this call for a commit without waiting for a flush (made
    /// soon by the caller, or at once past twice this: `commit_due`), so one commit always
    /// fits the journal.
    commit_threshold: usize,
    /// The thread whose `StagedCommit` is under way (`commit::this_thread`), 0 when none.
    staged_by: AtomicUsize,
    /// Set when a metadata write failed: the in-memory state is then ahead of the disk, so
    /// every later request fails rather than pretend.
    failed: AtomicBool,
    /// `Durability::CompletedWrites`: write each request's records (unsynced) before it
    /// completes. Read on every write; a change applies from the next request.
    record_before_complete: AtomicBool,
    /// Pages freed by durable records, by the round they were freed in, waiting for the
    /// reads that may still target them.
    quarantine: Mutex<Vec<(u64, Vec<PhysPage>)>>,
    /// The free round: bumped after each commit's frees are quarantined. A read that began
    /// in round `r` may have resolved to a page quarantined in any round `>= r`. (Not the
    /// superblock's generation, which counts superblock writes.)
    free_round: AtomicU64,
    /// Per reader (I/O queue): the oldest round of its reads in flight, `u64::MAX` when
    /// none.
    readers: Mutex<Vec<Arc<AtomicU64>>>,
    /// The time of the safe points this volume makes (`Host::clock`).
    clock: Arc<dyn Clock>,
}

impl<S: Store> Volume<S> {
    /// Where everything is in the store.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The image's uuid: it tells this image from any other, and from an earlier format of
    /// the same store.
    pub fn uuid(&self) -> u64 {
        self.uuid
    }

    /// The backing store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Sets what a completed write survives from the next request on; a volume opens with
    /// `Durability::CompletedWrites`. A change at any time is safe: records not yet
    /// written go out with the next request (`CompletedWrites`) or the next commit.
    pub fn set_durability(&self, durability: Durability) {
        let record = durability == Durability::CompletedWrites;
        self.record_before_complete.store(record, Ordering::Relaxed);
    }

    /// What a completed write survives (`set_durability`).
    pub fn durability(&self) -> Durability {
        if self.record_before_complete.load(Ordering::Relaxed) {
            Durability::CompletedWrites
        } else {
            Durability::FlushedWrites
        }
    }

    /// Refuses an I/O on a page past the end of the device, and every I/O once a metadata
    /// write failed (`refuse_if_failed`).
    fn check_in_range(&self, l: LogicalPage) -> Result<(), Error> {
        self.refuse_if_failed()?;
        if l.0 >= self.layout.logical_pages {
            return Err(Error::OutOfRange {
                page: l.0,
                pages: self.layout.logical_pages,
            });
        }
        Ok(())
    }

    /// `check_in_range` for the `count` pages from `first` (none: nothing to refuse but a
    /// failed volume).
    fn check_run_in_range(&self, first: LogicalPage, count: u64) -> Result<(), Error> {
        self.refuse_if_failed()?;
        match count.checked_sub(1).and_then(|n| first.0.checked_add(n)) {
            None if count == 0 => Ok(()),
            None => Err(Error::OutOfRange {
                page: u64::MAX,
                pages: self.layout.logical_pages,
            }),
            Some(last) => {
                self.check_in_range(first)?;
                self.check_in_range(LogicalPage(last))
            }
        }
    }

    /// Refuses every request once a metadata write failed: the state in memory is then
    /// ahead of the disk.
    fn refuse_if_failed(&self) -> Result<(), Error> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(Error::Corrupt(
                "an earlier metadata write failed; the volume refuses further I/O".into(),
            ));
        }
        Ok(())
    }

    /// Passes `result` on, first marking the volume failed if it is the error of a metadata
    /// write.
    fn fail_on_error(&self, result: Result<(), Error>) -> Result<(), Error> {
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }
}
