//! When the daemon makes safe points of its own: idle safe points, and flush coalescing
//! (`--idle`, `--coalesce`: their defaults and limits are here too).
//!
//! The kernel's FLUSH (and FUA) would make one safe point each; a database that syncs
//! hundreds of times a second would then fill the window with near-identical states. And a
//! writer that never flushes would leave its writes out of every safe point. So:
//! - coalescing: a FLUSH that arrives less than `coalesce` after the previous safe point
//!   commits every completed write (durable, exactly as a safe point would) but makes no new
//!   safe point. The state of the last coalesced FLUSH of a burst still becomes a safe point:
//!   once `coalesce` has passed, if nothing was written since, the ticker makes it;
//! - idle: when nothing has been written for `idle` and something was written since the
//!   newest safe point, the ticker makes an idle safe point.
//!
//! What counts: a write or discard counts when the engine has it and its record is where
//! the durability wants it (after `stage_writes` or `stage_discard` and the pass's
//! `record_staged`), from any queue. `covered` is the write count the newest safe point is known
//! to include; it is read before a safe point is made, so it can only lag (an extra safe
//! point later), never run ahead (a write left out of every safe point).
//!
//! Times are nanoseconds of a monotonic clock started with the pacer, plus one, so that 0
//! means "never". The decisions take the time as an argument, so tests can drive them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rewind_history::{Error, SafePointId, Store, Trigger, Volume};

/// Seconds without writes before an idle safe point, unless `--idle` says otherwise.
pub const IDLE_SECS_DEFAULT: u64 = 2;
/// Longest idle interval: a day. Longer is as good as never (use 0).
pub const IDLE_SECS_MAX: u64 = 86_400;
/// Milliseconds of flush coalescing, unless `--coalesce` says otherwise.
pub const COALESCE_MS_DEFAULT: u64 = 100;
/// Longest coalescing interval: a minute.
pub const COALESCE_MS_MAX: u64 = 60_000;

/// The ticker never sleeps longer than this, so a stop takes effect quickly even if an
/// unpark were missed.
const TICK_MAX: Duration = Duration::from_millis(250);
/// Nor shorter: the checks are cheap, but waking more often gains nothing.
const TICK_MIN: Duration = Duration::from_millis(10);

/// The timing of the daemon's own safe points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// No write for this long makes an idle safe point; `None`: never.
    pub idle: Option<Duration>,
    /// A FLUSH within this of the previous safe point makes none; `None`: every FLUSH does.
    pub coalesce: Option<Duration>,
}

impl Policy {
    /// The policy for `--idle SECONDS --coalesce MS`, 0 disabling either.
    pub fn new(idle_secs: u64, coalesce_ms: u64) -> Policy {
        Policy {
            idle: (idle_secs > 0).then(|| Duration::from_secs(idle_secs)),
            coalesce: (coalesce_ms > 0).then(|| Duration::from_millis(coalesce_ms)),
        }
    }

