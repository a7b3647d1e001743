//! The commands on an image file or block device: `rewind create` (formatting) and `rewind
//! check`, and what `rewind add` makes of its image before it starts a daemon (formatting a
//! missing one, checking an existing one against the sizes given).
//!
//! A new image file is preallocated (`fallocate`) unless `--sparse` asks otherwise: see
//! `daemon::backing::Allocation`. A file system that cannot preallocate gets a sparse image
//! and a warning that says so.
//!
//! Bad input changes nothing: a size that does not fit, an image that already holds rewind
//! data (without `--force`), or an image in use is refused before a byte is written, and a
//! file `create` made for a format that then failed is removed again.

use std::fs::OpenOptions;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rewind_history::format::Superblock;
use rewind_history::{CreateOptions, Error as EngineError, Layout};

use crate::cli::render::print_json;
use crate::daemon::backing::{Allocation, BackingKind, FileStore};
use crate::size::{describe_layout, history_bytes, human, human_exact};

/// What a backing store holds.
pub enum Contents {
    /// A rewind image described by this superblock.
    Rewind(Box<Superblock>),
    /// No rewind superblock.
    Foreign,
}

/// Reads the superblock of an opened store. A foreign file is `Foreign`; a rewind
/// superblock that fails its checks is an error that says why.
pub fn identify(store: &FileStore) -> Result<Contents> {
    match rewind_history::read_superblock(store) {
        Ok(sb) => Ok(Contents::Rewind(Box::new(sb))),
        Err(EngineError::NotRewind) | Err(EngineError::TooSmall { .. }) => Ok(Contents::Foreign),
        Err(e) => Err(e).with_context(|| {
            format!(
                "reading the rewind superblock of {}",
                store.path().display()
            )
        }),
    }
}

/// Formats `path` as an empty rewind image: creates a regular file if it is missing and
/// grows a file that is too small, reserving its bytes as `allocation` says. Refuses an
/// image that already holds a rewind superblock unless `force`. Returns the layout and the
/// allocation the file got (`Sparse` when its file system cannot preallocate).
pub fn format(
    path: &Path,
    opts: &CreateOptions,
    force: bool,
    allocation: Allocation,
) -> Result<(Layout, Allocation)> {
    let layout = Layout::for_create(opts).context("checking the sizes")?;
    let created = match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            return Err(e).with_context(|| format!("creating {}", path.display()));
        }
    };
    let result = format_existing(path, opts, &layout, force, allocation);
    if result.is_err() && created {
        // Leave nothing behind for a create that failed.
        let _ = std::fs::remove_file(path);
    }
    result
}

fn format_existing(
    path: &Path,
    opts: &CreateOptions,
    layout: &Layout,
    force: bool,
    allocation: Allocation,
) -> Result<(Layout, Allocation)> {
    let mut store = FileStore::open(path)?;
    if !force {
        refuse_rewind_contents(&store)?;
    }
    let need = layout.required_bytes();
    if store.kind() == BackingKind::BlockDevice && rewind_history::Store::len(&store) < need {
        bail!(
            "{} is a block device of {}; a {} device with {} of history needs {} ({need} bytes): \
             give a smaller --size or --history",
            path.display(),
            human(rewind_history::Store::len(&store)),
            human(layout.device_bytes()),
            human(history_bytes(layout)),
            human(need)
        );
    }
    let got = store.ensure_len(need, allocation)?;
    // A block device reports itself preallocated whatever was asked: only a file that was to
    // be preallocated and came out sparse is worth a warning.
    if allocation == Allocation::Preallocated && got == Allocation::Sparse {
        log::warn!(
            "{}: its file system cannot preallocate (fallocate: EOPNOTSUPP), so the image is \
             sparse: a write to the device may fail with ENOSPC if that file system fills up",
            path.display()
        );
    }
    let made = rewind_history::create(&store, opts, &crate::host::this_host())
        .with_context(|| format!("formatting {}", path.display()))?;
    debug_assert_eq!(&made, layout);
    Ok((made, got))
}

/// Refuses a store that holds a rewind image, or a damaged rewind superblock: formatting
/// it needs `--force`.
fn refuse_rewind_contents(store: &FileStore) -> Result<()> {
    let path = store.path();
    match identify(store) {
        Ok(Contents::Foreign) => Ok(()),
        Ok(Contents::Rewind(sb)) => bail!(
            "{} already holds a rewind image ({}); formatting it would destroy its data \
             and history: give --force to format it anyway",
            path.display(),
            describe_layout(&sb.layout())
        ),
        Err(e) => Err(e.context(format!(
            "{} holds a damaged rewind superblock; give --force to format it anyway",
            path.display()
        ))),
    }
}

