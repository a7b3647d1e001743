//! Version 1 images stay readable: fixtures made by the release that introduced version 2
//! (pools), before any version 2 code existed, opened by this build.
//!
//! Two fixtures, made by `generate_fixtures` (ignored; it only ever needs to run again if a
//! fixture is lost, and then from a version 1 build):
//! - `v1-clean.img.gz`: closed cleanly: opens from its checkpoint;
//! - `v1-crashed.img.gz`: the store as a `kill -9` left it, with completed writes in the
//!   journal after the last flush: opens by replaying the journal.
//!
//! Beside each, `.expect`: what every safe point and the live device read, one line each:
//! `<id> <label or -> <one character per page: '.' zeros, else the version written>`.

mod common;
use common::{decode, page_data};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use rewind_history::{
    check, create, sim, CreateOptions, Durability, LogicalPage, MemStore, SafePointId, Trigger,
    Volume, PAGE_SIZE,
};

const PAGES: u64 = 64;
const BOOT: u64 = 7;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn render(device: &[Option<u8>]) -> String {
    device
        .iter()
        .map(|v| match v {
            None => '.',
            Some(v) => char::from(b'0' + v),
        })
        .collect()
}

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

/// Opens a fixture with this build, on a host of boot `boot`, and checks every safe point
/// and the live device against its `.expect` (with `live_at_last_safe_point`, the live
/// device must read as the newest safe point); then writes, flushes and opens it again.
fn open_and_verify(name: &str, boot: u64, live_at_last_safe_point: bool) {
    let (image, mut expected) = read_fixture(name);
    if live_at_last_safe_point {
        let newest = expected[expected.len() - 2].device.clone();
        expected.last_mut().unwrap().device = newest;
    }
    assert_eq!(
        u32::from_le_bytes(image[8..12].try_into().unwrap()),
        1,
        "{name} is a version 1 image"
    );
    let host = sim::host(boot);
    let store = Arc::new(MemStore::from_bytes(image));
    check(&store, &host).unwrap_or_else(|e| panic!("{name}: check: {e}"));
    let vol = Volume::open(store.clone(), &host).unwrap_or_else(|e| panic!("{name}: open: {e}"));
    let infos = vol.safe_points();
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    for e in &expected {
        let mut device = Vec::new();
        for l in 0..PAGES {
            match e.id {
                Some(id) => vol.read_page_at(LogicalPage(l), SafePointId(id), &mut buf),
                None => vol.read_page(LogicalPage(l), &mut buf),
            }
            .unwrap_or_else(|err| panic!("{name}: reading page {l} at {:?}: {err}", e.id));
            device.push(decode(l, &buf));
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
    vol.write_page(&mut stream, LogicalPage(63), &page_data(63, 9))
        .unwrap();
    let id = vol.safe_point(Trigger::User, Some("after".into())).unwrap();
    vol.close().unwrap();
    let vol = Volume::open(store.clone(), &host).unwrap();
    vol.read_page_at(LogicalPage(63), id, &mut buf).unwrap();
    assert_eq!(decode(63, &buf), Some(9));
    check(&store, &host).unwrap();
}

#[test]
fn a_cleanly_closed_version_1_image_opens() {
    open_and_verify("v1-clean.img.gz", BOOT + 1, false);
}

/// As after a `kill -9` of its daemon: the same boot, so the completed writes the journal
/// holds unsynced are replayed.
#[test]
fn a_killed_version_1_image_replays_its_journal() {
    open_and_verify("v1-crashed.img.gz", BOOT, false);
}

/// As after a power cut: another boot, so the unsynced journal blocks are not trusted and
/// the device is its newest safe point.
#[test]
fn a_version_1_image_after_a_power_cut_opens_at_its_last_safe_point() {
    open_and_verify("v1-crashed.img.gz", BOOT + 1, true);
}

/// The fixture generator's device: the volume and what the test knows it holds.
struct Gen {
    vol: Volume<Arc<MemStore>>,
    stream: rewind_history::Stream,
    live: Vec<Option<u8>>,
    lines: Vec<String>,
}

impl Gen {
    fn write(&mut self, pages: std::ops::Range<u64>, v: u8) {
        for l in pages {
            self.vol
                .write_page(&mut self.stream, LogicalPage(l), &page_data(l, v))
                .unwrap();
            self.live[l as usize] = Some(v);
        }
    }

    fn mark(&mut self, label: Option<&str>) -> (SafePointId, String) {
        let trigger = if label.is_some() {
            Trigger::User
        } else {
            Trigger::Flush
        };
        let id = self
            .vol
            .safe_point(trigger, label.map(String::from))
            .unwrap();
        let device = render(&self.live);
        self.lines
            .push(format!("{} {} {device}", id.0, label.unwrap_or("-")));
        (id, device)
    }
}

/// Saves `image` as fixture `name`, with its `.expect` from `lines` and the live device.
fn save(name: &str, image: &[u8], lines: &[String], live: &[Option<u8>]) {
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(fixture(name)).unwrap(),
        flate2::Compression::best(),
    );
    gz.write_all(image).unwrap();
    gz.finish().unwrap();
    let mut lines = lines.to_vec();
    lines.push(format!("live - {}", render(live)));
    std::fs::write(
        fixture(&name.replace(".img.gz", ".expect")),
        lines.join("\n") + "\n",
    )
    .unwrap();
}

/// Writes the fixtures. Run only from a version 1 build (commit 3ea4da4 or earlier):
/// `cargo test -p rewind-history --test format_v1 -- --ignored`.
#[test]
#[ignore]
fn generate_fixtures() {
    let opts = CreateOptions {
        size: PAGES * PAGE_SIZE,
        history: Some(1 << 20),
        journal: Some(64 << 10),
    };
    let layout = rewind_history::Layout::for_create(&opts).unwrap();
    let store = Arc::new(MemStore::new(layout.required_bytes()));
    let host = sim::host(BOOT);
    create(&store, &opts, &host).unwrap();
    let vol = Volume::open(store.clone(), &host).unwrap();
    vol.set_durability(Durability::CompletedWrites);
    let stream = vol.stream(0, 1);
    let mut g = Gen {
        vol,
        stream,
        live: vec![None; PAGES as usize],
        lines: Vec::new(),
    };
    g.write(0..PAGES, 1);
    g.mark(Some("first"));
    g.write(0..16, 2);
    g.mark(None);
    g.write(8..24, 3);
    let (third, third_device) = g.mark(Some("third"));
    g.vol.discard(LogicalPage(40), 8).unwrap();
    g.live[40..48].fill(None);
    g.mark(None);
    // A rollback to "third", then more history on top of it.
    g.vol.rollback(third).unwrap();
    g.live = third_device
        .chars()
        .map(|c| (c != '.').then(|| c as u8 - b'0'))
        .collect();
    g.write(56..64, 4);
    g.mark(Some("after-rollback"));
    // Completed writes after the last safe point: in the journal only.
    g.write(30..34, 5);
    save("v1-crashed.img.gz", &store.contents(), &g.lines, &g.live);
    g.vol.close().unwrap();
    save("v1-clean.img.gz", &store.contents(), &g.lines, &g.live);
}
