//! What the version 1 fixtures' test (`format_v1.rs`) and their generator
//! (`examples/v1_fixtures.rs`) agree on: the device's size, the boot, the files' place and
//! how a device's pages are written down in the `.expect` files.

use std::path::PathBuf;

/// Pages of the fixtures' device.
pub const PAGES: u64 = 64;
/// The boot the fixtures were made in.
pub const BOOT: u64 = 7;

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
