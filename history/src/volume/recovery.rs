//! Creating an image and rebuilding a volume from one: the superblock, the checkpoint plus
//! the journal's valid prefix, a new session at open, a clean close, and the offline
//! `check` and `inspect`, which load an image without writing to it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;

use parking_lot::Mutex;
use rewind_remap::{MapSnapshot, Mapping, PageAllocator, PageRefs, RemapTable};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

use crate::checkpoint::{self, Snapshot};
use crate::format::{
    CreateOptions, JournalSeq, Layout, Superblock, FORMAT_VERSION, PAGE_SIZE, RECORDS_PER_BLOCK,
    SUPER_MAGIC, SUPER_OFFSETS,
};
use crate::journal;
use crate::window::{SafePoint, SafePointId, Trigger, Window};
use crate::{Clock, Error, Host, LogicalPage, PhysPage, Store};

use super::apply::Apply;
use super::report::{safe_point_infos, CheckReport, Inspection, Stats};
use super::{CommitState, State, Volume};

/// What `load` rebuilds from disk.
struct Loaded {
    sb: Superblock,
    layout: Layout,
    map: RemapTable,
    window: Window,
    alloc: PageAllocator,
    refs: PageRefs,
    next_seq: JournalSeq,
    /// Whether unsynced journal blocks were replayed.
    unsynced: bool,
}

/// Counts the references to each physical page and checks that every page belongs to one
/// logical page only: the live map and history entries of one page may share a physical
/// page (after a rollback), two logical pages never. The counts take 4 bytes a physical page
/// (in the leaves of the pages referenced); owners are only compared for pages with more
/// than one reference.
fn count_refs(layout: &Layout, map: &RemapTable, window: &Window) -> Result<PageRefs, Error> {
    let mut refs = PageRefs::try_new(layout.physical_pages).map_err(|e| Error::NoMemory {
        what: "the page reference counts",
        bytes: e.bytes,
    })?;
    let live = || map.mapped();
    let mut most = 0;
    // Live pages by runs of consecutive physical pages, as a sequential writer leaves them
    // (joined across leaves).
    let mut run: Option<(PhysPage, u64)> = None;
    for (_, p, len) in map.mapped_runs() {
        match &mut run {
            Some((first, n)) if first.0 + *n == p.0 => *n += len,
            _ => {
                if let Some((first, n)) = run.replace((p, len)) {
                    most = most.max(refs.add_run(first, n));
                }
            }
        }
    }
    if let Some((first, n)) = run {
        most = most.max(refs.add_run(first, n));
    }
    for (first, len) in window.groups.values().flat_map(|g| g.runs()) {
        if let Some(p) = first.old() {
            most = most.max(refs.add_run(p, len));
        }
    }
    if most <= 1 {
        // No page is referenced twice: no two logical pages share one.
        return Ok(refs);
    }
    // Pages with several references (after a rollback, a page live and in history), by
    // page, to find two logical pages on one: 16 bytes each, for these pages only.
    let shared = live()
        .chain(history_pages(window))
        .filter(|&(_, p)| refs.get(p) > 1);
    let mut owners: Vec<(u64, u64)> = Vec::new();
    for (l, p) in shared {
        owners.try_reserve(1).map_err(|_| Error::NoMemory {
            what: "the owners of shared pages",
            bytes: 16 * (owners.len() as u64 + 1),
        })?;
        owners.push((p.0, l.0));
    }
    owners.sort_unstable();
    if let Some(w) = owners
        .windows(2)
        .find(|w| w[0].0 == w[1].0 && w[0].1 != w[1].1)
    {
        return Err(Error::Corrupt(format!(
            "physical page {} belongs to logical pages {} and {}",
            w[0].0, w[0].1, w[1].1
        )));
    }
    Ok(refs)
}

/// Every (logical page, physical page) a history entry holds.
fn history_pages(window: &Window) -> impl Iterator<Item = (LogicalPage, PhysPage)> + '_ {
    window
        .groups
        .values()
        .flat_map(|g| g.entries())
        .filter_map(|e| Some((e.l, e.old()?)))
}

