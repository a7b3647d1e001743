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
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rewind_history::format::Superblock;
use rewind_history::{CreateOptions, Error as EngineError, Layout};

use crate::cli::render::print_json;
use crate::daemon::backing::{Allocation, BackingKind, FileStore, StoreFile};
use crate::daemon::pool;
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
    if let Some(warning) = memory_warning(&layout, crate::host::memory_bytes()) {
        log::warn!("{warning}");
    }
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
    let mut store = FileStore::open_unformatted(path)?;
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

/// A warning for a layout this machine (`memory`: its RAM and swap) could not serve once
/// all of it is written: memory follows what was written, so the image is made, but the
/// user should know where it ends.
fn memory_warning(layout: &Layout, memory: Option<u64>) -> Option<String> {
    let need = layout.memory_to_serve();
    let have = memory?;
    (need > have).then(|| {
        format!(
            "a {} device with {} of history needs up to {} of memory to be served by this \
             version of rewind once all of it is written (about 20 bytes per page of the \
             device and 4 per page of history), and this machine has {} of memory and swap: it \
             serves the device while less of it is written",
            human(layout.device_bytes()),
            human(history_bytes(layout)),
            human(need),
            human(have)
        )
    })
}

/// Refuses a store that holds a rewind image, or a damaged rewind superblock: formatting
/// it needs `--force`.
fn refuse_rewind_contents(store: &FileStore) -> Result<()> {
    let path = store.path();
    if let Some(label) = store.pool_label()? {
        bail!(
            "{} is {} of a rewind pool (its image: {}); formatting it would destroy that \
             pool's data and history: give --force to format it anyway",
            path.display(),
            match label.index {
                0 => "the image".to_string(),
                n => format!("backing {n}"),
            },
            label.files[0].path.display()
        );
    }
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

/// `rewind create`: an image, or with `backings` a pool.
pub fn create_command(
    image: &Path,
    backings: &[PathBuf],
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
    if backings.is_empty() {
        let (layout, got) = format(image, &opts, force, allocation)?;
        println!(
            "formatted {}: {}{}",
            image.display(),
            describe_layout(&layout),
            sparse_suffix(got)
        );
        return Ok(());
    }
    let (layout, got, files) = format_pool(image, backings, &opts, force, allocation)?;
    println!(
        "formatted the pool {}: {}{}",
        image.display(),
        describe_layout(&layout),
        sparse_suffix(got)
    );
    for (i, f) in files.iter().enumerate() {
        let what = if i == 0 { "metadata" } else { "data" };
        println!("  {}: {} of {what}", f.path.display(), human(f.bytes));
    }
    Ok(())
}

/// Formats a new pool: `image` keeps the metadata and `backings`, in order, the data area
/// (`daemon::pool`). Files are created if missing and sized as the pool shares the data
/// area out; block devices hold what they have. Refuses a file that already holds rewind
/// data unless `force`, and removes the files it created when it fails. Returns the layout,
/// the allocation the files got (`Sparse` if any came out sparse) and the pool's files.
pub fn format_pool(
    image: &Path,
    backings: &[PathBuf],
    opts: &CreateOptions,
    force: bool,
    allocation: Allocation,
) -> Result<(Layout, Allocation, Vec<StoreFile>)> {
    let layout = Layout::for_create(opts).context("checking the sizes")?;
    if let Some(warning) = memory_warning(&layout, crate::host::memory_bytes()) {
        log::warn!("{warning}");
    }
    if backings.len() >= pool::MAX_FILES {
        bail!(
            "{} backings: a pool has at most {}",
            backings.len(),
            pool::MAX_FILES - 1
        );
    }
    let mut paths: Vec<(PathBuf, FileId)> = Vec::with_capacity(backings.len() + 1);
    for p in std::iter::once(image).chain(backings.iter().map(PathBuf::as_path)) {
        let abs = std::path::absolute(p)
            .with_context(|| format!("making {} an absolute path", p.display()))?;
        pool::check_path(&abs).map_err(anyhow::Error::msg)?;
        // The same file twice (also through a link or another name) would hold two parts of
        // the store.
        let id = FileId::of(&abs);
        if let Some((earlier, _)) = paths.iter().find(|(_, i)| *i == id) {
            bail!(
                "{} and {} are the same file: each file of a pool holds its own part",
                earlier.display(),
                abs.display()
            );
        }
        paths.push((abs, id));
    }
    let mut created = Vec::new();
    let result = format_pool_files(&paths, &layout, opts, force, allocation, &mut created);
    if result.is_err() {
        // Leave nothing behind for a create that failed.
        for path in created {
            let _ = std::fs::remove_file(path);
        }
    }
    result.map(|(got, files)| (layout, got, files))
}

/// What tells two names of one file apart from two files: the device and inode of an
/// existing file, the device number of a block device, the path of one not made yet.
#[derive(PartialEq, Eq)]
enum FileId {
    Inode(u64, u64),
    Device(u64),
    Missing(PathBuf),
}

impl FileId {
    fn of(path: &Path) -> FileId {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_block_device() => FileId::Device(m.rdev()),
            Ok(m) => FileId::Inode(m.dev(), m.ino()),
            Err(_) => FileId::Missing(path.to_path_buf()),
        }
    }
}

