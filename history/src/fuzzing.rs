//! Entry points for the fuzz targets (`fuzz/`) and their stable regression test
//! (`tests/fuzz_corpus.rs`): everything rewind reads from disk, fed with arbitrary bytes.
//! Feature `testing`.
//!
//! The contract checked (DESIGN.md, "bad input gets a clear error"): whatever the bytes, each
//! entry returns, with `Ok` or with an `Err`; it never panics, hangs, or allocates more than
//! the store it is given. A panic here is a finding.
//!
//! Checksums would stop a fuzzer at the first byte it changes, so each entry recomputes them
//! after placing its input (superblock CRCs, journal block CRCs, the checkpoint's header and
//! body CRCs and the superblock's CRC of the checkpoint) and writes the image's uuid where a
//! journal block or checkpoint carries one, so the parsers behind the checks are reached.
//! Byte 0 of every input holds flags (`SKIP_*`) that leave some of these as they are, so the
//! checks themselves are fuzzed too. The rest of the input is:
//! - `superblock`: copy A, then copy B, `SUPERBLOCK_BYTES` each (zero padded when short);
//! - `journal`: the journal area of the base image (`base_options`, created and opened once);
//! - `checkpoint`: a checkpoint, decoded alone, then made the current one of the base image;
//! - `image`: the first bytes of a whole image; the rest of the store reads as zeros.
//!
//! Beyond "no panic", an image that opens must read at its safe points, close cleanly
//! into a checkpoint that reopens with the same window, and pass `check`: a state rewind
//! accepts from disk is one it can write back.

use std::sync::{Arc, OnceLock};

use rewind_remap::RemapTable;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::checkpoint::{self, Snapshot};
use crate::format::{
    CheckpointHeader, JournalHeader, Superblock, FORMAT_VERSION, JOURNAL_BLOCK, JOURNAL_MAGIC,
    JOURNAL_OFFSET, SUPER_OFFSETS,
};
use crate::sim;
use crate::{
    check, create, inspect, read_superblock, CreateOptions, Error, Host, Layout, LogicalPage,
    MemStore, Store, Volume, PAGE_SIZE,
};

/// Flag: leave the superblock copies' CRCs as the input has them.
pub const SKIP_SUPERBLOCK_CRC: u8 = 1;
/// Flag: leave the journal blocks' CRCs as the input has them.
pub const SKIP_JOURNAL_CRC: u8 = 2;
/// Flag: leave the checkpoint's CRCs (header, body, and the superblock's) as they are.
pub const SKIP_CHECKPOINT_CRC: u8 = 4;
/// Flag: leave the uuid of journal blocks and checkpoints as the input has it.
pub const SKIP_UUID: u8 = 8;

/// The bytes of one superblock copy in a `superblock` input.
pub const SUPERBLOCK_BYTES: usize = std::mem::size_of::<Superblock>();

/// The largest store an `image` input gets, so no input can ask for unbounded memory: a
/// superblock whose sizes need more finds the store too small.
pub const STORE_BYTES_MAX: u64 = 64 << 20;

/// The geometry of the base image and of the seed images: 1 MiB device, 1 MiB history,
/// a journal of 64 blocks.
pub fn base_options() -> CreateOptions {
    CreateOptions {
        size: 1 << 20,
        history: Some(1 << 20),
        journal: Some(64 * JOURNAL_BLOCK),
    }
}

/// The host every entry point creates, opens and reads images as: boot 1 (so the unsynced
/// journal blocks of the base image and the seeds are trusted) and a simulated clock, so an
/// input replays exactly.
pub fn host() -> Host {
    sim::host(1)
}

/// An image of `base_options` created and opened once (session 1, as the journal seeds
/// were written), up to the end of its checkpoint (slot 0).
struct Base {
    prefix: Vec<u8>,
    layout: Layout,
    uuid: u64,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let opts = base_options();
        let layout = Layout::for_create(&opts).expect("the base geometry is valid");
        let store = Arc::new(MemStore::new(layout.required_bytes()));
        let host = host();
        create(&store, &opts, &host).expect("creating the base image in memory");
        drop(Volume::open(store.clone(), &host).expect("opening the base image"));
        let sb = read_superblock(&store).expect("the base image has a superblock");
        let mut prefix = store.contents();
        prefix.truncate((layout.ckpt_offsets[0] + sb.ckpt_len.get()) as usize);
        Base {
            prefix,
            layout,
            uuid: sb.uuid.get(),
        }
    })
}

fn split(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((flags, rest)) => (*flags, rest),
        None => (0, &[]),
    }
}