/// Checks every piece of metadata of an image without writing: both superblock copies,
/// the checkpoint, the journal, the remap table and history (each physical page belongs to
/// one logical page, and is live, history or free). An error is a corruption. The journal
/// is read as a daemon of `host` would replay it.
pub fn check<S: Store>(store: &S, host: &Host) -> Result<CheckReport, Error> {
    let mut superblocks: [Result<u64, String>; 2] = [Err(String::new()), Err(String::new())];
    for (i, off) in SUPER_OFFSETS.iter().enumerate() {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        superblocks[i] = match store.read_at(*off, &mut page) {
            Err(e) => Err(format!("unreadable: {e}")),
            Ok(()) => Superblock::validate(&page)
                .map(|sb| sb.generation.get())
                .map_err(|e| e.to_string()),
        };
    }
    let l = Volume::load(store, host.boot_id)?;
    let live = l.map.mapped().count() as u64;
    let used = l.refs.referenced().count() as u64;
    if used != l.layout.physical_pages - l.alloc.free_pages() {
        return Err(Error::Corrupt(format!(
            "{used} pages referenced but {} claimed",
            l.layout.physical_pages - l.alloc.free_pages()
        )));
    }
    Ok(CheckReport {
        superblocks,
        checkpoint_slot: l.sb.ckpt_slot.get(),
        journal_blocks: l.next_seq - l.sb.replay_from(),
        live_pages: live,
        history_only_pages: used - live,
        free_pages: l.alloc.free_pages(),
        physical_pages: l.layout.physical_pages,
        safe_points: l.window.safe_points.len() as u64,
        clean: l.sb.clean.get() == 1,
    })
}

/// Reads an image's history without serving it or writing a byte: `rewind log IMAGE`. The
/// journal is read as a daemon of `host` would replay it.
pub fn inspect<S: Store>(store: &S, host: &Host) -> Result<Inspection, Error> {
    let l = Volume::load(store, host.boot_id)?;
    Ok(Inspection {
        layout: l.layout,
        safe_points: safe_point_infos(&l.window),
        stats: Stats::of(&l.layout, &l.window, l.alloc.free_pages()),
        clean: l.sb.clean.get() == 1,
    })
}

/// Refuses a store smaller than `need` bytes.
fn ensure_room<S: Store>(store: &S, need: u64) -> Result<(), Error> {
    if store.len() < need {
        return Err(Error::TooSmall {
            need,
            have: store.len(),
        });
    }
    Ok(())
}

/// Formats `store` as an empty device of `opts.size` bytes whose history holds one safe
/// point, the empty device itself, made now by `host`'s clock.
pub fn create<S: Store>(store: &S, opts: &CreateOptions, host: &Host) -> Result<Layout, Error> {
    create_as(store, opts, host, FORMAT_VERSION)
}

/// `create` of an image of format `version`: `FORMAT_VERSION`, or an older one for the
/// tests that serve such an image as this build does (`sim::create_version`).
pub(crate) fn create_as<S: Store>(
    store: &S,
    opts: &CreateOptions,
    host: &Host,
    version: u32,
) -> Result<Layout, Error> {
    let layout = Layout::for_create_as(opts, version)?;
    ensure_room(store, layout.required_bytes())?;
    let created_ns = host.clock.now_ns();
    let uuid = new_uuid(host, created_ns);
    let mut window = Window::new(SafePointId(0));
    window.push_safe_point(SafePoint {
        id: SafePointId(0),
        time_ns: created_ns,
        trigger: Trigger::Format,
        label: None,
    });
    let first = Snapshot {
        map: MapSnapshot::unwritten(layout.logical_pages),
        window,
        journal_seq: JournalSeq(0),
    };
    let ckpt = layout.ckpt_offsets[0];
    let written = checkpoint::write(store, ckpt, layout.ckpt_bytes, &first, version, uuid)?;
    store
        .sync()
        .map_err(Error::io("syncing the first checkpoint"))?;
    let mut sb = first_superblock(&layout, version, uuid, created_ns, written);
    write_superblock(store, &mut sb)?;
    Ok(layout)
}

/// The uuid of an image `host` creates at `created_ns`. It only has to differ from the
/// uuid of an earlier format of the same store, and no two creates share the time, boot
/// and process; derived rather than drawn, so a simulated run (a fixed host and clock)
/// replays exactly.
fn new_uuid(host: &Host, created_ns: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same inputs give the same uuid.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (created_ns, host.boot_id, host.pid, &host.name).hash(&mut h);
    h.finish()
}

