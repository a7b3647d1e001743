//! rewind's archive: a window of a device's history as one file or stream, for the tools
//! that already carry files (ssh, rsync, object storage). `rewind export` writes it,
//! `rewind import` restores one safe point from it (or from a chain of incremental ones) in
//! one sequential read, `rewind archive ls|verify` read it.
//!
//! An archive is a header, a directory and records (FORMAT.md, "Archive"). The directory
//! comes first and says everything about the rest: the safe points, and for each one a
//! *segment*, the extents of logical pages that read differently there than at the safe
//! point before it (for the first safe point of a full archive: every page that does not
//! read as zeros), each either data or zeros. The records then carry the data extents'
//! pages in directory order, each page with its own checksum. The format knows nothing of
//! the image's remap table or history area: it is pages and safe points only.
//!
//! A reader trusts nothing it has not checked: the header and directory have checksums and
//! must describe the records exactly; each record must be the one the directory says comes
//! next, and each page must match its checksum before it is used. A truncated, reordered
//! or corrupt archive is an error, never a wrong image.

mod directory;
mod export;
pub mod format;
#[cfg(any(test, feature = "testing"))]
pub mod fuzzing;
mod ranges;
mod read;

pub use directory::{Directory, Segment};
pub use export::{Export, ExportOptions};
pub use format::{ArchivedSafePoint, Extent, Kind};
pub use read::{restore, verify, Base, PageSink, Restored, Verified};

/// Why reading or writing an archive failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file or stream failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The archive ends before the directory says it does.
    #[error("the archive is truncated: it ends at byte {at}, {expected} bytes were expected")]
    Truncated { at: u64, expected: u64 },
    /// The archive is not what its directory and checksums say.
    #[error("the archive is corrupt: {0}")]
    Corrupt(String),
    /// Not an archive at all.
    #[error("not a rewind archive (no archive header)")]
    NotArchive,
    /// Written by a newer rewind.
    #[error("archive version {0} is newer than this rewind reads ({v}); upgrade rewind", v = format::VERSION)]
    NewerVersion(u32),
    /// Asked for what cannot be done: archives given together that do not follow each
    /// other, a safe point they lack, a window with nothing in it, an export stopped.
    #[error("{0}")]
    Refused(String),
    /// The engine refused (a safe point outside the window, a view dropped by reclaim).
    #[error(transparent)]
    Engine(#[from] rewind_history::Error),
}

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>) -> Error {
        Error::Corrupt(what.into())
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
