//! The backing store of a device: an image file or a block device, or a pool of them
//! (`daemon::pool`), as one [`Store`].
//!
//! A pool's store is its files' parts end to end ([`FileStore::pieces`] says which file holds
//! which bytes); what follows holds for each file of it. A `FileStore` owns two descriptors
//! of each file:
//! - a buffered one, used by the [`Store`] methods (superblock, journal, checkpoints) with
//!   `pread`/`pwrite` loops and `fdatasync`;
//! - a data one, opened with `O_DIRECT` when the file system allows it, which the queue
//!   threads register with their io_uring for the device's data pages. When `O_DIRECT` is
//!   refused (tmpfs on older kernels, some FUSE file systems) the data path uses the
//!   buffered descriptor and [`FileStore::direct_io`] says so.
//!
//! Durability does not depend on which: `fdatasync` on the buffered descriptor flushes the
//! file's dirty pages and the device cache whichever descriptor wrote them.
//!
//! Space: `rewind create` reserves a regular file's bytes with `fallocate`
//! ([`FileStore::ensure_len`] with [`Allocation::Preallocated`]), so a redirected write never
//! lands in a hole nor meets a full host file system; with `--sparse`, or on a file system that
//! cannot preallocate, the file is sparse. Whatever the image, the store counts the writes and
//! syncs the host refused with ENOSPC ([`FileStore::host_full_errors`]): its own, and the data
//! path's, which the queues report ([`FileStore::note_host_full`]).
//!
//! Exclusion: the buffered descriptor holds an exclusive `flock` for the store's lifetime,
//! so a second daemon (or `rewind create`) on the same image fails at once with a clear
//! error instead of corrupting it. A block device is also opened `O_EXCL`, which the kernel
//! refuses while the device is mounted or claimed by another exclusive opener.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rewind_history::{Store, PAGE_SIZE};

use crate::daemon::pool::{self, Label, PoolFile, Role};
use crate::size::human;

/// Times `fallocate` is called again after a signal interrupted it (it keeps what it had
/// allocated, so each call goes further) before reserving fails.
const FALLOCATE_RETRIES_MAX: u32 = 16;

/// Why a backing store could not be opened or resized.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// Another process holds the image's lock.
    #[error("{} is in use by another rewind daemon{owner} (or a `rewind create`, `rewind log` or `rewind check` running now); stop it first (`rewind list` shows the devices)", .path.display())]
    InUse {
        /// The image.
        path: PathBuf,
        /// Who the superblock says owns it, e.g. " (pid 1234 on host1)", or empty.
        owner: String,
    },
    /// The kernel refused the exclusive open of a block device.
    #[error("{} is busy: it is mounted, or another program holds it open exclusively; unmount or release it first", .0.display())]
    Busy(PathBuf),
    /// Neither a regular file nor a block device.
    #[error("{} is neither a regular file nor a block device", .0.display())]
    Unsupported(PathBuf),
    /// A block device too small for the layout.
    #[error("{} is a block device of {have} bytes; the image needs {need} bytes", .path.display())]
    DeviceTooSmall {
        /// The device.
        path: PathBuf,
        /// Bytes there.
        have: u64,
        /// Bytes needed.
        need: u64,
    },
    /// The host file system cannot hold a file that large (EFBIG).
    #[error("{} cannot be {}: its file system holds no file that large (EFBIG; ext4 stops at \
             16 TiB); put the image on XFS, btrfs or tmpfs, or give a smaller --size or \
             --history", .path.display(), human(*.need))]
    FileTooLarge {
        /// The image.
        path: PathBuf,
        /// Bytes it would take.
        need: u64,
    },
    /// The host file system has too little space free to reserve the image (ENOSPC).
    #[error("{} cannot be reserved: its file system has {} free and the image needs {} more \
             (ENOSPC); free some space, give a smaller --size or --history, or give --sparse \
             (the image then takes space as it is written, and writes fail if the file system \
             fills up)", .path.display(), human(*.free), human(*.need))]
    HostFull {
        /// The image file.
        path: PathBuf,
        /// Bytes that were still to be allocated.
        need: u64,
        /// Bytes free for this user on its file system when the reservation failed.
        free: u64,
    },
    /// A pool's backing, named where its image should be.
    #[error("{} is backing {index} of the rewind pool whose image is {}: name the image instead", .path.display(), .image.display())]
    PoolMember {
        /// The backing.
        path: PathBuf,
        /// Its place in the pool.
        index: usize,
        /// The pool's image, as its label records it.
        image: PathBuf,
    },
    /// A pool whose labels or backings are not what they must be.
    #[error("the rewind pool {}: {why}", .path.display())]
    Pool {
        /// The pool's image (or the file whose label is damaged).
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A system call failed.
    #[error("{what} {}", .path.display())]
    Io {
        /// What was being done, e.g. "opening".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl BackingError {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackingError + 'a {
        move |source| BackingError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How a regular image file gets its bytes (a block device has all of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Reserved on the host file system (`fallocate`): writes never fill a hole and never
    /// meet a full file system.
    Preallocated,
    /// Sparse: space is taken as pages are first written, so a write may fail with ENOSPC
    /// when the host file system is full.
    Sparse,
}

impl Allocation {
    /// `Sparse` if `sparse` (`--sparse`), else `Preallocated`.
    pub fn chosen(sparse: bool) -> Allocation {
        if sparse {
            Allocation::Sparse
        } else {
            Allocation::Preallocated
        }
    }
}

/// What kind of file backs the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackingKind {
    /// A regular file, which `rewind create` may grow.
    File,
    /// A block device, whose size is fixed.
    BlockDevice,
}

/// An image opened for serving or formatting: one file or block device, or a pool of them
/// (`daemon::pool`); see the module docs.
#[derive(Debug)]
pub struct FileStore {
    /// The image the user names first; in a pool, its backings after it, in store order.
    files: Vec<Backing>,
    /// Where the store's bytes live, ascending and contiguous from 0: one extent per file.
    extents: Vec<Extent>,
    /// Size in bytes of the store the engine sees, fixed at open: nothing else resizes a
    /// locked image.
    len: u64,
    /// Writes and syncs of this image the host file system refused with ENOSPC.
    host_full_errors: AtomicU64,
    /// Bytes written to the image since it was opened: the data the queues wrote
    /// (`note_data_written`), and the metadata written through `Store::write_at`.
    data_bytes_written: AtomicU64,
    metadata_bytes_written: AtomicU64,
}

/// A file of a store, as [`FileStore::files`] describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreFile {
    /// Where it was opened.
    pub path: PathBuf,
    /// A file or a block device.
    pub kind: BackingKind,
    /// The bytes of the store it holds.
    pub bytes: u64,
}

