//! Model-based test of the engine: random writes, discards, flushes, labelled safe points,
//! rollbacks, pins, open views, clean reopens and crashes against a plain in-memory copy of
//! the device at every safe point.
//!
//! The store is in memory and every store write is durable at once, so a "crash" (dropping
//! the volume without `close`, then opening it in the same boot: a killed daemon) loses
//! exactly the records that never reached the journal. What `check_after_crash` asserts
//! depends on the volume's `Durability`, and every workload runs in both: with
//! `CompletedWrites` the device is exactly as it was (no completed write is lost); with
//! `FlushedWrites` it is the last flushed state plus a prefix of the later writes, in
//! order, as after a power cut.

mod common;
use common::{decode, page_data};
use std::sync::Arc;

use proptest::prelude::*;
use rewind_history::{
    create, sim, CommitDue, CreateOptions, Durability, Error, Host, LogicalPage, MemStore, Notice,
    SafePointId, Steps, Store, ViewId, Volume, PAGE_SIZE,
};

const PAGES: u64 = 96;
/// The boot the harness's daemon runs in: a reopen in it is a daemon killed and replaced.
const BOOT: u64 = 1;
/// The boot after a power cut.
const NEXT_BOOT: u64 = 3;
/// Each workload runs in both: a device that outlives its daemon, one that dies with it.
const DURABILITIES: [Durability; 2] = [Durability::CompletedWrites, Durability::FlushedWrites];

#[derive(Clone, Debug)]
enum Op {
    Write(u64, u8),
    WriteRun(u64, u8, u64),
    Discard(u64, u64),
    Flush,
    /// A FLUSH whose commit the caller makes, as a daemon's queue does on its ring.
    StagedFlush,
    Label,
    Rollback(usize),
    View(usize),
    Pin(usize),
    Unpin(usize),
    OpenView(usize),
    CloseView(usize),
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..PAGES, any::<u8>()).prop_map(|(l, v)| Op::Write(l, v)),
        2 => (0..PAGES, any::<u8>(), 1..16u64).prop_map(|(l, v, n)| Op::WriteRun(l, v, n)),
        1 => (0..PAGES, 1..24u64).prop_map(|(l, n)| Op::Discard(l, n)),
        2 => Just(Op::Flush),
        1 => Just(Op::StagedFlush),
        1 => Just(Op::Label),
        1 => any::<usize>().prop_map(Op::Rollback),
        1 => any::<usize>().prop_map(Op::View),
        1 => any::<usize>().prop_map(Op::Pin),
        1 => any::<usize>().prop_map(Op::Unpin),
        1 => any::<usize>().prop_map(Op::OpenView),
        1 => any::<usize>().prop_map(Op::CloseView),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

type Device = Vec<Option<u8>>; // None: zeros

struct Harness {
    store: Arc<MemStore>,
    /// Creates, opens and reads the image (boot `BOOT`, a simulated clock).
    host: Host,
    /// Set on the volume at every open.
    durability: Durability,
    vol: Option<Volume<Arc<MemStore>>>,
    stream: rewind_history::Stream,
    live: Device,
    /// The device at the last flush.
    durable: Device,
    /// Page changes since the last flush, in the order they completed.
    since: Vec<(u64, Option<u8>)>,
    /// The whole device at every safe point the test made.
    snapshots: std::collections::HashMap<SafePointId, Device>,
    labels: u32,
    /// Safe points the test pinned and reclaim has not released.
    pins: std::collections::BTreeSet<SafePointId>,
    /// Open views and their safe points; a dropped one is removed.
    views: Vec<(ViewId, SafePointId)>,
}

impl Harness {
    /// A harness whose volume keeps every completed write across a crash, as a volume opens.
    fn new(history_pages: u64, journal_blocks: u64) -> Harness {
        Harness::in_mode(history_pages, journal_blocks, Durability::CompletedWrites)
    }

    fn in_mode(history_pages: u64, journal_blocks: u64, durability: Durability) -> Harness {
        let opts = CreateOptions {
            size: PAGES * PAGE_SIZE,
            history: Some(history_pages * PAGE_SIZE),
            journal: Some(journal_blocks * 512),
        };
        let layout = rewind_history::Layout::for_create(&opts).unwrap();
        let store = Arc::new(MemStore::new(layout.required_bytes()));
        let host = sim::host(BOOT);
        create(&store, &opts, &host).unwrap();
        let vol = Volume::open(store.clone(), &host).unwrap();
        vol.set_durability(durability);
        let stream = vol.stream(0, 1);
        Harness {
            store,
            host,
            durability,
            vol: Some(vol),
            stream,
            live: vec![None; PAGES as usize],
            durable: vec![None; PAGES as usize],
            since: Vec::new(),
            snapshots: [(SafePointId(0), vec![None; PAGES as usize])]
                .into_iter()
                .collect(),
            labels: 0,
            pins: Default::default(),
            views: Vec::new(),
        }
    }

