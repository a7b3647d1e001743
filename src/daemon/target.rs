//! The ublk target: device parameters and the I/O path of each queue.
//!
//! One thread per queue (libublk spawns them), each with its own io_uring that carries both
//! the ublk commands and the data I/O on the image; one async task per tag on a
//! `smol::LocalExecutor`. A request goes:
//! - READ: resolve each logical page, fill the pages that resolve to nothing with zeros,
//!   read runs of consecutive physical pages with one uring read each;
//! - WRITE: claim physical pages for the request's pages, in as few extents as the engine
//!   finds (`try_allocate_run`; reclaim, when free pages run low, is the flusher's), write
//!   runs of consecutive physical pages with one uring write each, then stage the request's
//!   remaps in the engine
//!   (`stage_writes`) and wait for the pass's group commit (`group_commit`): when the tasks
//!   of this pass over the ring have run, one `record_staged` records every request they
//!   staged. A FUA write then flushes. If a page cannot be allocated or the data not written,
//!   every allocated page is abandoned and the request fails (after a failed staging they
//!   are kept: see `write`);
//! - FLUSH: the [`Pacer`] marks a safe point or, when the previous one is recent, only
//!   coalesces; then a commit on this queue's ring (`ring_commit`: a data sync, the journal
//!   write and a sync, linked), or, when another commit is under way or a checkpoint is
//!   due, one by the flusher thread (`flusher`), which the task waits for with a read of an
//!   eventfd on this queue's ring. A FLUSH never blocks the queue thread (the one sync a
//!   queue thread still makes is backpressure: the engine commits on the spot when the
//!   flusher falls behind by twice a commit's records, see `commit_as_due`);
//! - DISCARD and WRITE_ZEROES: staged (`stage_discard`) and recorded like a write; the pages
//!   read as zeros afterwards.
//!
//! The data path (`DataPath`, from the device's ublk flags) decides where the data of a
//! read or write is, [`RequestBuf`], and so how its uring ops address it, [`BufAddr`]:
//! - copy: each tag has a buffer in this process; the driver copies a write's data into it
//!   before the daemon sees the request and a read's data out of it when the daemon
//!   completes it. Ops are plain `Read`/`Write` at addresses in that buffer, and holes are
//!   zeroed in it with `fill` before the reads go out;
//! - zero copy (`UBLK_F_AUTO_BUF_REG`): there is no buffer in this process. Before handing a
//!   request to the daemon the driver registers the request's own pages in the queue ring's
//!   buffer table at the tag's index, and unregisters them when the request completes. Ops
//!   are `ReadFixed`/`WriteFixed` of that buffer at offsets into the request, so the image
//!   is read into, and written from, the pages of the kernel's request directly. The
//!   daemon cannot touch those pages, so holes are read from `/dev/zero`, a fixed file of
//!   the ring like the image.
//!
//! When a write or discard completes, its record is where the engine's durability puts it,
//! which the daemon sets from `--on-crash` (`OnCrash::durability`): for a device that
//! outlives its daemon (`queue`, the default), written to the journal (unsynced: the host's
//! page cache keeps it), so a `kill -9` of the daemon loses nothing the kernel was told is
//! done; for one that dies with it (`stop`), still in memory, so the daemon's death loses,
//! like a power cut, what no FLUSH made durable. FLUSH and FUA commit in both.
//!
//! Every write and discard the engine takes is counted by the pacer, for idle safe points. A
//! data write the host file system refuses with ENOSPC (a sparse image on a full file system)
//! is counted by the backing store, which `rewind list` and `rewind stats` report.
//!
//! A view (`rewind view`) is served by the same code as a read-only device: its reads
//! resolve through `Volume::resolve_view_pages` (and fail with `-EIO` once reclaim dropped the
//! view); the kernel refuses writes to it (read-only attribute), and any that arrive anyway
//! fail with `-EROFS`.
//!
//! Invariants:
//! - the device's logical block is a page, so every request is page aligned; anything else
//!   is refused with `-EINVAL` rather than rounded;
//! - a task never completes its ublk command while a uring op on its buffer is in flight:
//!   every submitted op is awaited before the task looks at the result, error or not, since
//!   the kernel writes into (or reads from) the buffer until the op's completion (with zero
//!   copy, the buffer is the request's pages, which completing the command gives back);
//! - engine errors become `-EIO` and a log line; nothing on the I/O path panics.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use io_uring::{opcode, squeue, types};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::UblkUringOpFuture;
use libublk::{sys, BufDesc, UblkError};
use parking_lot::Mutex;
use rewind_history::{
    CommitDue, LogicalPage, PhysPage, ReadTracker, Stream, ViewId, Volume, ALLOCATE_RETRY_DELAY,
    PAGE_SIZE,
};

use crate::daemon::backing::FileStore;
use crate::daemon::flusher::Flusher;
use crate::daemon::group_commit::Group;
use crate::daemon::pacing::Pacer;
use crate::daemon::ring_commit;
use crate::daemon::ublk::{describe_ublk_error, IO_BUF_BYTES};
use crate::ipc::device::DataPath;