/// One file or block device of a store, open and locked.
#[derive(Debug)]
struct Backing {
    path: PathBuf,
    kind: BackingKind,
    /// Buffered, locked: the `Store` methods use it.
    file: File,
    /// The `O_DIRECT` descriptor for the data path, or `None` when the data path uses `file`.
    direct: Option<File>,
    /// The file's own length in bytes.
    len: u64,
}

/// `len` bytes of the store from `start` on, held by file `file` from byte `offset` on.
#[derive(Clone, Copy, Debug)]
struct Extent {
    start: u64,
    len: u64,
    file: usize,
    offset: u64,
}

/// A part of an access to the store that one file holds: `len` bytes, `at` bytes into the
/// access, at byte `offset` of file `file` (an index into the store's files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The file's index: 0 the image, then a pool's backings.
    pub file: usize,
    /// Where in that file.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
    /// Bytes from the start of the access.
    pub at: u64,
}

/// How a store's files are opened: to serve or format it, or only to read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Read-write, under an exclusive lock, with an `O_DIRECT` descriptor for the data path.
    Serve,
    /// Read-only, under a shared lock.
    Look,
}

// BLKGETSIZE64 = _IOR(0x12, 114, size_t): the size of a block device in bytes. The `libc`
// crate does not define it. This is the asm-generic encoding (x86, arm, riscv); powerpc, mips
// and sparc encode the direction differently.
#[cfg(any(
    target_arch = "powerpc64",
    target_arch = "mips64",
    target_arch = "sparc64"
))]
compile_error!("BLKGETSIZE64 uses the asm-generic ioctl encoding; add this architecture's");
const BLKGETSIZE64: libc::c_ulong = (2 << 30) | (8 << 16) | (0x12 << 8) | 114;

/// Makes `len` bytes at `offset` of `file` read as zeros: BLKZEROOUT on a block device, a
/// punched hole in a regular file, or writes of zeros where those are not offered.
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // _IO(0x12, 127): zero a byte range given as [start, length].
    const BLKZEROOUT: libc::c_ulong = 0x127f;
    let range = [offset, len];
    let rc = if file.metadata()?.file_type().is_block_device() {
        // SAFETY: the ioctl reads two u64s from `range`, which lives across the call.
        unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) }
    } else {
        // SAFETY: fallocate on an open descriptor; the flags keep the file's size.
        unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        }
    };
    if rc == 0 {
        return Ok(());
    }
    // Only where the call is not offered: any other error (EIO) is the answer.
    let e = io::Error::last_os_error();
    if !matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::ENOSYS)
    ) {
        return Err(e);
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The size of the block device open as `file`, in bytes.
pub fn block_device_len(file: &File) -> io::Result<u64> {
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `bytes`, a
    // live, aligned u64 on this stack frame; the descriptor is open for the call's duration.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut bytes as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bytes)
}

/// A file read without any lock, only to name the owner of a locked image.
/// The store of a pool's image starts at `POOL_DATA_OFFSET` (the last field).
struct Unlocked<'a>(&'a File, u64, u64);

