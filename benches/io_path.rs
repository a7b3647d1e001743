//! I/O-path micro-benchmarks: the engine's own work per I/O (remap lookup, page allocation
//! on 1, 2 and 4 threads, journal append, and a whole 4 KiB write minus its data write),
//! each beside a baseline measured in the same run, as ratios.
//!
//! Everything is in memory (`MemStore`): no disk I/O. Each case's setup (formatting,
//! pre-allocating the pages a commit takes) stays out of the timed loops, and every random
//! page sequence comes from a fixed seed. `cargo bench --bench io_path` prints criterion's
//! figures, then one summary table: medians of interleaved repetitions, `ns/op` and
//! `x baseline`.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use rewind_history::format::{JOURNAL_BLOCK, JOURNAL_OFFSET};
use rewind_history::{
    CommitDue, CreateOptions, Durability, Layout, LogicalPage, MemStore, PhysPage, Store, Volume,
    PAGE_SIZE,
};

const PAGES: u64 = 16_384; // 64 MiB device
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Pages allocated (untimed) before each run of timed `commit_writes` calls: few enough to
/// stay clear of the volume's low-water mark.
const CHUNK: u64 = 256;
/// Operations per measurement in the summary (per thread in the allocation cases).
const SUMMARY_OPS: u64 = 200_000;
/// Interleaved repetitions in the summary; the table shows their medians.
const SUMMARY_REPS: usize = 5;

fn next(x: &mut u64) -> u64 {
    common::next_page(x, PAGES)
}

/// A store of `len` bytes with every page already touched, so first writes in a timed loop
/// pay no page faults.
fn prefaulted_store(len: u64) -> MemStore {
    let store = MemStore::new(len);
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(zeros.len() as u64);
        store.write_at(off, &zeros[..n as usize]).expect("prefault");
        off += n;
    }
    store
}

fn volume(durability: Durability) -> Volume<MemStore> {
    let opts = CreateOptions {
        size: PAGES * PAGE_SIZE,
        history: None,
        journal: None,
    };
    let layout = Layout::for_create(&opts).expect("layout");
    let store = prefaulted_store(layout.required_bytes());
    let vol = common::open_volume(store, &opts);
    vol.set_durability(durability);
    vol
}

/// Allocates and commits every page of `pages` (metadata only: no data is written).
fn write_pages(vol: &Volume<MemStore>, pages: impl Iterator<Item = u64>) {
    let mut s = vol.stream(0, 1);
    let mut batch = Vec::with_capacity(256);
    for l in pages.map(LogicalPage) {
        batch.push((l, vol.allocate(&mut s, l).expect("allocate")));
        if batch.len() == batch.capacity() {
            vol.commit_writes(&batch).expect("commit");
            batch.clear();
        }
    }
    vol.commit_writes(&batch).expect("commit");
}

/// A volume whose logical pages are, by `l % 3`: never written (0), at home (1), or
/// remapped away from home by a rewrite after a safe point (2).
fn mixed_volume() -> Volume<MemStore> {
    let vol = volume(Durability::FlushedWrites);
    write_pages(&vol, (0..PAGES).filter(|l| l % 3 != 0));
    vol.flush().expect("safe point");
    write_pages(&vol, (0..PAGES).filter(|l| l % 3 == 2));
    vol.flush().expect("flush");
    vol
}

/// What the cases run on, built before any timing.
struct Fixture {
    /// Home, remapped and unwritten pages (`mixed_volume`), for lookup and allocation.
    mixed: Volume<MemStore>,
    /// `mixed`'s physical page of every logical page as plain words: the lookup baseline.
    table: Vec<u64>,
    flushed: Volume<MemStore>,
    completed: Volume<MemStore>,
    /// The store the write baselines go to, sized and prefaulted like a volume's.
    plain: MemStore,
}