/// Largest DISCARD or WRITE_ZEROES request the kernel sends.
const MAX_DISCARD_BYTES: u64 = 1 << 30;
/// The index of the image's first data descriptor among a queue ring's fixed files; index 0
/// is `/dev/ublkcN`, which libublk registers first. A pool's backings follow it, one index
/// each (file `i` of the store at `FIRST_DATA_FILE + i`), and on the zero copy path
/// `/dev/zero` comes after them: holes of a read are filled from it.
const FIRST_DATA_FILE: u32 = 1;
/// Waits of `ALLOCATE_RETRY_DELAY` (1 ms) a write makes for a free page before it fails
/// with no space: 60 s, far longer than the engine's own (1 s, for tools that reclaim
/// inline), since here the pages come from the flusher's reclaim, which may first wait for
/// a commit in progress and then commit itself, each with syncs of slow storage. Only a
/// device whose every page is live or claimed by writes in flight waits that long.
const ALLOCATE_WAITS_MAX: u32 = 60_000;
/// Times a data op that returned `EAGAIN` or `EINTR` is resubmitted before the request fails.
const IO_RETRIES_MAX: u32 = 4;
/// Errors of one queue logged one by one; after that only every 1000th, so a failed image
/// cannot flood the log.
const ERRORS_LOGGED_MAX: u64 = 20;
/// Seconds without I/O after which a queue counts as idle (libublk's notion).
const QUEUE_IDLE_SECS: u64 = 20;

const PAGE: usize = PAGE_SIZE as usize;
const SECTOR_SHIFT: u32 = 9;
const SECTORS_PER_PAGE: u64 = PAGE_SIZE >> SECTOR_SHIFT;
const _: () = assert!(
    PAGE_SIZE == 4096,
    "the device advertises 4 KiB logical blocks"
);
const _: () = assert!((IO_BUF_BYTES as u64).is_multiple_of(PAGE_SIZE));