impl Store for Unlocked<'_> {
    fn len(&self) -> u64 {
        self.1
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, self.2 + offset)
    }

    fn write_at(&self, _offset: u64, _buf: &[u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// "pid N on HOST", from the superblock's owner.
pub fn describe_owner(pid: u32, host: &str) -> String {
    let host = host.trim();
    if host.is_empty() || host == "(none)" {
        format!("pid {pid}")
    } else {
        format!("pid {pid} on {host}")
    }
}

/// Takes `how` (`LOCK_SH`/`LOCK_EX`) on the image, or says who holds it.
fn lock_or_in_use(
    file: &File,
    how: libc::c_int,
    kind: BackingKind,
    path: &Path,
) -> Result<(), BackingError> {
    lock(file, how).map_err(|e| {
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            in_use(file, kind, path)
        } else {
            BackingError::io("locking", path)(e)
        }
    })
}

/// The error for an image whose lock another process holds, naming the owner the
/// superblock records (best effort: the owner may be writing it right now).
fn in_use(file: &File, kind: BackingKind, path: &Path) -> BackingError {
    let mut head = vec![0u8; pool::LABEL_BYTES];
    let start = match read_up_to(file, &mut head, 0).map(|n| Label::decode(&head[..n])) {
        Ok(Ok(Some(_))) => pool::POOL_DATA_OFFSET,
        _ => 0,
    };
    let sb = len_of(file, kind, path).ok().and_then(|len| {
        let store = Unlocked(file, len.saturating_sub(start), start);
        rewind_history::read_superblock(&store).ok()
    });
    let owner = match sb.and_then(|sb| sb.owner()) {
        Some((pid, host)) => format!(" ({})", describe_owner(pid, &host)),
        None => String::new(),
    };
    BackingError::InUse {
        path: path.to_path_buf(),
        owner,
    }
}

fn lock(file: &File, how: libc::c_int) -> io::Result<()> {
    // SAFETY: flock only reads the descriptor number, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn kind_of(path: &Path) -> Result<BackingKind, BackingError> {
    let meta = std::fs::metadata(path).map_err(BackingError::io("opening", path))?;
    if meta.file_type().is_block_device() {
        Ok(BackingKind::BlockDevice)
    } else if meta.file_type().is_file() {
        Ok(BackingKind::File)
    } else {
        Err(BackingError::Unsupported(path.to_path_buf()))
    }
}

fn len_of(file: &File, kind: BackingKind, path: &Path) -> Result<u64, BackingError> {
    match kind {
        BackingKind::File => Ok(file
            .metadata()
            .map_err(BackingError::io("reading the size of", path))?
            .len()),
        BackingKind::BlockDevice => {
            block_device_len(file).map_err(BackingError::io("reading the size of", path))
        }
    }
}

impl Backing {
    /// Opens and locks `path` (exclusively to serve, shared to look).
    fn open(path: &Path, access: Access) -> Result<Backing, BackingError> {
        let kind = kind_of(path)?;
        let mut options = OpenOptions::new();
        options.read(true).write(access == Access::Serve);
        if kind == BackingKind::BlockDevice && access == Access::Serve {
            options.custom_flags(libc::O_EXCL);
        }
        let file = options.open(path).map_err(|e| {
            if kind == BackingKind::BlockDevice && e.raw_os_error() == Some(libc::EBUSY) {
                BackingError::Busy(path.to_path_buf())
            } else {
                BackingError::io("opening", path)(e)
            }
        })?;
        let how = match access {
            Access::Serve => libc::LOCK_EX,
            Access::Look => libc::LOCK_SH,
        };
        lock_or_in_use(&file, how, kind, path)?;
        let len = len_of(&file, kind, path)?;
        let direct = match access {
            Access::Serve => open_direct(path),
            Access::Look => None,
        };
        Ok(Backing {
            path: path.to_path_buf(),
            kind,
            file,
            direct,
            len,
        })
    }

    /// The pool label at the start of the file, if it is a pool's.
    fn label(&self) -> Result<Option<Label>, BackingError> {
        let mut page = vec![0u8; pool::LABEL_BYTES];
        let n = read_up_to(&self.file, &mut page, 0)
            .map_err(BackingError::io("reading the start of", &self.path))?;
        Label::decode(&page[..n]).map_err(|why| BackingError::Pool {
            path: self.path.clone(),
            why,
        })
    }

    /// Gives the file its length of before a failed `fallocate`, which may have grown it.
    fn restore_len(&self) {
        let grown = self.file.metadata().is_ok_and(|m| m.len() > self.len);
        if grown {
            if let Err(e) = self.file.set_len(self.len) {
                log::warn!(
                    "{}: giving it back its length of {} bytes: {e}",
                    self.path.display(),
                    self.len
                );
            }
        }
    }

    /// The error for a reservation of `need` more bytes that failed with `e`.
    fn reserve_error(&self, e: io::Error, need: u64) -> BackingError {
        if e.raw_os_error() != Some(libc::ENOSPC) {
            return BackingError::io("reserving space for", &self.path)(e);
        }
        match free_bytes(&self.file) {
            Ok(free) => BackingError::HostFull {
                path: self.path.clone(),
                need,
                free,
            },
            Err(_) => BackingError::io("reserving space for", &self.path)(e),
        }
    }

    /// Makes the file at least `bytes` long, as `FileStore::ensure_len` says.
    fn ensure_len(&mut self, bytes: u64, want: Allocation) -> Result<Allocation, BackingError> {
        if self.kind == BackingKind::BlockDevice {
            if self.len < bytes {
                return Err(BackingError::DeviceTooSmall {
                    path: self.path.clone(),
                    have: self.len,
                    need: bytes,
                });
            }
            return Ok(Allocation::Preallocated);
        }
        if want == Allocation::Preallocated {
            let allocated = self.allocated_bytes().unwrap_or(0);
            match fallocate(&self.file, bytes) {
                Ok(()) => {
                    self.len = self.len.max(bytes);
                    return Ok(Allocation::Preallocated);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {}
                Err(e) if e.raw_os_error() == Some(libc::EFBIG) => {
                    self.restore_len();
                    return Err(BackingError::FileTooLarge {
                        path: self.path.clone(),
                        need: bytes,
                    });
                }
                Err(e) => {
                    self.restore_len();
                    return Err(self.reserve_error(e, bytes.saturating_sub(allocated)));
                }
            }
        }
        if self.len < bytes {
            self.file
                .set_len(bytes)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EFBIG) => BackingError::FileTooLarge {
                        path: self.path.clone(),
                        need: bytes,
                    },
                    _ => BackingError::io("resizing", &self.path)(e),
                })?;
            self.len = bytes;
        }
        Ok(Allocation::Sparse)
    }

    /// Bytes the host file system has allocated to a regular file (`st_blocks` × 512).
    fn allocated_bytes(&self) -> Option<u64> {
        if self.kind != BackingKind::File {
            return None;
        }
        self.file.metadata().ok().map(|m| m.blocks() * 512)
    }

    fn data_fd(&self) -> RawFd {
        match &self.direct {
            Some(f) => f.as_raw_fd(),
            None => self.file.as_raw_fd(),
        }
    }
}

