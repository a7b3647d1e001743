//! Group commit within a queue: the writes and discards that a queue's tasks stage in the
//! engine during one pass over its ring are recorded with one `Volume::record_staged` (one
//! journal write, with `Durability::CompletedWrites`) when the pass ends, instead of one
//! journal write per request. Each task waits for the recording that follows its staging
//! before it completes its request, so a completed write keeps the durability it had.
//!
//! Single-threaded, like the queue: tasks await [`Group::recorded`]; the queue's event loop
//! calls [`Group::record`] once its tasks have run as far as they can.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

use rewind_history::{Store, Volume};

/// One queue's batches of staged requests.
#[derive(Default)]
pub struct Group {
    /// The batch that requests staged now belong to.
    open: Cell<u64>,
    /// Batches before this one are recorded.
    recorded: Cell<u64>,
    /// The first batch whose recording failed, and why; every later one fails too (the
    /// engine refuses all I/O after a failed metadata write).
    failed: RefCell<Option<(u64, String)>>,
    /// Tasks waiting for the open batch.
    waiters: RefCell<Vec<Waker>>,
}

impl Group {
    /// Waits until what the task staged (before calling this) is recorded.
    pub async fn recorded(&self) -> Result<(), String> {
        let batch = self.open.get();
        poll_fn(|cx| {
            if self.recorded.get() > batch {
                return Poll::Ready(match &*self.failed.borrow() {
                    Some((from, why)) if *from <= batch => Err(why.clone()),
                    _ => Ok(()),
                });
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Records the open batch if a task waits for it, and wakes its tasks; returns whether it
    /// did (the woken tasks then need to run).
    pub fn record<S: Store>(&self, volume: &Volume<S>) -> bool {
        if self.waiters.borrow().is_empty() {
            return false;
        }
        let batch = self.open.get();
        self.open.set(batch + 1);
        if let Err(e) = volume.record_staged() {
            self.failed
                .borrow_mut()
                .get_or_insert((batch, format!("recording the writes in the journal: {e}")));
        }
        self.recorded.set(batch + 1);
        for w in self.waiters.take() {
            w.wake();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::backing::formatted_image;
    use rewind_history::LogicalPage;

    #[test]
    fn tasks_complete_only_after_their_batch_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = formatted_image(&dir.path().join("a.img"), 4 << 20);
        let vol = Volume::open(store, &crate::host::this_host()).unwrap();
        let group = Group::default();
        let done = Cell::new(0);
        let exe = smol::LocalExecutor::new();
        let mut stream = vol.stream(0, 1);
        let mut tasks = Vec::new();
        for l in 0..3u64 {
            let p = vol.allocate(&mut stream, LogicalPage(l)).unwrap();
            vol.stage_writes(&[(LogicalPage(l), p)]).unwrap();
            let (group, done) = (&group, &done);
            tasks.push(exe.spawn(async move {
                group.recorded().await.unwrap();
                done.set(done.get() + 1);
            }));
        }
        while exe.try_tick() {}
        assert_eq!(
            done.get(),
            0,
            "no task completes before the batch is recorded"
        );
        assert!(group.record(&vol));
        while exe.try_tick() {}
        assert_eq!(done.get(), 3);
        assert!(!group.record(&vol), "nothing waits: nothing to record");
        assert!(tasks.iter().all(|t| t.is_finished()));
    }
}
