//! Writing an archive of a volume's history: `rewind export`.
//!
//! The export holds every safe point it writes with a view of its own (`Volume::open_view`),
//! so reclaim retires none of them meanwhile, plans the directory from the metadata
//! (`Volume::diff` between neighbours, and a scan of the first safe point for a full
//! archive), then reads each data page through the view of its safe point. A view reclaim
//! drops while the export runs (the history area filled up and views held all of it) ends
//! the export with an error; pages are checked against that after they are read, so a page
//! freed and written again is never exported.

use std::io::Write;

use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

use rewind_history::{
    LogicalPage, PhysPage, SafePoint, SafePointId, Store, ViewId, Volume, PAGE_SIZE,
};

use crate::directory::Directory;
use crate::format::{
    ArchivedSafePoint, Extent, Kind, RecordHeader, RECORD_HEADER_BYTES, RECORD_MAGIC, RECORD_PAGES,
};
use crate::Error;

/// Pages resolved at a time while planning.
const PLAN_CHUNK: u64 = 1 << 16;

/// Which window of history an export takes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions {
    /// The first safe point (the oldest in the window when `None`).
    pub from: Option<SafePointId>,
    /// The last safe point (the newest when `None`).
    pub to: Option<SafePointId>,
    /// Leave out the state at `from`: the archive holds the changes after it, and continues
    /// an archive that ends at `from`.
    pub incremental: bool,
    /// With `incremental`: only `to`, with the net change from `from` (a mirror's step),
    /// not every safe point between, so a page rewritten many times is read once.
    pub net: bool,
}

/// An export planned: its directory is known and its safe points are held until it is
/// dropped.
pub struct Export<'v, S: Store> {
    vol: &'v Volume<S>,
    /// Every view this export opened (closed on drop).
    held: Vec<ViewId>,
    /// The view each segment's pages are read through.
    segment_views: Vec<ViewId>,
    directory: Directory,
}

impl<S: Store> Drop for Export<'_, S> {
    fn drop(&mut self) {
        for v in self.held.drain(..) {
            self.vol.close_view(v);
        }
    }
}