    /// How often the ticker looks, or `None` when it has nothing to do.
    fn tick(&self) -> Option<Duration> {
        let idle = self.idle.map(|d| d / 4);
        let coalesce = self.coalesce.map(|d| d / 2);
        let t = match (idle, coalesce) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(t.clamp(TICK_MIN, TICK_MAX))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A FLUSH between `Pacer::begin_flush` and `Pacer::end_flush`: what was read before the
/// engine acted.
#[must_use = "a FLUSH begun is ended with Pacer::end_flush once its commit is done"]
pub struct PacedFlush {
    deferred: u64,
    writes: u64,
    now: u64,
    /// A safe point was marked (not coalesced).
    safe_point: bool,
}

/// What the queues, the control socket and the ticker share; see the module docs.
pub struct Pacer {
    policy: Policy,
    base: Instant,
    /// Writes and discards the engine has taken.
    writes: AtomicU64,
    /// Of those, how many the newest safe point is known to include.
    covered: AtomicU64,
    /// When the last write was taken; 0: none yet.
    last_write_ns: AtomicU64,
    /// When the last safe point was made here; 0: none yet.
    last_safe_point_ns: AtomicU64,
    /// After a coalesced FLUSH: the write count it committed, plus one; 0: none pending.
    deferred: AtomicU64,
}

impl Pacer {
    /// A pacer with `policy`, its clock starting now.
    pub fn new(policy: Policy) -> Pacer {
        Pacer {
            policy,
            base: Instant::now(),
            writes: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            last_write_ns: AtomicU64::new(0),
            last_safe_point_ns: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
        }
    }

    /// Its policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Now on the pacer's clock, at least 1.
    pub fn now_ns(&self) -> u64 {
        nanos(self.base.elapsed()).saturating_add(1)
    }

    /// A write or discard was taken by the engine (called by the queues).
    pub fn wrote(&self) {
        self.wrote_at(self.now_ns());
    }

    /// [`Pacer::wrote`] at time `now`.
    pub fn wrote_at(&self, now: u64) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.last_write_ns.store(now, Ordering::SeqCst);
    }

    /// A safe point was made at `now` that includes at least `writes` writes.
    fn made_safe_point(&self, writes: u64, now: u64) {
        self.covered.fetch_max(writes, Ordering::SeqCst);
        self.last_safe_point_ns.fetch_max(now, Ordering::SeqCst);
    }

    /// A FLUSH at time `now` with the engine's own commit: `begin_flush_at`, `commit`,
    /// `end_flush`, as the daemon's queues do with the commit on their ring.
    #[cfg(test)]
    pub fn flush_at<S: Store>(&self, volume: &Volume<S>, now: u64) -> Result<(), Error> {
        let paced = self.begin_flush_at(volume, now)?;
        volume.commit(false)?;
        self.end_flush(paced);
        Ok(())
    }

    /// A FLUSH whose commit the caller makes (the daemon's queues, on their ring): marks a
    /// safe point in the engine unless one was made less than `coalesce` ago. Once the
    /// commit is done, the caller hands the result to `end_flush`.
    pub fn begin_flush<S: Store>(&self, volume: &Volume<S>) -> Result<PacedFlush, Error> {
        self.begin_flush_at(volume, self.now_ns())
    }

    /// [`Pacer::begin_flush`] at time `now`.
    pub fn begin_flush_at<S: Store>(
        &self,
        volume: &Volume<S>,
        now: u64,
    ) -> Result<PacedFlush, Error> {
        // Read before the engine acts: a write counted here is in what it commits.
        let deferred = self.deferred.load(Ordering::SeqCst);
        let writes = self.writes.load(Ordering::SeqCst);
        // Flushes of several queues (or tags) run at once: the first to claim the time
        // makes the safe point, the others coalesce with it.
        let mut last = self.last_safe_point_ns.load(Ordering::SeqCst);
        let claimed = loop {
            let within = self
                .policy
                .coalesce
                .is_some_and(|c| last != 0 && now.saturating_sub(last) < nanos(c));
            if within {
                break false;
            }
            match self.last_safe_point_ns.compare_exchange(
                last,
                now.max(last),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break true,
                Err(moved) => last = moved,
            }
        };
        if claimed {
            volume.mark_safe_point(Trigger::Flush, None)?;
        }
        Ok(PacedFlush {
            deferred,
            writes,
            now,
            safe_point: claimed,
        })
    }

    /// After the commit of a FLUSH begun with `begin_flush`: what it made durable counts.
    pub fn end_flush(&self, f: PacedFlush) {
        if f.safe_point {
            self.made_safe_point(f.writes, f.now);
            // An earlier coalesced FLUSH is covered by this safe point.
            let _ =
                self.deferred
                    .compare_exchange(f.deferred, 0, Ordering::SeqCst, Ordering::SeqCst);
        } else {
            // Durable all the same (the commit synced the data, then the records), and
            // its state is to become a safe point once `coalesce` has passed.
            self.deferred.store(f.writes + 1, Ordering::SeqCst);
        }
    }

    /// An explicit safe point (`rewind safepoint`); returns its id.
    pub fn user_safe_point<S: Store>(
        &self,
        volume: &Volume<S>,
        label: Option<String>,
    ) -> Result<SafePointId, Error> {
        let writes = self.writes.load(Ordering::SeqCst);
        let id = volume.safe_point(Trigger::User, label)?;
        self.made_safe_point(writes, self.now_ns());
        Ok(id)
    }

    /// The ticker's look at time `now`: makes the safe point of a burst of coalesced
    /// flushes, or an idle one, if one is due. Returns the id of the one made.
    pub fn tick_at<S: Store>(
        &self,
        volume: &Volume<S>,
        now: u64,
    ) -> Result<Option<SafePointId>, Error> {
        let since = |t: u64| now.saturating_sub(t);
        // `deferred` before `writes`: a write and FLUSH between the two loads then show as
        // a changed `deferred`, which the compare-exchanges below leave alone.
        let deferred = self.deferred.load(Ordering::SeqCst);
        let writes = self.writes.load(Ordering::SeqCst);
        let take = |d: u64| {
            self.deferred
                .compare_exchange(d, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        };
        if deferred != 0 {
            if deferred != writes + 1 {
                // Written since that FLUSH: its state is gone from the live device. The
                // next FLUSH (or the idle interval) makes the safe point.
                take(deferred);
            } else if since(self.last_safe_point_ns.load(Ordering::SeqCst))
                >= self.policy.coalesce.map_or(0, nanos)
                && take(deferred)
            {
                // Nothing was written since that FLUSH, so this is its state. The engine
                // makes none if another safe point got there first.
                let id = volume.safe_point(Trigger::Flush, None)?;
                self.made_safe_point(writes, now);
                return Ok(Some(id));
            }
        }
        if let Some(idle) = self.policy.idle {
            let last_write = self.last_write_ns.load(Ordering::SeqCst);
            let uncovered = writes > self.covered.load(Ordering::SeqCst);
            if uncovered && last_write != 0 && since(last_write) >= nanos(idle) {
                let id = volume.safe_point(Trigger::Idle, None)?;
                self.made_safe_point(writes, now);
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Starts the ticker thread for `volume`, unless the policy gives it nothing to do.
    /// It holds the volume only during a look, so the daemon can still close it; it ends
    /// when stopped, when the volume is gone, or at the first engine error (after which the
    /// volume refuses all I/O anyway).
    pub fn start_ticker<S: Store + 'static>(
        self: &Arc<Self>,
        volume: Weak<Volume<S>>,
    ) -> std::io::Result<Option<Ticker>> {
        let Some(tick) = self.policy.tick() else {
            return Ok(None);
        };
        let stop = Arc::new(AtomicBool::new(false));
        let pacer = self.clone();
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("rewind-pacer".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::SeqCst) {
                    std::thread::park_timeout(tick);
                    if thread_stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some(volume) = volume.upgrade() else {
                        break;
                    };
                    match pacer.tick_at(&volume, pacer.now_ns()) {
                        Ok(Some(id)) => log::debug!("made safe point {id}"),
                        Ok(None) => {}
                        Err(e) => {
                            log::error!(
                                "making an idle or coalesced-flush safe point: {e}; the \
                                 daemon makes no more of them"
                            );
                            break;
                        }
                    }
                }
            })?;
        Ok(Some(Ticker {
            stop,
            handle: Some(handle),
        }))
    }
}

/// The running ticker thread; stopping it (or dropping it) waits for it to end.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            if h.join().is_err() {
                log::error!("the safe point ticker panicked");
            }
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_history::{CreateOptions, LogicalPage, MemStore, Stream, PAGE_SIZE};

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn volume() -> (Arc<MemStore>, Volume<Arc<MemStore>>) {
        let opts = CreateOptions {
            size: 4 << 20,
            history: Some(1 << 20),
            journal: Some(64 << 10),
        };
        let need = rewind_history::Layout::for_create(&opts)
            .unwrap()
            .required_bytes();
        let store = Arc::new(MemStore::new(need));
        rewind_history::create(&store, &opts, &crate::host::this_host()).unwrap();
        let v = Volume::open(store.clone(), &crate::host::this_host()).unwrap();
        (store, v)
    }

