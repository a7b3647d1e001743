//! What the old-format fixtures' test (`old_formats.rs`) and their generator
//! (`examples/fixtures.rs`) agree on: the device's size, the boot, the files' place, where
//! the pages the fixtures write live, and how a device's pages are written down in the
//! `.expect` files.

use std::path::PathBuf;

/// Pages the fixtures write and check (a version 1 fixture's whole device).
pub const PAGES: u64 = 64;
/// The boot the fixtures were made in.
pub const BOOT: u64 = 7;
/// Pages of a map leaf (`rewind_remap::MAP_LEAF_PAGES`, fixed by the format).
const LEAF: u64 = 4096;

/// Pages of the device of a fixture of format `version`: from version 3 on, four map leaves,
/// so that its checkpoints, holding two of them, take the leaves form.
pub fn device_pages(version: u32) -> u64 {
    match version {
        1 => PAGES,
        _ => 4 * LEAF,
    }
}

/// The logical page of the fixture's `i`th page: from version 3 on, the first half at the
/// start of the first leaf, the second half in the last leaf.
pub fn logical(version: u32, i: u64) -> u64 {
    match version {
        1 => i,
        _ if i < PAGES / 2 => i,
        _ => 3 * LEAF + i,
    }
}

/// The path of fixture `name`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A device's pages, one character each: `.` zeros, else the version written.
pub fn render(device: &[Option<u8>]) -> String {
    device
        .iter()
        .map(|v| match v {
            None => '.',
            Some(v) => char::from(b'0' + v),
        })
        .collect()
}