/// Reads what there is of `buf.len()` bytes at `offset`: fewer at the end of the file.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The `O_DIRECT` descriptor of `path`, if the file system takes it and aligned I/O through
/// it works (a probe read of the first page). Not `O_EXCL`: the kernel ties a block device's
/// exclusive claim to the buffered descriptor, which keeps it.
fn open_direct(path: &Path) -> Option<File> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            log::info!(
                "{}: O_DIRECT refused ({e}); the data path uses buffered I/O",
                path.display()
            );
            return None;
        }
    };
    // Some file systems accept the flag at open and refuse the I/O: probe one aligned
    // page. A short read (an empty new file) is fine; EINVAL means unusable.
    let mut probe = libublk::helpers::IoBuf::<u8>::new(PAGE_SIZE as usize);
    match file.read_at(probe.as_mut_slice(), 0) {
        Ok(_) => Some(file),
        Err(e) => {
            log::info!(
                "{}: O_DIRECT read failed ({e}); the data path uses buffered I/O",
                path.display()
            );
            None
        }
    }
}

impl FileStore {
    /// Opens an image read-only to look at it (`rewind log IMAGE`, `rewind check`), under a
    /// shared lock: a daemon serving it (which holds the exclusive lock) makes this fail
    /// with `InUse`, and no daemon can start on it while the store lives. Its writes and
    /// syncs fail. A pool's backings are opened the same way.
    pub fn open_read_only(path: &Path) -> Result<FileStore, BackingError> {
        Self::open_as(path, Access::Look)
    }

    /// Opens an existing image file or block device read-write and locks it; for a pool,
    /// its backings too.
    pub fn open(path: &Path) -> Result<FileStore, BackingError> {
        Self::open_as(path, Access::Serve)
    }

    /// Opens one file or block device read-write to format it, whatever it holds: a pool's
    /// label is not followed.
    pub fn open_unformatted(path: &Path) -> Result<FileStore, BackingError> {
        let image = Backing::open(path, Access::Serve)?;
        let len = image.len;
        Ok(Self::assemble(vec![image], &[len], 0))
    }

    /// The pool label at the start of the image file, if it has one.
    pub fn pool_label(&self) -> Result<Option<Label>, BackingError> {
        self.files[0].label()
    }