    fn write(v: &Volume<Arc<MemStore>>, s: &mut Stream, p: &Pacer, page: u64, now: u64) {
        let data = vec![page as u8 + 1; PAGE_SIZE as usize];
        v.write_page(s, LogicalPage(page), &data).unwrap();
        p.wrote_at(now);
    }

    fn triggers(v: &Volume<Arc<MemStore>>) -> Vec<&'static str> {
        v.safe_points().iter().map(|s| s.trigger.name()).collect()
    }

    #[test]
    fn policy_from_the_command_line() {
        let p = Policy::new(2, 100);
        assert_eq!(p.idle, Some(Duration::from_secs(2)));
        assert_eq!(p.coalesce, Some(Duration::from_millis(100)));
        assert_eq!(p.tick(), Some(Duration::from_millis(50)));
        assert_eq!(Policy::new(0, 0).tick(), None);
        assert_eq!(Policy::new(0, 1).tick(), Some(TICK_MIN));
        assert_eq!(Policy::new(3600, 0).tick(), Some(TICK_MAX));
    }

    #[test]
    fn idle_safe_point_only_after_a_quiet_interval_and_only_when_dirty() {
        let (_store, v) = volume();
        let p = Pacer::new(Policy::new(2, 0));
        let mut s = v.stream(0, 1);
        // Nothing written: no idle safe point however long it is quiet.
        assert_eq!(p.tick_at(&v, 10 * SEC).unwrap(), None);
        write(&v, &mut s, &p, 1, 11 * SEC);
        assert_eq!(p.tick_at(&v, 12 * SEC).unwrap(), None, "only 1 s quiet");
        let id = p.tick_at(&v, 13 * SEC).unwrap().expect("idle safe point");
        assert_eq!(triggers(&v), ["format", "idle"]);
        assert_eq!(v.safe_points().last().unwrap().id, id);
        // Covered now: no second one.
        assert_eq!(p.tick_at(&v, 20 * SEC).unwrap(), None);
        assert_eq!(v.safe_points().len(), 2);
    }

    #[test]
    fn flushes_within_the_interval_coalesce_and_stay_durable() {
        let (store, v) = volume();
        let p = Pacer::new(Policy::new(0, 100));
        let mut s = v.stream(0, 1);
        write(&v, &mut s, &p, 1, SEC);
        p.flush_at(&v, SEC).unwrap();
        assert_eq!(triggers(&v), ["format", "flush"]);
        write(&v, &mut s, &p, 2, SEC + 10 * MS);
        p.flush_at(&v, SEC + 20 * MS).unwrap();
        assert_eq!(triggers(&v), ["format", "flush"], "coalesced");

        // The coalesced FLUSH made page 2 durable: an image copied now (as after a power
        // cut) has it.
        let copy = Arc::new(MemStore::from_bytes(store.contents()));
        let after_crash = Volume::open(copy, &crate::host::this_host()).unwrap();
        let mut page = vec![0u8; PAGE_SIZE as usize];
        after_crash.read_page(LogicalPage(2), &mut page).unwrap();
        assert!(
            page.iter().all(|&b| b == 3),
            "page 2 lost by a coalesced flush"
        );

        // Its state becomes a safe point once the interval has passed, nothing written since.
        assert_eq!(p.tick_at(&v, SEC + 50 * MS).unwrap(), None, "too early");
        assert!(p.tick_at(&v, SEC + 120 * MS).unwrap().is_some());
        assert_eq!(triggers(&v), ["format", "flush", "flush"]);
        assert_eq!(p.tick_at(&v, SEC + 500 * MS).unwrap(), None);

        // After the interval a FLUSH makes a safe point again.
        write(&v, &mut s, &p, 3, 2 * SEC);
        p.flush_at(&v, 2 * SEC).unwrap();
        assert_eq!(triggers(&v), ["format", "flush", "flush", "flush"]);
    }

    #[test]
    fn no_deferred_safe_point_when_written_after_the_coalesced_flush() {
        let (_store, v) = volume();
        let p = Pacer::new(Policy::new(2, 100));
        let mut s = v.stream(0, 1);
        write(&v, &mut s, &p, 1, SEC);
        p.flush_at(&v, SEC).unwrap();
        write(&v, &mut s, &p, 2, SEC + 10 * MS);
        p.flush_at(&v, SEC + 10 * MS).unwrap(); // coalesced
        write(&v, &mut s, &p, 3, SEC + 20 * MS); // not flushed
        assert_eq!(p.tick_at(&v, SEC + 200 * MS).unwrap(), None);
        assert_eq!(triggers(&v), ["format", "flush"]);
        // The idle safe point takes all of it.
        assert!(p.tick_at(&v, 3 * SEC + 20 * MS).unwrap().is_some());
        assert_eq!(triggers(&v), ["format", "flush", "idle"]);
    }

    #[test]
    fn coalescing_disabled_makes_a_safe_point_per_dirty_flush() {
        let (_store, v) = volume();
        let p = Pacer::new(Policy::new(0, 0));
        let mut s = v.stream(0, 1);
        for i in 0..3 {
            write(&v, &mut s, &p, i, SEC + i);
            p.flush_at(&v, SEC + i).unwrap();
        }
        // A flush with nothing written makes none.
        p.flush_at(&v, 2 * SEC).unwrap();
        assert_eq!(triggers(&v), ["format", "flush", "flush", "flush"]);
    }

    #[test]
    fn a_user_safe_point_counts_for_coalescing_and_idle() {
        let (_store, v) = volume();
        let p = Pacer::new(Policy::new(2, 100));
        let mut s = v.stream(0, 1);
        write(&v, &mut s, &p, 1, SEC);
        let id = p.user_safe_point(&v, Some("x".into())).unwrap();
        assert_eq!(v.safe_points().last().unwrap().label.as_deref(), Some("x"));
        assert_eq!(v.safe_points().last().unwrap().id, id);
        assert_eq!(
            p.tick_at(&v, 10 * SEC).unwrap(),
            None,
            "covered by the user one"
        );
    }

    #[test]
    fn the_ticker_makes_idle_safe_points_and_stops() {
        let (_store, v) = volume();
        let v = Arc::new(v);
        let p = Arc::new(Pacer::new(Policy {
            idle: Some(Duration::from_millis(40)),
            coalesce: None,
        }));
        let mut s = v.stream(0, 1);
        v.write_page(&mut s, LogicalPage(0), &vec![9u8; PAGE_SIZE as usize])
            .unwrap();
        p.wrote();
        let ticker = p.start_ticker(Arc::downgrade(&v)).unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while v.safe_points().len() < 2 {
            assert!(Instant::now() < deadline, "no idle safe point within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        ticker.stop();
        assert_eq!(triggers(&v), ["format", "idle"]);
        // The ticker let go of the volume.
        assert!(Arc::try_unwrap(v).is_ok());
    }

    #[test]
    fn a_burst_of_flushes_ends_in_a_flush_safe_point() {
        let (_store, v) = volume();
        let v = Arc::new(v);
        let p = Arc::new(Pacer::new(Policy::new(2, 50)));
        let ticker = p.start_ticker(Arc::downgrade(&v)).unwrap().unwrap();
        let mut s = v.stream(0, 1);
        let data = vec![1u8; PAGE_SIZE as usize];
        let start = Instant::now();
        let mut flushes = 0;
        while start.elapsed() < Duration::from_millis(300) {
            v.write_page(&mut s, LogicalPage(flushes % 512), &data)
                .unwrap();
            p.wrote();
            p.flush_at(&v, p.now_ns()).unwrap();
            flushes += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        // Well before the idle interval.
        std::thread::sleep(Duration::from_millis(500));
        ticker.stop();
        let t = triggers(&v);
        assert!(t.len() < 2 + 300 / 50 + 2, "{flushes} flushes: {t:?}");
        assert_eq!(t.last(), Some(&"flush"), "{flushes} flushes: {t:?}");
    }
}
