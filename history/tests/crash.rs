//! Crash tests: power cuts and killed daemons at every sync and at random writes of random
//! workloads, each checked against a model of what must survive. Every workload runs with
//! both durabilities of the volume.
//!
//! The contract (DESIGN.md): after a crash the device is the last durable safe point plus
//! at most a prefix of later writes in the order they were recorded; no page is torn;
//! metadata opens cleanly. A flush that had not returned is not durable; one that returned
//! is. A killed daemon (the machine running on, so every write so far is in the host's page
//! cache) is such a crash too; with `Durability::CompletedWrites` it also loses no write
//! that completed.
//!
//! `REWIND_CRASH_SEEDS=N` runs N workloads (default 24; a longer run is one variable away).

use std::sync::Arc;

use parking_lot::Mutex;
use rewind_history::sim::{self, Event, Rng, SimStore};
use rewind_history::{
    create, read_superblock, CommitDue, CreateOptions, Durability, Host, Layout, LogicalPage,
    MemStore, SafePointId, Store, Stream, Trigger, Volume,
};

const PAGES: u64 = 96;
/// The boot the workloads run in.
const BOOT: u64 = 1;
/// The boot after a power cut.
const NEXT_BOOT: u64 = 3;
const PAGE: usize = 4096;

type Device = Vec<Option<(u8, u32)>>; // (value, serial) per page; None = zeros

#[derive(Default)]
struct Model {
    live: Device,
    durable: Device,
    since: Vec<(u64, Option<(u8, u32)>)>,
    /// Of `since`, how many changes were made by requests that have completed (the others
    /// are in flight).
    completed: usize,
    /// Power cuts checked.
    cuts: u64,
    /// Killed daemons checked.
    kills: u64,
    /// The device at each safe point the workload made.
    snapshots: std::collections::HashMap<SafePointId, Device>,
    /// The safe point durably pinned: reclaim must retire around it.
    pin: Option<SafePointId>,
}

impl Model {
    /// Safe point `id` was made and is durable: it holds the device as it is live.
    fn made_safe_point(&mut self, id: SafePointId) {
        self.snapshots.insert(id, self.live.clone());
        self.all_durable();
    }

    /// Everything written so far is durable (a safe point, a rollback, a clean close).
    fn all_durable(&mut self) {
        self.durable = self.live.clone();
        self.since.clear();
        self.completed = 0;
    }
}

/// How an image was left: what opens it, and how many of the model's later changes it must
/// hold at least.
#[derive(Clone, Copy, Debug)]
enum Crash {
    /// The next boot trusts no unsynced journal block; no change since the last durable
    /// safe point has to be there.
    PowerCut,
    /// A new daemon of the same boot: with `CompletedWrites` every completed change has to
    /// be there.
    Kill(Durability),
}

impl Crash {
    fn boot(self) -> u64 {
        match self {
            Crash::PowerCut => NEXT_BOOT,
            Crash::Kill(_) => BOOT,
        }
    }

    /// How many of the changes since the last durable safe point must survive.
    fn kept(self, m: &Model) -> usize {
        match self {
            Crash::Kill(Durability::CompletedWrites) => m.completed,
            Crash::PowerCut | Crash::Kill(Durability::FlushedWrites) => 0,
        }
    }
}

fn page_data(l: u64, v: (u8, u32)) -> Vec<u8> {
    let mut d = vec![v.0; PAGE];
    d[..8].copy_from_slice(&(l + 1).to_le_bytes());
    d[8..12].copy_from_slice(&v.1.to_le_bytes());
    d
}

/// What a page read back holds, checking it is whole and belongs to `l`.
fn decode(l: u64, buf: &[u8]) -> Result<Option<(u8, u32)>, String> {
    if buf.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    if buf[..8] != (l + 1).to_le_bytes() {
        return Err(format!("page {l} holds another page's data"));
    }
    let serial = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    let v = buf[12];
    if buf[12..].iter().any(|b| *b != v) {
        return Err(format!("page {l} is torn"));
    }
    Ok(Some((v, serial)))
}

fn read_device(vol: &Volume<Arc<MemStore>>) -> Result<Device, String> {
    let mut buf = vec![0u8; PAGE];
    (0..PAGES)
        .map(|l| {
            vol.read_page(LogicalPage(l), &mut buf)
                .map_err(|e| e.to_string())?;
            decode(l, &buf)
        })
        .collect()
}

