//! The fuzz corpora on stable: every file of `fuzz/corpus/<target>/` goes through the entry
//! point its `cargo fuzz` target calls (`rewind_history::fuzzing`), so `cargo test` guards
//! the seeds and every finding that was fixed (its repro is kept in the corpus, named
//! `regress-<what>`). Seeds (`seed-*`) must also still open without error: one that fails
//! no longer takes the fuzzer past the first check, and should be regenerated.
//!
//! The seeds come from real images made by the engine, by the ignored test below:
//! `cargo test -p rewind-history --test fuzz_corpus -- --ignored` rewrites every `seed-*`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rewind_history::{
    create, fuzzing, Error, LogicalPage, MemStore, SafePointId, Store, Trigger, Volume,
};

type Entry = fn(&[u8]) -> Result<(), Error>;

const TARGETS: [(&str, Entry); 4] = [
    ("superblock", fuzzing::superblock),
    ("journal", fuzzing::journal),
    ("checkpoint", fuzzing::checkpoint),
    ("image", fuzzing::image),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    files
}

fn is_seed(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("seed-"))
}

#[test]
fn every_corpus_file_returns_without_panic() {
    for (target, entry) in TARGETS {
        let files = corpus_files(target);
        assert!(
            files.iter().any(|f| is_seed(f)),
            "{target}: no seed in its corpus"
        );
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            let result = entry(&bytes);
            if is_seed(&file) {
                if let Err(e) = result {
                    panic!(
                        "{}: a seed no longer opens ({e}); regenerate the seeds: \
                         cargo test -p rewind-history --test fuzz_corpus -- --ignored",
                        file.display()
                    );
                }
            }
        }
    }
}

const PAGE: usize = 4096;

fn page(l: u64, v: u8) -> Vec<u8> {
    let mut d = vec![v; PAGE];
    d[..8].copy_from_slice(&l.to_le_bytes());
    d
}

/// A fresh image of the seed geometry.
fn fresh() -> Arc<MemStore> {
    let opts = fuzzing::base_options();
    let layout = rewind_history::Layout::for_create(&opts).unwrap();
    let store = Arc::new(MemStore::new(layout.required_bytes()));
    create(&store, &opts, &fuzzing::host()).unwrap();
    store
}

fn write(vol: &Volume<Arc<MemStore>>, pages: std::ops::Range<u64>, v: u8) {
    let mut stream = vol.stream(0, 1);
    for l in pages {
        vol.write_page(&mut stream, LogicalPage(l), &page(l, v))
            .unwrap();
    }
}

/// Writes, overwrites in and across epochs, flushes.
fn writes_and_flushes(vol: &Volume<Arc<MemStore>>) {
    write(vol, 0..8, 1);
    vol.flush().unwrap();
    write(vol, 0..4, 2);
    write(vol, 2..3, 3);
    vol.flush().unwrap();
}

/// Labelled safe points (one label spans several journal slots), discards, idle points.
fn labels_and_discards(vol: &Volume<Arc<MemStore>>) {
    write(vol, 0..16, 4);
    vol.safe_point(
        Trigger::User,
        Some("before-upgrade: a label longer than a slot".into()),
    )
    .unwrap();
    vol.discard(LogicalPage(4), 8).unwrap();
    write(vol, 5..6, 5);
    write(vol, 5..6, 6);
    vol.safe_point(Trigger::Idle, None).unwrap();
    vol.discard(LogicalPage(10), 2).unwrap();
    vol.flush().unwrap();
}

/// A rollback, then its undo.
fn rollback_and_undo(vol: &Volume<Arc<MemStore>>) {
    write(vol, 20..30, 7);
    let at = vol.safe_point(Trigger::User, Some("good".into())).unwrap();
    write(vol, 20..25, 8);
    vol.flush().unwrap();
    let before = vol.rollback(at).unwrap();
    write(vol, 21..22, 9);
    vol.flush().unwrap();
    vol.rollback(before).unwrap();
}

/// Enough rewrites to fill the history area, so reclaim retires safe points.
fn reclaim(vol: &Volume<Arc<MemStore>>) {
    for round in 0..3 {
        write(vol, 100..250, 10 + round);
        vol.flush().unwrap();
    }
    assert!(
        vol.safe_points()[0].id > SafePointId(0),
        "reclaim retired a safe point"
    );
}

