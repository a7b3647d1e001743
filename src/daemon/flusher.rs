//! The flusher: the thread that runs the commits the queues leave to it (a FLUSH's when
//! another commit is under way or a checkpoint is due, see `ring_commit`), the commits a
//! full record buffer calls for, and reclaim when free pages run low, so that a queue
//! thread does not wait on a sync, a checkpoint or the commit lock for them; meanwhile the
//! queue keeps serving its other requests. (A queue thread still writes its pass's journal
//! records, unsynced, and commits itself when the records pending reach twice what a
//! commit should take: the flusher is then behind, and the writers wait for it.)
//!
//! A queue task asks with [`Flusher::ask`] and gets a [`Ticket`]: an eventfd that the thread
//! writes once the commit that covers the request is done, and which the task reads through
//! its queue's io_uring, so the wait is one more op on the ring (the queue thread sleeps in
//! the ring, never on a lock or a condition variable). Flushes that arrive while a commit runs
//! wait for the next one, and all of them, from every queue, share it: one data sync and one
//! journal sync for a burst of flushes. A commit taken later than the request is always
//! enough: it covers every write completed before the request (each one's record is in the
//! engine before the write completes). Waiting tickets are answered before a reclaim runs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use rewind_history::Volume;

use crate::daemon::backing::FileStore;

/// One request's wait for its commit.
pub struct Ticket {
    /// Written (with 1) when `outcome` is set.
    event: OwnedFd,
    outcome: OnceLock<Result<(), String>>,
}

impl Ticket {
    fn new() -> std::io::Result<Ticket> {
        // SAFETY: eventfd takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Ticket {
            // SAFETY: `fd` is a descriptor we just opened and nothing else owns.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
            outcome: OnceLock::new(),
        })
    }

    /// The eventfd to read (8 bytes) for the end of the wait. It stays open as long as the
    /// ticket: hold the ticket until the read completes.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// The commit's outcome, once the eventfd was written; `None` before.
    pub fn outcome(&self) -> Option<Result<(), String>> {
        self.outcome.get().cloned()
    }

    fn finish(&self, outcome: Result<(), String>) {
        let _ = self.outcome.set(outcome);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live array to a descriptor this ticket owns. An
        // eventfd write of 1 fails only when its counter would overflow, which one write per
        // ticket cannot do.
        unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

struct Shared {
    waiting: Mutex<Waiting>,
    wake: Condvar,
    stop: AtomicBool,
    /// Set by `commit_soon` and `reclaim_soon` until the thread takes their request: the
    /// queues ask on every write while it is due, and only the first asking takes the lock.
    commit_asked: AtomicBool,
    reclaim_asked: AtomicBool,
}

/// What the thread is asked for.
#[derive(Default)]
struct Waiting {
    /// Flushes waiting for a commit.
    tickets: Vec<Arc<Ticket>>,
    /// A commit is due though no flush waits (`commit_soon`).
    commit_due: bool,
    /// Free pages run low (`reclaim_soon`).
    reclaim_due: bool,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.tickets.is_empty() && !self.commit_due && !self.reclaim_due
    }
}

