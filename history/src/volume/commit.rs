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
use crate::{Error, Store};

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
        if let Some(l) = &label {
            if l.len() > MAX_LABEL {
                return Err(Error::BadOption(format!(
                    "label of {} bytes; at most {MAX_LABEL}",
                    l.len()
                )));
            }
        }
        let id = {
            let mut st = self.state.lock();
            let open = st.window.next_id;
            let dirty = st.window.groups.contains_key(&open);
            // Flush and idle points mark a state; with nothing written since the newest
            // safe point, that one already is it.
            if dirty || !matches!(trigger, Trigger::Flush | Trigger::Idle) {
                self.close_epoch(&mut st, trigger, label)?;
                self.retire_until(&mut st, false, |st, _| {
                    (st.window.safe_points.len() as u64) < MAX_SAFE_POINTS
                });
                open
            } else {
                st.window.newest().map_or(SafePointId(0), |s| s.id)
            }
        };
        self.commit(false)?;
        Ok(id)
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
    /// commit made soon (the daemon's flusher); past twice that, this commits at once, so
    /// the journal never runs out of room while the commit is late.
    pub(super) fn commit_due(&self, st: MutexGuard<'_, State>) -> Result<bool, Error> {
        let pending = st.pending.len();
        drop(st);
        if pending > 2 * self.commit_threshold {
            self.commit(false)?;
            return Ok(false);
        }
        Ok(pending > self.commit_threshold)
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
    /// freed, writes them (`write_commit`), then quarantines those pages.
    pub(super) fn commit_locked(
        &self,
        c: &mut CommitState,
        force_checkpoint: bool,
    ) -> Result<(), Error> {
        self.refuse_if_failed()?;
        let tail = self.tail.lock();
        let (unsynced, blocks, frees, snapshot) = {
            let mut st = self.state.lock();
            // The unsynced copies of the pending blocks went to the sequences from
            // `first_seq`: the synced ones must land on the same blocks.
            assert_eq!(
                st.first_seq, c.next_seq,
                "pending journal blocks start at sequence {}, the commit writes from {}",
                st.first_seq, c.next_seq
            );
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
            let frees = std::mem::take(&mut st.pending_free);
            let after = c.next_seq + blocks.len() as u64;
            st.first_seq = after;
            let used = after - c.sb.replay_from();
            let snapshot =
                (force_checkpoint || used > self.layout.journal_blocks / 2).then(|| Snapshot {
                    map: self.map.snapshot(),
                    window: st.window.clone(),
                    journal_seq: after,
                });
            (unsynced, blocks, frees, snapshot)
        };
        self.write_unsynced(unsynced)?;
        drop(tail);
        if blocks.is_empty() && snapshot.is_none() {
            // Pages are freed only by records: with no block to write, no page may wait.
            assert!(
                frees.is_empty(),
                "{} pages freed by no journal record (the first: {:?})",
                frees.len(),
                &frees[..frees.len().min(8)]
            );
            return Ok(());
        }
        self.fail_on_error(self.write_commit(c, &blocks, snapshot.as_ref()))?;
        if !frees.is_empty() {
            let round = self.free_round.fetch_add(1, Ordering::SeqCst);
            self.quarantine.lock().push((round, frees));
        }
        self.release_quarantine();
        Ok(())
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
            {
                // After any unsynced write of these blocks that began before we took them.
                let _tail = self.tail.lock();
                journal::write_blocks(&self.store, &self.layout, c.next_seq, blocks)?;
            }
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
        let bytes = checkpoint::encode(s, self.uuid);
        if bytes.len() as u64 > self.layout.ckpt_bytes {
            return Err(Error::Corrupt(format!(
                "checkpoint of {} bytes does not fit its slot of {}",
                bytes.len(),
                self.layout.ckpt_bytes
            )));
        }
        let slot = 1 - c.sb.ckpt_slot.get() as usize;
        self.store
            .write_at(self.layout.ckpt_offsets[slot], &bytes)
            .map_err(Error::io("writing a checkpoint"))?;
        self.store
            .sync()
            .map_err(Error::io("syncing a checkpoint"))?;
        c.sb.ckpt_slot = U32::new(slot as u32);
        c.sb.ckpt_len = U64::new(bytes.len() as u64);
        c.sb.ckpt_crc = U32::new(crc32c::crc32c(&bytes));
        c.sb.ckpt_journal_seq = U64::new(s.journal_seq.0);
        c.sb.ckpt_session = U32::new(self.session);
        write_superblock(&self.store, &mut c.sb)
    }
}
