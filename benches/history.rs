//! Time-travel benchmarks: rolling back over 1 million changed pages, reading a page at a
//! safe point 1 million page-changes back, and the memory the history index takes per
//! history page. Metadata only: the store keeps no data (`NullStore`), because these
//! operations never touch data pages.
//!
//! `cargo bench --bench history`

mod common;

use std::hint::black_box;
use std::io;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use rewind_history::{CreateOptions, LogicalPage, SafePointId, Store, Trigger, Volume};

const PAGES: u64 = 1 << 20; // 4 GiB device: 1 Mi logical pages

/// Accepts every write and reads zeros: enough for metadata-only work that never reopens.
struct NullStore {
    len: u64,
}

impl Store for NullStore {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, _offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _offset: u64, _buf: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A store whose metadata survives so `create` + `open` work: superblocks and the first
/// checkpoint are kept in memory, everything else is dropped.
struct MetaStore {
    kept: parking_lot::Mutex<Vec<u8>>,
    null: NullStore,
}

impl Store for MetaStore {
    fn len(&self) -> u64 {
        self.null.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let kept = self.kept.lock();
        let end = offset as usize + buf.len();
        if end <= kept.len() {
            buf.copy_from_slice(&kept[offset as usize..end]);
            Ok(())
        } else {
            self.null.read_at(offset, buf)
        }
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut kept = self.kept.lock();
        let end = offset as usize + buf.len();
        if end <= kept.len() {
            kept[offset as usize..end].copy_from_slice(buf);
        }
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Writes every logical page once (metadata only).
fn write_all(vol: &Volume<MetaStore>) {
    let mut s = vol.stream(0, 1);
    let mut batch = Vec::with_capacity(256);
    for l in 0..PAGES {
        let p = vol.allocate(&mut s, LogicalPage(l)).expect("allocate");
        batch.push((LogicalPage(l), p));
        if batch.len() == batch.capacity() {
            vol.commit_writes(&batch).expect("commit");
            batch.clear();
        }
    }
    vol.commit_writes(&batch).expect("commit");
}

/// A volume with safe point `a` and 1 Mi pages changed after it.
fn setup() -> (Volume<MetaStore>, SafePointId, SafePointId) {
    let opts = CreateOptions {
        size: PAGES * 4096,
        history: Some((PAGES + (PAGES >> 2)) * 4096),
        journal: Some(256 << 20),
    };
    let layout = rewind_history::Layout::for_create(&opts).expect("layout");
    let store = MetaStore {
        kept: parking_lot::Mutex::new(vec![0; layout.data_offset as usize]),
        null: NullStore {
            len: layout.required_bytes(),
        },
    };
    let vol = common::open_volume(store, &opts);
    write_all(&vol);
    let a = vol.safe_point(Trigger::User, Some("a".into())).expect("a");
    let rss_before = rss();
    let index_before = vol.history_index_bytes();
    write_all(&vol);
    let b = vol.safe_point(Trigger::User, Some("b".into())).expect("b");
    let grew = rss().saturating_sub(rss_before);
    let index = vol.history_index_bytes().saturating_sub(index_before);
    // The engine's own count is exact; the process's growth is only meaningful the first
    // time in a process (later runs reuse freed heap), and also holds the journal's buffers.
    println!(
        "history index: {PAGES} history pages take {:.1} bytes each (the engine's count); \
         the process grew by {} MiB: {:.1} bytes per history page",
        index as f64 / PAGES as f64,
        grew >> 20,
        grew as f64 / PAGES as f64
    );
    (vol, a, b)
}

fn bench(c: &mut Criterion) {
    let (vol, a, b) = setup();
    let mut g = c.benchmark_group("time_travel_1Mi_changed_pages");
    g.sample_size(10);
    // Back to `a` and forward to the state rolled over: two rollbacks of 1 Mi pages each.
    g.bench_function("rollback_back_and_forth", |bn| {
        bn.iter(|| {
            let over = vol.rollback(a).expect("rollback");
            black_box(vol.rollback(over).expect("forward"));
        })
    });
    g.finish();
    let mut g = c.benchmark_group("view_read_1Mi_changes_back");
    let mut l = 0u64;
    g.bench_function("open_and_close_view", |bn| {
        bn.iter(|| vol.close_view(black_box(vol.open_view(a).expect("view"))))
    });
    let view = vol.open_view(a).expect("view");
    g.bench_function("resolve_view_one_page", |bn| {
        bn.iter(|| {
            l = (l + 7919) % PAGES;
            black_box(vol.resolve_view(view, LogicalPage(l)).expect("resolve"))
        })
    });
    g.bench_function("resolve_live_one_page", |bn| {
        bn.iter(|| {
            l = (l + 7919) % PAGES;
            black_box(vol.resolve(LogicalPage(l)).expect("resolve"))
        })
    });
    g.finish();
    let _ = b;
}

/// One table measured in this run, with the live read as the baseline.
fn summary() {
    let (vol, a, _) = setup();
    let t = Instant::now();
    let over = vol.rollback(a).expect("rollback");
    let rollback = t.elapsed();
    let t = Instant::now();
    vol.rollback(over).expect("forward");
    let forward = t.elapsed();
    let t = Instant::now();
    let view = vol.open_view(a).expect("view");
    let open_view = t.elapsed();
    let n = 1_000_000u64;
    let t = Instant::now();
    for i in 0..n {
        black_box(
            vol.resolve_view(view, LogicalPage(i % PAGES))
                .expect("resolve"),
        );
    }
    let at = t.elapsed().as_nanos() as f64 / n as f64;
    let t = Instant::now();
    for i in 0..n {
        black_box(vol.resolve(LogicalPage(i % PAGES)).expect("resolve"));
    }
    let live = t.elapsed().as_nanos() as f64 / n as f64;
    println!("\ntime travel summary ({PAGES} pages changed since the safe point)");
    println!("rollback to it:             {rollback:?}");
    println!("roll forward again (undo):  {forward:?}");
    println!("open a view of it:          {open_view:?} (a window lookup: no copy, no scan)");
    println!(
        "read a page in the view:    {at:.0} ns/page vs live {live:.0} ns/page (ratio {:.1})",
        at / live
    );
    vol.close_view(view);
    let (groups, ns) = view_behind_groups(&vol);
    println!(
        "read a page in a view with {groups} safe points of 64 changed pages after it: \
         {ns:.0} ns/page vs live {live:.0} ns/page (ratio {:.1})",
        ns / live
    );
}

/// A view of a safe point with `GROUPS` later safe points, each closing an epoch of 64 pages
/// written at random: the nanoseconds a page of it takes to resolve, over every page.
fn view_behind_groups(vol: &Volume<MetaStore>) -> (u64, f64) {
    const GROUPS: u64 = 1000;
    let c = vol.safe_point(Trigger::User, None).expect("c");
    let mut s = vol.stream(0, 1);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..GROUPS {
        let mut batch = Vec::with_capacity(64);
        for _ in 0..64 {
            let l = LogicalPage(common::next_page(&mut x, PAGES));
            if batch.iter().all(|&(m, _)| m != l) {
                batch.push((l, vol.allocate(&mut s, l).expect("allocate")));
            }
        }
        vol.commit_writes(&batch).expect("commit");
        vol.safe_point(Trigger::Flush, None).expect("safe point");
    }
    let view = vol.open_view(c).expect("view");
    let t = Instant::now();
    for l in 0..PAGES {
        black_box(vol.resolve_view(view, LogicalPage(l)).expect("resolve"));
    }
    let ns = t.elapsed().as_nanos() as f64 / PAGES as f64;
    vol.close_view(view);
    (GROUPS, ns)
}

criterion_group!(benches, bench);

fn main() {
    // The summary first, on a fresh process: its memory figure is only right before the
    // criterion runs have grown (and freed) the heap.
    summary();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
