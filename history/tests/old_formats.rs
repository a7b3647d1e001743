//! Images of older formats stay readable, and keep their format when served: fixtures made
//! by the last build of each format, opened by this build.
//!
//! Per format `N` (1, made by commit 3ea4da4; 3, made by 03c3cfe), two fixtures, made by
//! `history/examples/fixtures.rs` (run from the last build of a format):
//! - `vN-clean.img.gz`: closed cleanly: opens from its checkpoint;
//! - `vN-crashed.img.gz`: the store as a `kill -9` left it, with completed writes in the
//!   journal after the last flush: opens by replaying the journal.
//!
//! Beside each, `.expect`: what every safe point and the live device read, one line each:
//! `<id> <label or -> <one character per page: '.' zeros, else the version written>`, for
//! the `PAGES` pages the fixture writes (`fixture::logical` says where they are).

mod common;
#[path = "common/fixture.rs"]
mod fixture;
use common::{decode, page_data};
use fixture::{device_pages, fixture, logical, render, BOOT, PAGES};
use std::io::Read;
use std::sync::Arc;

use rewind_history::{
    check, read_superblock, sim, LogicalPage, MemStore, SafePointId, Store, Trigger, Volume,
    PAGE_SIZE,
};

/// One safe point (or the live device, id `None`) and what it reads.
struct Expected {
    id: Option<u64>,
    label: Option<String>,
    device: String,
}

fn parse_expect(text: &str) -> Vec<Expected> {
    text.lines()
        .map(|line| {
            let mut f = line.split(' ');
            let id = f.next().expect("id");
            let label = f.next().expect("label");
            let device = f.next().expect("pages").to_string();
            assert_eq!(device.len() as u64, PAGES, "a line of {PAGES} pages");
            Expected {
                id: (id != "live").then(|| id.parse().expect("a safe point id")),
                label: (label != "-").then(|| label.to_string()),
                device,
            }
        })
        .collect()
}

fn read_fixture(name: &str) -> (Vec<u8>, Vec<Expected>) {
    let mut gz = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixture(name)).expect("fixture"))
        .read_to_end(&mut gz)
        .expect("gunzip");
    let expect =
        std::fs::read_to_string(fixture(&name.replace(".img.gz", ".expect"))).expect("expect file");
    (gz, parse_expect(&expect))
}

/// Opens fixture `name`, of format `version`, with this build, on a host of boot `boot`,
/// and checks every safe point and the live device against its `.expect` (with
/// `live_at_last_safe_point`, the live device must read as the newest safe point); then
/// writes, flushes and opens it again, and checks it kept its format.
fn open_and_verify(name: &str, version: u32, boot: u64, live_at_last_safe_point: bool) {
    let (image, mut expected) = read_fixture(name);
    if live_at_last_safe_point {
        let newest = expected[expected.len() - 2].device.clone();
        expected.last_mut().unwrap().device = newest;
    }
    assert_eq!(
        u32::from_le_bytes(image[8..12].try_into().unwrap()),
        version,
        "{name} is a version {version} image"
    );
    let host = sim::host(boot);
    let store = Arc::new(MemStore::from_bytes(image));
    assert_eq!(
        read_superblock(&store).unwrap().logical_pages.get(),
        device_pages(version),
        "{name}: the fixtures' device"
    );
    check(&store, &host).unwrap_or_else(|e| panic!("{name}: check: {e}"));
    let vol = Volume::open(store.clone(), &host).unwrap_or_else(|e| panic!("{name}: open: {e}"));
    let infos = vol.safe_points();
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    for e in &expected {
        let mut device = Vec::new();
        for i in 0..PAGES {
            let l = LogicalPage(logical(version, i));
            match e.id {
                Some(id) => vol.read_page_at(l, SafePointId(id), &mut buf),
                None => vol.read_page(l, &mut buf),
            }
            .unwrap_or_else(|err| panic!("{name}: reading page {} at {:?}: {err}", l.0, e.id));
            device.push(decode(l.0, &buf));
        }
        assert_eq!(render(&device), e.device, "{name}: safe point {:?}", e.id);
        if let Some(id) = e.id {
            let sp = infos
                .iter()
                .find(|sp| sp.id == SafePointId(id))
                .unwrap_or_else(|| panic!("{name}: safe point {id} is gone"));
            assert_eq!(sp.label, e.label, "{name}: the label of safe point {id}");
        }
    }
    // Served on by this build: a write and a flush, then a clean close and an open.
    let mut stream = vol.stream(0, 1);
    let last = logical(version, PAGES - 1);
    vol.write_page(&mut stream, LogicalPage(last), &page_data(last, 9))
        .unwrap();
    let id = vol.safe_point(Trigger::User, Some("after".into())).unwrap();
    vol.close().unwrap();
    let vol = Volume::open(store.clone(), &host).unwrap();
    vol.read_page_at(LogicalPage(last), id, &mut buf).unwrap();
    assert_eq!(decode(last, &buf), Some(9));
    drop(vol);
    check(&store, &host).unwrap();
    // It keeps its format, which a build of that format still opens: its superblock says so
    // and its checkpoints keep the map's form of that format (the close wrote one): dense in
    // version 1, leaves in version 3.
    let sb = read_superblock(&store).unwrap();
    assert_eq!(
        sb.version.get(),
        version,
        "{name} stays a version {version} image"
    );
    let slot = sb.layout().ckpt_offsets[sb.ckpt_slot.get() as usize];
    let mut header = vec![0u8; 8];
    store.read_at(slot, &mut header).unwrap();
    assert_eq!(
        u32::from_le_bytes(header[4..8].try_into().unwrap()),
        version,
        "{name}: a version {version} checkpoint"
    );
}