/// Superblock copies: `Superblock::validate` on the raw input, then `read_superblock` on a
/// store holding both copies.
pub fn superblock(data: &[u8]) -> Result<(), Error> {
    let (flags, rest) = split(data);
    let _ = Superblock::validate(rest);
    let mut bytes = vec![0u8; 2 * PAGE_SIZE as usize];
    for (copy, off) in rest.chunks(SUPERBLOCK_BYTES).zip(SUPER_OFFSETS) {
        bytes[off as usize..][..copy.len()].copy_from_slice(copy);
    }
    if flags & SKIP_SUPERBLOCK_CRC == 0 {
        fix_superblocks(&mut bytes);
    }
    let sb = read_superblock(&MemStore::from_bytes(bytes))?;
    // What `validate` promises the code that trusts the superblock afterwards.
    let l = sb.layout();
    assert!(JOURNAL_OFFSET + l.journal_blocks * JOURNAL_BLOCK <= l.ckpt_offsets[0]);
    assert!(l.ckpt_offsets[0] + l.ckpt_bytes <= l.ckpt_offsets[1]);
    assert!(l.ckpt_offsets[1] + l.ckpt_bytes <= l.data_offset);
    assert!(sb.ckpt_len.get() <= l.ckpt_bytes);
    assert!(l.required_bytes() >= l.data_offset);
    Ok(())
}

/// The journal: the input replaces the journal area of the base image, which is then opened.
pub fn journal(data: &[u8]) -> Result<(), Error> {
    let (flags, rest) = split(data);
    let b = base();
    let mut img = b.prefix.clone();
    let area = (b.layout.journal_blocks * JOURNAL_BLOCK) as usize;
    let n = rest.len().min(area);
    img[JOURNAL_OFFSET as usize..][..n].copy_from_slice(&rest[..n]);
    run_image(img, flags)
}

/// A checkpoint: decoded alone (with a round trip through `encode` when it decodes), then
/// made the current checkpoint of the base image, which is opened.
pub fn checkpoint(data: &[u8]) -> Result<(), Error> {
    let (flags, rest) = split(data);
    let b = base();
    let mut ckpt = rest[..rest.len().min(b.layout.ckpt_bytes as usize)].to_vec();
    fix_checkpoint(&mut ckpt, b.uuid, flags);
    // A checkpoint ends where its header says (what follows is not part of it), so that
    // bytes past its end do not stop the input at the superblock's checksum.
    if let Ok((h, _)) = CheckpointHeader::read_from_prefix(&ckpt) {
        let end = h.body_len.get().saturating_add(PAGE_SIZE);
        if end < ckpt.len() as u64 {
            ckpt.truncate(end as usize);
        }
    }
    let alone = MemStore::from_bytes(ckpt.clone());
    let map = RemapTable::new(b.layout.logical_pages);
    let len = ckpt.len() as u64;
    if let Ok(read) = checkpoint::read(&alone, 0, len, None, &b.layout, b.uuid, &map) {
        let snap = Snapshot {
            map: map.snapshot().expect("memory for the map"),
            window: read.window,
            journal_seq: read.journal_seq,
        };
        // In the forms of every version of the format, whichever the checkpoint came in (the
        // base image's pages fit the narrow ones).
        for version in [1, 3, FORMAT_VERSION] {
            let out = MemStore::new(b.layout.ckpt_bytes);
            let written = checkpoint::write(&out, 0, b.layout.ckpt_bytes, &snap, version, b.uuid)
                .expect("a checkpoint rewind read fits its slot again");
            let again_map = RemapTable::new(b.layout.logical_pages);
            let again = checkpoint::read(
                &out,
                0,
                written.len,
                Some(written.crc),
                &b.layout,
                b.uuid,
                &again_map,
            )
            .expect("a checkpoint rewind read writes into one it reads");
            let again_words = again_map.snapshot().expect("memory for the map");
            assert!(
                again_words.words().eq(snap.map.words()),
                "the map survives a round trip"
            );
            let (w, v) = (&snap.window, &again.window);
            assert_eq!(snap.journal_seq, again.journal_seq);
            assert_eq!(w.next_id, v.next_id);
            assert_eq!(w.safe_points, v.safe_points);
            assert_eq!(w.groups, v.groups);
            assert_eq!(w.history_pages, v.history_pages);
            assert_eq!(w.history_entries, v.history_entries);
        }
    }
    let start = b.layout.ckpt_offsets[0] as usize;
    let mut img = b.prefix[..start].to_vec();
    img.extend_from_slice(&ckpt);
    let journal_seq = CheckpointHeader::read_from_prefix(&ckpt).map(|(h, _)| h.journal_seq);
    for off in SUPER_OFFSETS {
        let page = &mut img[off as usize..][..SUPERBLOCK_BYTES];
        let (mut sb, _) = Superblock::read_from_prefix(page).expect("the base has superblocks");
        sb.ckpt_slot = U32::new(0);
        sb.ckpt_len = U64::new(ckpt.len() as u64);
        if let Ok(seq) = journal_seq {
            sb.ckpt_journal_seq = seq;
        }
        page.copy_from_slice(sb.as_bytes());
    }
    run_image(img, flags)
}