/// Opens an image left by `crash` and checks it against the model.
fn check_image(image: Vec<u8>, m: &Model, crash: Crash) -> Result<(), String> {
    let store = Arc::new(MemStore::from_bytes(image));
    let vol = Volume::open(store, &sim::host(crash.boot()))
        .map_err(|e| format!("open after a {crash:?}: {e}"))?;
    let got = read_device(&vol)?;
    // Durable safe points of the window still read back exactly (the three newest the
    // model knows, to keep thousands of crash points quick).
    let mut buf = vec![0u8; PAGE];
    let sps = vol.safe_points();
    let mut check: Vec<SafePointId> = sps
        .iter()
        .map(|sp| sp.id)
        .filter(|id| m.snapshots.contains_key(id))
        .rev()
        .take(3)
        .collect();
    if let Some(pin) = m.pin {
        let pinned = vol
            .safe_point_infos()
            .iter()
            .any(|i| i.pinned && i.safe_point.id == pin);
        if !pinned {
            return Err(format!(
                "pinned safe point {pin} lost its pin or left the window"
            ));
        }
        check.push(pin);
    }
    for id in check {
        let Some(want) = m.snapshots.get(&id) else {
            continue; // made by reclaim
        };
        for l in 0..PAGES {
            vol.read_page_at(LogicalPage(l), id, &mut buf)
                .map_err(|e| e.to_string())?;
            let got = decode(l, &buf)?;
            if got != want[l as usize] {
                return Err(format!("safe point {id} reads wrong at page {l}"));
            }
        }
    }
    let kept = crash.kept(m);
    let mut candidate = m.durable.clone();
    for &(l, v) in &m.since[..kept] {
        candidate[l as usize] = v;
    }
    if candidate == got {
        return Ok(());
    }
    for &(l, v) in &m.since[kept..] {
        candidate[l as usize] = v;
        if candidate == got {
            return Ok(());
        }
    }
    Err(format!(
        "after a {crash:?} the device is not the last durable safe point plus a prefix of \
         later writes holding the {kept} completed ones"
    ))
}

/// A simulated store formatted for the workloads (in the boot they run in), synced.
fn formatted_store() -> (Arc<SimStore>, Host) {
    let opts = CreateOptions {
        size: PAGES * PAGE as u64,
        history: Some(256 * PAGE as u64),
        journal: Some(32 * 512),
    };
    let layout = Layout::for_create(&opts).unwrap();
    let store = Arc::new(SimStore::new(layout.required_bytes()));
    let host = sim::host(BOOT);
    create(&store, &opts, &host).unwrap();
    store.sync().unwrap();
    (store, host)
}

/// Runs workload `seed` on a volume of `durability`, checking two power cuts and a killed
/// daemon at every sync and at one write in four; returns the model, which counts them.
fn run_workload(seed: u64, durability: Durability) -> Model {
    let (store, host) = formatted_store();
    let model = Arc::new(Mutex::new(Model {
        live: vec![None; PAGES as usize],
        durable: vec![None; PAGES as usize],
        ..Model::default()
    }));
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let what = format!("seed {seed}, {durability:?}");
    check_crash_points(&store, seed, durability, model.clone(), failure.clone());
    let vol = Volume::open(store.clone(), &host).unwrap();
    vol.set_durability(durability);
    let mut w = Workload {
        stream: vol.stream(0, 1),
        vol: Some(vol),
        store,
        host,
        durability,
        model: model.clone(),
        rng: Rng(seed),
        serial: 0,
    };
    for _ in 0..160 {
        w.step();
        if let Some(f) = failure.lock().clone() {
            panic!("{f}");
        }
        let notices = w.vol().take_notices();
        assert!(
            notices.is_empty(),
            "{what}: reclaim gave up a pin: {notices:?}"
        );
    }
    drop(w);
    let model = std::mem::take(&mut *model.lock());
    model
}

