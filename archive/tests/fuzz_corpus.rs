//! The archive fuzz corpus on stable: every file of `fuzz/corpus/archive/` goes through the
//! entry point the `cargo fuzz` target calls (`rewind_archive::fuzzing::archive_and_fixed`), so
//! `cargo test` guards the seeds and every finding that was fixed (kept as
//! `regress-<what>`). Seeds (`seed-*`) must also still verify: one that fails no longer
//! takes the fuzzer past the first check, and should be regenerated with
//! `cargo test -p rewind-archive --test fuzz_corpus -- --ignored`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rewind_archive::{fuzzing, Export, ExportOptions};
use rewind_history::{
    create, sim, CreateOptions, LogicalPage, MemStore, Trigger, Volume, PAGE_SIZE,
};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/archive")
}

#[test]
fn every_corpus_file_is_read_without_a_panic_and_seeds_verify() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("the archive corpus")
        .map(|e| e.expect("an entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the archive corpus is empty");
    for f in files {
        let data = std::fs::read(&f).expect("a corpus file");
        let result = fuzzing::archive_and_fixed(&data);
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seed-") {
            assert!(result.is_ok(), "{name}: {:?}", result.err());
        }
    }
}

/// Writes the seeds: a small full archive with data, discards and labels, and an
/// incremental one after it.
#[test]
#[ignore = "rewrites the committed seeds"]
fn write_seeds() {
    let opts = CreateOptions {
        size: 64 * PAGE_SIZE,
        history: Some(1024 * PAGE_SIZE),
        journal: Some(1 << 20),
    };
    let layout = rewind_history::Layout::for_create(&opts).unwrap();
    let store = Arc::new(MemStore::new(layout.required_bytes()));
    let host = sim::host(1);
    create(&store, &opts, &host).unwrap();
    let vol = Volume::open(store, &host).unwrap();
    let mut stream = vol.stream(0, 1);
    for sp in 1..=4u64 {
        for l in [sp, sp * 7 % 64, 63] {
            vol.write_page(
                &mut stream,
                LogicalPage(l),
                &vec![sp as u8 * 16 + l as u8; PAGE_SIZE as usize],
            )
            .unwrap();
        }
        if sp == 3 {
            vol.discard(LogicalPage(1), 2).unwrap();
        }
        vol.safe_point(Trigger::User, (sp == 2).then(|| "two".to_string()))
            .unwrap();
    }
    let write = |name: &str, o: ExportOptions| {
        let e = Export::plan(&vol, o).unwrap();
        let mut out = Vec::new();
        e.write(&mut out, &mut |_| Ok(())).unwrap();
        std::fs::create_dir_all(corpus_dir()).unwrap();
        std::fs::write(corpus_dir().join(name), out).unwrap();
    };
    let sp = |i: u64| Some(rewind_history::SafePointId(i));
    write(
        "seed-full",
        ExportOptions {
            from: None,
            to: sp(3),
            incremental: false,
            net: false,
        },
    );
    write(
        "seed-incremental",
        ExportOptions {
            from: sp(3),
            to: sp(4),
            incremental: true,
            net: false,
        },
    );
}
