//! Engine micro-benchmarks: the cost the volume adds to a 4 KiB write and read, side by side
//! with the same store written directly (what a plain loop target does), and the ratio.
//!
//! `cargo bench --bench engine` prints criterion's figures, then one summary table measured
//! in the same run.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use rewind_history::{CreateOptions, Layout, LogicalPage, MemStore, Store, Volume};

const PAGES: u64 = 16_384; // 64 MiB device

fn volume() -> Volume<Arc<MemStore>> {
    let opts = CreateOptions {
        size: PAGES * 4096,
        history: None,
        journal: None,
    };
    let layout = Layout::for_create(&opts).expect("layout");
    common::open_volume(Arc::new(MemStore::new(layout.required_bytes())), &opts)
}

fn next(x: &mut u64) -> u64 {
    common::next_page(x, PAGES)
}

fn write_plain(store: &MemStore, data_offset: u64, n: u64, seed: &mut u64, page: &[u8]) {
    for _ in 0..n {
        let l = next(seed);
        store.write_at(data_offset + l * 4096, page).expect("write");
    }
}

fn write_volume(
    vol: &Volume<Arc<MemStore>>,
    n: u64,
    seed: &mut u64,
    page: &[u8],
    flush_every: u64,
) {
    let mut s = vol.stream(0, 1);
    for i in 0..n {
        let l = next(seed);
        vol.write_page(&mut s, LogicalPage(l), page).expect("write");
        if flush_every > 0 && i % flush_every == flush_every - 1 {
            vol.flush().expect("flush");
        }
    }
}

fn bench(c: &mut Criterion) {
    let page = vec![0xa5u8; 4096];
    let vol = volume();
    let plain = MemStore::new(vol.layout().required_bytes());
    let data_offset = vol.layout().data_offset;
    let mut g = c.benchmark_group("write_4k_random");
    let mut seed = 0x9e3779b97f4a7c15u64;
    g.bench_function("plain_store", |b| {
        b.iter(|| write_plain(&plain, data_offset, 1, &mut seed, black_box(&page)))
    });
    g.bench_function("rewind_volume", |b| {
        b.iter(|| write_volume(&vol, 1, &mut seed, black_box(&page), 0))
    });
    // `--on-crash stop`: no journal write before a write completes.
    g.finish();
    let mut buf = vec![0u8; 4096];
    let mut g = c.benchmark_group("read_4k_random");
    g.bench_function("plain_store", |b| {
        b.iter(|| {
            let l = next(&mut seed);
            plain
                .read_at(data_offset + l * 4096, &mut buf)
                .expect("read")
        })
    });
    g.bench_function("rewind_volume", |b| {
        b.iter(|| {
            let l = next(&mut seed);
            vol.read_page(LogicalPage(l), &mut buf).expect("read")
        })
    });
    g.finish();
}

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// One table, both sides measured back to back in this run, as ratios.
fn summary() {
    const N: u64 = 200_000;
    let page = vec![0x5au8; 4096];
    let vol = volume();
    let plain = MemStore::new(vol.layout().required_bytes());
    let off = vol.layout().data_offset;
    println!("\nengine summary ({N} random 4 KiB writes, 64 MiB device, in memory)");
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "case", "plain ns/op", "rewind ns/op", "ratio"
    );
    for (name, flush_every) in [("no flush", 0u64), ("flush every 64 writes", 64)] {
        let mut seed = 12345;
        let p = time(|| write_plain(&plain, off, N, &mut seed, &page));
        let mut seed = 12345;
        let r = time(|| write_volume(&vol, N, &mut seed, &page, flush_every));
        let (p, r) = (
            p.as_nanos() as f64 / N as f64,
            r.as_nanos() as f64 / N as f64,
        );
        println!("{name:<34} {p:>12.0} {r:>12.0} {:>8.2}", r / p);
    }
    let stats = vol.stats();
    println!(
        "after the run: {} safe points, {} history pages, {} free pages",
        stats.safe_points, stats.history_pages, stats.free_pages
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