/// The superblock of a new image of format `version` whose first checkpoint, in slot 0, is
/// `ckpt`: clean, owned by nobody, session 0, replaying the journal from sequence 0.
fn first_superblock(
    layout: &Layout,
    version: u32,
    uuid: u64,
    created_ns: u64,
    ckpt: checkpoint::Written,
) -> Superblock {
    Superblock {
        magic: SUPER_MAGIC,
        version: U32::new(version),
        page_size: U32::new(PAGE_SIZE as u32),
        logical_pages: U64::new(layout.logical_pages),
        physical_pages: U64::new(layout.physical_pages),
        journal_blocks: U64::new(layout.journal_blocks),
        uuid: U64::new(uuid),
        created_ns: U64::new(created_ns),
        generation: U64::new(0),
        session: U32::new(0),
        ckpt_slot: U32::new(0),
        ckpt_len: U64::new(ckpt.len),
        ckpt_crc: U32::new(ckpt.crc),
        clean: U32::new(1),
        ckpt_journal_seq: U64::new(0),
        owner_pid: U32::new(0),
        ckpt_session: U32::new(0),
        owner_host: [0; 64],
        boot_id: U64::new(0),
        reserved: [0; 24],
        crc: U32::new(0),
        pad: U32::new(0),
    }
}

/// Writes both superblock copies, one at a time, so at most one is ever torn.
pub(super) fn write_superblock<S: Store>(store: &S, sb: &mut Superblock) -> Result<(), Error> {
    sb.generation = U64::new(sb.generation.get() + 1);
    sb.crc = U32::new(sb.compute_crc());
    let mut page = vec![0u8; PAGE_SIZE as usize];
    page[..std::mem::size_of::<Superblock>()].copy_from_slice(sb.as_bytes());
    for off in SUPER_OFFSETS {
        store
            .write_at(off, &page)
            .map_err(Error::io("writing the superblock"))?;
        store.sync().map_err(Error::io("syncing the superblock"))?;
    }
    Ok(())
}

/// Reads the current superblock: the valid copy with the highest generation.
pub fn read_superblock<S: Store>(store: &S) -> Result<Superblock, Error> {
    ensure_room(store, 2 * PAGE_SIZE)?;
    let mut best: Option<Superblock> = None;
    let mut first_err = None;
    for off in SUPER_OFFSETS {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        store
            .read_at(off, &mut page)
            .map_err(Error::io("reading the superblock"))?;
        match Superblock::validate(&page) {
            Ok(sb) => {
                if best.is_none_or(|b| sb.generation.get() > b.generation.get()) {
                    best = Some(sb);
                }
            }
            Err(e) => {
                // A newer version or a clear corruption says more than "not rewind".
                let better = matches!(first_err, None | Some(Error::NotRewind));
                if better {
                    first_err = Some(e);
                }
            }
        }
    }
    best.ok_or_else(|| first_err.unwrap_or(Error::NotRewind))
}

/// Reads the checkpoint the superblock points at into `map`, checked against the
/// superblock's checksum of it and the journal sequence it starts replay at.
fn read_checkpoint<S: Store>(
    store: &S,
    sb: &Superblock,
    layout: &Layout,
    map: &RemapTable,
) -> Result<checkpoint::Read, Error> {
    let slot = sb.ckpt_slot.get() as usize;
    let read = checkpoint::read(
        store,
        layout.ckpt_offsets[slot],
        sb.ckpt_len.get(),
        Some(sb.ckpt_crc.get()),
        layout,
        sb.uuid.get(),
        map,
    )
    .map_err(|e| match e {
        Error::Corrupt(why) => Error::Corrupt(format!("{why} (slot {slot})")),
        e => e,
    })?;
    // A checkpoint takes only the forms its image's version writes: the reader of an
    // older version would misread a newer form, and a version 4 image's pages may not fit
    // the narrow forms.
    use checkpoint::MapForm;
    let fits = match sb.version.get() {
        1 => read.form == MapForm::Dense,
        3 => matches!(read.form, MapForm::Dense | MapForm::Leaves),
        _ => read.form == MapForm::Wide,
    };
    if !fits {
        return Err(Error::Corrupt(format!(
            "checkpoint in slot {slot} holds the map in the {}, which a version {} image \
             never writes",
            read.form.name(),
            sb.version.get()
        )));
    }
    if read.journal_seq != sb.replay_from() {
        return Err(Error::Corrupt(format!(
            "checkpoint starts the journal at {}, the superblock at {}",
            read.journal_seq,
            sb.replay_from()
        )));
    }
    Ok(read)
}