    fn open_as(path: &Path, access: Access) -> Result<FileStore, BackingError> {
        let image = Backing::open(path, access)?;
        let Some(label) = image.label()? else {
            let len = image.len;
            return Ok(Self::assemble(vec![image], &[len], 0));
        };
        if label.role == Role::Member {
            return Err(BackingError::PoolMember {
                path: path.to_path_buf(),
                index: label.index,
                image: label.files[0].path.clone(),
            });
        }
        let need = pool::POOL_DATA_OFFSET + label.files[0].bytes;
        if image.len < need {
            return Err(BackingError::Pool {
                path: path.to_path_buf(),
                why: format!(
                    "the image is {} bytes long and must be at least {need}",
                    image.len
                ),
            });
        }
        let paths = member_paths(path, &label);
        let mut files = vec![image];
        for (index, member) in paths.iter().enumerate().skip(1) {
            files.push(open_member(path, &label, index, member, access)?);
        }
        let shares: Vec<u64> = label.files.iter().map(|f| f.bytes).collect();
        Ok(Self::assemble(files, &shares, pool::POOL_DATA_OFFSET))
    }

    /// The store over `files`, file `i` holding `shares[i]` bytes of it from byte `offset`
    /// of the file on.
    fn assemble(files: Vec<Backing>, shares: &[u64], offset: u64) -> FileStore {
        let mut start = 0;
        let extents = shares
            .iter()
            .enumerate()
            .map(|(file, &len)| {
                let e = Extent {
                    start,
                    len,
                    file,
                    offset,
                };
                start += len;
                e
            })
            .collect();
        FileStore {
            files,
            extents,
            len: start,
            host_full_errors: AtomicU64::new(0),
            data_bytes_written: AtomicU64::new(0),
            metadata_bytes_written: AtomicU64::new(0),
        }
    }

    /// Formats a new pool (`rewind create IMAGE --backing ...`): writes each file's label
    /// and returns the store over them, for the engine to format. `paths[0]` is the image,
    /// which holds `shares[0]` bytes (the metadata); each backing after it holds its share
    /// of the data area. Every file must be big enough already (`ensure_len`); each label is
    /// synced, the image's last, so a pool whose image has a label has all of them.
    pub fn create_pool(
        files: Vec<(PathBuf, FileStore)>,
        shares: &[u64],
        uuid: u64,
        created_ns: u64,
    ) -> Result<FileStore, BackingError> {
        let label = Label {
            role: Role::Image,
            index: 0,
            uuid,
            created_ns,
            files: files
                .iter()
                .zip(shares)
                .map(|((path, _), &bytes)| PoolFile {
                    path: path.clone(),
                    bytes,
                })
                .collect(),
        };
        let mut backings = Vec::with_capacity(files.len());
        for (_, store) in files {
            let mut one = store.files;
            backings.push(one.remove(0));
        }
        // The label, then zeros up to the file's part: whatever was there before (a version
        // 1 image's second superblock copy, at 4 KiB) must not be read as what it was.
        let mut head = vec![0u8; pool::POOL_DATA_OFFSET as usize];
        for (index, b) in backings.iter().enumerate().rev() {
            head[..pool::LABEL_BYTES].copy_from_slice(&label.for_file(index).encode());
            b.file
                .write_all_at(&head, 0)
                .and_then(|()| b.file.sync_data())
                .map_err(BackingError::io("writing the pool label of", &b.path))?;
        }
        Ok(Self::assemble(backings, shares, pool::POOL_DATA_OFFSET))
    }

    /// Zeroes the pool labels of every file (the image's first), so that a pool whose
    /// format failed after `create_pool` leaves no file that claims to be one's.
    pub fn erase_pool_labels(&self) -> io::Result<()> {
        let zeros = vec![0u8; pool::LABEL_BYTES];
        for b in &self.files {
            b.file.write_all_at(&zeros, 0)?;
            b.file.sync_data()?;
        }
        Ok(())
    }

    /// The path the store was opened from: the image.
    pub fn path(&self) -> &Path {
        &self.files[0].path
    }

    /// The image's kind: a file or a block device.
    pub fn kind(&self) -> BackingKind {
        self.files[0].kind
    }

    /// The files of a pool, the image first, with the bytes of the store each holds; one
    /// entry for an image that is no pool.
    pub fn files(&self) -> Vec<StoreFile> {
        self.extents
            .iter()
            .map(|e| {
                let b = &self.files[e.file];
                StoreFile {
                    path: b.path.clone(),
                    kind: b.kind,
                    bytes: e.len,
                }
            })
            .collect()
    }

    /// True when the data path bypasses the page cache (`O_DIRECT`) on every file.
    pub fn direct_io(&self) -> bool {
        self.files.iter().all(|b| b.direct.is_some())
    }

    /// How many files the store is over: 1, or a pool's image and backings.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The descriptors for the device's data pages, one per file (index as in [`Piece`]),
    /// to register with a queue's io_uring. They stay open as long as the store.
    pub fn data_fds(&self) -> Vec<RawFd> {
        self.files.iter().map(Backing::data_fd).collect()
    }