fn save(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

type Work = fn(&Volume<Arc<MemStore>>);

/// The image after `work`, left open (not closed): the journal holds all of it.
fn journal_only(work: Work) -> Vec<u8> {
    let store = fresh();
    let vol = Volume::open(store.clone(), &fuzzing::host()).unwrap();
    work(&vol);
    drop(vol);
    let sb = rewind_history::read_superblock(&store).unwrap();
    assert_eq!(
        sb.ckpt_journal_seq.get(),
        0,
        "the workload took a checkpoint"
    );
    store.contents()
}

#[test]
#[ignore = "rewrites the seed corpora; run by hand after a format change"]
fn regenerate_seed_corpora() {
    for (target, _) in TARGETS {
        for f in corpus_files(target).into_iter().filter(|f| is_seed(f)) {
            std::fs::remove_file(f).unwrap();
        }
    }
    save_journal_seeds();
    save_image_seeds("fresh", &fresh().contents());
    save_checkpointed_seeds();
    save_reclaimed_seeds();
}

/// The `journal` seeds: each workload alone, in the journal of a fresh image.
fn save_journal_seeds() {
    let workloads: [(&str, Work); 4] = [
        ("writes", writes_and_flushes),
        ("labels-discards", labels_and_discards),
        ("rollback", rollback_and_undo),
        ("reclaim", reclaim),
    ];
    for (name, work) in workloads {
        save(
            "journal",
            name,
            &fuzzing::journal_input(&journal_only(work)),
        );
    }
}

/// The `superblock`, `checkpoint` and `image` seeds `name` of `image`.
fn save_image_seeds(name: &str, image: &[u8]) {
    save("superblock", name, &fuzzing::superblock_input(image));
    save("checkpoint", name, &fuzzing::checkpoint_input(image));
    save("image", name, &fuzzing::image_input(image));
}

/// The seeds of an image closed after a checkpoint (`closed`), then reopened and left
/// unclean (`unclean`).
fn save_checkpointed_seeds() {
    // Two checkpoints bring the current one back to slot 0, where an `image` input
    // reaches it: one forced in the middle, one at the clean close.
    let store = fresh();
    let vol = Volume::open(store.clone(), &fuzzing::host()).unwrap();
    writes_and_flushes(&vol);
    labels_and_discards(&vol);
    vol.commit(true).unwrap();
    rollback_and_undo(&vol);
    vol.close().unwrap();
    save_image_seeds("closed", &store.contents());

    // Reopened and left unclean: a journal on top of that checkpoint, of a later session.
    let vol = Volume::open(store.clone(), &fuzzing::host()).unwrap();
    write(&vol, 40..50, 20);
    vol.safe_point(Trigger::User, Some("unclean".into()))
        .unwrap();
    vol.discard(LogicalPage(0), 3).unwrap();
    vol.flush().unwrap();
    drop(vol);
    let unclean = store.contents();
    save(
        "superblock",
        "unclean",
        &fuzzing::superblock_input(&unclean),
    );
    save("image", "unclean", &fuzzing::image_input(&unclean));
}

/// The seeds of an image whose history went past reclaim (`reclaimed`), closed twice so
/// the checkpoint is in slot 0.
fn save_reclaimed_seeds() {
    let store = fresh();
    let vol = Volume::open(store.clone(), &fuzzing::host()).unwrap();
    reclaim(&vol);
    vol.close().unwrap();
    let vol = Volume::open(store.clone(), &fuzzing::host()).unwrap();
    write(&vol, 0..3, 30);
    vol.close().unwrap();
    let reclaimed = store.contents();
    save(
        "checkpoint",
        "reclaimed",
        &fuzzing::checkpoint_input(&reclaimed),
    );
    save("image", "reclaimed", &fuzzing::image_input(&reclaimed));
    assert!(store.len() > 0);
}

/// A checkpoint whose map puts two logical pages on one physical page is refused on open:
/// the reference count sees the page twice and the owners differ. (The map of the base
/// image is one leaf, in version 4's wide form: after the header page, the leaf count, the
/// leaf's number, then a word per page.)
#[test]
fn a_physical_page_of_two_logical_pages_is_refused() {
    let store = fresh();
    for _ in 0..2 {
        // Two closes, so the checkpoint is in slot 0, where the input is taken from.
        let vol = Volume::open(store.clone(), &fuzzing::host()).unwrap();
        write(&vol, 0..2, 1);
        vol.close().unwrap();
    }
    let mut input = fuzzing::checkpoint_input(&store.contents());
    assert_eq!(
        fuzzing::checkpoint(&input).map_err(|e| e.to_string()),
        Ok(())
    );
    let word = |l: usize| 1 + PAGE + 16 + 8 * l;
    let page_0: [u8; 8] = input[word(0)..word(0) + 8].try_into().unwrap();
    input[word(1)..word(1) + 8].copy_from_slice(&page_0);
    let err = fuzzing::checkpoint(&input).expect_err("two logical pages on one");
    assert!(
        err.to_string().contains("belongs to logical pages 0 and 1"),
        "{err}"
    );
}