/// Makes every sync of `store` a crash point, and one write in four: two power cuts and a
/// killed daemon (of a volume of `durability`) at each are checked against `model`; the
/// first failure goes to `failure`, and checking stops there.
fn check_crash_points(
    store: &SimStore,
    seed: u64,
    durability: Durability,
    model: Arc<Mutex<Model>>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let what = format!("seed {seed}, {durability:?}");
    let mut rng = Rng(seed ^ 0xc0ffee);
    store.set_hook(move |s, event| {
        // Every sync is a crash point; so is one write in four. After a failure, stop.
        if failure.lock().is_some() || (event == Event::Write && rng.below(4) != 0) {
            return;
        }
        let mut m = model.lock();
        let check = |image: Vec<u8>, m: &Model, crash: Crash| {
            if let Err(e) = check_image(image, m, crash) {
                failure.lock().get_or_insert(format!("{what}: {e}"));
            }
        };
        for _ in 0..2 {
            check(s.crash_image(&mut rng), &m, Crash::PowerCut);
            m.cuts += 1;
        }
        check(s.kill_image(), &m, Crash::Kill(durability));
        m.kills += 1;
    });
}

/// One workload: the volume on a simulated store, the model of what it must hold, and the
/// seeded choice of what to do next.
struct Workload {
    store: Arc<SimStore>,
    host: Host,
    /// Set on the volume at every open.
    durability: Durability,
    model: Arc<Mutex<Model>>,
    /// `None` only while it is reopened.
    vol: Option<Volume<Arc<SimStore>>>,
    stream: Stream,
    rng: Rng,
    /// Counts page writes, so each written page is distinct.
    serial: u32,
}

impl Workload {
    fn vol(&self) -> &Volume<Arc<SimStore>> {
        self.vol.as_ref().unwrap()
    }

    /// One random step: writes (alone or as a queue's group commit), a discard, a safe
    /// point (committed by the engine, or by the caller as on a daemon's ring), a rollback,
    /// a pin or an unpin, or a clean close and reopen.
    fn step(&mut self) {
        match self.rng.below(20) {
            0..=6 => self.write(),
            7 | 8 => self.write_group(),
            9 => self.discard(),
            10 | 11 => self.safe_point(Trigger::Flush, None),
            12 | 13 => self.staged_flush(),
            14 => self.safe_point(Trigger::User, Some(format!("label-{}", self.serial))),
            16 | 17 => self.rollback(),
            18 if self.model.lock().pin.is_none() => {
                // One pin at a time: with the device's worth of history it holds, reclaim
                // always finds other safe points to retire, so the pin is never released.
                let ids: Vec<SafePointId> = self.vol().safe_points().iter().map(|s| s.id).collect();
                let id = ids[self.rng.below(ids.len() as u64) as usize];
                self.vol().pin(id, true).unwrap();
                self.model.lock().pin = Some(id);
            }
            19 => {
                // In flight until it returns: the pin may or may not survive a cut.
                let pinned = self.model.lock().pin.take();
                if let Some(id) = pinned {
                    self.vol().pin(id, false).unwrap();
                }
            }
            _ => self.reopen(),
        }
    }

    /// Writes one page, or a run of up to 8 (one time in four).
    fn write(&mut self) {
        let rng = &mut self.rng;
        let l = rng.below(PAGES);
        let n = if rng.below(4) == 0 {
            1 + rng.below(8)
        } else {
            1
        };
        for l in l..(l + n).min(PAGES) {
            self.serial += 1;
            let val = (self.rng.below(255) as u8 + 1, self.serial);
            {
                // In flight: it may or may not survive, but only after what precedes it.
                let mut m = self.model.lock();
                m.since.push((l, Some(val)));
            }
            let vol = self.vol.as_ref().unwrap();
            vol.write_page(&mut self.stream, LogicalPage(l), &page_data(l, val))
                .unwrap();
            let mut m = self.model.lock();
            m.live[l as usize] = Some(val);
            m.completed = m.since.len();
        }
    }