    /// The descriptor the `Store` methods write metadata (the journal) through, for a
    /// queue's io_uring to do the same (`ring_commit`), with [`FileStore::metadata_offset`].
    /// It stays open as long as the store.
    pub fn metadata_fd(&self) -> RawFd {
        self.files[0].file.as_raw_fd()
    }

    /// Where byte `offset` of the store's metadata (before the data area) is in the file of
    /// `metadata_fd`.
    pub fn metadata_offset(&self, offset: u64) -> u64 {
        let e = &self.extents[0];
        debug_assert!(offset < e.len, "metadata lives in the image file");
        e.offset + offset
    }

    /// The buffered descriptors of every file: what a sync of the whole store syncs.
    pub fn sync_fds(&self) -> impl ExactSizeIterator<Item = RawFd> + '_ {
        self.files.iter().map(|b| b.file.as_raw_fd())
    }

    /// The parts of the `len` bytes at `offset` of the store, file by file, in order.
    pub fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = Piece> + '_ {
        // The extent holding `offset`: the last one starting at or before it.
        let first = self.extents.partition_point(|e| e.start <= offset).max(1) - 1;
        let end = offset + len;
        self.extents[first..]
            .iter()
            .take_while(move |e| e.start < end)
            .map(move |e| {
                let from = offset.max(e.start);
                let to = end.min(e.start + e.len);
                Piece {
                    file: e.file,
                    offset: e.offset + (from - e.start),
                    len: to.saturating_sub(from),
                    at: from - offset,
                }
            })
    }

    /// Makes a single-file store at least `bytes` long: checks a block device; grows a
    /// regular file and, when `want` is `Preallocated`, reserves its first `bytes`
    /// (`fallocate`: holes get blocks, data stays). Never shrinks. Returns what the file got:
    /// `Sparse` when the file system cannot preallocate (EOPNOTSUPP), which the caller should
    /// say. On failure a file it grew gets its old length back.
    pub fn ensure_len(&mut self, bytes: u64, want: Allocation) -> Result<Allocation, BackingError> {
        assert_eq!(self.files.len(), 1, "a pool's files are sized at create");
        let got = self.files[0].ensure_len(bytes, want)?;
        self.len = self.files[0].len;
        self.extents[0].len = self.len;
        Ok(got)
    }

    /// The length of the store's files together, labels included: what
    /// [`FileStore::allocated_bytes`] compares with.
    pub fn files_bytes(&self) -> u64 {
        self.files.iter().map(|b| b.len).sum()
    }

    /// Bytes the host has allocated to the store's files: a regular file's `st_blocks` ×
    /// 512 (less than its length when it is sparse), a block device's whole length. `None`
    /// when no file is a regular file, or when one cannot be looked at.
    pub fn allocated_bytes(&self) -> Option<u64> {
        if self
            .files
            .iter()
            .all(|b| b.kind == BackingKind::BlockDevice)
        {
            return None;
        }
        self.files
            .iter()
            .map(|b| match b.kind {
                BackingKind::File => b.allocated_bytes(),
                BackingKind::BlockDevice => Some(b.len),
            })
            .sum()
    }

    /// Counts a write to the image that the host file system refused with ENOSPC (the queues
    /// report their data writes here); the first one is logged with what to do.
    pub fn note_host_full(&self) {
        let before = self.host_full_errors.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            log::error!(
                "{}: host filesystem full (ENOSPC): writes failing; free space on the file \
                 system that holds the image (`rewind list` and `rewind stats` say so until \
                 the daemon restarts)",
                self.path().display()
            );
        }
    }

    /// Writes and syncs of the image the host file system refused with ENOSPC since the
    /// store was opened.
    pub fn host_full_errors(&self) -> u64 {
        self.host_full_errors.load(Ordering::Relaxed)
    }

    /// Counts `bytes` of data the queues wrote to the image (through their own rings).
    pub fn note_data_written(&self, bytes: u64) {
        self.data_bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` of metadata written through `metadata_fd` on a queue's ring.
    pub fn note_metadata_written(&self, bytes: u64) {
        self.metadata_bytes_written
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes of data and of metadata (journal, checkpoints, superblock) written to the image
    /// since it was opened: with what the device was asked to write, the write
    /// amplification.
    pub fn bytes_written(&self) -> (u64, u64) {
        (
            self.data_bytes_written.load(Ordering::Relaxed),
            self.metadata_bytes_written.load(Ordering::Relaxed),
        )
    }

    /// Passes `result` on, counting an ENOSPC.
    fn count_host_full<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                self.note_host_full();
            }
        }
        result
    }
}

/// Allocates the first `len` bytes of `file` (`fallocate` mode 0: the size grows to `len`
/// if shorter, holes get zeroed blocks, data stays), calling again when a signal
/// interrupts it.
fn fallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let mut retries = 0;
    loop {
        // SAFETY: fallocate only reads its integer arguments; the descriptor stays open for
        // the call, `file` being borrowed.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted || retries == FALLOCATE_RETRIES_MAX {
            return Err(e);
        }
        retries += 1;
    }
}

/// Bytes free for an unprivileged user on the file system that holds `file`.
fn free_bytes(file: &File) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs writes one statvfs through the pointer, which points at `st`, live on
    // this frame; it is read only after the call succeeded.
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatvfs succeeded, so it initialized `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl FileStore {
    /// Runs `op` on each part of an access of `len` bytes at `offset`, with the part's
    /// buffered file, its offset there and its place in the access; an access past the end
    /// of the store fails as a read past the end of a file does.
    fn each_piece(
        &self,
        offset: u64,
        len: usize,
        mut op: impl FnMut(&File, u64, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "access of {len} bytes at {offset} past the end ({})",
                    self.len
                ),
            ));
        }
        for p in self.pieces(offset, len as u64) {
            let at = p.at as usize;
            op(&self.files[p.file].file, p.offset, at..at + p.len as usize)?;
        }
        Ok(())
    }
}