/// A whole image: the input is its first bytes, the rest of the store reads as zeros.
pub fn image(data: &[u8]) -> Result<(), Error> {
    let (flags, rest) = split(data);
    run_image(
        rest[..rest.len().min(STORE_BYTES_MAX as usize)].to_vec(),
        flags,
    )
}

/// The `superblock` input holding the two superblock copies of `image`.
pub fn superblock_input(image: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    for off in SUPER_OFFSETS {
        out.extend_from_slice(&image[off as usize..][..SUPERBLOCK_BYTES]);
    }
    out
}

/// The `journal` input holding the journal area of `image`, made with `base_options` and
/// never checkpointed since `create`, so it replays on top of the base image.
pub fn journal_input(image: &[u8]) -> Vec<u8> {
    let sb = superblock_of(image).expect("a rewind image");
    let area =
        &image[JOURNAL_OFFSET as usize..][..(sb.layout().journal_blocks * JOURNAL_BLOCK) as usize];
    trimmed(area)
}

/// The `checkpoint` input holding the current checkpoint of `image`.
pub fn checkpoint_input(image: &[u8]) -> Vec<u8> {
    let sb = superblock_of(image).expect("a rewind image");
    let start = sb.layout().ckpt_offsets[sb.ckpt_slot.get() as usize] as usize;
    // Whole: its length is the checkpoint's.
    let mut out = vec![0u8];
    out.extend_from_slice(&image[start..][..sb.ckpt_len.get() as usize]);
    out
}

/// The `image` input holding `image` up to the end of its current checkpoint, which must
/// be in slot 0 (slot 1 lies megabytes further).
pub fn image_input(image: &[u8]) -> Vec<u8> {
    let sb = superblock_of(image).expect("a rewind image");
    assert_eq!(
        sb.ckpt_slot.get(),
        0,
        "the current checkpoint must be in slot 0"
    );
    let end = sb.layout().ckpt_offsets[0] + sb.ckpt_len.get();
    trimmed(&image[..end as usize])
}

/// The superblock `read_superblock` chooses from the first two pages of `image`.
fn superblock_of(image: &[u8]) -> Result<Superblock, Error> {
    read_superblock(&MemStore::from_bytes(
        image[..2 * PAGE_SIZE as usize].to_vec(),
    ))
}

/// Flags 0, then `bytes` without trailing zeros: they read the same.
fn trimmed(bytes: &[u8]) -> Vec<u8> {
    let len = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let mut out = vec![0u8];
    out.extend_from_slice(&bytes[..len]);
    out
}

/// Recomputes the CRC of both superblock copies in `img` (at least two pages long).
fn fix_superblocks(img: &mut [u8]) {
    for off in SUPER_OFFSETS {
        let page = &mut img[off as usize..][..SUPERBLOCK_BYTES];
        let (mut sb, _) = Superblock::read_from_prefix(page).expect("a page holds a superblock");
        sb.crc = U32::new(sb.compute_crc());
        page.copy_from_slice(sb.as_bytes());
    }
}

/// Gives a checkpoint the image's uuid and the CRCs of its header and body.
fn fix_checkpoint(ckpt: &mut [u8], uuid: u64, flags: u8) {
    let Ok((mut h, _)) = CheckpointHeader::read_from_prefix(ckpt) else {
        return;
    };
    if flags & SKIP_UUID == 0 {
        h.uuid = U64::new(uuid);
    }
    if flags & SKIP_CHECKPOINT_CRC == 0 {
        let body = usize::try_from(h.body_len.get())
            .ok()
            .and_then(|n| n.checked_add(PAGE_SIZE as usize))
            .and_then(|end| ckpt.get(PAGE_SIZE as usize..end));
        if let Some(body) = body {
            h.body_crc = U32::new(crc32c::crc32c(body));
        }
        h.crc = U32::new(h.compute_crc());
    }
    ckpt[..std::mem::size_of::<CheckpointHeader>()].copy_from_slice(h.as_bytes());
}

