//! The commit protocol: safe points close epochs, unsynced journal writes keep a killed
//! daemon's completed writes (`Durability::CompletedWrites`), and commits make records
//! durable (data sync, journal write, journal sync, and a checkpoint when the journal since
//! the last one passes half the ring).

use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;
use zerocopy::little_endian::{U32, U64};

use crate::checkpoint::{self, Snapshot};
use crate::format::{JournalSeq, MAX_LABEL, MAX_SAFE_POINTS};
use crate::journal::{self, Record};
use crate::window::{SafePoint, SafePointId, Trigger};
use crate::{Error, PhysPage, Store};

use super::recovery::write_superblock;
use super::{CommitState, State, Volume};

impl<S: Store> Volume<S> {
    /// FLUSH: closes the epoch with a safe point (if anything was written since the last)
    /// and makes it and every write completed before durable.
    pub fn flush(&self) -> Result<(), Error> {
        self.safe_point(Trigger::Flush, None).map(|_| ())
    }

    /// Makes a safe point now and commits it; returns its id. A flush or idle point with
    /// nothing written since the newest safe point makes none and returns that one.
    pub fn safe_point(
        &self,
        trigger: Trigger,
        label: Option<String>,
    ) -> Result<SafePointId, Error> {
        let id = self.mark_safe_point(trigger, label)?;
        self.commit(false)?;
        Ok(id)
    }

    /// `safe_point` without the commit: the safe point is made in memory and durable with
    /// the next commit, which the caller makes (`commit`, or on its own ring through
    /// `try_begin_commit`).
    pub fn mark_safe_point(
        &self,
        trigger: Trigger,
        label: Option<String>,
    ) -> Result<SafePointId, Error> {
        if let Some(l) = &label {
            if l.len() > MAX_LABEL {
                return Err(Error::BadOption(format!(
                    "label of {} bytes; at most {MAX_LABEL}",
                    l.len()
                )));
            }
        }
        let mut st = self.state.lock();
        let open = st.window.next_id;
        let dirty = st.window.groups.contains_key(&open);
        // Flush and idle points mark a state; with nothing written since the newest safe
        // point, that one already is it.
        if dirty || !matches!(trigger, Trigger::Flush | Trigger::Idle) {
            self.close_epoch(&mut st, trigger, label)?;
            self.retire_until(&mut st, false, |st, _| {
                (st.window.safe_points.len() as u64) < MAX_SAFE_POINTS
            });
            Ok(open)
        } else {
            Ok(st.window.newest().map_or(SafePointId(0), |s| s.id))
        }
    }

    /// Closes the open epoch with a safe point made now; returns its id.
    pub(super) fn close_epoch(
        &self,
        st: &mut State,
        trigger: Trigger,
        label: Option<String>,
    ) -> Result<SafePointId, Error> {
        let id = st.window.next_id;
        let sp = SafePoint {
            id,
            time_ns: self.clock.now_ns(),
            trigger,
            label,
        };
        self.apply_locked(st, Record::SafePoint(sp))?;
        Ok(id)
    }

    /// After a request queued its records (under `st`): whether a commit is due, its
    /// records being more than one commit should take. The caller commits then, or has a
    /// commit made soon (the daemon's flusher); past twice that, this commits at once
    /// (waiting for a commit under way), so the journal never runs out of room while the
    /// commit is late. Except on a thread whose own staged commit is under way
    /// (`StagedCommit`), where waiting for it would never end: past twice that, the
    /// request waits instead, without blocking its thread (`CommitDue::Wait`).
    pub(super) fn commit_due(&self, st: MutexGuard<'_, State>) -> Result<CommitDue, Error> {
        let pending = st.pending.len();
        drop(st);
        if pending > 2 * self.commit_threshold {
            if self.staged_on_this_thread() {
                return Ok(CommitDue::Wait);
            }
            self.commit(false)?;
            return Ok(CommitDue::No);
        }
        Ok(if pending > self.commit_threshold {
            CommitDue::Soon
        } else {
            CommitDue::No
        })
    }

    /// Whether a `StagedCommit` begun on this thread is under way.
    fn staged_on_this_thread(&self) -> bool {
        self.staged_by.load(Ordering::Relaxed) == this_thread()
    }