/// Replays the journal's valid prefix from sequence `from` through `apply`. Unsynced blocks
/// are part of it only when the superblock names `boot` (0: unknown, trusting none).
fn replay_journal<S: Store, F: FnMut(PhysPage)>(
    store: &S,
    sb: &Superblock,
    from: JournalSeq,
    boot: u64,
    mut apply: Apply<'_, F>,
) -> Result<journal::ReplayEnd, Error> {
    // Unsynced journal blocks hold what the host's page cache held when the daemon died;
    // after a reboot they may point at data that never reached the disk.
    let trust_unsynced = boot != 0 && sb.boot_id.get() == boot;
    let end = journal::replay(
        store,
        apply.layout,
        sb.uuid.get(),
        from,
        sb.ckpt_session.get(),
        trust_unsynced,
        |r| apply.apply(&r),
    )?;
    // Open starts a session above the superblock's, and replay after the next checkpoint
    // rejects blocks below it: a journal block of a later session would come back.
    if end.last_session > sb.session.get() {
        return Err(Error::Corrupt(format!(
            "the journal holds blocks of session {}, after the superblock's session {}",
            end.last_session,
            sb.session.get()
        )));
    }
    Ok(end)
}

/// An allocator of the layout's physical pages with every referenced one claimed.
fn claim_referenced(layout: &Layout, refs: &PageRefs) -> Result<PageAllocator, Error> {
    let alloc = PageAllocator::try_new(layout.physical_pages).map_err(|e| Error::NoMemory {
        what: "the page allocator",
        bytes: e.bytes,
    })?;
    for (w, bits) in refs.used_words() {
        alloc.claim_word(w, bits);
    }
    Ok(alloc)
}

/// Starts a new session on the image: not clean, owned by `host`. Written to both
/// superblock copies before anything else is. Returns the session.
fn start_session<S: Store>(store: &S, sb: &mut Superblock, host: &Host) -> Result<u32, Error> {
    // Never wraps: blocks of the new session must not rank below older ones.
    let session = sb.session.get().checked_add(1).ok_or_else(|| {
        Error::Corrupt(format!(
            "superblock session {} is at its limit",
            sb.session.get()
        ))
    })?;
    sb.session = U32::new(session);
    sb.clean = U32::new(0);
    sb.owner_pid = U32::new(host.pid);
    sb.owner_host = owner_host(&host.name);
    sb.boot_id = U64::new(host.boot_id);
    write_superblock(store, sb)?;
    Ok(session)
}

/// A host name as the superblock keeps it: its first 64 bytes, zero padded.
fn owner_host(name: &str) -> [u8; 64] {
    let name = name.as_bytes();
    let mut out = [0u8; 64];
    let n = name.len().min(64);
    out[..n].copy_from_slice(&name[..n]);
    out
}

impl<S: Store> Volume<S> {
    /// Rebuilds the state of a formatted store from its checkpoint and the journal's valid
    /// prefix, writing nothing.
    fn load(store: &S, boot: u64) -> Result<Loaded, Error> {
        let sb = read_superblock(store)?;
        let layout = sb.layout();
        ensure_room(store, layout.required_bytes())?;
        let map = RemapTable::try_new(layout.logical_pages).map_err(|e| Error::NoMemory {
            what: "the remap table",
            bytes: e.bytes,
        })?;
        let snap = read_checkpoint(store, &sb, &layout, &map)?;
        let mut window = snap.window;
        // A write supersedes a page once an epoch, as the map's open bit says: the pages
        // of the open group (which the checkpoint holds once each) are the ones set in the
        // open epoch.
        for (first, n) in window.open_runs() {
            map.update_run(first, n, |_, m| Mapping { open: true, ..m });
        }
        let mut refs = count_refs(&layout, &map, &window)?;
        let apply = Apply {
            map: &map,
            layout: &layout,
            window: &mut window,
            refs: &mut refs,
            // Replay frees nothing: the allocator is rebuilt from the references below.
            unreferenced: |_| {},
        };
        let end = replay_journal(store, &sb, snap.journal_seq, boot, apply)?;
        if window.newest().is_none() {
            return Err(Error::Corrupt(
                "the history window holds no safe point".into(),
            ));
        }
        // Recount from scratch: this also checks what replay built.
        drop(refs);
        let refs = count_refs(&layout, &map, &window)?;
        Ok(Loaded {
            alloc: claim_referenced(&layout, &refs)?,
            sb,
            layout,
            map,
            window,
            refs,
            next_seq: end.next_seq,
            unsynced: end.unsynced,
        })
    }