impl Fixture {
    fn new() -> Fixture {
        let mixed = mixed_volume();
        let table: Vec<u64> = (0..PAGES)
            .map(|l| {
                let p = mixed.resolve(LogicalPage(l)).expect("resolve");
                p.map_or(u64::MAX, |p| p.0)
            })
            .collect();
        let plain = prefaulted_store(mixed.layout().required_bytes());
        Fixture {
            mixed,
            table,
            flushed: volume(Durability::FlushedWrites),
            completed: volume(Durability::CompletedWrites),
            plain,
        }
    }

    /// Pages of `mixed` by state: (at home, remapped, never written).
    fn mix(&self) -> (usize, usize, usize) {
        let home = (0..PAGES).filter(|&l| self.table[l as usize] == l).count();
        let unwritten = self.table.iter().filter(|&&p| p == u64::MAX).count();
        (home, PAGES as usize - home - unwritten, unwritten)
    }
}

/// Runs `op` `n` times and returns how long that took.
fn timed(n: u64, mut op: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        op();
    }
    t.elapsed()
}

/// Runs `work(thread, n)` on `threads` threads at once; returns the wall time from their
/// common start until the last one is done (spawning is not counted).
fn on_threads(threads: u32, n: u64, work: impl Fn(u32, u64) + Sync) -> Duration {
    let start = Barrier::new(threads as usize + 1);
    let t = std::thread::scope(|s| {
        for i in 0..threads {
            let (start, work) = (&start, &work);
            s.spawn(move || {
                start.wait();
                work(i, n);
            });
        }
        start.wait();
        Instant::now()
    });
    t.elapsed()
}

/// The seed of thread `i`'s page sequence.
fn thread_seed(i: u32) -> u64 {
    SEED ^ (u64::from(i) + 1).wrapping_mul(0xff51_afd7_ed55_8ccd)
}

/// A timed side of a case: `n` operations -> the time they took.
type Timed<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// One row: the engine's work and its baseline, each timed over the same operations.
struct Case<'a> {
    /// The criterion group and the row of the summary.
    name: String,
    baseline: Timed<'a>,
    engine: Timed<'a>,
}

/// `Volume::resolve` of random pages vs reading a `Vec<u64>` at the same indices.
fn resolve_case(f: &Fixture) -> Case<'_> {
    let (mut sb, mut se) = (SEED, SEED);
    Case {
        name: "resolve".into(),
        baseline: Box::new(move |n| {
            timed(n, || {
                black_box(f.table[next(&mut sb) as usize]);
            })
        }),
        engine: Box::new(move |n| {
            timed(n, || {
                let l = LogicalPage(next(&mut se));
                black_box(f.mixed.resolve(l).expect("resolve"));
            })
        }),
    }
}

/// `threads` threads, each with its own `Stream`, `allocate` + `abandon` a random page, vs
/// the same threads bumping one shared `AtomicU64`. The volume is left as it was.
fn allocate_case(f: &Fixture, threads: u32) -> Case<'_> {
    let plural = if threads == 1 { "" } else { "s" };
    let vol = &f.mixed;
    let counter = AtomicU64::new(0);
    Case {
        name: format!("allocate_{threads}_thread{plural}"),
        baseline: Box::new(move |n| {
            on_threads(threads, n, |i, n| {
                let mut seed = thread_seed(i);
                for _ in 0..n {
                    black_box(next(&mut seed));
                    black_box(counter.fetch_add(1, Ordering::Relaxed));
                }
            })
        }),
        engine: Box::new(move |n| {
            on_threads(threads, n, |i, n| {
                let mut s = vol.stream(i, threads);
                let mut seed = thread_seed(i);
                for _ in 0..n {
                    let l = LogicalPage(next(&mut seed));
                    vol.abandon(black_box(vol.allocate(&mut s, l).expect("allocate")));
                }
            })
        }),
    }
}

/// The baseline of the journal cases: a 512-byte `MemStore::write_at`, walking the journal
/// area of a plain store.
fn journal_baseline(f: &Fixture) -> Timed<'_> {
    let blocks = f.mixed.layout().journal_blocks;
    let block = [0x5au8; JOURNAL_BLOCK as usize];
    let mut i = 0u64;
    Box::new(move |n| {
        timed(n, || {
            let off = JOURNAL_OFFSET + (i % blocks) * JOURNAL_BLOCK;
            f.plain.write_at(off, black_box(&block)).expect("write");
            i += 1;
        })
    })
}