    /// Puts the records of the requests staged so far (`stage_writes`, `stage_discard`)
    /// where the durability wants them before those requests complete: with
    /// `Durability::CompletedWrites`, in the journal, unsynced, so they survive the
    /// daemon's death (not a power cut); with `FlushedWrites`, nowhere yet (the next commit
    /// takes them). One journal write, of the blocks that changed, for every request staged
    /// since the last call, from any thread.
    ///
    /// Another thread may have written this caller's records already (another queue's
    /// `record_staged`, or a commit, which writes the unsynced blocks first for this very
    /// reason); finding nothing to write then means they are in the journal, unless that
    /// write failed, which the failure check after taking `tail` catches.
    pub fn record_staged(&self) -> Result<(), Error> {
        if !self.record_before_complete.load(Ordering::Relaxed) {
            return Ok(());
        }
        let _tail = self.tail.lock();
        self.refuse_if_failed()?;
        let unsynced = {
            let mut st = self.state.lock();
            let first = st.first_seq;
            st.pending.unsynced(first, self.uuid, self.session)
        };
        self.write_unsynced(unsynced)
    }

    /// Writes blocks `Pending::unsynced` handed out; the caller holds `tail`.
    fn write_unsynced(
        &self,
        (seq, blocks): (JournalSeq, Vec<journal::Block>),
    ) -> Result<(), Error> {
        if blocks.is_empty() {
            return Ok(());
        }
        self.fail_on_error(journal::write_blocks(
            &self.store,
            &self.layout,
            seq,
            &blocks,
        ))
    }

    /// Makes every record so far durable, with a checkpoint if `force_checkpoint` or if
    /// the journal since the last one passes half the ring.
    pub fn commit(&self, force_checkpoint: bool) -> Result<(), Error> {
        let mut c = self.commit.lock();
        self.commit_locked(&mut c, force_checkpoint)
    }

    /// `commit` with the `commit` lock held: takes the pending records and the pages they
    /// freed (`take_pending`), writes them (`write_commit`), then quarantines those pages.
    pub(super) fn commit_locked(
        &self,
        c: &mut CommitState,
        force_checkpoint: bool,
    ) -> Result<(), Error> {
        self.refuse_if_failed()?;
        let rule = if force_checkpoint {
            Checkpoint::Now
        } else {
            Checkpoint::IfDue
        };
        let Some(taken) = self.take_pending(c, rule)? else {
            unreachable!("a commit that may checkpoint always takes the pending records");
        };
        let written = self.write_commit(c, &taken.blocks, taken.snapshot.as_ref());
        self.fail_on_error(written)?;
        self.free_taken(taken.frees);
        Ok(())
    }

    /// Takes the pending records (sealed as synced blocks from `c.next_seq`), the pages
    /// they freed and, if `rule` wants one, the snapshot for a checkpoint. With
    /// `Checkpoint::Never`, takes nothing and returns `None` when a checkpoint is due.
    fn take_pending(&self, c: &CommitState, rule: Checkpoint) -> Result<Option<Taken>, Error> {
        let tail = self.tail.lock();
        let (unsynced, taken) = {
            let mut st = self.state.lock();
            // The unsynced copies of the pending blocks went to the sequences from
            // `first_seq`: the synced ones must land on the same blocks.
            assert_eq!(
                st.first_seq, c.next_seq,
                "pending journal blocks start at sequence {}, the commit writes from {}",
                st.first_seq, c.next_seq
            );
            let after = c.next_seq + st.pending.blocks() as u64;
            let used = after - c.sb.replay_from();
            let checkpoint = match rule {
                Checkpoint::Now => true,
                Checkpoint::IfDue => used > self.layout.journal_blocks / 2,
                Checkpoint::Never if used > self.layout.journal_blocks / 2 => return Ok(None),
                Checkpoint::Never => false,
            };
            // The copy of the map a checkpoint needs, taken first: failing to get its
            // memory must leave the records pending.
            let map = match checkpoint {
                true => Some(self.map.snapshot().map_err(|e| Error::NoMemory {
                    what: "a checkpoint's copy of the remap table",
                    bytes: e.bytes,
                })?),
                false => None,
            };
            // Records staged and not yet recorded: a `record_staged` after this finds them
            // taken and lets their requests complete, maybe long before this commit's
            // journal write (the data sync comes first). So with `CompletedWrites` they are
            // written unsynced now, as `record_staged` would have.
            let unsynced = if self.record_before_complete.load(Ordering::Relaxed) {
                st.pending.unsynced(c.next_seq, self.uuid, self.session)
            } else {
                (c.next_seq, Vec::new())
            };
            let blocks = st.pending.take_synced(c.next_seq, self.uuid, self.session);
            st.first_seq = after;
            let taken = Taken {
                blocks,
                frees: std::mem::take(&mut st.pending_free),
                snapshot: map.map(|map| Snapshot {
                    map,
                    window: st.window.clone(),
                    journal_seq: after,
                }),
            };
            (unsynced, taken)
        };
        self.write_unsynced(unsynced)?;
        drop(tail);
        if taken.blocks.is_empty() {
            // Pages are freed only by records: with no block to write, no page may wait.
            assert!(
                taken.frees.is_empty(),
                "{} pages freed by no journal record (the first: {:?})",
                taken.frees.len(),
                &taken.frees[..taken.frees.len().min(8)]
            );
        }
        Ok(Some(taken))
    }