    /// The requests of one pass over a queue's ring, as the daemon serves them: up to 6
    /// writes and a discard staged, their data written in between, then recorded together
    /// (`record_staged`); none completes before that.
    fn write_group(&mut self) {
        let n = 1 + self.rng.below(6);
        let mut staged = Vec::new();
        let mut commit_due = false;
        let due = |d: CommitDue| d != CommitDue::No;
        for _ in 0..n {
            let l = self.rng.below(PAGES);
            self.serial += 1;
            let val = (self.rng.below(255) as u8 + 1, self.serial);
            // In flight from here until recorded.
            self.model.lock().since.push((l, Some(val)));
            let vol = self.vol.as_ref().unwrap();
            let p = vol.allocate(&mut self.stream, LogicalPage(l)).unwrap();
            let offset = vol.layout().page_offset(p);
            vol.store().write_at(offset, &page_data(l, val)).unwrap();
            commit_due |= due(vol.stage_writes(&[(LogicalPage(l), p)]).unwrap());
            staged.push((l, Some(val)));
        }
        if self.rng.below(3) == 0 {
            let l = self.rng.below(PAGES);
            let n = (1 + self.rng.below(4)).min(PAGES - l);
            let mut m = self.model.lock();
            for i in l..l + n {
                m.since.push((i, None));
                staged.push((i, None));
            }
            drop(m);
            commit_due |= due(self.vol().stage_discard(LogicalPage(l), n).unwrap());
        }
        self.vol().record_staged().unwrap();
        // Complete, as the daemon does right after recording.
        {
            let mut m = self.model.lock();
            for (l, v) in staged {
                m.live[l as usize] = v;
            }
            m.completed = m.since.len();
        }
        if commit_due {
            // The daemon's flusher makes it soon after; here, at once.
            self.vol().commit(false).unwrap();
        }
    }

    /// Discards up to 12 pages.
    fn discard(&mut self) {
        let l = self.rng.below(PAGES);
        let n = (1 + self.rng.below(12)).min(PAGES - l);
        {
            let mut m = self.model.lock();
            for i in l..l + n {
                m.since.push((i, None));
            }
        }
        self.vol().discard(LogicalPage(l), n).unwrap();
        let mut m = self.model.lock();
        for i in l..l + n {
            m.live[i as usize] = None;
        }
        m.completed = m.since.len();
    }

    fn safe_point(&mut self, trigger: Trigger, label: Option<String>) {
        let id = self.vol().safe_point(trigger, label).unwrap();
        self.model.lock().made_safe_point(id);
    }

    /// A FLUSH as a daemon's queue makes it on its ring: the safe point marked, then the
    /// commit's steps done by the caller (`StagedCommit`), or by `commit` when the engine
    /// leaves it to a thread that may wait. Meanwhile the queue serves other requests: up
    /// to two page writes complete between the steps and `finish`, on this same thread,
    /// outside the safe point. One time in four the caller's steps stop half way through
    /// a journal write and fail, which `finish` has to make good.
    fn staged_flush(&mut self) {
        let cut_short = self.rng.below(4) == 0;
        let meanwhile = self.rng.below(3);
        let vol = self.vol.as_ref().unwrap();
        let id = vol.mark_safe_point(Trigger::Flush, None).unwrap();
        let (at_mark, since_at_mark) = {
            let m = self.model.lock();
            (m.live.clone(), m.since.len())
        };
        match vol.try_begin_commit().unwrap() {
            None => vol.commit(false).unwrap(),
            Some(staged) => {
                let steps = sim::staged_steps(vol.store(), &staged, cut_short);
                for _ in 0..meanwhile {
                    let l = self.rng.below(PAGES);
                    self.serial += 1;
                    let val = (self.rng.below(255) as u8 + 1, self.serial);
                    self.model.lock().since.push((l, Some(val)));
                    vol.write_page(&mut self.stream, LogicalPage(l), &page_data(l, val))
                        .unwrap();
                    let mut m = self.model.lock();
                    m.live[l as usize] = Some(val);
                    m.completed = m.since.len();
                }
                staged.finish(steps).unwrap();
            }
        }
        // Durable now: the device as it was at the mark; the writes since are not.
        let mut m = self.model.lock();
        m.snapshots.insert(id, at_mark.clone());
        m.durable = at_mark;
        m.since.drain(..since_at_mark);
        m.completed = m.since.len();
    }