    /// Takes reclaim's notices into the model: a dropped view reads no more, a released pin
    /// no longer holds.
    fn take_notices(&mut self) {
        for n in self.vol().take_notices() {
            match n {
                Notice::ViewDropped { view, at } => {
                    let i = self
                        .views
                        .iter()
                        .position(|v| v.0 == view)
                        .expect("open view");
                    assert_eq!(self.views[i].1, at);
                    self.views.remove(i);
                    let mut buf = vec![0u8; PAGE_SIZE as usize];
                    let err = self.vol().read_view_page(view, LogicalPage(0), &mut buf);
                    assert!(matches!(err, Err(Error::ViewDropped { .. })), "{err:?}");
                }
                Notice::PinReleased { id } => assert!(self.pins.remove(&id), "pin {id}"),
            }
        }
    }

    /// Every pin and open view still holds its safe point, reading back exactly.
    fn check_holds(&mut self) {
        self.take_notices();
        let infos = self.vol().safe_point_infos();
        let pinned: std::collections::BTreeSet<SafePointId> = infos
            .iter()
            .filter(|i| i.pinned)
            .map(|i| i.safe_point.id)
            .collect();
        assert_eq!(pinned, self.pins, "pins");
        for at in self.pins.clone() {
            if self.snapshots.contains_key(&at) {
                self.check_view(at);
            }
        }
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        for &(v, at) in &self.views {
            let want = &self.snapshots[&at];
            for l in 0..PAGES {
                self.vol()
                    .read_view_page(v, LogicalPage(l), &mut buf)
                    .unwrap();
                assert_eq!(
                    decode(l, &buf),
                    want[l as usize],
                    "page {l} of the view of {at} ({:?})",
                    self.durability
                );
            }
            // A whole request's pages at once, as the daemon resolves them, agree with the
            // pages one by one.
            let mut run = Vec::new();
            self.vol()
                .resolve_view_pages(v, LogicalPage(0), PAGES as usize, &mut run)
                .unwrap();
            let one_by_one: Vec<_> = (0..PAGES)
                .map(|l| self.vol().resolve_view(v, LogicalPage(l)).unwrap())
                .collect();
            assert_eq!(run, one_by_one, "view of {at}");
        }
        let mut run = Vec::new();
        self.vol()
            .resolve_pages(LogicalPage(0), PAGES as usize, &mut run)
            .unwrap();
        let one_by_one: Vec<_> = (0..PAGES)
            .map(|l| self.vol().resolve(LogicalPage(l)).unwrap())
            .collect();
        assert_eq!(run, one_by_one, "live pages");
    }

    /// Safe points in the window whose content the model knows (reclaim makes others).
    fn known(&self) -> Vec<SafePointId> {
        self.vol()
            .safe_points()
            .iter()
            .map(|s| s.id)
            .filter(|id| self.snapshots.contains_key(id))
            .collect()
    }

    /// `diff` between safe point `a` and `b` (`None`: live) names every page whose
    /// contents the model says differ, in well-formed extents.
    fn check_diff(&self, a: SafePointId, b: Option<SafePointId>) {
        let extents = self.vol().diff(a, b).unwrap();
        let mut listed = vec![false; PAGES as usize];
        let mut end = None;
        for &(first, n) in &extents {
            assert!(n > 0, "an empty extent: {extents:?}");
            assert!(
                end.is_none_or(|e| first.0 > e),
                "extents out of order or touching: {extents:?}"
            );
            end = Some(first.0 + n);
            for l in first.0..first.0 + n {
                listed[l as usize] = true;
            }
        }
        let then = &self.snapshots[&a];
        let now = b.map_or(&self.live, |b| &self.snapshots[&b]);
        for l in 0..PAGES as usize {
            assert!(
                then[l] == now[l] || listed[l],
                "page {l} differs between {a} and {b:?} ({:?} vs {:?}) but diff has {extents:?}",
                then[l],
                now[l]
            );
        }
    }

    fn made_safe_point(&mut self, id: SafePointId) {
        self.snapshots.insert(id, self.live.clone());
        self.durable = self.live.clone();
        self.since.clear();
    }

    fn check_view(&self, at: SafePointId) {
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        let want = &self.snapshots[&at];
        for l in 0..PAGES {
            self.vol()
                .read_page_at(LogicalPage(l), at, &mut buf)
                .unwrap();
            assert_eq!(
                decode(l, &buf),
                want[l as usize],
                "page {l} at safe point {at} ({:?})",
                self.durability
            );
        }
    }

    fn vol(&self) -> &Volume<Arc<MemStore>> {
        self.vol.as_ref().unwrap()
    }

