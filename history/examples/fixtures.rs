//! Writes the image fixtures of this build's format that `history/tests/old_formats.rs`
//! opens once the format has moved on, and their `.expect` files: `v<version>-clean.img.gz`
//! and `v<version>-crashed.img.gz`. Version 1's were made by commit 3ea4da4, version 3's by
//! 03c3cfe. Run it only from the last build of a format, when the next changes it, or to
//! remake a lost fixture from that build: a newer build makes images of another format.
//!
//! `cargo run -p rewind-history --example fixtures`

// The tests' half of it (reading pages back) goes unused here.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/fixture.rs"]
mod fixture;

use std::io::Write;
use std::sync::Arc;

use common::page_data;
use fixture::{device_pages, fixture, logical, render, BOOT, PAGES};
use rewind_history::{
    create, sim, CreateOptions, Durability, LogicalPage, MemStore, SafePointId, Trigger, Volume,
    FORMAT_VERSION, PAGE_SIZE,
};

/// The fixture generator's device: the volume and what the test knows it holds.
struct Gen {
    version: u32,
    vol: Volume<Arc<MemStore>>,
    stream: rewind_history::Stream,
    live: Vec<Option<u8>>,
    lines: Vec<String>,
}

impl Gen {
    fn write(&mut self, pages: std::ops::Range<u64>, v: u8) {
        for i in pages {
            let l = logical(self.version, i);
            self.vol
                .write_page(&mut self.stream, LogicalPage(l), &page_data(l, v))
                .unwrap();
            self.live[i as usize] = Some(v);
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

fn main() {
    let version = FORMAT_VERSION;
    let opts = CreateOptions {
        size: device_pages(version) * PAGE_SIZE,
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
        version,
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
    g.vol.discard(LogicalPage(logical(version, 40)), 8).unwrap();
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
    let name = |state: &str| format!("v{version}-{state}.img.gz");
    save(&name("crashed"), &store.contents(), &g.lines, &g.live);
    g.vol.close().unwrap();
    save(&name("clean"), &store.contents(), &g.lines, &g.live);
}