/// The flusher thread of one device; stopped and joined when dropped.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread. It holds `volume` only during a commit or a reclaim.
    pub fn start(volume: Weak<Volume<FileStore>>) -> std::io::Result<Flusher> {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            commit_asked: AtomicBool::new(false),
            reclaim_asked: AtomicBool::new(false),
        });
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rewind-flusher".into())
            .spawn(move || run(&theirs, &volume))?;
        Ok(Flusher {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for a commit of every write completed so far; the ticket tells when it is done.
    pub fn ask(&self) -> std::io::Result<Arc<Ticket>> {
        let ticket = Arc::new(Ticket::new()?);
        if self.shared.stop.load(Ordering::SeqCst) {
            ticket.finish(Err("the daemon is stopping".into()));
            return Ok(ticket);
        }
        self.shared.waiting.lock().tickets.push(ticket.clone());
        self.shared.wake.notify_one();
        Ok(ticket)
    }

    /// Has a commit made soon, with nobody waiting for it: the engine's records came near
    /// what one commit should take (`Volume::stage_writes`).
    pub fn commit_soon(&self) {
        if !self.shared.commit_asked.swap(true, Ordering::AcqRel) {
            self.shared.waiting.lock().commit_due = true;
            self.shared.wake.notify_one();
        }
    }

    /// Has reclaim run soon: free pages are below the low water mark
    /// (`Volume::reclaim_due`). A write that finds no free page waits on its ring meanwhile.
    pub fn reclaim_soon(&self) {
        if !self.shared.reclaim_asked.swap(true, Ordering::AcqRel) {
            self.shared.waiting.lock().reclaim_due = true;
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        {
            // Under the lock: the thread checks `stop` under it before it waits, so the
            // wake-up below cannot fall between its check and its wait.
            let _waiting = self.shared.waiting.lock();
            self.shared.stop.store(true, Ordering::SeqCst);
        }
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: takes every waiting ticket, commits once for them all, answers them; then
/// reclaims if asked (after: a FLUSH waits for the commit, while a write that needs a page
/// usually finds one still free above the low water mark).
fn run(shared: &Shared, volume: &Weak<Volume<FileStore>>) {
    loop {
        let asked = {
            let mut waiting = shared.waiting.lock();
            while waiting.is_empty() && !shared.stop.load(Ordering::SeqCst) {
                shared.wake.wait(&mut waiting);
            }
            // Cleared under the lock, as taken: a request after this asks anew.
            shared.commit_asked.store(false, Ordering::Release);
            shared.reclaim_asked.store(false, Ordering::Release);
            std::mem::take(&mut *waiting)
        };
        if asked.is_empty() {
            // Stopping, and nobody waits.
            return;
        }
        let Waiting {
            tickets,
            commit_due,
            reclaim_due,
        } = asked;
        if !tickets.is_empty() || commit_due {
            commit(volume, tickets);
        }
        if reclaim_due {
            reclaim(volume);
        }
    }
}

/// One commit for every ticket in `tickets` (or for none, when the record buffer asked),
/// then their answers.
fn commit(volume: &Weak<Volume<FileStore>>, tickets: Vec<Arc<Ticket>>) {
    // A panic in the engine must not leave the tickets unanswered: their queues would
    // wait for them forever. (The panic itself goes to the log.)
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match volume.upgrade() {
        Some(v) => v.commit(false).map_err(|e| e.to_string()),
        None => Err("the device is closing".into()),
    }))
    .unwrap_or_else(|_| Err("the commit panicked (see the log above)".into()));
    if let Err(e) = &outcome {
        log::error!("commit for {} flushes failed: {e}", tickets.len());
    }
    for t in tickets {
        t.finish(outcome.clone());
    }
}

/// Reclaim for the queues, on this thread. A failure goes to the log; the volume then
/// refuses I/O, which the queues report.
fn reclaim(volume: &Weak<Volume<FileStore>>) {
    let Some(v) = volume.upgrade() else {
        return;
    };
    match std::panic::catch_unwind(AssertUnwindSafe(|| v.reclaim_if_low())) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error!("reclaiming history for new writes failed: {e}"),
        Err(_) => log::error!("reclaiming history panicked (see the log above)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::backing::formatted_image;
    use rewind_history::{Durability, LogicalPage};

    fn read_event(fd: RawFd) -> u64 {
        let mut b = [0u8; 8];
        // SAFETY: reads 8 bytes into a live array.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
        assert_eq!(n, 8);
        u64::from_ne_bytes(b)
    }

    /// A volume on a fresh image (`a.img`, in a directory kept as long as the returned
    /// guard) and a flusher for it.
    fn volume_and_flusher() -> (tempfile::TempDir, Arc<Volume<FileStore>>, Flusher) {
        let dir = tempfile::tempdir().unwrap();
        let store = formatted_image(&dir.path().join("a.img"), 4 << 20);
        let volume = Arc::new(Volume::open(store, &crate::host::this_host()).unwrap());
        let flusher = Flusher::start(Arc::downgrade(&volume)).unwrap();
        (dir, volume, flusher)
    }

    /// Page `l` of a copy of the image as it is on disk now, opened as a new volume.
    fn page_on_disk(dir: &tempfile::TempDir, copy: &str, l: LogicalPage) -> Vec<u8> {
        let path = dir.path().join(copy);
        std::fs::copy(dir.path().join("a.img"), &path).unwrap();
        let store = FileStore::open(&path).unwrap();
        let volume = Volume::open(store, &crate::host::this_host()).unwrap();
        let mut page = vec![0u8; 4096];
        volume.read_page(l, &mut page).unwrap();
        page
    }

    #[test]
    fn tickets_are_answered_after_a_commit_that_covers_them() {
        let (dir, volume, flusher) = volume_and_flusher();
        // Records stay in memory until a commit: only the flusher's can put the write on
        // disk.
        volume.set_durability(Durability::FlushedWrites);
        let mut stream = volume.stream(0, 1);
        let l = LogicalPage(3);
        volume.write_page(&mut stream, l, &[7u8; 4096]).unwrap();
        assert_eq!(page_on_disk(&dir, "before.img", l), vec![0u8; 4096]);
        let tickets: Vec<_> = (0..4).map(|_| flusher.ask().unwrap()).collect();
        for t in &tickets {
            assert_eq!(read_event(t.event_fd()), 1);
            assert_eq!(t.outcome(), Some(Ok(())));
        }
        assert_eq!(page_on_disk(&dir, "after.img", l), vec![7u8; 4096]);
        drop(flusher);
    }

    #[test]
    fn reclaim_soon_frees_pages_on_the_flusher_thread() {
        let (_dir, volume, flusher) = volume_and_flusher();
        let mut stream = volume.stream(0, 1);
        let mut pages = Vec::new();
        // Overwrites with a safe point now and then, allocated as the queues do (no reclaim
        // on this thread), until free pages run low: the history holds the rest.
        let mut n = 0u64;
        while !volume.reclaim_due() {
            pages.clear();
            let l = LogicalPage(n % 64);
            assert_eq!(
                volume
                    .try_allocate_run(&mut stream, l, 1, &mut pages)
                    .unwrap(),
                1
            );
            volume.commit_writes(&[(l, pages[0])]).unwrap();
            n += 1;
            if n.is_multiple_of(64) {
                volume.flush().unwrap();
            }
        }
        let before = volume.safe_points().len();
        // Asked twice: the second asking is a no-op or a second, harmless, reclaim.
        flusher.reclaim_soon();
        flusher.reclaim_soon();
        // Not a timing assertion: the wait is for the event, with a generous limit.
        let start = std::time::Instant::now();
        while volume.reclaim_due() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "the flusher did not reclaim"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            volume.safe_points().len() < before,
            "reclaim retired no safe point"
        );
        drop(flusher);
    }

    #[test]
    fn a_ticket_after_the_volume_is_gone_fails_and_is_still_answered() {
        let (_dir, volume, flusher) = volume_and_flusher();
        drop(volume);
        let t = flusher.ask().unwrap();
        assert_eq!(read_event(t.event_fd()), 1);
        assert!(t.outcome().unwrap().is_err());
    }
}