/// The block device's parameters: 4 KiB logical and physical blocks, a volatile write cache
/// with FUA (so the kernel sends FLUSH and FUA, which make safe points), and single-segment
/// DISCARD and WRITE_ZEROES of up to 1 GiB.
pub fn device_params(device_bytes: u64, io_buf_bytes: u32) -> sys::ublk_params {
    let page_shift = PAGE_SIZE.trailing_zeros() as u8;
    let discard_sectors = u32::try_from(MAX_DISCARD_BYTES >> SECTOR_SHIFT).unwrap_or(u32::MAX);
    sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: page_shift,
            physical_bs_shift: page_shift,
            io_opt_shift: page_shift,
            io_min_shift: page_shift,
            max_sectors: io_buf_bytes >> SECTOR_SHIFT,
            dev_sectors: device_bytes >> SECTOR_SHIFT,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_granularity: PAGE_SIZE as u32,
            max_discard_sectors: discard_sectors,
            max_write_zeroes_sectors: discard_sectors,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A request of the kernel, decoded and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoRequest {
    /// Read `pages` pages from `first`.
    Read {
        /// First page.
        first: LogicalPage,
        /// Page count, at least 1.
        pages: usize,
    },
    /// Write `pages` pages from `first`; with `fua` it must be durable on completion.
    Write {
        /// First page.
        first: LogicalPage,
        /// Page count, at least 1.
        pages: usize,
        /// Forced unit access.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// DISCARD or WRITE_ZEROES: the pages read as zeros afterwards.
    Discard {
        /// First page.
        first: LogicalPage,
        /// Page count.
        pages: u64,
    },
}

/// Decodes a request's descriptor; `buf_bytes` is the size of the tag's buffer. Errors are
/// negative errnos for the kernel: `-EINVAL` for a request that is not page aligned or does
/// not fit the buffer, `-EOPNOTSUPP` for an operation this target does not do.
pub fn decode(
    op_flags: u32,
    start_sector: u64,
    nr_sectors: u32,
    buf_bytes: usize,
) -> Result<IoRequest, i32> {
    let op = op_flags & 0xff;
    match op {
        sys::UBLK_IO_OP_FLUSH => return Ok(IoRequest::Flush),
        sys::UBLK_IO_OP_READ
        | sys::UBLK_IO_OP_WRITE
        | sys::UBLK_IO_OP_DISCARD
        | sys::UBLK_IO_OP_WRITE_ZEROES => {}
        _ => return Err(-libc::EOPNOTSUPP),
    }
    let sectors = u64::from(nr_sectors);
    if !start_sector.is_multiple_of(SECTORS_PER_PAGE) || sectors % SECTORS_PER_PAGE != 0 {
        return Err(-libc::EINVAL);
    }
    let first = LogicalPage(start_sector / SECTORS_PER_PAGE);
    let pages = sectors / SECTORS_PER_PAGE;
    match op {
        sys::UBLK_IO_OP_READ | sys::UBLK_IO_OP_WRITE => {
            if pages * PAGE_SIZE > buf_bytes as u64 {
                return Err(-libc::EINVAL);
            }
            // Fits the buffer, so it fits a usize.
            let pages = pages as usize;
            if op == sys::UBLK_IO_OP_READ {
                Ok(IoRequest::Read { first, pages })
            } else {
                Ok(IoRequest::Write {
                    first,
                    pages,
                    fua: op_flags & sys::UBLK_IO_F_FUA != 0,
                })
            }
        }
        _ => Ok(IoRequest::Discard { first, pages }),
    }
}

/// Consecutive pages of a request that map to consecutive physical pages, or that are all
/// unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Index of the run's first page within the request.
    pub index: usize,
    /// Pages in the run.
    pub count: usize,
    /// The first page's physical page; `None` for unmapped pages.
    pub phys: Option<PhysPage>,
}

/// The parameters of a view device: those of the live device, read only, without a write
/// cache, FUA or discard (nothing is written to it).
pub fn view_params(device_bytes: u64, io_buf_bytes: u32) -> sys::ublk_params {
    let mut p = device_params(device_bytes, io_buf_bytes);
    p.types = sys::UBLK_PARAM_TYPE_BASIC;
    p.basic.attrs = sys::UBLK_ATTR_READ_ONLY;
    p.discard = Default::default();
    p
}

/// Splits a request's pages into runs (appended to `out`).
pub fn group_runs(pages: &[Option<PhysPage>], out: &mut Vec<Run>) {
    for (i, p) in pages.iter().enumerate() {
        if let Some(last) = out.last_mut() {
            let extends = match (last.phys, p) {
                (None, None) => true,
                (Some(a), Some(b)) => b.0 == a.0 + last.count as u64,
                _ => false,
            };
            if extends {
                last.count += 1;
                continue;
            }
        }
        out.push(Run {
            index: i,
            count: 1,
            phys: *p,
        });
    }
}

/// What the queue threads share: the volume, the pacer that decides which flushes make
/// safe points, and the first queue setup failure, which the daemon reports instead of
/// libublk's generic error.
pub struct Target {
    volume: Arc<Volume<FileStore>>,
    pacer: Arc<Pacer>,
    /// Runs the commits of FLUSH and FUA; `None` for a view, which has neither.
    flusher: Option<Flusher>,
    nr_queues: u16,
    /// Set for a view device: reads show this view, writes are refused.
    view: Option<ViewId>,
    /// `/dev/zero`, opened by `init` for a zero copy device: the queue rings register its
    /// descriptor, which must stay open as long as they may.
    zeros: Mutex<Option<File>>,
    setup_failure: Mutex<Option<String>>,
}

impl Target {
    /// A target serving `volume` with `nr_queues` queues; `flusher` runs its flushes (a
    /// view has none).
    pub fn new(
        volume: Arc<Volume<FileStore>>,
        pacer: Arc<Pacer>,
        flusher: Option<Flusher>,
        nr_queues: u16,
    ) -> Target {
        Target {
            volume,
            pacer,
            flusher,
            nr_queues,
            view: None,
            zeros: Mutex::new(None),
            setup_failure: Mutex::new(None),
        }
    }

    /// This target serving view `view` (read only) instead of the live device.
    pub fn with_view(mut self, view: ViewId) -> Target {
        self.view = Some(view);
        self
    }

    /// Why a queue could not be set up, if one could not.
    pub fn setup_failure(&self) -> Option<String> {
        self.setup_failure.lock().clone()
    }

    /// libublk's target init: registers the image's data descriptor as a fixed file (and
    /// `/dev/zero` for a zero copy device), sets the size and parameters, and stores
    /// `target_json` in the device's exported json.
    pub fn init(&self, dev: &mut UblkDev, target_json: serde_json::Value) -> Result<(), UblkError> {
        let zero_copy = DataPath::of_device_flags(dev.dev_info.flags) == DataPath::ZeroCopy;
        let tgt = &mut dev.tgt;
        if tgt.nr_fds != FIRST_DATA_FILE as i32 {
            log::error!(
                "libublk registered {} fixed files before the target's; expected {FIRST_DATA_FILE}",
                tgt.nr_fds
            );
            return Err(UblkError::InvalidVal);
        }
        for fd in self.volume.store().data_fds() {
            tgt.fds[tgt.nr_fds as usize] = fd;
            tgt.nr_fds += 1;
        }
        if zero_copy {
            let zeros = File::open("/dev/zero").map_err(|e| {
                log::error!("opening /dev/zero, which zero copy reads holes from: {e}");
                UblkError::IOError(e)
            })?;
            debug_assert_eq!(tgt.nr_fds as u32, zero_file(self.volume.store()));
            tgt.fds[tgt.nr_fds as usize] = zeros.as_raw_fd();
            tgt.nr_fds += 1;
            *self.zeros.lock() = Some(zeros);
        }
        let device_bytes = self.volume.layout().device_bytes();
        tgt.dev_size = device_bytes;
        tgt.params = match self.view {
            Some(_) => view_params(device_bytes, dev.dev_info.max_io_buf_bytes),
            None => device_params(device_bytes, dev.dev_info.max_io_buf_bytes),
        };
        // A request may need several data ops (one per run) in flight at once: give the
        // ring room for them beyond the one ublk command per tag.
        let depth = u32::from(dev.dev_info.queue_depth);
        tgt.sq_depth = u16::try_from(depth * 2).unwrap_or(u16::MAX / 2);
        tgt.cq_depth = u16::try_from(u32::from(tgt.sq_depth) * 2).unwrap_or(u16::MAX);
        dev.set_target_json(target_json);
        Ok(())
    }

    /// Runs queue `qid` until the device stops: the body of each queue thread.
    pub fn serve_queue(&self, qid: u16, dev: &UblkDev) {
        let queue = match UblkQueue::new(qid, dev) {
            Ok(q) => Rc::new(q),
            Err(e) => {
                let why = format!("setting up queue {qid}: {}", describe_ublk_error(&e));
                log::error!("{why}");
                self.setup_failure.lock().get_or_insert(why);
                // start_dev waits until every queue registered its buffers; this one never
                // will. Reporting a failed registration makes it give up instead of hang.
                dev.notify_buffer_registration_complete(true);
                return;
            }
        };
        let ctx = Rc::new(QueueCtx {
            qid,
            volume: &self.volume,
            pacer: &self.pacer,
            stream: RefCell::new(
                self.volume
                    .stream(u32::from(qid), u32::from(self.nr_queues)),
            ),
            reads: self.volume.read_tracker(),
            errors: ErrorLog::default(),
            view: self.view,
            flusher: self.flusher.as_ref(),
            group: Group::default(),
        });
        let exe = Rc::new(smol::LocalExecutor::new());
        let mut tasks = Vec::new();
        for tag in queue.tags() {
            let q = queue.clone();
            let ctx = ctx.clone();
            tasks.push(exe.spawn(async move {
                match io_task(&q, tag, &ctx).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(e) => log::error!(
                        "queue {qid} tag {tag}: stopped serving: {}",
                        describe_ublk_error(&e)
                    ),
                }
            }));
        }
        let exe2 = exe.clone();
        let ctx2 = ctx.clone();
        smol::block_on(exe.run(async move {
            // Run the tasks as far as they go; if some staged writes, record them all with
            // one journal write (group commit) and let those tasks complete.
            let run_ops = || loop {
                while exe2.try_tick() {}
                if !ctx2.group.record(ctx2.volume) {
                    break;
                }
            };
            let done = || tasks.iter().all(|t| t.is_finished());
            if let Err(e) =
                libublk::wait_and_handle_io_events(&queue, Some(QUEUE_IDLE_SECS), run_ops, done)
                    .await
            {
                log::error!(
                    "queue {qid}: event loop failed: {}",
                    describe_ublk_error(&e)
                );
            }
        }));
        log::info!("queue {qid} stopped");
    }
}