    fn set(&mut self, l: u64, v: Option<u8>) {
        self.live[l as usize] = v;
        self.since.push((l, v));
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Write(l, v) => self.write(l, v),
            Op::WriteRun(l, v, n) => {
                // One request, as the daemon makes it of a multi-page write.
                let end = (l + n).min(PAGES);
                let data: Vec<u8> = (l..end).flat_map(|i| page_data(i, v)).collect();
                let mut s = self.stream.clone();
                self.vol()
                    .write_pages(&mut s, LogicalPage(l), &data)
                    .unwrap();
                self.stream = s;
                for i in l..end {
                    self.set(i, Some(v));
                }
            }
            Op::Discard(l, n) => {
                let n = n.min(PAGES - l);
                self.vol().discard(LogicalPage(l), n).unwrap();
                for i in l..l + n {
                    self.set(i, None);
                }
            }
            Op::Flush => self.safe_point(rewind_history::Trigger::Flush, None),
            Op::StagedFlush => self.staged_flush(),
            Op::Label => {
                self.labels += 1;
                let label = format!("label-{}", self.labels);
                self.safe_point(rewind_history::Trigger::User, Some(label));
            }
            Op::Rollback(k) => self.rollback(k),
            Op::View(k) => {
                if let Some(at) = self.pick_known(k) {
                    self.check_view(at);
                    self.check_diff(at, None);
                    let other = self.pick_known(k / 7);
                    self.check_diff(at, other);
                }
            }
            Op::Pin(k) => self.pin(k, true),
            Op::Unpin(k) => self.pin(k, false),
            Op::OpenView(k) => {
                if let Some(at) = self.pick_known(k) {
                    let v = self.vol().open_view(at).unwrap();
                    self.views.push((v, at));
                }
            }
            Op::CloseView(k) => {
                if !self.views.is_empty() {
                    let (v, _) = self.views.remove(k % self.views.len());
                    self.vol().close_view(v);
                }
            }
            Op::Reopen => self.close_and_reopen(),
            Op::Crash => self.crash(),
        }
    }

    fn write(&mut self, l: u64, v: u8) {
        let mut s = self.stream.clone();
        self.vol()
            .write_page(&mut s, LogicalPage(l), &page_data(l, v))
            .unwrap();
        self.stream = s;
        self.set(l, Some(v));
    }

    fn safe_point(&mut self, trigger: rewind_history::Trigger, label: Option<String>) {
        let id = self.vol().safe_point(trigger, label).unwrap();
        self.made_safe_point(id);
    }

    /// `safe_point` for a FLUSH, with the commit's steps (data sync, journal writes, sync)
    /// done here through the store, as a daemon's queue does them on its ring; through
    /// `commit` when the engine leaves the commit to a thread that may wait.
    fn staged_flush(&mut self) {
        let vol = self.vol();
        let id = vol
            .mark_safe_point(rewind_history::Trigger::Flush, None)
            .unwrap();
        match vol.try_begin_commit().unwrap() {
            None => vol.commit(false).unwrap(),
            Some(staged) => {
                let steps = sim::staged_steps(vol.store(), &staged, false);
                staged.finish(steps).unwrap();
            }
        }
        self.made_safe_point(id);
    }

    /// The `k`th (modulo) of the safe points the model knows, if it knows any: reclaim may
    /// have left only safe points it made.
    fn pick_known(&self, k: usize) -> Option<SafePointId> {
        let known = self.known();
        (!known.is_empty()).then(|| known[k % known.len()])
    }

    fn rollback(&mut self, k: usize) {
        let Some(to) = self.pick_known(k) else {
            return;
        };
        let before = self.vol().rollback(to).unwrap();
        self.made_safe_point(before);
        self.live = self.snapshots[&to].clone();
        self.durable = self.live.clone();
        self.since.clear();
    }

    /// Pins (or unpins) the `k`th (modulo) safe point of the window.
    fn pin(&mut self, k: usize, pinned: bool) {
        let ids: Vec<SafePointId> = self.vol().safe_points().iter().map(|s| s.id).collect();
        let id = ids[k % ids.len()];
        self.vol().pin(id, pinned).unwrap();
        if pinned {
            self.pins.insert(id);
        } else {
            self.pins.remove(&id);
        }
    }

    fn close_and_reopen(&mut self) {
        self.views.clear(); // views live as long as their daemon
        self.vol.take().unwrap().close().unwrap();
        self.reopen();
        // A clean close makes everything durable.
        self.durable = self.live.clone();
        self.since.clear();
    }

    fn crash(&mut self) {
        self.take_notices();
        self.views.clear();
        drop(self.vol.take());
        self.reopen();
        self.check_after_crash();
        // Every durable safe point of the window still reads back exactly.
        for at in self.known() {
            self.check_view(at);
        }
    }

    fn reopen(&mut self) {
        let vol = Volume::open(self.store.clone(), &self.host).unwrap();
        vol.set_durability(self.durability);
        self.stream = vol.stream(0, 1);
        self.vol = Some(vol);
    }

    fn read_device(&self) -> Device {
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        (0..PAGES)
            .map(|l| {
                self.vol().read_page(LogicalPage(l), &mut buf).unwrap();
                decode(l, &buf)
            })
            .collect()
    }

    fn check_live(&self) {
        let got = self.read_device();
        for (l, (g, w)) in got.iter().zip(&self.live).enumerate() {
            assert_eq!(g, w, "page {l} ({:?})", self.durability);
        }
    }

    /// After a killed daemon: with `CompletedWrites` the device is as it was; with
    /// `FlushedWrites` it is the last flush plus a prefix of the later writes (all of them
    /// when a full buffer committed them, none when nothing did).
    fn check_after_crash(&mut self) {
        let got: Device = self.read_device();
        if self.durability == Durability::CompletedWrites {
            for (l, (g, w)) in got.iter().zip(&self.live).enumerate() {
                assert_eq!(g, w, "page {l}: a killed daemon lost a completed write");
            }
        }
        let mut candidate = self.durable.clone();
        let mut matched = candidate == got;
        for &(l, v) in &self.since {
            if matched {
                break;
            }
            candidate[l as usize] = v;
            matched = candidate == got;
        }
        assert!(
            matched,
            "after a crash the device is not the last flush plus a prefix of later writes \
             ({:?})",
            self.durability
        );
        self.live = got.clone();
        self.durable = got;
        self.since.clear();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn device_matches_the_model(ops in prop::collection::vec(op(), 1..300)) {
        for durability in DURABILITIES {
            let mut h = Harness::in_mode(256, 64, durability);
            for op in &ops {
                h.run(op);
                h.check_live();
                h.check_holds();
            }
            h.vol.take().unwrap().close().unwrap();
            h.reopen();
            h.check_live();
        }
    }

    /// A small journal forces checkpoints and ring wraps; a history area barely larger than
    /// the device forces reclaim to retire safe points and close epochs.
    #[test]
    fn reclaim_and_checkpoints_keep_the_data(ops in prop::collection::vec(op(), 1..400)) {
        for durability in DURABILITIES {
            let mut h = Harness::in_mode(256, 16, durability);
            for op in &ops {
                h.run(op);
                h.check_holds();
            }
            h.check_live();
            let stats = h.vol().stats();
            prop_assert!(stats.safe_points >= 1);
            // Every page is free, history or live, once: exact only without rollbacks, which
            // make a history page live again (one page, two references).
            if !ops.iter().any(|o| matches!(o, Op::Rollback(_))) {
                prop_assert_eq!(
                    stats.free_pages + stats.history_pages + h.live.iter().filter(|v| v.is_some()).count() as u64,
                    stats.physical_pages
                );
            }
            // The reopen inside `run` recounts every reference and checks each page belongs
            // to one logical page; do it once more at the end.
            h.run(&Op::Reopen);
            h.check_live();
        }
    }
}