/// ` (sparse)` after the description of a sparse image, nothing otherwise.
pub fn sparse_suffix(allocation: Allocation) -> &'static str {
    match allocation {
        Allocation::Preallocated => "",
        Allocation::Sparse => " (sparse)",
    }
}

/// `rewind create`.
pub fn create_command(
    image: &Path,
    size: u64,
    history: Option<u64>,
    force: bool,
    allocation: Allocation,
) -> Result<()> {
    let opts = CreateOptions {
        size,
        history,
        journal: None,
    };
    let (layout, got) = format(image, &opts, force, allocation)?;
    println!(
        "formatted {}: {}{}",
        image.display(),
        describe_layout(&layout),
        sparse_suffix(got)
    );
    Ok(())
}

/// What `rewind add` does with its image before starting a daemon: formats a missing image
/// (which needs `size`; its file is reserved as `allocation` says), or checks an existing
/// one against `size` and `history` if given. Returns the image's layout and, if it created
/// the image, the allocation its file got.
pub fn prepare_for_add(
    image: &Path,
    size: Option<u64>,
    history: Option<u64>,
    allocation: Allocation,
) -> Result<(Layout, Option<Allocation>)> {
    if !image.exists() {
        let Some(size) = size else {
            bail!(
                "{} does not exist; give --size to create it (e.g. `rewind add {} --size 10G`)",
                image.display(),
                image.display()
            );
        };
        let opts = CreateOptions {
            size,
            history,
            journal: None,
        };
        let (layout, got) = format(image, &opts, false, allocation)?;
        return Ok((layout, Some(got)));
    }
    let store = FileStore::open(image)?;
    let sb = match identify(&store)? {
        Contents::Rewind(sb) => sb,
        Contents::Foreign => bail!(
            "{} is not a rewind image (no rewind superblock); format it first with \
             `rewind create {} --size SIZE`, which destroys what it holds",
            image.display(),
            image.display()
        ),
    };
    let layout = sb.layout();
    if let Some(size) = size {
        if size != layout.device_bytes() {
            bail!(
                "{} is a {} ({}) rewind image, not {} as --size asks; omit --size to serve it \
                 as it is",
                image.display(),
                human_exact(layout.device_bytes()),
                human(layout.device_bytes()),
                human_exact(size)
            );
        }
    }
    if let Some(history) = history {
        if history != history_bytes(&layout) {
            bail!(
                "{} has {} of history, not {} as --history asks; the history size is fixed \
                 when the image is created: omit --history",
                image.display(),
                human_exact(history_bytes(&layout)),
                human_exact(history)
            );
        }
    }
    Ok((layout, None))
}