impl Store for FileStore {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // read_exact_at loops over short reads and EINTR.
        self.each_piece(offset, buf.len(), |file, at, part| {
            file.read_exact_at(&mut buf[part], at)
        })
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let result = self.each_piece(offset, buf.len(), |file, at, part| {
            file.write_all_at(&buf[part], at)
        });
        self.count_host_full(result)?;
        self.metadata_bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        for b in &self.files {
            self.count_host_full(b.file.sync_data())?;
        }
        Ok(())
    }
}

/// Where a pool's backings are looked for: where the label records them while the image
/// is where the label records it too; beside the image, under their recorded file names,
/// when the image was moved or copied (as one directory). Never some from each: a partial
/// copy must not write into the pool it was copied from, whose labels are the same.
fn member_paths(image: &Path, label: &Label) -> Vec<PathBuf> {
    let same_file = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let moved = !same_file(image, &label.files[0].path);
    label
        .files
        .iter()
        .map(|f| match (moved, image.parent(), f.path.file_name()) {
            (true, Some(dir), Some(name)) => dir.join(name),
            _ => f.path.clone(),
        })
        .collect()
}

/// Opens backing `index` of the pool whose image is `image` and whose label is `label`, at
/// `path` (from `member_paths`), checking that its own label says it is that member of that
/// pool.
fn open_member(
    image: &Path,
    label: &Label,
    index: usize,
    path: &Path,
    access: Access,
) -> Result<Backing, BackingError> {
    let member = Backing::open(path, access).map_err(|e| match e {
        BackingError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            BackingError::Pool {
                path: image.to_path_buf(),
                why: if path == label.files[index].path {
                    format!("its backing {index}, {}, is missing", path.display())
                } else {
                    format!(
                        "its backing {index} is missing: the image is not where the pool was \
                         made ({}), so its backings are looked for beside it, and there is no \
                         {}",
                        label.files[0].path.display(),
                        path.display()
                    )
                },
            }
        }
        other => other,
    })?;
    check_member(&member, label, index).map_err(|what| BackingError::Pool {
        path: image.to_path_buf(),
        why: format!("{} is not its backing {index}: {what}", path.display()),
    })?;
    Ok(member)
}