#[test]
fn overwriting_the_device_many_times_never_runs_out_of_space() {
    for durability in DURABILITIES {
        let mut h = Harness::in_mode(256, 32, durability);
        for round in 0..20u8 {
            for l in 0..PAGES {
                h.run(&Op::Write(l, round.wrapping_mul(7).wrapping_add(1)));
            }
            if round % 3 == 0 {
                h.run(&Op::Flush);
            }
        }
        h.check_live();
        assert!(h.vol().stats().safe_points >= 1);
    }
}

/// Views read their safe point while many epochs close after it: their reads then go
/// through an index of their own, folded as more epochs close, while reclaim retires safe
/// points between them and rollbacks rewrite the live device; with so many views that the
/// indexes' budget takes away those of the views read least recently, to be made again.
#[test]
fn views_behind_many_safe_points_read_their_safe_point() {
    let mut h = Harness::in_mode(640, 64, Durability::CompletedWrites);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for round in 0..160u64 {
        for _ in 0..6 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            h.run(&Op::Write(x % PAGES, (round % 250) as u8 + 1));
        }
        h.run(&Op::Flush);
        if round % 4 == 0 {
            h.run(&Op::OpenView(x as usize));
        }
        if round % 37 == 36 {
            h.run(&Op::Rollback(x as usize));
        }
        if round % 10 == 9 {
            h.check_holds();
        }
    }
    h.check_holds();
    let kept = h.vol().stats().safe_points;
    assert!(h.views.len() > 16, "views stayed open: {}", h.views.len());
    assert!(kept < 160, "reclaim retired safe points: {kept} kept");
}

/// Writes since the last flush, then the daemon killed: what comes back in the same boot (a
/// new daemon) and after a power cut (another boot), for `durability`. Returns the harness
/// with the volume reopened in the same boot, the flushed state and the completed one.
fn kill_after_unflushed_writes(durability: Durability) -> (Harness, Device, Device) {
    let mut h = Harness::in_mode(256, 64, durability);
    h.run(&Op::Write(1, 1));
    h.run(&Op::Flush);
    h.run(&Op::Write(1, 2));
    h.run(&Op::WriteRun(20, 3, 10));
    h.run(&Op::Discard(22, 2));
    let flushed = h.durable.clone();
    let completed = h.live.clone();
    assert_ne!(flushed, completed);
    drop(h.vol.take());
    let image = h.store.contents();
    // Another boot (a power cut) trusts no unsynced journal block: the flushed state.
    let other = Arc::new(MemStore::from_bytes(image));
    h.vol = Some(Volume::open(other, &sim::host(NEXT_BOOT)).unwrap());
    assert_eq!(
        h.read_device(),
        flushed,
        "after a power cut ({durability:?})"
    );
    drop(h.vol.take());
    h.reopen();
    (h, flushed, completed)
}

#[test]
fn a_killed_daemon_loses_no_completed_write_but_a_power_cut_may() {
    let (mut h, _, completed) = kill_after_unflushed_writes(Durability::CompletedWrites);
    // The same boot (the daemon was killed): every completed write is there, from the
    // unsynced journal blocks.
    assert_eq!(h.read_device(), completed);
    // The new daemon made them durable at once: now even another boot sees them.
    drop(h.vol.take());
    let image = h.store.contents();
    let later = Volume::open(Arc::new(MemStore::from_bytes(image)), &sim::host(NEXT_BOOT)).unwrap();
    h.vol = Some(later);
    assert_eq!(h.read_device(), completed);
}