    /// After the commit that took them: the pages its records freed wait in quarantine for
    /// the reads in flight that may still target them.
    fn free_taken(&self, frees: Vec<PhysPage>) {
        if !frees.is_empty() {
            let round = self.free_round.fetch_add(1, Ordering::SeqCst);
            self.quarantine.lock().push((round, frees));
        }
        self.release_quarantine();
    }

    /// Begins a commit whose I/O the caller does (see [`StagedCommit`]), for a thread that
    /// must not wait for a sync or a lock: `None` when another commit is under way or a
    /// checkpoint is due, both of which are for a thread that may wait (`commit`).
    pub fn try_begin_commit(&self) -> Result<Option<StagedCommit<'_, S>>, Error> {
        let Some(c) = self.commit.try_lock() else {
            return Ok(None);
        };
        self.refuse_if_failed()?;
        let taken = self.take_pending(&c, Checkpoint::Never)?;
        if taken.is_some() {
            self.staged_by.store(this_thread(), Ordering::Relaxed);
        }
        Ok(taken.map(|t| StagedCommit {
            volume: self,
            c,
            blocks: t.blocks,
            frees: t.frees,
            finished: false,
        }))
    }

    /// Steps 1 and 2 of the commit protocol (FORMAT.md): sync the data, write the pending
    /// blocks synced and sync them; then the checkpoint, if one is due.
    fn write_commit(
        &self,
        c: &mut CommitState,
        blocks: &[[u8; 512]],
        snapshot: Option<&Snapshot>,
    ) -> Result<(), Error> {
        if !blocks.is_empty() {
            // The data the records point at must be durable before the records are.
            self.store.sync().map_err(Error::io("syncing data"))?;
            journal::write_blocks(&self.store, &self.layout, c.next_seq, blocks)?;
            self.store
                .sync()
                .map_err(Error::io("syncing the journal"))?;
            c.next_seq += blocks.len() as u64;
        }
        if let Some(s) = snapshot {
            self.write_checkpoint(c, s)?;
        }
        Ok(())
    }

    /// Writes a checkpoint into the slot the superblock does not point at, syncs it, then
    /// points the superblock at it.
    fn write_checkpoint(&self, c: &mut CommitState, s: &Snapshot) -> Result<(), Error> {
        let slot = 1 - c.sb.ckpt_slot.get() as usize;
        let written = checkpoint::write(
            &self.store,
            self.layout.ckpt_offsets[slot],
            self.layout.ckpt_bytes,
            s,
            self.layout.version,
            self.uuid,
        )?;
        self.store
            .sync()
            .map_err(Error::io("syncing a checkpoint"))?;
        c.sb.ckpt_slot = U32::new(slot as u32);
        c.sb.ckpt_len = U64::new(written.len);
        c.sb.ckpt_crc = U32::new(written.crc);
        c.sb.ckpt_journal_seq = U64::new(s.journal_seq.0);
        c.sb.ckpt_session = U32::new(self.session);
        write_superblock(&self.store, &mut c.sb)
    }
}

/// Whether a commit writes a checkpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checkpoint {
    /// Yes (`commit(true)`).
    Now,
    /// When the journal since the last one passes half the ring.
    IfDue,
    /// No: a commit on a queue's ring, which leaves a due checkpoint to a commit that may
    /// wait for it (and takes nothing then).
    Never,
}