    /// Opens a formatted store for `host` to serve: the checkpoint plus the journal's valid
    /// prefix rebuild the remap table and the window, then a new session starts. Unsynced
    /// journal blocks count only if `host` is of the boot the superblock names: a daemon of
    /// the same boot took over from one that died, not a reboot after a power cut.
    pub fn open(store: S, host: &Host) -> Result<Volume<S>, Error> {
        let mut loaded = Self::load(&store, host.boot_id)?;
        let session = start_session(&store, &mut loaded.sb, host)?;
        // What the dead daemon left unsynced is made durable now (a later boot would not
        // trust it as it is). A session may write a quarter of the ring unsynced before a
        // commit must come, and commits checkpoint only past half of it: past a quarter
        // already, a checkpoint empties the ring, so that kill after kill cannot fill it.
        let used = loaded.next_seq - loaded.sb.replay_from();
        let checkpoint = loaded.unsynced && used > loaded.layout.journal_blocks / 4;
        if loaded.unsynced && !checkpoint {
            // As a commit would: the data the records point at, then the blocks, rewritten
            // as synced.
            store.sync().map_err(Error::io("syncing the store"))?;
            journal::mark_synced(
                &store,
                &loaded.layout,
                loaded.sb.replay_from(),
                loaded.next_seq,
            )?;
            store.sync().map_err(Error::io("syncing the journal"))?;
        }
        let vol = Self::serve(store, loaded, session, host.clock.clone());
        if checkpoint {
            vol.commit(true)?;
        }
        Ok(vol)
    }

    /// Opens a formatted store to read its history without serving it or writing a byte
    /// (`rewind export IMAGE`): the state `check` and `inspect` see, with views and reads at
    /// safe points. Any request that would write fails with the store's error; drop it
    /// rather than `close` it.
    pub fn open_read_only(store: S, host: &Host) -> Result<Volume<S>, Error> {
        let loaded = Self::load(&store, host.boot_id)?;
        let session = loaded.sb.session.get();
        Ok(Self::serve(store, loaded, session, host.clock.clone()))
    }

    /// The volume serving what `load` rebuilt, in session `session`.
    fn serve(store: S, loaded: Loaded, session: u32, clock: Arc<dyn Clock>) -> Volume<S> {
        let Loaded {
            sb,
            layout,
            map,
            window,
            alloc,
            refs,
            next_seq,
            unsynced: _,
        } = loaded;
        let history_area = layout.physical_pages - layout.logical_pages;
        Volume {
            low_water: (history_area / 8).clamp(64, 65_536),
            commit_threshold: (layout.journal_blocks as usize * RECORDS_PER_BLOCK) / 8,
            store,
            layout,
            uuid: sb.uuid.get(),
            session,
            map,
            alloc,
            state: Mutex::new(State {
                window,
                refs,
                pending: journal::Pending::default(),
                first_seq: next_seq,
                pending_free: Vec::new(),
                views: BTreeMap::new(),
                next_view: 0,
                view_reads: 0,
                notices: Vec::new(),
            }),
            commit: Mutex::new(CommitState { sb, next_seq }),
            tail: Mutex::new(()),
            staged_by: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            record_before_complete: AtomicBool::new(true),
            quarantine: Mutex::new(Vec::new()),
            free_round: AtomicU64::new(0),
            readers: Mutex::new(Vec::new()),
            clock,
        }
    }

    /// Shuts down cleanly: commits everything with a checkpoint and marks the image clean.
    pub fn close(self) -> Result<(), Error> {
        let mut c = self.commit.lock();
        self.commit_locked(&mut c, true)?;
        c.sb.clean = U32::new(1);
        c.sb.owner_pid = U32::new(0);
        write_superblock(&self.store, &mut c.sb)
    }
}
