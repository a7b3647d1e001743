//! How many extents a sequential rewrite takes after random overwrites: the engine alone,
//! in memory, with the geometry of `ci/bench.sh` (a 512 MiB device, the default history of
//! a quarter of it).
//!
//! It writes `RANDOM` 4 KiB pages at random (a safe point every `EVERY` writes), then
//! rewrites the device front to back in 512 KiB requests (128 pages, the daemon's largest,
//! a safe point every 8), four times, and prints per pass how many runs of consecutive
//! physical pages a request was written to and a 512 KiB read of the result needs: each
//! run is one data op in the daemon. 1 is a contiguous device; 128 is every page apart.
//!
//! `cargo run --release -p rewind-history --features testing --example seq_after_random
//! -- [RANDOM [EVERY]]` (defaults 300000 and 1000).

use rewind_history::{create, sim, CreateOptions, Layout, LogicalPage, MemStore, Volume};
use rewind_history::{PhysPage, Trigger, PAGE_SIZE};

const PAGES: u64 = 131_072;
const REQUEST: u64 = 128;

/// Runs of consecutive physical pages in `pages` (an unmapped page is a run of its own).
fn runs(pages: &[Option<PhysPage>]) -> usize {
    1 + pages
        .windows(2)
        .filter(|w| !matches!((w[0], w[1]), (Some(a), Some(b)) if b.0 == a.0 + 1))
        .count()
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("a number"));
    let random = args.next().unwrap_or(300_000);
    let every = args.next().unwrap_or(1_000).max(1);
    let opts = CreateOptions {
        size: PAGES * PAGE_SIZE,
        history: None,
        journal: None,
    };
    let layout = Layout::for_create(&opts).expect("layout");
    let store = MemStore::new(layout.required_bytes());
    let host = sim::host(1);
    create(&store, &opts, &host).expect("create");
    let vol = Volume::open(store, &host).expect("open");
    let mut stream = vol.stream(0, 1);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..random {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let l = LogicalPage(x % PAGES);
        let p = vol.allocate(&mut stream, l).expect("allocate");
        vol.commit_writes(&[(l, p)]).expect("commit");
        if i % every == 0 {
            vol.safe_point(Trigger::Flush, None).expect("safe point");
        }
    }
    println!("{random} random 4 KiB writes, a safe point every {every}; then 512 KiB requests:");
    let mut resolved = Vec::new();
    for pass in 1..=4 {
        let (mut written, mut read, mut requests) = (0, 0, 0);
        for first in (0..PAGES).step_by(REQUEST as usize) {
            let mut got = Vec::new();
            while (got.len() as u64) < REQUEST {
                let l = LogicalPage(first + got.len() as u64);
                let left = REQUEST as usize - got.len();
                vol.reclaim_if_low().expect("reclaim");
                let n = vol
                    .try_allocate_run(&mut stream, l, left, &mut got)
                    .expect("allocate");
                assert!(n > 0, "no free page");
            }
            written += runs(&got.iter().copied().map(Some).collect::<Vec<_>>());
            let pages: Vec<_> = (first..).map(LogicalPage).zip(got).collect();
            vol.commit_writes(&pages).expect("commit");
            requests += 1;
            if requests % 8 == 0 {
                vol.safe_point(Trigger::Flush, None).expect("safe point");
            }
        }
        for first in (0..PAGES).step_by(REQUEST as usize) {
            resolved.clear();
            vol.resolve_pages(LogicalPage(first), REQUEST as usize, &mut resolved)
                .expect("resolve");
            read += runs(&resolved);
        }
        println!(
            "pass {pass}: runs per request written {:.1}, read back {:.1}",
            written as f64 / f64::from(requests),
            read as f64 / f64::from(requests)
        );
    }
}