impl<'v, S: Store> Export<'v, S> {
    /// Holds the safe points `opts` names and plans the archive of them.
    pub fn plan(vol: &'v Volume<S>, opts: ExportOptions) -> Result<Export<'v, S>, Error> {
        let window = vol.safe_points();
        let (from, to) = (
            opts.from.or(window.first().map(|s| s.id)),
            opts.to.or(window.last().map(|s| s.id)),
        );
        let (Some(from), Some(to)) = (from, to) else {
            return Err(Error::Refused("the history window is empty".into()));
        };
        if from > to || (opts.incremental && from == to) {
            return Err(Error::Refused(format!(
                "nothing to export from safe point {from} to {to}: {}",
                if from > to {
                    "the first comes after the last"
                } else {
                    "an incremental archive holds what changed after --from, and nothing did"
                }
            )));
        }
        let net = opts.incremental && opts.net;
        let chosen: Vec<&SafePoint> = window
            .iter()
            .filter(|s| s.id >= from && s.id <= to)
            .filter(|s| !net || s.id == from || s.id == to)
            .collect();
        if chosen.first().map(|s| s.id) != Some(from) || chosen.last().map(|s| s.id) != Some(to) {
            return Err(Error::Refused(format!(
                "safe points {from} and {to} must both be in the history window"
            )));
        }
        let mut export = Export {
            vol,
            held: Vec::new(),
            segment_views: Vec::new(),
            directory: Directory {
                source_uuid: vol.uuid(),
                logical_pages: vol.layout().logical_pages,
                base: opts.incremental.then_some(from),
                base_time_ns: if opts.incremental {
                    chosen[0].time_ns
                } else {
                    0
                },
                safe_points: Vec::new(),
                extents: Vec::new(),
            },
        };
        for sp in &chosen {
            // Fails if `sp` retired since `safe_points`: said in the engine's words.
            export.held.push(vol.open_view(sp.id)?);
        }
        let skip = usize::from(opts.incremental);
        export.segment_views = export.held[skip..].to_vec();
        export.directory.safe_points = chosen[skip..]
            .iter()
            .map(|s| ArchivedSafePoint {
                id: s.id,
                time_ns: s.time_ns,
                trigger: s.trigger,
                label: s.label.clone(),
            })
            .collect();
        export.plan_segments(from)?;
        for v in &export.held {
            vol.check_view(*v)?;
        }
        Ok(export)
    }

    /// The archive's directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Fills the directory's extents: segment by segment, what reads differently at its
    /// safe point than at the one before (`from` before the first of an incremental
    /// archive; before the first of a full one, a device of zeros).
    fn plan_segments(&mut self, from: SafePointId) -> Result<(), Error> {
        let ids: Vec<SafePointId> = self.directory.safe_points.iter().map(|s| s.id).collect();
        let mut extents = Vec::new();
        for (i, &at) in ids.iter().enumerate() {
            let view = self.segment_views[i];
            let segment = i as u32;
            let changed = match (i, self.directory.base) {
                (0, None) => vec![(LogicalPage(0), self.directory.logical_pages)],
                (0, Some(_)) => self.vol.diff(from, Some(at))?,
                _ => self.vol.diff(ids[i - 1], Some(at))?,
            };
            for (first, count) in changed {
                self.split_by_kind(view, segment, first.0, count, &mut extents)?;
            }
        }
        // A full archive's first segment needs no zeros: a restore starts from zeros.
        if self.directory.base.is_none() {
            extents.retain(|e: &Extent| !(e.segment == 0 && e.kind == Kind::Zeros));
        }
        self.directory.extents = extents;
        Ok(())
    }

    /// Appends the pages `[first, first + count)` as they read through `view`, as extents of
    /// data and of zeros.
    fn split_by_kind(
        &self,
        view: ViewId,
        segment: u32,
        first: u64,
        count: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), Error> {
        let mut pages = Vec::new();
        let mut at = first;
        while at < first + count {
            let n = (first + count - at).min(PLAN_CHUNK);
            pages.clear();
            self.vol
                .resolve_view_pages(view, LogicalPage(at), n as usize, &mut pages)?;
            for (i, p) in pages.iter().enumerate() {
                let kind = if p.is_some() { Kind::Data } else { Kind::Zeros };
                let page = at + i as u64;
                match out.last_mut() {
                    Some(e) if e.segment == segment && e.kind == kind && e.end() == page => {
                        e.count += 1
                    }
                    _ => out.push(Extent {
                        segment,
                        kind,
                        first: page,
                        count: 1,
                    }),
                }
            }
            at += n;
        }
        Ok(())
    }

    /// Writes the archive to `out`, calling `progress` with the bytes written so far after
    /// each record; an error `progress` returns ends the export with it.
    pub fn write(
        &self,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let head = self.directory.encode();
        out.write_all(&head)
            .map_err(Error::io("writing the archive"))?;
        let mut written = head.len() as u64;
        progress(written)?;
        let mut buf = Vec::new();
        for (index, e) in self.directory.extents.iter().enumerate() {
            if e.kind != Kind::Data {
                continue;
            }
            let view = self.segment_views[e.segment as usize];
            let mut at = e.first;
            while at < e.end() {
                let n = (e.end() - at).min(RECORD_PAGES);
                self.record(view, index as u64, at, n, &mut buf)?;
                out.write_all(&buf)
                    .map_err(Error::io("writing the archive"))?;
                written += buf.len() as u64;
                progress(written)?;
                at += n;
            }
        }
        out.flush().map_err(Error::io("writing the archive"))?;
        Ok(())
    }

    /// Builds into `buf` the record of the `count` pages from `first` of extent `extent`,
    /// read through `view`: the pages are read into their place in `buf`, then the checksums
    /// and the header are filled in before them.
    fn record(
        &self,
        view: ViewId,
        extent: u64,
        first: u64,
        count: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let mut phys = Vec::with_capacity(count as usize);
        self.vol
            .resolve_view_pages(view, LogicalPage(first), count as usize, &mut phys)?;
        let page = PAGE_SIZE as usize;
        let data_at = RECORD_HEADER_BYTES as usize + 4 * count as usize;
        buf.clear();
        buf.resize(data_at + count as usize * page, 0);
        let data = &mut buf[data_at..];
        let mut i = 0;
        while i < phys.len() {
            let Some(p) = phys[i] else {
                return Err(Error::corrupt(format!(
                    "page {} changed to zeros at a safe point held by the export",
                    first + i as u64
                )));
            };
            // Pages consecutive on the store are read with one call.
            let run = 1 + phys[i + 1..]
                .iter()
                .zip(1u64..)
                .take_while(|(q, k)| **q == Some(PhysPage(p.0 + k)))
                .count();
            self.vol
                .store()
                .read_at(
                    self.vol.layout().page_offset(p),
                    &mut data[i * page..(i + run) * page],
                )
                .map_err(Error::io("reading the image"))?;
            i += run;
        }
        // The view still holds its safe point: none of these pages was freed and reused.
        self.vol.check_view(view)?;
        let crcs: Vec<u8> = buf[data_at..]
            .chunks_exact(page)
            .flat_map(|page| crc32c::crc32c(page).to_le_bytes())
            .collect();
        let mut h = RecordHeader {
            magic: U32::new(RECORD_MAGIC),
            count: U32::new(count as u32),
            extent: U64::new(extent),
            first: U64::new(first),
            crc: U32::new(0),
            pad: U32::new(0),
        };
        h.crc = U32::new(h.compute_crc(&crcs));
        buf[..RECORD_HEADER_BYTES as usize].copy_from_slice(h.as_bytes());
        buf[RECORD_HEADER_BYTES as usize..data_at].copy_from_slice(&crcs);
        Ok(())
    }
}