#[test]
fn with_flushed_writes_a_killed_daemon_loses_the_unflushed_writes_and_no_flushed_one() {
    let (mut h, flushed, _) = kill_after_unflushed_writes(Durability::FlushedWrites);
    // No commit ran since the flush, so none of the later writes reached the journal: the
    // kill lost them all, as a power cut does; the flushed write is there.
    assert_eq!(h.read_device(), flushed);
    assert_eq!(h.read_device()[1], Some(1));
    // A write that a flush followed survives the next kill.
    h.run(&Op::Write(5, 7));
    h.run(&Op::Flush);
    h.run(&Op::Write(6, 8));
    drop(h.vol.take());
    h.reopen();
    let got = h.read_device();
    assert_eq!((got[5], got[6]), (Some(7), None));
}

/// The byte ranges where `a` and `b` differ, as (first, end) pairs.
fn changed_ranges(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for i in (0..a.len()).filter(|&i| a[i] != b[i]) {
        match out.last_mut() {
            Some(r) if r.1 == i => r.1 = i + 1,
            _ => out.push((i, i + 1)),
        }
    }
    out
}

#[test]
fn only_completed_writes_put_the_record_in_the_journal_before_the_write_completes() {
    for durability in DURABILITIES {
        let mut h = Harness::in_mode(256, 64, durability);
        h.run(&Op::Write(3, 1));
        h.run(&Op::Flush);
        let before = h.store.contents();
        h.run(&Op::Write(4, 2));
        let after = h.store.contents();
        let vol = h.vol();
        let page = vol
            .layout()
            .page_offset(vol.resolve(LogicalPage(4)).unwrap().unwrap()) as usize;
        let outside: Vec<(usize, usize)> = changed_ranges(&before, &after)
            .into_iter()
            .filter(|&(first, end)| first < page || end > page + PAGE_SIZE as usize)
            .collect();
        match durability {
            // The data page, and the journal block that records it.
            Durability::CompletedWrites => assert!(!outside.is_empty(), "no record written"),
            // The data page only: the record waits for the next commit.
            Durability::FlushedWrites => assert!(outside.is_empty(), "wrote {outside:?}"),
        }
        // A flush makes the write durable in both.
        h.run(&Op::Flush);
        drop(h.vol.take());
        let image = h.store.contents();
        h.vol = Some(
            Volume::open(Arc::new(MemStore::from_bytes(image)), &sim::host(NEXT_BOOT)).unwrap(),
        );
        assert_eq!(h.read_device()[4], Some(2), "{durability:?}");
    }
}

