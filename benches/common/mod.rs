//! What the engine benchmarks share: formatting and opening a volume on any store, and the
//! pseudo-random page sequence both sides of a comparison walk. Each bench compiles its own
//! copy and uses what it needs.
#![allow(dead_code)]

use rewind_history::{create, CreateOptions, Store, Volume};

/// Formats `store` with `opts` and opens it as this host (read from `/proc` once).
pub fn open_volume<S: Store>(store: S, opts: &CreateOptions) -> Volume<S> {
    let host = rewind::host::this_host();
    create(&store, opts, &host).expect("create");
    Volume::open(store, &host).expect("open")
}

/// A cheap pseudo-random page number below `pages` (xorshift64): the same sequence for the
/// baseline and the engine.
pub fn next_page(x: &mut u64, pages: u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x % pages
}