/// Counts a queue's I/O errors and logs the first few, then one in a thousand.
#[derive(Default)]
struct ErrorLog {
    count: Cell<u64>,
}

impl ErrorLog {
    fn report(&self, qid: u16, what: fmt::Arguments<'_>) {
        let n = self.count.get() + 1;
        self.count.set(n);
        if n <= ERRORS_LOGGED_MAX || n.is_multiple_of(1000) {
            log::error!("queue {qid}: {what} (error {n} of this queue)");
        }
        if n == ERRORS_LOGGED_MAX {
            log::error!("queue {qid}: logging only every 1000th error from now on");
        }
    }
}

/// What a queue's tasks share. Single-threaded: the stream is borrowed only across
/// synchronous engine calls, never across an await.
struct QueueCtx<'a> {
    qid: u16,
    volume: &'a Volume<FileStore>,
    pacer: &'a Pacer,
    stream: RefCell<Stream>,
    /// Keeps the pages this queue's reads resolved to from being reused until they land.
    reads: ReadTracker,
    errors: ErrorLog,
    view: Option<ViewId>,
    flusher: Option<&'a Flusher>,
    /// The writes and discards staged in this pass over the ring.
    group: Group,
}

/// Per-task vectors, reused from request to request.
#[derive(Default)]
struct Scratch {
    /// The pages a write claimed, in order.
    claims: Vec<PhysPage>,
    phys: Vec<Option<PhysPage>>,
    runs: Vec<Run>,
    claimed: Vec<(LogicalPage, PhysPage)>,
    inflight: Vec<(Transfer, UblkUringOpFuture)>,
}

/// Where the data of a tag's requests is, by data path.
enum RequestBuf {
    /// Copy: the tag's buffer in this process, which the driver copies a request's data
    /// into (a write) or out of (a read).
    Copy(IoBuf<u8>),
    /// Zero copy: the driver registers each request's own pages in the queue ring's buffer
    /// table at this slot (the tag's) while the request is the daemon's.
    Registered(sys::ublk_auto_buf_reg),
}

impl RequestBuf {
    /// The buffer of `tag` on queue `q`, for the data path the device was added with.
    fn new(q: &UblkQueue<'_>, tag: u16) -> RequestBuf {
        match DataPath::of_device_flags(q.dev.dev_info.flags) {
            DataPath::Copy => {
                RequestBuf::Copy(IoBuf::new(q.dev.dev_info.max_io_buf_bytes as usize))
            }
            DataPath::ZeroCopy => RequestBuf::Registered(sys::ublk_auto_buf_reg {
                index: tag,
                // If the registration fails, the driver hands the request over flagged
                // (UBLK_IO_F_NEED_REG_BUF) instead of failing it unseen: `handle` logs it.
                flags: sys::UBLK_AUTO_BUF_REG_FALLBACK as u8,
                ..Default::default()
            }),
        }
    }

    /// What the tag's ublk commands tell the driver about the buffer.
    fn desc(&self) -> BufDesc<'_> {
        match self {
            RequestBuf::Copy(b) => BufDesc::Slice(b.as_slice()),
            RequestBuf::Registered(reg) => BufDesc::AutoReg(*reg),
        }
    }

    /// The buffer libublk registers for the tag, on the copy path.
    fn io_buf(&self) -> Option<&IoBuf<u8>> {
        match self {
            RequestBuf::Copy(b) => Some(b),
            RequestBuf::Registered(_) => None,
        }
    }

    /// How the uring ops of the current request address its data.
    fn addr(&mut self) -> BufAddr {
        match self {
            RequestBuf::Copy(b) => BufAddr::Mapped(b.as_mut_ptr()),
            RequestBuf::Registered(reg) => BufAddr::Registered(reg.index),
        }
    }
}

/// The life of one tag: fetch a request, handle it, commit the result and fetch the next,
/// until the queue goes down.
async fn io_task(q: &UblkQueue<'_>, tag: u16, ctx: &QueueCtx<'_>) -> Result<(), UblkError> {
    let pages_max = q.dev.dev_info.max_io_buf_bytes as usize / PAGE;
    let mut scratch = Scratch {
        claims: Vec::with_capacity(pages_max),
        phys: Vec::with_capacity(pages_max),
        runs: Vec::with_capacity(pages_max),
        claimed: Vec::with_capacity(pages_max),
        inflight: Vec::with_capacity(pages_max),
    };
    let mut buf = RequestBuf::new(q, tag);
    q.submit_io_prep_cmd(tag, buf.desc(), -1, buf.io_buf())
        .await?;
    loop {
        // A copy: the descriptor lives in memory the driver rewrites for the next request.
        let iod = *q.get_iod(tag);
        let res = handle(q, tag, ctx, &iod, &mut buf, &mut scratch).await;
        q.submit_io_commit_cmd(tag, buf.desc(), res).await?;
    }
}