#[test]
fn corrupt_superblock_copy_falls_back_to_the_other() {
    let mut h = Harness::new(256, 64);
    h.run(&Op::Write(3, 9));
    h.run(&Op::Reopen);
    // Smash copy A; copy B must carry the image.
    h.vol.take().unwrap().close().unwrap();
    use rewind_history::Store;
    h.store.write_at(100, &[0xff; 64]).unwrap();
    h.reopen();
    h.check_live();
    // Smash both: a clear error, not a panic. (Opening rewrote copy A.)
    drop(h.vol.take());
    h.store.write_at(100, &[0xff; 64]).unwrap();
    h.store.write_at(4096 + 100, &[0xff; 64]).unwrap();
    let err = Volume::open(h.store.clone(), &h.host)
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn a_page_being_read_is_not_reused_until_the_read_ends() {
    let mut h = Harness::new(256, 64);
    h.run(&Op::Write(0, 1));
    let vol = h.vol.take().unwrap();
    let tracker = vol.read_tracker();
    let g = tracker.begin(&vol);
    let old = vol.resolve(LogicalPage(0)).unwrap().unwrap();
    // Rewritten in the same epoch and committed: the old page is free as far as the
    // metadata goes, but the read above may still be on its way to it.
    let mut s = vol.stream(0, 1);
    vol.write_page(&mut s, LogicalPage(0), &page_data(0, 2))
        .unwrap();
    vol.flush().unwrap();
    let mut claimed = Vec::new();
    while let Ok(p) = vol.allocate(&mut s, LogicalPage(1)) {
        assert_ne!(
            p, old,
            "a page under a read in flight was handed to a write"
        );
        claimed.push(p);
    }
    tracker.end(g);
    for p in claimed {
        vol.abandon(p);
    }
    vol.flush().unwrap(); // a commit releases what no read needs any more
    let mut seen = false;
    while let Ok(p) = vol.allocate(&mut s, LogicalPage(1)) {
        seen |= p == old;
    }
    assert!(seen, "the page was never released after the read ended");
}

#[test]
fn an_image_of_a_newer_version_is_refused_and_left_alone() {
    let mut h = Harness::new(256, 64);
    h.run(&Op::Write(5, 3));
    h.vol.take().unwrap().close().unwrap();
    // Both copies claim version 5, with valid checksums.
    claim_version(&h.store, 5);
    let before = h.store.contents();
    let err = Volume::open(h.store.clone(), &h.host)
        .err()
        .expect("must refuse");
    assert!(
        matches!(
            err,
            rewind_history::Error::UnsupportedVersion {
                found: 5,
                supported: 4
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade rewind"), "{err}");
    assert!(
        h.store.contents() == before,
        "a refused open changed the image"
    );
}

/// Sets the version of both superblock copies of `store` to `version`, with valid checksums.
fn claim_version(store: &MemStore, version: u32) {
    for base in [0u64, 4096] {
        let mut sb = vec![0u8; 208];
        store.read_at(base, &mut sb).unwrap();
        sb[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32c::crc32c(&sb[..200]);
        sb[200..204].copy_from_slice(&crc.to_le_bytes());
        store.write_at(base, &sb).unwrap();
    }
}

/// A superblock of version 0 is corrupt; so is a superblock over a checkpoint in a form its
/// version never writes: a reader of that version would misread it (a version 1 or 3
/// superblock over version 4's wide form, a version 4 superblock over version 3's narrow
/// one).
#[test]
fn a_version_0_image_or_a_checkpoint_of_another_version_is_refused() {
    let h = Harness::new(256, 64);
    drop(h.vol);
    claim_version(&h.store, 0);
    let err = Volume::open(h.store.clone(), &h.host)
        .err()
        .expect("version 0");
    assert!(err.to_string().contains("version 0"), "{err}");
    for older in [1, 3] {
        claim_version(&h.store, older);
        let err = Volume::open(h.store.clone(), &h.host)
            .err()
            .expect("a wide checkpoint under an older version");
        assert!(err.to_string().contains("wide form"), "{err}");
    }
    let opts = CreateOptions {
        size: 256 * PAGE_SIZE,
        history: Some(1 << 20),
        journal: Some(64 * 512),
    };
    let layout = rewind_history::Layout::for_create_as(&opts, 3).unwrap();
    // Room for the larger layout version 4 would give it, so the checkpoint is reached.
    let store = Arc::new(MemStore::new(layout.required_bytes() + (1 << 20)));
    sim::create_version(&store, &opts, &h.host, 3).unwrap();
    Volume::open(store.clone(), &h.host)
        .unwrap()
        .close()
        .unwrap();
    claim_version(&store, 4);
    let err = Volume::open(store.clone(), &h.host)
        .err()
        .expect("a narrow checkpoint under version 4");
    assert!(err.to_string().contains("form of version 3"), "{err}");
}

#[test]
fn a_foreign_image_is_not_rewind() {
    let store = Arc::new(MemStore::from_bytes(vec![0x5a; 1 << 20]));
    let err = Volume::open(store, &sim::host(BOOT))
        .err()
        .expect("must refuse");
    assert!(matches!(err, rewind_history::Error::NotRewind), "{err}");
}

#[test]
fn inspect_reads_the_window_of_a_closed_or_crashed_image_without_writing() {
    let mut h = Harness::new(256, 64);
    h.run(&Op::Write(1, 1));
    h.run(&Op::Flush);
    h.run(&Op::WriteRun(10, 2, 5));
    h.run(&Op::Write(1, 2));
    let id = h
        .vol()
        .safe_point(rewind_history::Trigger::User, Some("before-upgrade".into()))
        .unwrap();
    h.run(&Op::Write(1, 3));
    h.run(&Op::Flush);
    let live = h.vol().safe_point_infos();
    drop(h.vol.take()); // a crash: everything above was flushed
    let before = h.store.contents();
    let ins = rewind_history::inspect(&h.store, &h.host).unwrap();
    assert!(h.store.contents() == before, "inspect wrote to the image");
    assert!(!ins.clean);
    assert_eq!(ins.safe_points, live);
    let labelled = ins
        .safe_points
        .iter()
        .find(|i| i.safe_point.id == id)
        .expect("the labelled safe point");
    assert_eq!(labelled.safe_point.label.as_deref(), Some("before-upgrade"));
    assert_eq!(labelled.changed_pages, Some(6));
    // Page 1 was rewritten after it: its old page is what this safe point alone holds.
    assert_eq!(labelled.held_pages, 1);
}

#[test]
fn a_multi_page_write_lands_in_one_extent_at_home_then_in_the_history_area() {
    let h = Harness::new(256, 64);
    let vol = h.vol.as_ref().unwrap();
    let layout = *vol.layout();
    let mut s = vol.stream(0, 1);
    let extent = |first: u64, n: u64| -> Vec<u64> {
        (first..first + n)
            .map(|l| vol.resolve(LogicalPage(l)).unwrap().unwrap().0)
            .collect()
    };
    let data: Vec<u8> = (10..26).flat_map(|l| page_data(l, 1)).collect();
    vol.write_pages(&mut s, LogicalPage(10), &data).unwrap();
    assert_eq!(extent(10, 16), (10..26).collect::<Vec<_>>(), "at home");
    // Rewritten after a safe point: the home pages keep the history, so the new data goes
    // to one extent at the stream's cursor, the start of the history area, with no page
    // skipped before it.
    vol.flush().unwrap();
    let data: Vec<u8> = (10..26).flat_map(|l| page_data(l, 2)).collect();
    vol.write_pages(&mut s, LogicalPage(10), &data).unwrap();
    let start = layout.logical_pages;
    assert_eq!(extent(10, 16), (start..start + 16).collect::<Vec<_>>());
    // Again: the next extent follows it.
    vol.flush().unwrap();
    let data: Vec<u8> = (10..26).flat_map(|l| page_data(l, 3)).collect();
    vol.write_pages(&mut s, LogicalPage(10), &data).unwrap();
    assert_eq!(extent(10, 16), (start + 16..start + 32).collect::<Vec<_>>());
}

#[test]
fn diff_names_exactly_the_pages_written_between_two_safe_points() {
    let h = Harness::new(256, 64);
    let vol = h.vol.as_ref().unwrap();
    let mut s = vol.stream(0, 1);
    let write = |s: &mut rewind_history::Stream, first: u64, n: u64, v: u8| {
        let data: Vec<u8> = (first..first + n).flat_map(|l| page_data(l, v)).collect();
        vol.write_pages(s, LogicalPage(first), &data).unwrap();
    };
    write(&mut s, 0, 40, 1);
    let a = vol.safe_point(rewind_history::Trigger::User, None).unwrap();
    write(&mut s, 3, 2, 2);
    write(&mut s, 10, 5, 2);
    vol.discard(LogicalPage(30), 2).unwrap();
    write(&mut s, 60, 1, 2); // never written before: zeros at `a`
    let b = vol.safe_point(rewind_history::Trigger::User, None).unwrap();
    write(&mut s, 12, 4, 3);
    let pages = |e: Vec<(LogicalPage, u64)>| -> Vec<(u64, u64)> {
        e.into_iter().map(|(l, n)| (l.0, n)).collect()
    };
    assert_eq!(
        pages(vol.diff(a, Some(b)).unwrap()),
        [(3, 2), (10, 5), (30, 2), (60, 1)]
    );
    assert_eq!(
        pages(vol.diff(b, Some(a)).unwrap()),
        pages(vol.diff(a, Some(b)).unwrap())
    );
    assert_eq!(pages(vol.diff(b, None).unwrap()), [(12, 4)]);
    assert_eq!(
        pages(vol.diff(a, None).unwrap()),
        [(3, 2), (10, 6), (30, 2), (60, 1)]
    );
    assert!(vol.diff(b, Some(b)).unwrap().is_empty());
    let err = vol.diff(SafePointId(999), None).unwrap_err();
    assert!(
        err.to_string().contains("not in the history window"),
        "{err}"
    );
}

#[test]
fn a_staged_commit_keeps_other_commits_out_and_a_failed_sync_fails_the_volume() {
    let mut h = Harness::new(256, 64);
    h.run(&Op::Write(3, 1));
    let vol = h.vol.as_ref().unwrap();
    let staged = vol.try_begin_commit().unwrap().expect("a commit to stage");
    // Another thread may not begin one meanwhile; this thread's own writes go on (without
    // waiting for a commit, which would never come).
    std::thread::scope(|s| {
        s.spawn(|| assert!(vol.try_begin_commit().unwrap().is_none()));
    });
    let mut stream = vol.stream(0, 1);
    for i in 0..4 {
        vol.write_page(&mut stream, LogicalPage(10 + i), &page_data(10 + i, 2))
            .unwrap();
    }
    // The kernel reports a writeback error once: a sync that failed is not tried again,
    // and the volume refuses everything after.
    let eio = std::io::Error::from_raw_os_error(5); // EIO
    assert!(staged.finish(Steps::SyncFailed(eio)).is_err());
    assert!(vol
        .write_page(&mut stream, LogicalPage(20), &page_data(20, 3))
        .is_err());
    assert!(vol.commit(false).is_err());
}

#[test]
fn past_twice_a_commits_records_the_thread_of_a_staged_commit_is_told_to_wait() {
    // A 16-block journal: a commit should take 60 records, twice that is 120.
    let mut h = Harness::new(1024, 16);
    h.run(&Op::Write(0, 1));
    let vol = h.vol.as_ref().unwrap();
    let staged = vol.try_begin_commit().unwrap().expect("a commit to stage");
    let mut stream = vol.stream(0, 1);
    let mut dues = Vec::new();
    for n in 0..130u64 {
        let l = LogicalPage(n % PAGES);
        let p = vol.allocate(&mut stream, l).unwrap();
        let v = (n / PAGES) as u8 + 2;
        vol.store()
            .write_at(vol.layout().page_offset(p), &page_data(l.0, v))
            .unwrap();
        dues.push(vol.stage_writes(&[(l, p)]).unwrap());
        vol.record_staged().unwrap();
    }
    // Never a commit on the spot (it would wait for this thread's own staged commit
    // forever): a commit soon past 60 records, a wait past 120.
    assert_eq!(dues[..60], [CommitDue::No; 60]);
    assert!(dues[60..120].iter().all(|&d| d == CommitDue::Soon));
    assert!(dues[120..].iter().all(|&d| d == CommitDue::Wait));
    staged
        .finish(Steps::NotDone(std::io::Error::other("not tried")))
        .unwrap();
    // The commit the waiting writes wait for, made elsewhere in the daemon.
    vol.commit(false).unwrap();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    vol.read_page(LogicalPage(129 % PAGES), &mut page).unwrap();
    assert_eq!(decode(129 % PAGES, &page), Some(3));
}

/// A version 4 checkpoint holds the history in runs: a whole leaf written, flushed,
/// rewritten and flushed (two history groups of 4096 entries each) takes a record per
/// group, and reads back whole.
#[test]
fn a_checkpoint_holds_a_sequential_rewrite_in_runs() {
    use rewind_history::{check, read_superblock};
    const LEAF: u64 = 4096;
    let opts = CreateOptions {
        size: 2 * LEAF * PAGE_SIZE,
        history: Some(2 * LEAF * PAGE_SIZE),
        journal: Some(64 * 512),
    };
    let layout = rewind_history::Layout::for_create(&opts).unwrap();
    let store = Arc::new(MemStore::new(layout.required_bytes()));
    let host = sim::host(BOOT);
    create(&store, &opts, &host).unwrap();
    let vol = Volume::open(store.clone(), &host).unwrap();
    let mut s = vol.stream(0, 1);
    let mut ids = Vec::new();
    for v in [1, 2] {
        for l in 0..LEAF {
            vol.write_page(&mut s, LogicalPage(l), &page_data(l, v))
                .unwrap();
        }
        ids.push(vol.safe_point(rewind_history::Trigger::User, None).unwrap());
    }
    vol.close().unwrap();
    let len = read_superblock(&store).unwrap().ckpt_len.get();
    // The header page, one leaf of the map, and little more: 8192 entries would take 128 KiB.
    let leaf = 8 + 8 + LEAF * 8;
    assert!(
        len < PAGE_SIZE + leaf + 4096,
        "{len} bytes, a leaf of map is {leaf}"
    );
    check(&store, &host).unwrap();
    let vol = Volume::open(store.clone(), &host).unwrap();
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    for l in [0, 1, LEAF / 2, LEAF - 1] {
        vol.read_page_at(LogicalPage(l), ids[0], &mut buf).unwrap();
        assert_eq!(decode(l, &buf), Some(1), "page {l} at the first");
        vol.read_page(LogicalPage(l), &mut buf).unwrap();
        assert_eq!(decode(l, &buf), Some(2), "page {l} live");
    }
    vol.read_page_at(LogicalPage(LEAF), ids[0], &mut buf)
        .unwrap();
    assert_eq!(decode(LEAF, &buf), None);
}

/// A version 4 image's checkpoint holds only the leaves of the map that were written (4096
/// pages each, fewer for the device's last): nothing for a fresh device, three leaves after
/// writes in three of them, the last one short; it reads back whole, and `check` finds it
/// sound.
#[test]
fn a_checkpoint_holds_only_the_map_leaves_written() {
    use rewind_history::{check, read_superblock};
    const LEAF: u64 = 4096;
    let opts = CreateOptions {
        size: (4 * LEAF + 100) * PAGE_SIZE,
        history: Some(LEAF * PAGE_SIZE),
        journal: Some(64 * 512),
    };
    let layout = rewind_history::Layout::for_create(&opts).unwrap();
    let store = Arc::new(MemStore::new(layout.required_bytes()));
    let host = sim::host(BOOT);
    create(&store, &opts, &host).unwrap();
    let written = [
        (5, 1),
        (2 * LEAF + 9, 2),
        (2 * LEAF + 10, 3),
        (4 * LEAF + 99, 4),
    ];
    let ckpt = |store: &MemStore| {
        let sb = read_superblock(store).unwrap();
        let mut header = vec![0u8; 8];
        let slot = layout.ckpt_offsets[sb.ckpt_slot.get() as usize];
        store.read_at(slot, &mut header).unwrap();
        let version = u32::from_le_bytes(header[4..8].try_into().unwrap());
        (sb.version.get(), version, sb.ckpt_len.get())
    };
    let (image, form, fresh_len) = ckpt(&store);
    assert_eq!(
        (image, form),
        (4, 4),
        "a new image and its first checkpoint"
    );
    assert!(fresh_len < 2 * PAGE_SIZE, "no leaf: {fresh_len} bytes");

    let vol = Volume::open(store.clone(), &host).unwrap();
    let mut s = vol.stream(0, 1);
    for (l, v) in written {
        vol.write_page(&mut s, LogicalPage(l), &page_data(l, v))
            .unwrap();
    }
    let at = vol.safe_point(rewind_history::Trigger::User, None).unwrap();
    vol.close().unwrap();
    let (_, form, len) = ckpt(&store);
    assert_eq!(form, 4, "always the wide leaves");
    let leaves = 8 + 2 * (8 + LEAF * 8) + (8 + 100 * 8);
    assert!(
        len >= PAGE_SIZE + leaves && len < PAGE_SIZE + leaves + 4096,
        "three leaves: {len} bytes"
    );
    check(&store, &host).unwrap();
    let vol = Volume::open(store.clone(), &host).unwrap();
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    let expect = written
        .iter()
        .map(|&(l, v)| (l, Some(v)))
        .chain([(6, None), (4 * LEAF + 98, None)]);
    for (l, v) in expect {
        vol.read_page(LogicalPage(l), &mut buf).unwrap();
        assert_eq!(decode(l, &buf), v, "page {l}");
        vol.read_page_at(LogicalPage(l), at, &mut buf).unwrap();
        assert_eq!(decode(l, &buf), v, "page {l} at the safe point");
    }
}