    /// Rolls back to a safe point the model knows, if the window still holds one.
    fn rollback(&mut self) {
        let known: Vec<SafePointId> = self
            .vol()
            .safe_points()
            .iter()
            .map(|s| s.id)
            .filter(|id| self.model.lock().snapshots.contains_key(id))
            .collect();
        if known.is_empty() {
            return;
        }
        let to = known[self.rng.below(known.len() as u64) as usize];
        {
            // In flight: the rollback's changes, after the writes not yet durable.
            let mut m = self.model.lock();
            let target = m.snapshots[&to].clone();
            for (l, want) in target.iter().enumerate() {
                if m.live[l] != *want {
                    m.since.push((l as u64, *want));
                }
            }
        }
        let before = self.vol().rollback(to).unwrap();
        let mut m = self.model.lock();
        let live = m.live.clone();
        m.snapshots.insert(before, live);
        m.live = m.snapshots[&to].clone();
        m.all_durable();
    }

    /// Closes the volume cleanly (everything durable) and opens it again.
    fn reopen(&mut self) {
        self.vol.take().unwrap().close().unwrap();
        self.model.lock().all_durable();
        let vol = Volume::open(self.store.clone(), &self.host).unwrap();
        vol.set_durability(self.durability);
        self.stream = vol.stream(0, 1);
        self.vol = Some(vol);
    }
}