/// Handles one request; returns the result for the kernel: bytes done or a negative errno.
async fn handle(
    q: &UblkQueue<'_>,
    tag: u16,
    ctx: &QueueCtx<'_>,
    iod: &sys::ublksrv_io_desc,
    buf: &mut RequestBuf,
    scratch: &mut Scratch,
) -> i32 {
    let buf_bytes = q.dev.dev_info.max_io_buf_bytes as usize;
    let request = match decode(iod.op_flags, iod.start_sector, iod.nr_sectors, buf_bytes) {
        Ok(r) => r,
        Err(errno) => {
            ctx.errors.report(
                ctx.qid,
                format_args!(
                    "tag {tag}: refused op {} at sector {} of {} sectors: {}",
                    iod.op_flags & 0xff,
                    iod.start_sector,
                    iod.nr_sectors,
                    std::io::Error::from_raw_os_error(-errno)
                ),
            );
            return errno;
        }
    };
    if iod.op_flags & sys::UBLK_IO_F_NEED_REG_BUF != 0 {
        // Zero copy, and the driver could not register the request's pages: the data ops
        // would have no buffer to address.
        ctx.errors.report(
            ctx.qid,
            format_args!(
                "tag {tag}: {request:?} failed: the driver could not register the request's \
                 pages for zero copy"
            ),
        );
        return -libc::EIO;
    }
    let result = match request {
        IoRequest::Read { first, pages } => read(q, ctx, first, pages, buf, scratch).await,
        IoRequest::Flush if ctx.view.is_some() => Ok(0),
        IoRequest::Write { .. } | IoRequest::Discard { .. } if ctx.view.is_some() => {
            ctx.errors.report(
                ctx.qid,
                format_args!("tag {tag}: {request:?} refused: a view is read only"),
            );
            return -libc::EROFS;
        }
        IoRequest::Write { first, pages, fua } => {
            write(q, ctx, first, pages, fua, buf, scratch).await
        }
        IoRequest::Flush => flush(q, ctx).await.map(|()| 0),
        IoRequest::Discard { first, pages } => discard(q, ctx, first, pages).await.map(|()| 0),
    };
    match result {
        Ok(bytes) => bytes,
        Err(failure) => {
            if failure.is_host_full() {
                ctx.volume.store().note_host_full();
            }
            ctx.errors.report(
                ctx.qid,
                format_args!("tag {tag}: {request:?} failed: {failure}"),
            );
            -libc::EIO
        }
    }
}

/// Why a request failed; the kernel sees `-EIO` for all of them.
enum Failure {
    Engine(&'static str, rewind_history::Error),
    /// A failure shared by the requests of a group commit or a flush.
    Shared(String),
    Data {
        write: bool,
        /// The file of the store (0: the image; then a pool's backings).
        file: u32,
        /// Where in that file.
        offset: u64,
        errno: i32,
    },
    /// Reading a hole's zeros from `/dev/zero` (zero copy) failed.
    Zeros {
        errno: i32,
    },
}

impl Failure {
    /// True for a data write the host file system refused for lack of space (ENOSPC). The
    /// store counts those of its own metadata writes itself.
    fn is_host_full(&self) -> bool {
        matches!(self, Failure::Data { write: true, errno, .. } if *errno == libc::ENOSPC)
    }
}

/// An op's errno in words; 0 is an op that transferred nothing.
fn describe_errno(errno: i32) -> String {
    if errno == 0 {
        "unexpected end of file".to_string()
    } else {
        std::io::Error::from_raw_os_error(errno).to_string()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Engine(what, e) => write!(f, "{what}: {e}"),
            Failure::Shared(why) => f.write_str(why),
            Failure::Data {
                write,
                file,
                offset,
                errno,
            } => write!(
                f,
                "{} {} at byte {offset}: {}",
                if *write { "writing" } else { "reading" },
                match file {
                    0 => "the image".to_string(),
                    n => format!("the pool's backing {n}"),
                },
                describe_errno(*errno)
            ),
            Failure::Zeros { errno } => write!(
                f,
                "reading zeros for unmapped pages from /dev/zero: {}",
                describe_errno(*errno)
            ),
        }
    }
}

/// How a request's uring ops address its data (see [`RequestBuf`]).
#[derive(Clone, Copy)]
enum BufAddr {
    /// Copy: the tag's buffer, which starts here.
    Mapped(*mut u8),
    /// Zero copy: the request's pages, registered at this index of the ring's buffer table.
    Registered(u16),
}

/// The index among a queue ring's fixed files of `/dev/zero`, after the store's files.
fn zero_file(store: &FileStore) -> u32 {
    FIRST_DATA_FILE + store.file_count() as u32
}

/// The other end of a data op.
#[derive(Clone, Copy)]
enum Peer {
    /// A file of the image (the fixed file at this index), at this byte offset.
    Image { file: u32, offset: u64 },
    /// `/dev/zero` (the fixed file at this index), for the holes of a zero copy read.
    Zeros(u32),
}

/// One data op: `len` bytes between the request's data, `at` bytes into it, and `peer`.
#[derive(Clone, Copy)]
struct Transfer {
    write: bool,
    buf: BufAddr,
    at: usize,
    len: usize,
    peer: Peer,
}

impl Transfer {
    /// The SQE for the part of the transfer after its first `done` bytes.
    fn sqe(&self, done: usize) -> squeue::Entry {
        let at = self.at + done;
        // At most one request (512 KiB), so it fits.
        let len = (self.len - done) as u32;
        let (file, offset) = match self.peer {
            Peer::Image { file, offset } => (types::Fixed(file), offset + done as u64),
            // /dev/zero has no position to read from.
            Peer::Zeros(file) => (types::Fixed(file), 0),
        };
        match (self.buf, self.write) {
            (BufAddr::Mapped(base), false) => opcode::Read::new(file, base.wrapping_add(at), len)
                .offset(offset)
                .build(),
            (BufAddr::Mapped(base), true) => opcode::Write::new(file, base.wrapping_add(at), len)
                .offset(offset)
                .build(),
            // A buffer the driver registered is addressed by the offset into it.
            (BufAddr::Registered(index), false) => {
                opcode::ReadFixed::new(file, at as *mut u8, len, index)
                    .offset(offset)
                    .build()
            }
            (BufAddr::Registered(index), true) => {
                opcode::WriteFixed::new(file, at as *const u8, len, index)
                    .offset(offset)
                    .build()
            }
        }
    }