/// Checks that `member`'s label makes it backing `index` of the pool labelled `label`, and
/// that it is long enough for its share; says why not.
fn check_member(member: &Backing, label: &Label, index: usize) -> Result<(), String> {
    match member.label() {
        Ok(Some(l)) if l.uuid == label.uuid && l.index == index && l.role == Role::Member => {
            let need = pool::POOL_DATA_OFFSET + label.files[index].bytes;
            if member.len < need {
                return Err(format!(
                    "it is {} bytes long and must be at least {need}",
                    member.len
                ));
            }
            Ok(())
        }
        Ok(Some(l)) => Err(format!(
            "its label says it is file {} of the pool whose image is {}",
            l.index,
            l.files[0].path.display()
        )),
        Ok(None) => Err("it has no pool label".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// For tests: a new image file at `path` formatted for a device of `size` bytes with 64 MiB
/// of history, opened.
#[cfg(test)]
pub fn formatted_image(path: &Path, size: u64) -> FileStore {
    let opts = rewind_history::CreateOptions {
        size,
        history: Some(64 << 20),
        journal: None,
    };
    let need = rewind_history::Layout::for_create(&opts)
        .expect("layout")
        .required_bytes();
    File::create(path)
        .and_then(|f| f.set_len(need))
        .expect("create");
    let store = FileStore::open(path).expect("open");
    rewind_history::create(&store, &opts, &crate::host::this_host()).expect("format");
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_image(len: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("image");
        let f = File::create(&path).expect("create image");
        f.set_len(len).expect("size image");
        (dir, path)
    }

    #[test]
    fn read_write_sync_round_trip() {
        let (_dir, path) = temp_image(1 << 20);
        let store = FileStore::open(&path).expect("open");
        assert_eq!(store.len(), 1 << 20);
        assert_eq!(store.kind(), BackingKind::File);
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        store.write_at(4096 * 3, &data).expect("write");
        store.sync().expect("sync");
        let mut back = vec![0u8; data.len()];
        store.read_at(4096 * 3, &mut back).expect("read");
        assert_eq!(back, data);
        // The data descriptor sees the same bytes whichever way it was opened.
        let b = &store.files[0];
        let data_file = b.direct.as_ref().unwrap_or(&b.file);
        let mut page = libublk::helpers::IoBuf::<u8>::new(4096);
        data_file
            .read_exact_at(page.as_mut_slice(), 4096 * 3)
            .expect("read through the data descriptor");
        assert_eq!(page.as_slice(), &data[..4096]);
    }

    #[test]
    fn blkgetsize64_matches_the_kernel_header() {
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
    }

    #[test]
    fn reading_past_the_end_fails() {
        let (_dir, path) = temp_image(8192);
        let store = FileStore::open(&path).expect("open");
        let mut buf = [0u8; 4096];
        let e = store.read_at(8192, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn second_open_is_refused_while_the_first_lives() {
        let (_dir, path) = temp_image(1 << 20);
        let first = FileStore::open(&path).expect("first open");
        match FileStore::open(&path) {
            Err(e @ BackingError::InUse { .. }) => {
                assert!(
                    e.to_string().contains("in use by another rewind daemon"),
                    "{e}"
                );
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        FileStore::open(&path).expect("open after the first closed");
    }

    #[test]
    fn a_second_daemon_is_told_the_owners_pid() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("image");
        let store = formatted_image(&path, 8 << 20);
        let served =
            rewind_history::Volume::open(store, &crate::host::this_host()).expect("volume");
        let e = FileStore::open(&path).unwrap_err();
        let pid = std::process::id();
        assert!(
            e.to_string()
                .contains(&format!("in use by another rewind daemon (pid {pid}")),
            "{e}"
        );
        // A reader is told the same.
        let e = FileStore::open_read_only(&path).unwrap_err();
        assert!(e.to_string().contains(&format!("(pid {pid}")), "{e}");
        drop(served);
    }

    #[test]
    fn read_only_open_shares_with_readers_and_not_with_a_daemon() {
        let (_dir, path) = temp_image(1 << 20);
        let a = FileStore::open_read_only(&path).expect("first reader");
        let b = FileStore::open_read_only(&path).expect("second reader");
        assert_eq!(b.len(), 1 << 20);
        assert!(b.write_at(0, &[1]).is_err(), "a read-only store wrote");
        assert!(matches!(
            FileStore::open(&path),
            Err(BackingError::InUse { .. })
        ));
        drop((a, b));
        let served = FileStore::open(&path).expect("open after the readers");
        assert!(matches!(
            FileStore::open_read_only(&path),
            Err(BackingError::InUse { .. })
        ));
        drop(served);
    }

    #[test]
    fn ensure_len_grows_a_file_only() {
        let (_dir, path) = temp_image(4096);
        let mut store = FileStore::open(&path).expect("open");
        let got = store.ensure_len(1 << 20, Allocation::Sparse).expect("grow");
        assert_eq!(got, Allocation::Sparse);
        assert_eq!(store.len(), 1 << 20);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 1 << 20);
        assert!(
            store.allocated_bytes().expect("a file") < 1 << 20,
            "a sparse file took all its space"
        );
        store
            .ensure_len(4096, Allocation::Sparse)
            .expect("no shrink");
        assert_eq!(store.len(), 1 << 20);
    }

    #[test]
    fn ensure_len_preallocates_the_whole_file() {
        let (_dir, path) = temp_image(4096);
        let mut store = FileStore::open(&path).expect("open");
        store.write_at(0, &[7u8; 4096]).expect("write");
        match store.ensure_len(4 << 20, Allocation::Preallocated) {
            Ok(Allocation::Preallocated) => {}
            Ok(Allocation::Sparse) => {
                println!("skipping: the temporary directory's file system cannot preallocate");
                return;
            }
            Err(e) => panic!("{e}"),
        }
        assert_eq!(store.len(), 4 << 20);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 4 << 20);
        assert!(store.allocated_bytes().expect("a file") >= 4 << 20);
        let mut back = [0u8; 4096];
        store.read_at(0, &mut back).expect("read");
        assert_eq!(back, [7u8; 4096], "preallocating changed the data");
        assert_eq!(store.host_full_errors(), 0);
        store.note_host_full();
        assert_eq!(store.host_full_errors(), 1);
    }

    #[test]
    fn missing_and_odd_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("nope");
        let e = FileStore::open(&missing).unwrap_err();
        assert!(matches!(e, BackingError::Io { .. }), "{e:?}");
        let e = FileStore::open(dir.path()).unwrap_err();
        assert!(matches!(e, BackingError::Unsupported(_)), "{e:?}");
    }
}
