//! A commit on a queue's own io_uring: what a FLUSH (or FUA) needs made durable, without
//! a sync or a thread hand-off on the queue thread.
//!
//! The engine takes the pending records (`Volume::try_begin_commit`); this submits the
//! commit protocol's three steps as one io_uring link chain on the queue's ring: a data
//! sync, the journal writes, a sync. The kernel starts each op only after the one before
//! it succeeded, and cancels the rest of the chain when one fails; the task awaits the
//! last completion and the queue serves its other requests meanwhile. Then
//! `StagedCommit::finish` advances the journal, or, if the chain failed, does the steps
//! once more through the store before it gives up.
//!
//! When the engine cannot begin one (another commit is under way, or a checkpoint is due:
//! checkpoints are large and are the flusher's), the caller asks the flusher instead.

use std::io;

use io_uring::{opcode, squeue, types};
use libublk::io::{with_task_io_ring_mut, UblkQueue};
use rewind_history::{Error, Volume};

use crate::daemon::backing::FileStore;

/// Commits on `q`'s ring; `Ok(false)` when the engine leaves this commit to the flusher.
pub async fn commit(q: &UblkQueue<'_>, volume: &Volume<FileStore>) -> Result<bool, Error> {
    let Some(staged) = volume.try_begin_commit()? else {
        return Ok(false);
    };
    let writes = staged.journal_writes();
    let steps = if writes.is_empty() {
        Ok(())
    } else {
        let fd = types::Fd(volume.store().metadata_fd());
        let sync = || {
            opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
        };
        let mut chain = Vec::with_capacity(writes.len() + 2);
        chain.push((sync(), 0));
        for &(offset, bytes) in &writes {
            let write = opcode::Write::new(fd, bytes.as_ptr(), bytes.len() as u32)
                .offset(offset)
                .build();
            chain.push((write, bytes.len()));
        }
        chain.push((sync(), 0));
        let result = run_chain(q, chain).await;
        if result.is_ok() {
            let bytes = writes.iter().map(|(_, b)| b.len() as u64).sum();
            volume.store().note_metadata_written(bytes);
        }
        result
    };
    if let Err(e) = &steps {
        log::warn!(
            "queue {}: a commit on the ring failed ({e}); writing it again",
            q.get_qid()
        );
    }
    // `writes` borrows the blocks `finish` consumes: they were in the kernel's hands until
    // every op of the chain completed, which `run_chain` awaited.
    drop(writes);
    staged.finish(steps)?;
    Ok(true)
}

/// Submits `chain` (each op with the result it must return: the bytes of a write, 0 for a
/// sync) as one link chain and awaits every op; the first failure, if any.
async fn run_chain(q: &UblkQueue<'_>, chain: Vec<(squeue::Entry, usize)>) -> io::Result<()> {
    // A chain pushed across a full submission queue would be submitted in two parts, and
    // the second would not wait for the first: make room for all of it first.
    with_task_io_ring_mut(|ring| {
        let free = {
            let sq = ring.submission();
            sq.capacity() - sq.len()
        };
        if free < chain.len() {
            ring.submit().map(|_| ())
        } else {
            Ok(())
        }
    })?;
    let last = chain.len() - 1;
    let ops: Vec<_> = chain
        .into_iter()
        .enumerate()
        .map(|(i, (sqe, want))| {
            let sqe = if i < last {
                sqe.flags(squeue::Flags::IO_LINK)
            } else {
                sqe
            };
            (q.ublk_submit_sqe(sqe), want)
        })
        .collect();
    let mut first_failure = None;
    // Every op is awaited, even after a failure: the kernel may use the buffers until each
    // completes (a cancelled op completes with -ECANCELED).
    for (op, want) in ops {
        let res = op.await;
        if first_failure.is_none() && usize::try_from(res).ok() != Some(want) {
            first_failure = Some(if res < 0 {
                io::Error::from_raw_os_error(-res)
            } else {
                io::Error::other(format!("wrote {res} bytes of {want}"))
            });
        }
    }
    first_failure.map_or(Ok(()), Err)
}