fn format_pool_files(
    paths: &[(PathBuf, FileId)],
    layout: &Layout,
    opts: &CreateOptions,
    force: bool,
    allocation: Allocation,
    created: &mut Vec<PathBuf>,
) -> Result<(Allocation, Vec<StoreFile>)> {
    let mut stores = Vec::with_capacity(paths.len());
    for (path, _) in paths {
        match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(_) => created.push(path.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        let store = FileStore::open_unformatted(path)?;
        if !force {
            refuse_rewind_contents(&store)?;
        }
        stores.push((path.clone(), store));
    }
    if stores[0].1.kind() == BackingKind::BlockDevice {
        bail!(
            "{} is a block device: a pool's image holds only its metadata, so make it a file \
             and give the block device as a --backing",
            paths[0].0.display()
        );
    }
    let data_bytes = layout.required_bytes() - layout.data_offset;
    let capacities: Vec<(PathBuf, pool::Capacity)> = stores[1..]
        .iter()
        .map(|(path, store)| {
            let c = match store.kind() {
                BackingKind::BlockDevice => {
                    pool::Capacity::Device(rewind_history::Store::len(store))
                }
                BackingKind::File => pool::Capacity::File,
            };
            (path.clone(), c)
        })
        .collect();
    let mut shares = vec![layout.data_offset];
    shares.extend(pool::share(data_bytes, &capacities).map_err(anyhow::Error::msg)?);
    let mut got = Allocation::Preallocated;
    for ((path, store), share) in stores.iter_mut().zip(&shares) {
        if store.ensure_len(pool::POOL_DATA_OFFSET + share, allocation)? == Allocation::Sparse
            && store.kind() == BackingKind::File
        {
            got = Allocation::Sparse;
            if allocation == Allocation::Preallocated {
                log::warn!(
                    "{}: its file system cannot preallocate (fallocate: EOPNOTSUPP), so it is \
                     sparse: a write to the device may fail with ENOSPC if that file system \
                     fills up",
                    path.display()
                );
            }
        }
    }
    let host = crate::host::this_host();
    let created_ns = host.clock.now_ns();
    let store = FileStore::create_pool(stores, &shares, pool_uuid()?, created_ns)?;
    let made = match rewind_history::create(&store, opts, &host) {
        Ok(made) => made,
        Err(e) => {
            // The files this create made are removed; the others must not keep a label.
            if let Err(erase) = store.erase_pool_labels() {
                log::warn!("erasing the labels of the pool that failed: {erase}");
            }
            return Err(e).with_context(|| format!("formatting the pool {}", paths[0].0.display()));
        }
    };
    debug_assert_eq!(&made, layout);
    Ok((got, store.files()))
}

/// A pool's identity: random, so that no two pools (nor two creates of one) share it.
fn pool_uuid() -> Result<u64> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom for the pool's identity")?;
    Ok(u64::from_le_bytes(bytes))
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
    fn create_warns_of_a_device_the_machine_could_not_serve_whole() {
        let layout = Layout::for_create(&CreateOptions {
            size: 14 << 40,
            history: Some(1 << 40),
            journal: None,
        })
        .expect("a layout the format holds");
        let msg = memory_warning(&layout, Some(24 << 30)).expect("a warning");
        assert!(msg.contains("14 TiB device"), "{msg}");
        assert!(msg.contains("71.5 GiB"), "{msg}");
        assert!(memory_warning(&layout, Some(1 << 50)).is_none());
        assert!(
            memory_warning(&layout, None).is_none(),
            "unknown: no warning"
        );
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

    /// A pool of an image and two files, with 16 MiB of device and 8 MiB of history: the
    /// data area (24 MiB) is shared 12 + 12 MiB.
    fn pool(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
        let image = dir.join("pool.img");
        let backings = vec![dir.join("one.img"), dir.join("two.img")];
        let o = CreateOptions {
            size: 16 * MIB,
            history: Some(8 * MIB),
            journal: Some(64 << 10),
        };
        let (_, _, files) =
            format_pool(&image, &backings, &o, false, Allocation::Sparse).expect("pool");
        assert_eq!(files.len(), 3);
        assert_eq!(files[1].bytes, 12 * MIB);
        assert_eq!(files[2].bytes, 12 * MIB);
        (image, backings)
    }

    /// What the engine writes through a pool lands in the backings, each at its share's
    /// place, and reads back across the boundaries between them.
    #[test]
    fn a_pool_spreads_the_store_over_its_files_in_order() {
        use rewind_history::Store;
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let (image, backings) = pool(dir.path());
        let store = FileStore::open(&image).expect("open the pool");
        let files = store.files();
        let meta = files[0].bytes;
        assert_eq!(store.len(), meta + 24 * MIB);
        // 3 pages across the boundary between the image and backing one, and between the
        // backings.
        for (at, file, offset) in [
            (meta - 4096, 0, pool::POOL_DATA_OFFSET + meta - 4096),
            (
                meta + 12 * MIB - 4096,
                1,
                pool::POOL_DATA_OFFSET + 12 * MIB - 4096,
            ),
        ] {
            let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 253) as u8 + 1).collect();
            store.write_at(at, &data).expect("write");
            let mut back = vec![0; data.len()];
            store.read_at(at, &mut back).expect("read");
            assert_eq!(back, data);
            let pieces: Vec<_> = store.pieces(at, data.len() as u64).collect();
            assert_eq!(pieces.len(), 2, "{pieces:?}");
            assert_eq!(
                (pieces[0].file, pieces[0].offset, pieces[0].len),
                (file, offset, 4096)
            );
            assert_eq!(
                (
                    pieces[1].file,
                    pieces[1].offset,
                    pieces[1].len,
                    pieces[1].at
                ),
                (file + 1, pool::POOL_DATA_OFFSET, 8192, 4096)
            );
            let path = if file == 0 { &image } else { &backings[0] };
            let mut first = vec![0; 4096];
            std::fs::File::open(path)
                .unwrap()
                .read_exact_at(&mut first, offset)
                .unwrap();
            assert_eq!(first, data[..4096]);
        }
        let mut end = [0u8; 4096];
        assert!(
            store.read_at(store.len() - 2048, &mut end).is_err(),
            "past the end"
        );
        drop(store);

        // The engine serves it and it opens again with its data.
        let host = crate::host::this_host();
        let vol = rewind_history::Volume::open(FileStore::open(&image).unwrap(), &host).unwrap();
        let mut stream = vol.stream(0, 1);
        let pages = vol.layout().logical_pages;
        for l in 0..pages {
            let page = vec![(l % 251) as u8 + 1; 4096];
            vol.write_page(&mut stream, rewind_history::LogicalPage(l), &page)
                .unwrap();
        }
        vol.flush().unwrap();
        vol.close().unwrap();
        let vol = rewind_history::Volume::open(FileStore::open(&image).unwrap(), &host).unwrap();
        let mut buf = vec![0u8; 4096];
        for l in 0..pages {
            vol.read_page(rewind_history::LogicalPage(l), &mut buf)
                .unwrap();
            assert!(buf.iter().all(|b| *b == (l % 251) as u8 + 1), "page {l}");
        }
        vol.close().unwrap();
        rewind_history::check(&FileStore::open_read_only(&image).unwrap(), &host).unwrap();
    }

    /// A pool in use names its daemon, as an image of one file does: the superblock is
    /// read past the label.
    #[test]
    fn a_pool_in_use_names_its_owner() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (image, backings) = pool(dir.path());
        let host = crate::host::this_host();
        let served = rewind_history::Volume::open(FileStore::open(&image).unwrap(), &host)
            .expect("serve the pool");
        let pid = std::process::id();
        let e = FileStore::open(&image).unwrap_err().to_string();
        assert!(
            e.contains(&format!("in use by another rewind daemon (pid {pid}")),
            "{e}"
        );
        let e = FileStore::open_read_only(&image).unwrap_err().to_string();
        assert!(e.contains(&format!("(pid {pid}")), "{e}");
        // A backing is locked with the image.
        let e = FileStore::open_unformatted(&backings[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use"), "{e}");
        drop(served);
    }

    #[test]
    fn a_pool_refuses_wrong_or_missing_backings() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (image, backings) = pool(dir.path());
        // A backing named as the image says whose it is.
        let e = FileStore::open(&backings[1]).unwrap_err().to_string();
        assert!(
            e.contains("is backing 2 of the rewind pool whose image is"),
            "{e}"
        );
        // The backings swapped.
        let swap = dir.path().join("swap");
        std::fs::rename(&backings[0], &swap).unwrap();
        std::fs::rename(&backings[1], &backings[0]).unwrap();
        std::fs::rename(&swap, &backings[1]).unwrap();
        let e = FileStore::open(&image).unwrap_err().to_string();
        assert!(
            e.contains("is not its backing 1: its label says it is file 2"),
            "{e}"
        );
        // Swapped back, it opens; without its second backing, it does not.
        std::fs::rename(&backings[0], &swap).unwrap();
        std::fs::rename(&backings[1], &backings[0]).unwrap();
        std::fs::rename(&swap, &backings[1]).unwrap();
        drop(FileStore::open(&image).expect("in order again"));
        std::fs::remove_file(&backings[1]).unwrap();
        let e = FileStore::open(&image).unwrap_err().to_string();
        assert!(
            e.contains("its backing 2") && e.contains("is missing"),
            "{e}"
        );
        // Another pool's backing in its place.
        let other = tempfile::tempdir().expect("temp dir");
        let (_, theirs) = pool(other.path());
        std::fs::copy(&theirs[1], &backings[1]).unwrap();
        let e = FileStore::open(&image).unwrap_err().to_string();
        assert!(e.contains("is not its backing"), "{e}");
        // Formatting a pool's file needs --force.
        let e = format(&backings[0], &opts(4 * MIB), false, Allocation::Sparse).unwrap_err();
        assert!(format!("{e:#}").contains("of a rewind pool"), "{e:#}");
    }

    /// A copy of a pool's directory serves its own backings, not the original's, whose
    /// labels are the same.
    #[test]
    fn a_copied_pool_uses_the_backings_beside_it() {
        use rewind_history::Store;
        let dir = tempfile::tempdir().expect("temp dir");
        let (image, _) = pool(dir.path());
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        for name in ["pool.img", "one.img", "two.img"] {
            std::fs::copy(dir.path().join(name), copy.join(name)).unwrap();
        }
        let original = FileStore::open(&image).unwrap();
        let copied = FileStore::open(&copy.join("pool.img")).expect("the copy opens beside");
        assert!(copied.files().iter().all(|f| f.path.starts_with(&copy)));
        let at = copied.len() - 4096;
        copied.write_at(at, &[9u8; 4096]).unwrap();
        let mut back = [0u8; 4096];
        original.read_at(at, &mut back).unwrap();
        assert_eq!(back, [0u8; 4096], "the copy wrote into the original");
        drop((original, copied));

        // A copy of the image and one backing only: the other is not taken from the
        // original pool.
        let partial = dir.path().join("partial");
        std::fs::create_dir(&partial).unwrap();
        for name in ["pool.img", "one.img"] {
            std::fs::copy(dir.path().join(name), partial.join(name)).unwrap();
        }
        let e = FileStore::open(&partial.join("pool.img"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("its backing 2 is missing") && e.contains("beside it"),
            "{e}"
        );
    }

    /// A file made a pool's backing keeps nothing of what it held below its part: an
    /// image's second superblock copy would otherwise make an older rewind serve it.
    #[test]
    fn a_reformatted_file_keeps_no_old_superblock() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let old = dir.path().join("one.img");
        format(&old, &opts(4 * MIB), false, Allocation::Sparse).expect("an image");
        let image = dir.path().join("pool.img");
        let e = format_pool(
            &image,
            std::slice::from_ref(&old),
            &opts(4 * MIB),
            false,
            Allocation::Sparse,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("already holds a rewind image"),
            "{e:#}"
        );
        format_pool(
            &image,
            std::slice::from_ref(&old),
            &opts(4 * MIB),
            true,
            Allocation::Sparse,
        )
        .expect("with --force");
        let mut head = vec![0xffu8; pool::POOL_DATA_OFFSET as usize];
        std::fs::File::open(&old)
            .unwrap()
            .read_exact_at(&mut head, 0)
            .unwrap();
        assert!(head[pool::LABEL_BYTES..].iter().all(|b| *b == 0));
        assert!(rewind_history::format::Superblock::validate(&head[4096..]).is_err());
    }

    #[test]
    fn a_pool_that_cannot_be_made_leaves_no_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("p.img");
        let one = dir.path().join("one.img");
        let inside = dir.path().join("no-such-dir").join("two.img");
        let e = format_pool(
            &image,
            &[one.clone(), inside],
            &opts(4 * MIB),
            false,
            Allocation::Sparse,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("creating"), "{e:#}");
        assert!(!image.exists() && !one.exists());
        let e = format_pool(
            &image,
            &[one.clone(), one.clone()],
            &opts(4 * MIB),
            false,
            Allocation::Sparse,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("are the same file"), "{e:#}");
        assert!(!image.exists() && !one.exists());
        // Another name of one file.
        std::fs::write(&one, b"").unwrap();
        let link = dir.path().join("link.img");
        std::fs::hard_link(&one, &link).unwrap();
        let e = format_pool(
            &image,
            &[one.clone(), link],
            &opts(4 * MIB),
            false,
            Allocation::Sparse,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("are the same file"), "{e:#}");
    }
}