/// `commit_writes` of one write whose page is already allocated (the allocation is untimed),
/// so the record's queueing (and whatever commit it triggers) is all that is timed.
fn journal_case<'a>(f: &'a Fixture, vol: &'a Volume<MemStore>, mode: &str) -> Case<'a> {
    let mut s = vol.stream(0, 1);
    let mut seed = SEED;
    let mut pages: Vec<(LogicalPage, PhysPage)> = Vec::with_capacity(CHUNK as usize);
    Case {
        name: format!("journal_append_{mode}"),
        baseline: journal_baseline(f),
        engine: Box::new(move |n| {
            let mut spent = Duration::ZERO;
            let mut left = n;
            while left > 0 {
                let k = left.min(CHUNK);
                pages.clear();
                pages.extend((0..k).map(|_| {
                    let l = LogicalPage(next(&mut seed));
                    (l, vol.allocate(&mut s, l).expect("allocate"))
                }));
                let t = Instant::now();
                for w in &pages {
                    vol.commit_writes(std::slice::from_ref(w)).expect("commit");
                }
                spent += t.elapsed();
                left -= k;
            }
            spent
        }),
    }
}

/// The baseline of the write cases: a random 4 KiB page written into a plain store, as a
/// loop target does.
fn plain_write_baseline(f: &Fixture) -> Timed<'_> {
    let page = vec![0xa5u8; PAGE_SIZE as usize];
    let data = f.mixed.layout().data_offset;
    let mut seed = SEED;
    Box::new(move |n| {
        timed(n, || {
            let off = data + next(&mut seed) * PAGE_SIZE;
            f.plain.write_at(off, black_box(&page)).expect("write");
        })
    })
}

/// The engine's whole share of a random 4 KiB write, `allocate` + `commit_writes` (the data
/// write left out), vs writing the page into a plain store, as a loop target does.
fn write_case<'a>(f: &'a Fixture, vol: &'a Volume<MemStore>, mode: &str) -> Case<'a> {
    let mut se = SEED;
    let mut s = vol.stream(0, 1);
    Case {
        name: format!("write_4k_{mode}"),
        baseline: plain_write_baseline(f),
        engine: Box::new(move |n| {
            timed(n, || {
                let l = LogicalPage(next(&mut se));
                let p = vol.allocate(&mut s, l).expect("allocate");
                vol.commit_writes(&[(l, p)]).expect("commit");
            })
        }),
    }
}

/// Writes a queue's ring pass holds at QD32: the daemon records them with one journal write.
const GROUP: u64 = 32;

/// `write_case` as the daemon serves writes (CompletedWrites): `allocate` + `stage_writes`
/// per write, one `record_staged` per `GROUP` writes (group commit); ns per write.
fn grouped_write_case(f: &Fixture) -> Case<'_> {
    let vol = &f.completed;
    let mut se = SEED;
    let mut s = vol.stream(0, 1);
    let mut staged = 0u64;
    Case {
        name: "write_4k_grouped".into(),
        baseline: plain_write_baseline(f),
        engine: Box::new(move |n| {
            timed(n, || {
                let l = LogicalPage(next(&mut se));
                let p = vol.allocate(&mut s, l).expect("allocate");
                if vol.stage_writes(&[(l, p)]).expect("stage") != CommitDue::No {
                    vol.commit(false).expect("commit");
                }
                staged += 1;
                if staged.is_multiple_of(GROUP) {
                    vol.record_staged().expect("record");
                }
            })
        }),
    }
}

fn cases(f: &Fixture) -> Vec<Case<'_>> {
    let mut all = vec![resolve_case(f)];
    all.extend([1, 2, 4].map(|t| allocate_case(f, t)));
    all.push(journal_case(f, &f.flushed, "flushed"));
    all.push(journal_case(f, &f.completed, "completed"));
    all.push(write_case(f, &f.flushed, "flushed"));
    all.push(write_case(f, &f.completed, "completed"));
    all.push(grouped_write_case(f));
    all
}