#[test]
fn a_cleanly_closed_version_1_image_opens() {
    open_and_verify("v1-clean.img.gz", 1, BOOT + 1, false);
}

/// As after a `kill -9` of its daemon: the same boot, so the completed writes the journal
/// holds unsynced are replayed.
#[test]
fn a_killed_version_1_image_replays_its_journal() {
    open_and_verify("v1-crashed.img.gz", 1, BOOT, false);
}

/// As after a power cut: another boot, so the unsynced journal blocks are not trusted and
/// the device is its newest safe point.
#[test]
fn a_version_1_image_after_a_power_cut_opens_at_its_last_safe_point() {
    open_and_verify("v1-crashed.img.gz", 1, BOOT + 1, true);
}

#[test]
fn a_cleanly_closed_version_3_image_opens() {
    open_and_verify("v3-clean.img.gz", 3, BOOT + 1, false);
}

#[test]
fn a_killed_version_3_image_replays_its_journal() {
    open_and_verify("v3-crashed.img.gz", 3, BOOT, false);
}

#[test]
fn a_version_3_image_after_a_power_cut_opens_at_its_last_safe_point() {
    open_and_verify("v3-crashed.img.gz", 3, BOOT + 1, true);
}

/// A version 1 image large enough that the leaves form of its map would be smaller (two of
/// its four leaves written) still gets the dense form, the only one a version 1 reader
/// knows, and stays version 1.
#[test]
fn a_version_1_image_keeps_dense_checkpoints() {
    const LEAF: u64 = 4096;
    let opts = rewind_history::CreateOptions {
        size: 4 * LEAF * PAGE_SIZE,
        history: Some(LEAF * PAGE_SIZE),
        journal: Some(64 * 512),
    };
    let layout = rewind_history::Layout::for_create_as(&opts, 1).unwrap();
    let store = Arc::new(MemStore::new(layout.required_bytes()));
    let host = sim::host(BOOT);
    sim::create_version(&store, &opts, &host, 1).unwrap();
    let vol = Volume::open(store.clone(), &host).unwrap();
    let mut stream = vol.stream(0, 1);
    for l in [3, 2 * LEAF + 1] {
        vol.write_page(&mut stream, LogicalPage(l), &page_data(l, 4))
            .unwrap();
    }
    vol.safe_point(Trigger::User, None).unwrap();
    vol.close().unwrap();
    let sb = read_superblock(&store).unwrap();
    assert_eq!(sb.version.get(), 1);
    let mut header = vec![0u8; 8];
    let slot = layout.ckpt_offsets[sb.ckpt_slot.get() as usize];
    store.read_at(slot, &mut header).unwrap();
    assert_eq!(u32::from_le_bytes(header[4..8].try_into().unwrap()), 1);
    assert!(
        sb.ckpt_len.get() > PAGE_SIZE + 4 * LEAF * 8,
        "the whole map"
    );
    // Every page never written is stored as a version 1 build stores one (physical page
    // all ones, tag 0), which it keeps no map memory for.
    let mut words = vec![0u8; (4 * LEAF * 8) as usize];
    store.read_at(slot + PAGE_SIZE, &mut words).unwrap();
    let odd: Vec<usize> = words
        .chunks_exact(8)
        .enumerate()
        .filter(|(_, w)| u64::from_le_bytes((*w).try_into().unwrap()) != 0xFFFF_FFFF)
        .map(|(l, _)| l)
        .collect();
    assert_eq!(odd, [3, 2 * LEAF as usize + 1], "only the pages written");
    check(&store, &host).unwrap();
    let vol = Volume::open(store.clone(), &host).unwrap();
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    vol.read_page(LogicalPage(2 * LEAF + 1), &mut buf).unwrap();
    assert_eq!(decode(2 * LEAF + 1, &buf), Some(4));
}