#[test]
fn power_cuts_and_killed_daemons_at_every_sync_and_random_writes_keep_the_contract() {
    let seeds: u64 = std::env::var("REWIND_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let (mut cuts, mut kills) = (0, 0);
    for durability in [Durability::CompletedWrites, Durability::FlushedWrites] {
        for seed in 0..seeds {
            let m = run_workload(seed, durability);
            assert!(m.cuts > 50, "seed {seed}, {durability:?}: {} cuts", m.cuts);
            cuts += m.cuts;
            kills += m.kills;
        }
    }
    println!(
        "crash points checked: {} over {seeds} workloads in each durability ({cuts} power \
         cuts, {kills} killed daemons)",
        cuts + kills
    );
}

/// A write staged while a commit on another thread is under way: the commit takes its
/// record with the others, and syncs the data before it writes them. A `record_staged`
/// then finds nothing left to write and its request completes; a daemon killed before the
/// commit's journal write must still have the write (with `CompletedWrites`).
#[test]
fn a_write_recorded_while_a_commit_syncs_the_data_survives_a_kill() {
    let (store, host) = formatted_store();
    let vol = Arc::new(Volume::open(store.clone(), &host).unwrap());
    let mut stream = vol.stream(0, 1);
    let l = LogicalPage(5);
    let val = (0xab, 1);
    let p = vol.allocate(&mut stream, l).unwrap();
    store
        .write_at(vol.layout().page_offset(p), &page_data(5, val))
        .unwrap();
    assert_eq!(vol.stage_writes(&[(l, p)]).unwrap(), CommitDue::No);
    // At the commit's first sync (the data's), another thread records what is staged, as
    // a queue does at the end of its ring pass, and its request completes: the image of a
    // daemon killed right then is taken.
    let image = Arc::new(Mutex::new(None));
    let (theirs, vol2) = (image.clone(), vol.clone());
    let mut fired = false;
    store.set_hook(move |s, event| {
        if event == Event::Sync && !std::mem::replace(&mut fired, true) {
            let v = vol2.clone();
            std::thread::spawn(move || v.record_staged())
                .join()
                .unwrap()
                .unwrap();
            *theirs.lock() = Some(s.kill_image());
        }
    });
    vol.commit(false).unwrap();
    let image = image.lock().take().expect("the commit synced");
    let after = Volume::open(Arc::new(MemStore::from_bytes(image)), &sim::host(BOOT)).unwrap();
    let mut buf = vec![0u8; PAGE];
    after.read_page(l, &mut buf).unwrap();
    assert_eq!(
        decode(5, &buf),
        Ok(Some(val)),
        "the completed write was lost"
    );
}

/// The open after a killed daemon makes the journal blocks that daemon left unsynced
/// durable: the store synced (the data their records point at), then the blocks rewritten
/// as synced, in place. A power cut at every write and sync of that open leaves the last
/// durable safe point plus a prefix of the writes that completed; one after the open
/// returned leaves all of them, though the new daemon wrote no checkpoint.
#[test]
fn a_power_cut_while_an_open_makes_a_killed_daemons_writes_durable_keeps_a_prefix() {
    let (store, host) = formatted_store();
    let mut m = Model {
        live: vec![None; PAGES as usize],
        durable: vec![None; PAGES as usize],
        ..Model::default()
    };
    let vol = Volume::open(store.clone(), &host).unwrap();
    vol.set_durability(Durability::CompletedWrites);
    let mut stream = vol.stream(0, 1);
    let mut serial = 0;
    let mut write = |vol: &Volume<Arc<SimStore>>, m: &mut Model, l: u64| {
        serial += 1;
        let val = (l as u8 + 1, serial);
        m.since.push((l, Some(val)));
        vol.write_page(&mut stream, LogicalPage(l), &page_data(l, val))
            .unwrap();
        m.live[l as usize] = Some(val);
        m.completed = m.since.len();
    };
    for l in 0..8 {
        write(&vol, &mut m, l);
    }
    vol.flush().unwrap();
    m.all_durable();
    // Completed writes after the flush: their records are in unsynced blocks only.
    for l in (4..40).step_by(3) {
        write(&vol, &mut m, l);
    }
    // Killed: what it wrote stays in the host's page cache, pending on the store.
    drop(vol);
    let model = Arc::new(Mutex::new(m));
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let points = Arc::new(Mutex::new(0u64));
    {
        let (model, failure, points) = (model.clone(), failure.clone(), points.clone());
        let mut rng = Rng(7);
        store.set_hook(move |s, _| {
            for _ in 0..2 {
                let image = s.crash_image(&mut rng);
                if let Err(e) = check_image(image, &model.lock(), Crash::PowerCut) {
                    failure.lock().get_or_insert(e);
                }
            }
            *points.lock() += 1;
        });
    }
    let checkpoint_before = read_superblock(&store).unwrap().ckpt_journal_seq.get();
    let vol = Volume::open(store.clone(), &host).unwrap();
    if let Some(f) = failure.lock().clone() {
        panic!("a power cut during the open: {f}");
    }
    assert_eq!(
        read_superblock(&store).unwrap().ckpt_journal_seq.get(),
        checkpoint_before,
        "a short journal: the blocks rewritten, no checkpoint"
    );
    let points = *points.lock();
    assert!(
        points >= 4,
        "{points} crash points: the superblocks, a sync, the blocks, a sync"
    );
    // After the open: another boot finds every completed write.
    store.set_hook(|_, _| {});
    drop(vol);
    let image = store.crash_image(&mut Rng(9));
    let m = model.lock();
    let store = Arc::new(MemStore::from_bytes(image));
    let vol = Volume::open(store, &sim::host(NEXT_BOOT)).unwrap();
    assert_eq!(read_device(&vol).unwrap(), m.live, "every completed write");
}

/// A killed daemon that left more than a quarter of the journal ring since the checkpoint
/// (its last commits and its unsynced blocks) gets a checkpoint at the next open, which
/// empties the ring: kill after kill cannot fill it. Every completed write is kept.
#[test]
fn an_open_after_a_kill_with_a_long_journal_writes_a_checkpoint() {
    let (store, host) = formatted_store();
    let vol = Volume::open(store.clone(), &host).unwrap();
    vol.set_durability(Durability::CompletedWrites);
    let journal_blocks = vol.layout().journal_blocks;
    let before = read_superblock(&store).unwrap().ckpt_journal_seq.get();
    let mut stream = vol.stream(0, 1);
    let mut live = vec![None; PAGES as usize];
    // Records for over a quarter of the ring and under half, where commits would checkpoint.
    let records = journal_blocks * 30 * 3 / 8;
    for i in 0..records {
        let l = i % PAGES;
        let val = ((i % 250) as u8 + 1, i as u32);
        vol.write_page(&mut stream, LogicalPage(l), &page_data(l, val))
            .unwrap();
        live[l as usize] = Some(val);
    }
    assert_eq!(
        read_superblock(&store).unwrap().ckpt_journal_seq.get(),
        before,
        "no checkpoint yet"
    );
    drop(vol);
    let vol = Volume::open(store.clone(), &host).unwrap();
    let after = read_superblock(&store).unwrap().ckpt_journal_seq.get();
    assert!(after > before, "a checkpoint at open: {before} -> {after}");
    drop(vol);
    let image = store.crash_image(&mut Rng(11));
    let vol = Volume::open(Arc::new(MemStore::from_bytes(image)), &sim::host(NEXT_BOOT)).unwrap();
    assert_eq!(read_device(&vol).unwrap(), live, "every completed write");
}
