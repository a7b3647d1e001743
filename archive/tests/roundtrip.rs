//! Export a volume's history, import it at each safe point, compare with the volume's own
//! reads at that safe point; and damaged archives (truncated, a byte flipped, records
//! swapped) are refused, never restored.

use std::io::Cursor;
use std::sync::Arc;

use rewind_archive::{restore, verify, Base, Directory, Export, ExportOptions, PageSink};
use rewind_history::{
    create, sim, CreateOptions, LogicalPage, MemStore, SafePointId, Trigger, Volume, PAGE_SIZE,
};

const PAGES: u64 = 300;
const PS: usize = PAGE_SIZE as usize;

/// An image in memory as a sink: starts as 0xEE everywhere, so zeroing is seen.
struct Mem(Vec<u8>);

impl PageSink for Mem {
    fn write_pages(&mut self, first: u64, data: &[u8]) -> std::io::Result<()> {
        let at = first as usize * PS;
        self.0[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn zero_pages(&mut self, first: u64, count: u64) -> std::io::Result<()> {
        let at = first as usize * PS;
        self.0[at..at + count as usize * PS].fill(0);
        Ok(())
    }
}

/// A volume with a history of `points` safe points after the format one: random writes
/// (runs of 1-8 pages), discards and rewrites between them.
fn volume_with_history(points: u64, seed: u64) -> Volume<Arc<MemStore>> {
    let opts = CreateOptions {
        size: PAGES * PAGE_SIZE,
        history: Some(4096 * PAGE_SIZE),
        journal: Some(1 << 20),
    };
    let layout = rewind_history::Layout::for_create(&opts).unwrap();
    let store = Arc::new(MemStore::new(layout.required_bytes()));
    let host = sim::host(1);
    create(&store, &opts, &host).unwrap();
    let vol = Volume::open(store, &host).unwrap();
    let mut stream = vol.stream(0, 1);
    let mut rng = sim::Rng(seed);
    for sp in 1..=points {
        for _ in 0..20 {
            let first = rng.below(PAGES - 8);
            let n = 1 + rng.below(8);
            if rng.below(6) == 0 {
                vol.discard(LogicalPage(first), n).unwrap();
                continue;
            }
            let mut data = vec![0u8; n as usize * PS];
            for (i, page) in data.chunks_mut(PS).enumerate() {
                page.fill((sp * 31 + first + i as u64) as u8);
                page[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            vol.write_pages(&mut stream, LogicalPage(first), &data)
                .unwrap();
        }
        let label = (sp % 3 == 0).then(|| format!("sp-{sp}"));
        vol.safe_point(Trigger::User, label).unwrap();
    }
    vol
}

/// The device as `vol` reads it at safe point `at`.
fn image_at(vol: &Volume<Arc<MemStore>>, at: SafePointId) -> Vec<u8> {
    let mut out = vec![0u8; PAGES as usize * PS];
    for (l, page) in out.chunks_mut(PS).enumerate() {
        vol.read_page_at(LogicalPage(l as u64), at, page).unwrap();
    }
    out
}

fn export(vol: &Volume<Arc<MemStore>>, opts: ExportOptions) -> Vec<u8> {
    let e = Export::plan(vol, opts).unwrap();
    let mut out = Vec::new();
    e.write(&mut out, &mut |_| Ok(())).unwrap();
    assert_eq!(out.len() as u64, e.directory().total_bytes());
    out
}

/// Restores `at` from the chain of archives `bytes`.
fn import(bytes: &[&[u8]], at: SafePointId) -> Result<Vec<u8>, rewind_archive::Error> {
    let mut chain = Vec::new();
    for b in bytes {
        let mut r = Cursor::new(*b);
        let d = Directory::read(&mut r)?;
        chain.push((d, r));
    }
    let mut sink = Mem(vec![0xEE; PAGES as usize * PS]);
    restore(
        &mut chain,
        at,
        Base::Empty { zero_rest: true },
        &mut sink,
        &mut |_| {},
    )?;
    Ok(sink.0)
}

/// What a sink holding safe point `id` of `vol` holds.
fn holding(vol: &Volume<Arc<MemStore>>, id: SafePointId) -> Base {
    let sp = vol.safe_points().into_iter().find(|s| s.id == id).unwrap();
    Base::Holding {
        id,
        time_ns: sp.time_ns,
    }
}

fn ids(vol: &Volume<Arc<MemStore>>) -> Vec<SafePointId> {
    vol.safe_points().iter().map(|s| s.id).collect()
}

#[test]
fn a_full_archive_restores_every_safe_point_byte_for_byte() {
    let vol = volume_with_history(8, 7);
    let bytes = export(&vol, ExportOptions::default());
    let dir = Directory::read(&mut Cursor::new(&bytes[..])).unwrap();
    assert_eq!(dir.safe_points.len(), 9, "the format safe point and 8 more");
    assert_eq!(dir.safe_points[3].label.as_deref(), Some("sp-3"));
    for at in ids(&vol) {
        assert!(
            import(&[&bytes], at).unwrap() == image_at(&vol, at),
            "safe point {at}"
        );
    }
    let mut r = Cursor::new(&bytes[..]);
    let d = Directory::read(&mut r).unwrap();
    let v = verify(&mut r, &d, &mut |_| {}).unwrap();
    assert_eq!(v.bytes, bytes.len() as u64);
}

#[test]
fn a_window_and_an_incremental_chain_restore_each_of_their_safe_points() {
    let vol = volume_with_history(9, 11);
    let all = ids(&vol);
    let (a, b, c) = (all[2], all[5], all[9]);
    let first = export(
        &vol,
        ExportOptions {
            from: Some(a),
            to: Some(b),
            incremental: false,
            net: false,
        },
    );
    let second = export(
        &vol,
        ExportOptions {
            from: Some(b),
            to: Some(c),
            incremental: true,
            net: false,
        },
    );
    let d2 = Directory::read(&mut Cursor::new(&second[..])).unwrap();
    assert_eq!(d2.base, Some(b));
    assert_eq!(d2.safe_points.first().map(|s| s.id), Some(all[6]));
    for &at in &all[2..] {
        let chain: &[&[u8]] = if at <= b {
            &[&first]
        } else {
            &[&first, &second]
        };
        assert!(
            import(chain, at).unwrap() == image_at(&vol, at),
            "safe point {at}"
        );
    }
    // Applied onto an image that holds its base (a mirror's replica), the incremental
    // archive alone brings it to each of its safe points; onto another base it is refused.
    for &at in &all[6..] {
        let mut r = Cursor::new(&second[..]);
        let d = Directory::read(&mut r).unwrap();
        let mut sink = Mem(import(&[&first], b).unwrap());
        restore(&mut [(d, r)], at, holding(&vol, b), &mut sink, &mut |_| {}).unwrap();
        assert!(
            sink.0 == image_at(&vol, at),
            "safe point {at} applied onto {b}"
        );
    }
    let mut r = Cursor::new(&second[..]);
    let d = Directory::read(&mut r).unwrap();
    let mut sink = Mem(import(&[&first], a).unwrap());
    assert!(restore(&mut [(d, r)], c, holding(&vol, a), &mut sink, &mut |_| {}).is_err());
    // The right id with another time (a copy of the image that went on its own) is refused.
    let mut r = Cursor::new(&second[..]);
    let d = Directory::read(&mut r).unwrap();
    let mut sink = Mem(import(&[&first], b).unwrap());
    let Base::Holding { id, time_ns } = holding(&vol, b) else {
        unreachable!()
    };
    let other = Base::Holding {
        id,
        time_ns: time_ns + 1,
    };
    assert!(restore(&mut [(d, r)], c, other, &mut sink, &mut |_| {}).is_err());
    // The incremental archive alone, or the chain in the wrong order, is refused.
    assert!(import(&[&second], c).is_err());
    assert!(import(&[&second, &first], a).is_err());
    // A safe point outside the chain is refused.
    assert!(import(&[&first], all[1]).is_err());
    // An incremental archive that does not continue the first is refused.
    let gap = export(
        &vol,
        ExportOptions {
            from: Some(all[6]),
            to: Some(c),
            incremental: true,
            net: false,
        },
    );
    let err = import(&[&first, &gap], c).unwrap_err().to_string();
    assert!(err.contains("does not continue"), "{err}");
}

#[test]
fn an_export_holds_its_safe_points_and_lets_them_go() {
    let vol = volume_with_history(3, 5);
    let e = Export::plan(&vol, ExportOptions::default()).unwrap();
    assert!(e.directory().data_bytes() > 0);
    drop(e);
    // With the views gone, every safe point but the newest can retire again: a second
    // plan of the same window still works (nothing leaked), and a safe point outside the
    // window is refused.
    Export::plan(&vol, ExportOptions::default()).unwrap();
    let err = Export::plan(
        &vol,
        ExportOptions {
            from: Some(SafePointId(99)),
            ..Default::default()
        },
    );
    assert!(err.is_err());
}

/// Every truncation, flipped byte and record swap must fail the restore of the newest safe
/// point (which reads every record) and `verify`.
#[test]
fn damaged_archives_are_refused() {
    let vol = volume_with_history(4, 3);
    let newest = *ids(&vol).last().unwrap();
    let good = export(&vol, ExportOptions::default());
    let check = |bytes: &[u8], what: &str| {
        assert!(import(&[bytes], newest).is_err(), "{what}: restored");
        let mut r = Cursor::new(bytes);
        let refused = Directory::read(&mut r).and_then(|d| verify(&mut r, &d, &mut |_| {}));
        assert!(refused.is_err(), "{what}: verified");
    };
    let step = (good.len() / 97).max(1);
    for len in (0..good.len()).step_by(step).chain([good.len() - 1]) {
        check(&good[..len], &format!("truncated to {len}"));
    }
    for at in (0..good.len()).step_by(step / 3 + 1) {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        check(&bad, &format!("byte {at} flipped"));
    }
    let mut longer = good.clone();
    longer.push(0);
    check(&longer, "a byte appended");
    // Swap the first two records (of the first two data extents, each one record long).
    let d = Directory::read(&mut Cursor::new(&good[..])).unwrap();
    let mut data = d
        .extents
        .iter()
        .filter(|e| e.kind == rewind_archive::Kind::Data);
    let (e1, e2) = (data.next().unwrap(), data.next().unwrap());
    assert!(e1.count <= 256 && e2.count <= 256);
    let (len1, len2) = (
        32 + e1.count as usize * (4 + PS),
        32 + e2.count as usize * (4 + PS),
    );
    let a = good.len() - d.data_bytes() as usize;
    let mut swapped = good[..a].to_vec();
    swapped.extend_from_slice(&good[a + len1..a + len1 + len2]);
    swapped.extend_from_slice(&good[a..a + len1]);
    swapped.extend_from_slice(&good[a + len1 + len2..]);
    check(&swapped, "two records swapped");
}

/// A rollback inside the window (the live device goes back to an earlier safe point, and
/// the state left becomes a safe point): every safe point still restores as it reads.
#[test]
fn a_window_with_a_rollback_in_it_restores_every_safe_point() {
    let vol = volume_with_history(5, 23);
    let before = ids(&vol);
    vol.rollback(before[2]).unwrap();
    let mut stream = vol.stream(0, 1);
    for l in [0u64, 7, 100, 250] {
        vol.write_page(&mut stream, LogicalPage(l), &vec![0xA5; PS])
            .unwrap();
    }
    vol.safe_point(Trigger::User, None).unwrap();
    vol.discard(LogicalPage(1), 20).unwrap();
    vol.safe_point(Trigger::User, None).unwrap();
    let bytes = export(&vol, ExportOptions::default());
    for at in ids(&vol) {
        assert!(
            import(&[&bytes], at).unwrap() == image_at(&vol, at),
            "safe point {at}"
        );
    }
    let mid = ids(&vol)[3];
    let first = export(
        &vol,
        ExportOptions {
            to: Some(mid),
            ..Default::default()
        },
    );
    let rest = export(
        &vol,
        ExportOptions {
            from: Some(mid),
            incremental: true,
            net: false,
            ..Default::default()
        },
    );
    let newest = *ids(&vol).last().unwrap();
    assert!(import(&[&first, &rest], newest).unwrap() == image_at(&vol, newest));
}

/// A net incremental archive (a mirror's step) holds only its last safe point, with what
/// changed since `from`: applied onto an image of `from`, it gives the last safe point, and
/// it is no larger than the incremental archive of every safe point between.
#[test]
fn a_net_incremental_archive_brings_its_base_to_its_last_safe_point() {
    let vol = volume_with_history(8, 31);
    let all = ids(&vol);
    let (from, to) = (all[2], all[8]);
    let opts = |net| ExportOptions {
        from: Some(from),
        to: Some(to),
        incremental: true,
        net,
    };
    let net = export(&vol, opts(true));
    let every = export(&vol, opts(false));
    let mut r = Cursor::new(&net[..]);
    let d = Directory::read(&mut r).unwrap();
    assert_eq!(d.safe_points.len(), 1);
    assert_eq!(d.safe_points[0].id, to);
    assert!(net.len() <= every.len(), "{} > {}", net.len(), every.len());
    let mut sink = Mem(image_at(&vol, from));
    restore(
        &mut [(d, r)],
        to,
        holding(&vol, from),
        &mut sink,
        &mut |_| {},
    )
    .unwrap();
    assert!(sink.0 == image_at(&vol, to));
}