/// What a commit took from the state.
struct Taken {
    blocks: Vec<journal::Block>,
    frees: Vec<PhysPage>,
    snapshot: Option<Snapshot>,
}

/// A commit whose I/O the caller submits itself, so that it never waits for a sync: the
/// daemon's queues run the commit a FLUSH needs on their own io_uring. From
/// [`Volume::try_begin_commit`], which took the pending records; the caller then, in this
/// order, each step only after the one before completed (an io_uring link chain does):
/// 1. syncs the data (`fdatasync` of the store): the data the records point at must be
///    durable before the records are;
/// 2. writes each of [`StagedCommit::journal_writes`];
/// 3. syncs again;
///
/// and hands the outcome to [`StagedCommit::finish`]. With no journal write, there is
/// nothing to sync either. It holds the commit lock until finished: other commits wait, or
/// (`try_begin_commit`, `commit_due`) do not wait and leave it to the next.
#[must_use = "a staged commit holds the commit lock and must be finished"]
pub struct StagedCommit<'a, S: Store> {
    volume: &'a Volume<S>,
    c: MutexGuard<'a, CommitState>,
    blocks: Vec<journal::Block>,
    frees: Vec<PhysPage>,
    finished: bool,
}

impl<S: Store> StagedCommit<'_, S> {
    /// The journal writes of step 2: (byte offset in the store, bytes). At most two, as
    /// the blocks may wrap around the end of the ring. Empty when nothing was pending.
    pub fn journal_writes(&self) -> Vec<(u64, &[u8])> {
        journal::block_writes(&self.volume.layout, self.c.next_seq, &self.blocks)
    }

    /// Ends the commit with the outcome of the caller's steps. When they were not all done
    /// but no sync failed (`Steps::NotDone`), they are done once more through the store
    /// (`Store::sync`, `Store::write_at`; the same blocks at the same places, so a partial
    /// first try does no harm). A failed sync is never tried again: the kernel reports a
    /// writeback error once, so a second sync would succeed over lost data; the commit fails
    /// then, and with it the volume, as after any failed commit.
    pub fn finish(mut self, steps: Steps) -> Result<(), Error> {
        self.finished = true;
        let v = self.volume;
        v.staged_by.store(0, Ordering::Relaxed);
        let done = match steps {
            Steps::Done => {
                self.c.next_seq += self.blocks.len() as u64;
                Ok(())
            }
            Steps::NotDone(_) => v.write_commit(&mut self.c, &self.blocks, None),
            Steps::SyncFailed(e) => Err(Error::io("syncing a commit on the queue's ring")(e)),
        };
        v.fail_on_error(done)?;
        v.free_taken(std::mem::take(&mut self.frees));
        Ok(())
    }
}

/// How the caller's steps of a [`StagedCommit`] went.
#[derive(Debug)]
pub enum Steps {
    /// All done, in order.
    Done,
    /// Not all done, and no sync failed: a write failed or came short, or the steps could
    /// not be submitted.
    NotDone(std::io::Error),
    /// A sync failed.
    SyncFailed(std::io::Error),
}

impl<S: Store> Drop for StagedCommit<'_, S> {
    /// Dropped unfinished (a panic on the way): the records it took are nowhere durable
    /// and the journal position is behind them, so the volume refuses further I/O.
    fn drop(&mut self) {
        if !self.finished {
            self.volume.staged_by.store(0, Ordering::Relaxed);
            self.volume.failed.store(true, Ordering::Relaxed);
        }
    }
}

/// A number for the calling thread, never 0, unique among live threads (the address of a
/// thread-local).
fn this_thread() -> usize {
    thread_local!(static MARK: u8 = const { 0 });
    MARK.with(|m| m as *const u8 as usize)
}

/// What a request's staging asks of its caller (`Volume::stage_writes`, `stage_discard`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitDue {
    /// Nothing.
    No,
    /// A commit soon: the records pending passed what one commit should take. The request
    /// need not wait for it.
    Soon,
    /// The records pending passed twice that while this thread's own staged commit is under
    /// way: the request completes only after a commit made elsewhere (the daemon's
    /// flusher) took its records, so the journal never runs out of room.
    Wait,
}