/// `rewind check IMAGE`: checks all metadata of an image no daemon serves, writing nothing.
/// Exits non-zero (through the error) on any corruption.
pub fn check_command(image: &Path, json: bool) -> Result<()> {
    let store = match FileStore::open_read_only(image) {
        Ok(s) => s,
        Err(crate::daemon::backing::BackingError::InUse { .. }) => bail!(
            "{} is served by a running rewind daemon: stop it with `rewind del -n ID` to check it",
            image.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let started = std::time::Instant::now();
    let r = rewind_history::check(&store, &crate::host::this_host())
        .with_context(|| format!("{} failed the check", image.display()))?;
    let took = started.elapsed();
    let copy = |c: &std::result::Result<u64, String>| match c {
        Ok(g) => format!("valid (generation {g})"),
        Err(why) => format!("NOT VALID: {why}"),
    };
    if json {
        let v = serde_json::json!({
            "image": image.display().to_string(),
            "ok": true,
            "superblock_copies": r.superblocks.iter().map(|c| match c {
                Ok(g) => serde_json::json!({"valid": true, "generation": g}),
                Err(why) => serde_json::json!({"valid": false, "error": why}),
            }).collect::<Vec<_>>(),
            "checkpoint_slot": r.checkpoint_slot,
            "journal_blocks": r.journal_blocks,
            "live_pages": r.live_pages,
            "history_pages": r.history_only_pages,
            "free_pages": r.free_pages,
            "physical_pages": r.physical_pages,
            "safe_points": r.safe_points,
            "clean": r.clean,
            "seconds": took.as_secs_f64(),
        });
        print_json(&v)?;
        return Ok(());
    }
    println!("{}: metadata consistent", image.display());
    println!("  superblock copy A: {}", copy(&r.superblocks[0]));
    println!("  superblock copy B: {}", copy(&r.superblocks[1]));
    println!(
        "  checkpoint slot {} plus {} journal blocks replayed",
        r.checkpoint_slot, r.journal_blocks
    );
    println!(
        "  {} physical pages, each accounted once: {} live, {} history, {} free",
        r.physical_pages, r.live_pages, r.history_only_pages, r.free_pages
    );
    println!(
        "  {} safe points in the window; {}; checked in {:.2} s",
        r.safe_points,
        if r.clean {
            "closed cleanly"
        } else {
            "not closed cleanly (the next `rewind add` recovers it as shown)"
        },
        took.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn opts(size: u64) -> CreateOptions {
        CreateOptions {
            size,
            history: Some(MIB),
            journal: Some(64 << 10),
        }
    }

    #[test]
    fn create_refuses_to_overwrite_an_image_without_force() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.img");
        let (layout, _) =
            format(&path, &opts(4 * MIB), false, Allocation::Preallocated).expect("first format");
        assert_eq!(layout.device_bytes(), 4 * MIB);
        assert!(std::fs::metadata(&path).expect("stat").len() >= layout.required_bytes());

        let e = format(&path, &opts(8 * MIB), false, Allocation::Preallocated).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("already holds a rewind image"), "{msg}");
        assert!(msg.contains("--force"), "{msg}");
        // Nothing changed: it still opens as the 4 MiB image.
        let (l, created) = prepare_for_add(&path, None, None, Allocation::Preallocated)
            .expect("still the old image");
        assert_eq!(created, None);
        assert_eq!(l.device_bytes(), 4 * MIB);

        format(&path, &opts(8 * MIB), true, Allocation::Preallocated).expect("forced format");
        let (l, _) = prepare_for_add(&path, Some(8 * MIB), None, Allocation::Preallocated)
            .expect("the new image");
        assert_eq!(l.device_bytes(), 8 * MIB);
    }

    #[test]
    fn failed_create_leaves_no_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("b.img");
        let bad = CreateOptions {
            size: 4 * MIB,
            history: Some(4096), // below the engine's minimum
            journal: None,
        };
        assert!(format(&path, &bad, false, Allocation::Preallocated).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn add_checks_what_it_is_given() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.img");
        let e = prepare_for_add(&path, None, None, Allocation::Preallocated).unwrap_err();
        assert!(
            format!("{e:#}").contains("does not exist; give --size"),
            "{e:#}"
        );

        format(&path, &opts(4 * MIB), false, Allocation::Preallocated).expect("format");
        let e = prepare_for_add(&path, Some(8 * MIB), None, Allocation::Preallocated).unwrap_err();
        assert!(format!("{e:#}").contains("not 8M as --size asks"), "{e:#}");
        let e = prepare_for_add(&path, None, Some(2 * MIB), Allocation::Preallocated).unwrap_err();
        assert!(format!("{e:#}").contains("--history"), "{e:#}");
        prepare_for_add(&path, Some(4 * MIB), Some(MIB), Allocation::Preallocated)
            .expect("matching sizes");

        let foreign = dir.path().join("d.img");
        std::fs::write(&foreign, vec![7u8; 64 << 10]).expect("write");
        let e = prepare_for_add(&foreign, None, None, Allocation::Preallocated).unwrap_err();
        assert!(format!("{e:#}").contains("not a rewind image"), "{e:#}");
    }

    #[test]
    fn image_in_use_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("e.img");
        format(&path, &opts(4 * MIB), false, Allocation::Preallocated).expect("format");
        let _held = FileStore::open(&path).expect("hold the lock");
        let e = prepare_for_add(&path, None, None, Allocation::Preallocated).unwrap_err();
        assert!(
            format!("{e:#}").contains("in use by another rewind daemon"),
            "{e:#}"
        );
        let e = format(&path, &opts(4 * MIB), true, Allocation::Preallocated).unwrap_err();
        assert!(
            format!("{e:#}").contains("in use by another rewind daemon"),
            "{e:#}"
        );
    }
}