/// Gives a journal block that carries the journal magic the image's uuid and its CRC.
fn fix_journal_block(block: &mut [u8], uuid: u64, flags: u8) {
    let Ok((mut h, _)) = JournalHeader::read_from_prefix(block) else {
        return;
    };
    if h.magic.get() != JOURNAL_MAGIC {
        return;
    }
    if flags & SKIP_UUID == 0 {
        h.uuid = U64::new(uuid);
        block[..std::mem::size_of::<JournalHeader>()].copy_from_slice(h.as_bytes());
    }
    if flags & SKIP_JOURNAL_CRC == 0 {
        let crc = crc32c::crc32c(&block[8..]);
        block[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Makes the checksums and uuids of `img` (the first bytes of an image) match what it holds,
/// as `flags` allows; returns the layout of the superblock `open` will choose, if any.
fn fix_image(img: &mut Vec<u8>, flags: u8) -> Option<Layout> {
    if img.len() < 2 * PAGE_SIZE as usize {
        img.resize(2 * PAGE_SIZE as usize, 0);
    }
    if flags & SKIP_SUPERBLOCK_CRC == 0 {
        fix_superblocks(img);
    }
    let sb = superblock_of(img).ok()?;
    let layout = sb.layout();
    let uuid = sb.uuid.get();
    let journal_end = JOURNAL_OFFSET + layout.journal_blocks * JOURNAL_BLOCK;
    let journal_end = journal_end.min(img.len() as u64) as usize;
    if let Some(area) = img.get_mut(JOURNAL_OFFSET as usize..journal_end) {
        for block in area.chunks_exact_mut(JOURNAL_BLOCK as usize) {
            fix_journal_block(block, uuid, flags);
        }
    }
    let start = layout.ckpt_offsets[sb.ckpt_slot.get() as usize];
    let end = start + sb.ckpt_len.get();
    if end <= STORE_BYTES_MAX {
        if (img.len() as u64) < end {
            img.resize(end as usize, 0);
        }
        let ckpt = &mut img[start as usize..end as usize];
        fix_checkpoint(ckpt, uuid, flags);
        if flags & SKIP_CHECKPOINT_CRC == 0 {
            let crc = crc32c::crc32c(ckpt);
            // Into the copy `read_superblock` chose: the one of its generation.
            for off in SUPER_OFFSETS {
                let page = &mut img[off as usize..][..SUPERBLOCK_BYTES];
                let (mut copy, _) = Superblock::read_from_prefix(page).expect("a superblock");
                if copy.generation == sb.generation {
                    copy.ckpt_crc = U32::new(crc);
                    page.copy_from_slice(copy.as_bytes());
                }
            }
        }
    }
    if flags & SKIP_SUPERBLOCK_CRC == 0 {
        fix_superblocks(img);
    }
    Some(layout)
}

/// Fixes `img` up, puts it at the start of a store as large as its layout needs (within
/// `STORE_BYTES_MAX`), and runs everything that reads an image.
fn run_image(mut img: Vec<u8>, flags: u8) -> Result<(), Error> {
    let layout = fix_image(&mut img, flags);
    let len = layout
        .map_or(0, |l| l.required_bytes())
        .clamp(img.len() as u64, STORE_BYTES_MAX.max(img.len() as u64));
    let store = Arc::new(MemStore::new(len));
    store.write_at(0, &img).expect("the store holds the input");
    exercise(store)
}

/// Everything that reads an image from disk: `inspect`, `check`, `open`, reads at safe
/// points, and a clean close that must reopen as it was.
fn exercise(store: Arc<MemStore>) -> Result<(), Error> {
    let host = host();
    let inspected = inspect(&store, &host);
    let checked = check(&store, &host);
    assert_eq!(
        inspected.as_ref().err().map(ToString::to_string),
        checked.as_ref().err().map(ToString::to_string),
        "inspect and check load an image alike"
    );
    let vol = Volume::open(store.clone(), &host)?;
    let safe_points = vol.safe_points();
    let stats = vol.stats();
    let ends = [safe_points.first(), safe_points.last()];
    for sp in ends.into_iter().flatten() {
        for l in 0..vol.layout().logical_pages {
            vol.resolve_at(LogicalPage(l), sp.id)
                .expect("a safe point of the window reads");
        }
    }
    vol.close()?;
    let after = inspect(&store, &host).expect("an image rewind closed cleanly reopens");
    let after_safe_points: Vec<_> = after.safe_points.iter().map(|i| &i.safe_point).collect();
    assert_eq!(
        after_safe_points,
        safe_points.iter().collect::<Vec<_>>(),
        "a clean close keeps the window"
    );
    assert_eq!(after.stats, stats, "a clean close keeps the figures");
    check(&store, &host).expect("an image rewind closed cleanly passes check");
    Ok(())
}
