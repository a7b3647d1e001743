//! A commit on a queue's own io_uring: what a FLUSH (or FUA) needs made durable, without
//! a sync or a thread hand-off on the queue thread.
//!
//! The engine takes the pending records (`Volume::try_begin_commit`); this submits the
//! commit protocol's three steps on the queue's ring: a data sync, the journal writes, a
//! sync. Linked (one io_uring link chain: the kernel starts each op only after the one
//! before succeeded, and cancels the rest when one fails) when the whole chain fits the
//! submission queue at once; otherwise one step after the other, each awaited. The queue
//! serves its other requests meanwhile. Then `StagedCommit::finish` advances the journal,
//! does the steps again through the store when they were not all done, or fails the volume
//! when a sync failed.
//!
//! When the engine cannot begin one (another commit is under way, or a checkpoint is due:
//! checkpoints are large and are the flusher's), the caller asks the flusher instead.

use std::io;

use io_uring::{opcode, squeue, types};
use libublk::io::{with_task_io_ring_mut, UblkQueue};
use rewind_history::{Error, Steps, Volume};

use crate::daemon::backing::FileStore;

/// One op of the steps: a sync, or a journal write of this many bytes.
#[derive(Clone, Copy)]
enum Op {
    Sync,
    Write(usize),
}

/// Commits on `q`'s ring; `Ok(false)` when the engine leaves this commit to the flusher.
pub async fn commit(q: &UblkQueue<'_>, volume: &Volume<FileStore>) -> Result<bool, Error> {
    let Some(staged) = volume.try_begin_commit()? else {
        return Ok(false);
    };
    let writes = staged.journal_writes();
    let steps = if writes.is_empty() {
        Steps::Done
    } else {
        let store = volume.store();
        let fd = types::Fd(store.metadata_fd());
        let sync = |fd| {
            let sqe = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            (sqe, Op::Sync)
        };
        let sync_fds = store.sync_fds();
        let mut ops = Vec::with_capacity(writes.len() + sync_fds.len() + 1);
        // The data sync: every file of the store (one, or a pool's image and backings).
        ops.extend(sync_fds.map(|f| sync(types::Fd(f))));
        for &(offset, bytes) in &writes {
            let sqe = opcode::Write::new(fd, bytes.as_ptr(), bytes.len() as u32)
                .offset(store.metadata_offset(offset))
                .build();
            ops.push((sqe, Op::Write(bytes.len())));
        }
        ops.push(sync(fd));
        let steps = run_steps(q, ops).await;
        if matches!(steps, Steps::Done) {
            let bytes = writes.iter().map(|(_, b)| b.len() as u64).sum();
            volume.store().note_metadata_written(bytes);
        }
        steps
    };
    match &steps {
        Steps::Done => {}
        Steps::NotDone(e) => log::warn!(
            "queue {}: a commit on the ring was not done ({e}); doing it again",
            q.get_qid()
        ),
        Steps::SyncFailed(e) => {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                volume.store().note_host_full();
            }
        }
    }
    // `writes` borrows the blocks `finish` consumes: every op using them has completed
    // (`run_steps` awaits them all).
    drop(writes);
    staged.finish(steps)?;
    Ok(true)
}

/// Runs `ops` in order on `q`'s ring, linked when they fit the submission queue at once,
/// else one at a time; awaits every op. The first failure decides: a sync's is
/// `SyncFailed`, any other `NotDone`.
async fn run_steps(q: &UblkQueue<'_>, ops: Vec<(squeue::Entry, Op)>) -> Steps {
    let linked = match make_room(ops.len()) {
        Ok(fits) => fits,
        Err(e) => return Steps::NotDone(e),
    };
    let mut first_failure = None;
    if linked {
        // Every op pushed before the next is awaited: they go to the kernel together.
        let last = ops.len() - 1;
        let futures: Vec<_> = ops
            .into_iter()
            .enumerate()
            .map(|(i, (sqe, op))| {
                let sqe = if i < last {
                    sqe.flags(squeue::Flags::IO_LINK)
                } else {
                    sqe
                };
                (q.ublk_submit_sqe(sqe), op)
            })
            .collect();
        // Each one awaited, even after a failure: the kernel may use the buffers until
        // each completes (a cancelled op completes with -ECANCELED).
        for (future, op) in futures {
            let res = future.await;
            if first_failure.is_none() {
                first_failure = failure(res, op);
            }
        }
    } else {
        for (sqe, op) in ops {
            let res = q.ublk_submit_sqe(sqe).await;
            if let Some(f) = failure(res, op) {
                first_failure = Some(f);
                break;
            }
        }
    }
    first_failure.unwrap_or(Steps::Done)
}

/// What an op's result `res` says, if it failed.
fn failure(res: i32, op: Op) -> Option<Steps> {
    match op {
        Op::Sync if res == 0 => None,
        // Cancelled or interrupted, not run: no writeback error was reported.
        Op::Sync if res == -libc::ECANCELED || res == -libc::EINTR => {
            Some(Steps::NotDone(io::Error::from_raw_os_error(-res)))
        }
        Op::Sync => Some(Steps::SyncFailed(io::Error::from_raw_os_error(-res))),
        Op::Write(len) if usize::try_from(res).ok() == Some(len) => None,
        Op::Write(_) if res < 0 => Some(Steps::NotDone(io::Error::from_raw_os_error(-res))),
        Op::Write(len) => Some(Steps::NotDone(io::Error::other(format!(
            "wrote {res} bytes of {len}"
        )))),
    }
}

/// Makes room for `n` entries in this thread's submission queue, submitting what waits
/// there if needed; whether they fit. A link chain pushed across a full queue would be
/// submitted in two parts, and the second would not wait for the first.
fn make_room(n: usize) -> io::Result<bool> {
    with_task_io_ring_mut(|ring| {
        let free = |ring: &mut io_uring::IoUring| {
            let sq = ring.submission();
            sq.capacity() - sq.len()
        };
        if free(ring) < n {
            ring.submit()?;
        }
        Ok(free(ring) >= n)
    })
}