    /// The failure of the transfer after `done` bytes, the op having returned `-errno`.
    fn failure(&self, done: usize, errno: i32) -> Failure {
        match self.peer {
            Peer::Image { file, offset } => Failure::Data {
                write: self.write,
                file: file - FIRST_DATA_FILE,
                offset: offset + done as u64,
                errno,
            },
            Peer::Zeros(_) => Failure::Zeros { errno },
        }
    }
}

/// Submits every transfer in `scratch.inflight` order, awaits them all, and returns the first
/// failure. Short transfers are continued, `EAGAIN`/`EINTR` retried a few times.
///
/// The buffer behind the transfers must stay untouched until this returns: the kernel
/// accesses it until each op completes, and this awaits every op even after a failure.
async fn run_transfers(q: &UblkQueue<'_>, scratch: &mut Scratch) -> Result<(), Failure> {
    let mut first_failure = None;
    for (transfer, op) in scratch.inflight.drain(..) {
        if let Err(f) = finish_transfer(q, transfer, op).await {
            first_failure.get_or_insert(f);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

async fn finish_transfer(
    q: &UblkQueue<'_>,
    t: Transfer,
    mut op: UblkUringOpFuture,
) -> Result<(), Failure> {
    let mut done = 0usize;
    let mut retries = 0;
    loop {
        let res = op.await;
        if res > 0 {
            done += res as usize;
            if done >= t.len {
                return Ok(());
            }
        } else if (res == -libc::EAGAIN || res == -libc::EINTR) && retries < IO_RETRIES_MAX {
            retries += 1;
        } else {
            // 0: the image ends before the layout says it does.
            return Err(t.failure(done, -res));
        }
        op = q.ublk_submit_sqe(t.sqe(done));
    }
}

/// READ: resolves each page (through the view, for a view device), fills the pages that
/// resolve to nothing with zeros and reads each run of consecutive physical pages with one
/// op. The read tracker keeps the resolved pages from being reused until their data is in.
async fn read(
    q: &UblkQueue<'_>,
    ctx: &QueueCtx<'_>,
    first: LogicalPage,
    pages: usize,
    buf: &mut RequestBuf,
    scratch: &mut Scratch,
) -> Result<i32, Failure> {
    let generation = ctx.reads.begin(ctx.volume);
    let result = async {
        scratch.phys.clear();
        match ctx.view {
            Some(v) => ctx
                .volume
                .resolve_view_pages(v, first, pages, &mut scratch.phys),
            None => ctx.volume.resolve_pages(first, pages, &mut scratch.phys),
        }
        .map_err(|e| Failure::Engine("resolve", e))?;
        scratch.runs.clear();
        group_runs(&scratch.phys, &mut scratch.runs);
        // The copy path zeroes the holes in its buffer, first: once the reads are submitted
        // the buffer is the kernel's. Zero copy reads them from /dev/zero (`submit_runs`).
        if let RequestBuf::Copy(b) = buf {
            for run in scratch.runs.iter().filter(|r| r.phys.is_none()) {
                b.as_mut_slice()[run.index * PAGE..(run.index + run.count) * PAGE].fill(0);
            }
        }
        submit_runs(q, ctx.volume, buf.addr(), scratch, false);
        run_transfers(q, scratch).await?;
        Ok((pages * PAGE) as i32)
    }
    .await;
    ctx.reads.end(generation);
    result
}

/// Submits one uring read or write per run of consecutive physical pages in
/// `scratch.runs`, between the request's data (addressed by `buf`) and the image; for a
/// zero copy read also one read per hole, from `/dev/zero`. The copy path's holes are
/// zeroed before (`read`); a write has none.
fn submit_runs(
    q: &UblkQueue<'_>,
    volume: &Volume<FileStore>,
    buf: BufAddr,
    scratch: &mut Scratch,
    write: bool,
) {
    let store = volume.store();
    for run in scratch.runs.iter() {
        let at = run.index * PAGE;
        let len = run.count * PAGE;
        let Some(p) = run.phys else {
            if !write && matches!(buf, BufAddr::Registered(_)) {
                let t = Transfer {
                    write,
                    buf,
                    at,
                    len,
                    peer: Peer::Zeros(zero_file(store)),
                };
                scratch.inflight.push((t, q.ublk_submit_sqe(t.sqe(0))));
            }
            continue;
        };
        // One op per file the run's pages are on: in a pool, a run may cross from one
        // backing to the next.
        for piece in store.pieces(volume.layout().page_offset(p), len as u64) {
            let t = Transfer {
                write,
                buf,
                at: at + piece.at as usize,
                len: piece.len as usize,
                peer: Peer::Image {
                    file: FIRST_DATA_FILE + piece.file as u32,
                    offset: piece.offset,
                },
            };
            scratch.inflight.push((t, q.ublk_submit_sqe(t.sqe(0))));
        }
    }
}

async fn write(
    q: &UblkQueue<'_>,
    ctx: &QueueCtx<'_>,
    first: LogicalPage,
    pages: usize,
    fua: bool,
    buf: &mut RequestBuf,
    scratch: &mut Scratch,
) -> Result<i32, Failure> {
    let volume = ctx.volume;
    scratch.claims.clear();
    if let Err(e) = allocate(q, ctx, first, pages, &mut scratch.claims).await {
        abandon_all(volume, scratch.claims.iter().copied());
        return Err(Failure::Engine("allocate", e));
    }
    scratch.phys.clear();
    scratch
        .phys
        .extend(scratch.claims.iter().copied().map(Some));
    scratch.claimed.clear();
    scratch.claimed.extend(
        (first.0..)
            .map(LogicalPage)
            .zip(scratch.claims.iter().copied()),
    );
    scratch.runs.clear();
    group_runs(&scratch.phys, &mut scratch.runs);
    submit_runs(q, volume, buf.addr(), scratch, true);
    if let Err(f) = run_transfers(q, scratch).await {
        abandon_all(volume, scratch.claimed.iter().map(|&(_, p)| p));
        return Err(f);
    }
    volume.store().note_data_written((pages * PAGE) as u64);
    // The pages are not given back if this fails: the engine may already map some of them
    // (it fails after applying when a commit it makes fails), and a leaked page is safer
    // than one handed out twice. The volume refuses further I/O after such a failure.
    let due = volume
        .stage_writes(&scratch.claimed)
        .map_err(|e| Failure::Engine("stage_writes", e))?;
    ctx.group.recorded().await.map_err(Failure::Shared)?;
    commit_as_due(q, ctx, due).await?;
    ctx.pacer.wrote();
    if fua {
        flush(q, ctx).await?;
    }
    Ok((pages * PAGE) as i32)
}

/// DISCARD and WRITE_ZEROES: staged, then recorded with the pass's group commit.
async fn discard(
    q: &UblkQueue<'_>,
    ctx: &QueueCtx<'_>,
    first: LogicalPage,
    pages: u64,
) -> Result<(), Failure> {
    let due = ctx
        .volume
        .stage_discard(first, pages)
        .map_err(|e| Failure::Engine("discard", e))?;
    ctx.group.recorded().await.map_err(Failure::Shared)?;
    commit_as_due(q, ctx, due).await?;
    ctx.pacer.wrote();
    Ok(())
}

/// What the engine asked for after a staging: a commit soon, by the flusher, when the
/// journal records pending came near what one commit should take. Past twice that the
/// engine commits on the spot, except while this thread's own commit on the ring is under
/// way: then the request waits (on the ring) for the flusher's commit of its records.
async fn commit_as_due(
    q: &UblkQueue<'_>,
    ctx: &QueueCtx<'_>,
    due: CommitDue,
) -> Result<(), Failure> {
    match (due, ctx.flusher) {
        (CommitDue::No, _) => Ok(()),
        (CommitDue::Soon, Some(flusher)) => {
            flusher.commit_soon();
            Ok(())
        }
        (CommitDue::Soon, None) => Ok(()),
        (CommitDue::Wait, _) => flusher_commit(q, ctx).await,
    }
}

/// FLUSH (and the end of a FUA write): the pacer marks a safe point (or coalesces), then
/// the commit runs on this queue's ring (`ring_commit`), or, when the engine leaves it to
/// the flusher, the flusher makes it and this waits with a read of the ticket's eventfd on
/// the ring. Either way the queue serves its other requests meanwhile.
async fn flush(q: &UblkQueue<'_>, ctx: &QueueCtx<'_>) -> Result<(), Failure> {
    let paced = ctx
        .pacer
        .begin_flush(ctx.volume)
        .map_err(|e| Failure::Engine("flush", e))?;
    let on_ring = ring_commit::commit(q, ctx.volume)
        .await
        .map_err(|e| Failure::Engine("flush", e))?;
    if !on_ring {
        flusher_commit(q, ctx).await?;
    }
    ctx.pacer.end_flush(paced);
    Ok(())
}

/// Asks the flusher for a commit and waits for it with a read of the ticket's eventfd on
/// this queue's ring.
async fn flusher_commit(q: &UblkQueue<'_>, ctx: &QueueCtx<'_>) -> Result<(), Failure> {
    let Some(flusher) = ctx.flusher else {
        return Err(Failure::Shared(
            "a flush reached a target without a flusher".into(),
        ));
    };
    let ticket = flusher
        .ask()
        .map_err(|e| Failure::Shared(format!("asking for a flush: {e}")))?;
    let mut event = [0u8; 8];
    loop {
        let sqe = opcode::Read::new(
            types::Fd(ticket.event_fd()),
            event.as_mut_ptr(),
            event.len() as u32,
        )
        .build();
        let res = q.ublk_submit_sqe(sqe).await;
        if res == -libc::EINTR || res == -libc::EAGAIN {
            continue;
        }
        if res < 0 {
            return Err(Failure::Shared(format!(
                "waiting for a flush: {}",
                std::io::Error::from_raw_os_error(-res)
            )));
        }
        break;
    }
    match ticket.outcome() {
        Some(Ok(())) => Ok(()),
        Some(Err(why)) => Err(Failure::Shared(format!("flush: {why}"))),
        None => Err(Failure::Shared("flush: woken without an outcome".into())),
    }
}

/// Claims the pages the `pages` pages from `first` are to be written into, appended to
/// `out` in order, in as few extents as the engine finds (`try_allocate_run`). Free pages
/// below the low water mark are the flusher's to reclaim (`reclaim_soon`); when every page
/// is in use for a moment (claimed by writes, held for reads in flight, or waiting for that
/// reclaim), waits for one with a timeout op on the ring, never a sleep or the commit lock,
/// so the queue's other requests go on meanwhile. On an error, `out` holds the pages
/// claimed so far.
async fn allocate(
    q: &UblkQueue<'_>,
    ctx: &QueueCtx<'_>,
    first: LogicalPage,
    pages: usize,
    out: &mut Vec<PhysPage>,
) -> Result<(), rewind_history::Error> {
    let delay = types::Timespec::from(ALLOCATE_RETRY_DELAY);
    let mut waits = 0;
    while out.len() < pages {
        if ctx.volume.reclaim_due() {
            match ctx.flusher {
                Some(flusher) => flusher.reclaim_soon(),
                // Every writable target has a flusher; this is only for safety.
                None => ctx.volume.reclaim_if_low()?,
            }
        }
        let l = LogicalPage(first.0 + out.len() as u64);
        // The stream is borrowed for the engine call only, never across the wait.
        let got =
            ctx.volume
                .try_allocate_run(&mut ctx.stream.borrow_mut(), l, pages - out.len(), out)?;
        if got > 0 {
            waits = 0;
            continue;
        }
        waits += 1;
        if waits >= ALLOCATE_WAITS_MAX {
            return Err(rewind_history::Error::NoSpace);
        }
        if waits > 1 {
            // The result is -ETIME when the time is up; nothing else can end it early but
            // the ring going away, after which the next try fails anyway.
            q.ublk_submit_sqe(opcode::Timeout::new(&delay).build())
                .await;
        }
    }
    Ok(())
}

/// Gives back the pages of a write that failed.
fn abandon_all(volume: &Volume<FileStore>, pages: impl IntoIterator<Item = PhysPage>) {
    for p in pages {
        volume.abandon(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUA: u32 = sys::UBLK_IO_F_FUA;

    #[test]
    fn decode_requests() {
        let buf = IO_BUF_BYTES as usize;
        assert_eq!(
            decode(sys::UBLK_IO_OP_READ, 16, 8, buf),
            Ok(IoRequest::Read {
                first: LogicalPage(2),
                pages: 1
            })
        );
        assert_eq!(
            decode(sys::UBLK_IO_OP_WRITE | FUA, 0, 1024, buf),
            Ok(IoRequest::Write {
                first: LogicalPage(0),
                pages: 128,
                fua: true
            })
        );
        assert_eq!(
            decode(sys::UBLK_IO_OP_WRITE, 8, 8, buf),
            Ok(IoRequest::Write {
                first: LogicalPage(1),
                pages: 1,
                fua: false
            })
        );
        assert_eq!(
            decode(sys::UBLK_IO_OP_FLUSH, 0, 0, buf),
            Ok(IoRequest::Flush)
        );
        for op in [sys::UBLK_IO_OP_DISCARD, sys::UBLK_IO_OP_WRITE_ZEROES] {
            assert_eq!(
                decode(op, 8 * 10, 2_097_152, buf),
                Ok(IoRequest::Discard {
                    first: LogicalPage(10),
                    pages: 262_144
                })
            );
        }
    }

    #[test]
    fn decode_refuses_what_it_cannot_do() {
        let buf = IO_BUF_BYTES as usize;
        // Not page aligned: start, then length.
        assert_eq!(decode(sys::UBLK_IO_OP_READ, 1, 8, buf), Err(-libc::EINVAL));
        assert_eq!(decode(sys::UBLK_IO_OP_WRITE, 0, 1, buf), Err(-libc::EINVAL));
        assert_eq!(
            decode(sys::UBLK_IO_OP_DISCARD, 4, 8, buf),
            Err(-libc::EINVAL)
        );
        // Larger than the buffer.
        assert_eq!(
            decode(sys::UBLK_IO_OP_READ, 0, 1032, buf),
            Err(-libc::EINVAL)
        );
        // Operations this target does not implement.
        assert_eq!(
            decode(sys::UBLK_IO_OP_WRITE_SAME, 0, 8, buf),
            Err(-libc::EOPNOTSUPP)
        );
        assert_eq!(
            decode(sys::UBLK_IO_OP_ZONE_APPEND, 0, 8, buf),
            Err(-libc::EOPNOTSUPP)
        );
    }

    #[test]
    fn group_runs_splits_at_gaps_and_holes() {
        let p = |n| Some(PhysPage(n));
        let mut out = Vec::new();
        group_runs(
            &[p(5), p(6), p(7), None, None, p(9), p(3), p(4), None],
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                Run {
                    index: 0,
                    count: 3,
                    phys: p(5)
                },
                Run {
                    index: 3,
                    count: 2,
                    phys: None
                },
                Run {
                    index: 5,
                    count: 1,
                    phys: p(9)
                },
                Run {
                    index: 6,
                    count: 2,
                    phys: p(3)
                },
                Run {
                    index: 8,
                    count: 1,
                    phys: None
                },
            ]
        );
        out.clear();
        group_runs(&[], &mut out);
        assert!(out.is_empty());
        group_runs(&[p(PhysPage::MAX), p(0)], &mut out);
        assert_eq!(out.len(), 2, "no wrap-around merge");
    }

    #[test]
    fn view_params_are_read_only() {
        let p = view_params(10 << 30, IO_BUF_BYTES);
        assert_eq!(p.basic.attrs, sys::UBLK_ATTR_READ_ONLY);
        assert_eq!(p.types, sys::UBLK_PARAM_TYPE_BASIC);
        assert_eq!(p.basic.dev_sectors, (10u64 << 30) / 512);
        assert_eq!(p.basic.logical_bs_shift, 12);
    }

    #[test]
    fn params_match_the_contract() {
        let p = device_params(10 << 30, IO_BUF_BYTES);
        assert_eq!(p.basic.logical_bs_shift, 12);
        assert_eq!(p.basic.physical_bs_shift, 12);
        assert_eq!(p.basic.io_min_shift, 12);
        assert_eq!(p.basic.io_opt_shift, 12);
        assert_eq!(p.basic.max_sectors, 1024);
        assert_eq!(p.basic.dev_sectors, (10u64 << 30) / 512);
        assert_eq!(
            p.basic.attrs,
            sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA
        );
        assert_eq!(
            p.types,
            sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD
        );
        assert_eq!(p.discard.discard_granularity, 4096);
        assert_eq!(p.discard.max_discard_segments, 1);
        assert_eq!(p.discard.max_discard_sectors, 2_097_152);
        assert_eq!(p.discard.max_write_zeroes_sectors, 2_097_152);
    }
}