fn bench(c: &mut Criterion) {
    let f = Fixture::new();
    for mut case in cases(&f) {
        let mut g = c.benchmark_group(&case.name);
        g.bench_function("baseline", |b| b.iter_custom(|n| (case.baseline)(n)));
        g.bench_function("engine", |b| b.iter_custom(|n| (case.engine)(n)));
        g.finish();
    }
}

/// What each row times: the engine's side | the baseline's side.
const LEGEND: [&str; 19] = [
    "  resolve               Volume::resolve of a random page | a Vec<u64> read at that index",
    "  allocate_N_thread(s)  N threads, each with its own Stream: allocate + abandon of a",
    "                        random page; ns per allocation on each thread (wall time /",
    "                        allocations per thread; 2 cores, so 4 threads time-share) |",
    "                        the same threads doing fetch_add on one shared AtomicU64",
    "  journal_append_MODE   commit_writes of one write whose page was allocated beforehand",
    "                        (untimed); flushed = Durability::FlushedWrites (records wait in",
    "                        memory for a commit), completed = CompletedWrites (+ one",
    "                        512-byte unsynced journal block write per call) | a 512-byte",
    "                        MemStore::write_at",
    "  write_4k_MODE         allocate + commit_writes for a random 4 KiB write, the data write",
    "                        left out: the engine's whole per-write cost | MemStore::write_at",
    "                        of the 4 KiB page (what a loop target does)",
    "  write_4k_grouped      write_4k_completed as the daemon does it: one record_staged (a",
    "                        journal write) per 32 writes, a QD32 ring pass | the same",
    "  The engine rows include the commits (and reclaim) the engine does by itself when its",
    "  record buffer fills or free pages run low; nothing flushes, so no safe point is made",
    "  but by reclaim. ns/op and x baseline are medians over the repetitions; on a busy",
    "  machine they are indicative.",
];

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One table measured in this run: a round of every case to warm up (discarded), then
/// `SUMMARY_REPS` rounds of every case (baseline, then engine), and the medians.
fn summary() {
    let f = Fixture::new();
    let (home, remapped, unwritten) = f.mix();
    let mut cases = cases(&f);
    let mut ns = vec![(Vec::new(), Vec::new()); cases.len()];
    for rep in 0..=SUMMARY_REPS {
        for (case, (base, engine)) in cases.iter_mut().zip(&mut ns) {
            let b = (case.baseline)(SUMMARY_OPS).as_nanos() as f64 / SUMMARY_OPS as f64;
            let e = (case.engine)(SUMMARY_OPS).as_nanos() as f64 / SUMMARY_OPS as f64;
            if rep > 0 {
                base.push(b);
                engine.push(e);
            }
        }
    }
    println!(
        "\nio path summary: medians of {SUMMARY_REPS} interleaved repetitions of {SUMMARY_OPS} ops \
         (per thread for allocate), in memory"
    );
    println!(
        "64 MiB device; resolve and allocate on one with {home} pages at home, {remapped} \
         remapped, {unwritten} never written"
    );
    println!("rows (engine | baseline):");
    for line in LEGEND {
        println!("{line}");
    }
    println!(
        "{:<26} {:>16} {:>14} {:>11}",
        "case", "baseline ns/op", "engine ns/op", "x baseline"
    );
    for (case, (base, engine)) in cases.iter().zip(&mut ns) {
        let (b, e) = (median(base), median(engine));
        println!("{:<26} {b:>16.1} {e:>14.1} {:>11.2}", case.name, e / b);
    }
    for (mode, vol) in [("flushed", &f.flushed), ("completed", &f.completed)] {
        let st = vol.stats();
        println!(
            "after the run, {mode} volume: {} safe points, {} history pages, {} free pages",
            st.safe_points, st.history_pages, st.free_pages
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
