//! The errors of the engine. Each says what was expected and what was found.

use std::io;

/// Why an image could not be created, opened or served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing store failed an I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error of the store.
        #[source]
        source: io::Error,
    },
    /// Neither superblock copy carries rewind's magic: this is not a rewind image.
    #[error("not a rewind image (no rewind superblock found at offset 0 or 4096)")]
    NotRewind,
    /// The image was written by a newer format version.
    #[error("image format version {found} is newer than this rewind supports ({supported}); upgrade rewind")]
    UnsupportedVersion {
        /// The version on disk.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// Metadata failed a check.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The backing store is smaller than the layout needs.
    #[error("backing store too small: {have} bytes, the layout needs {need} bytes")]
    TooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes there.
        have: u64,
    },
    /// A size or option that cannot be used.
    #[error("{0}")]
    BadOption(String),
    /// An address past the end of the device.
    #[error("page {page} is past the end of the device ({pages} pages)")]
    OutOfRange {
        /// The page asked for.
        page: u64,
        /// The device size in pages.
        pages: u64,
    },
    /// A view whose safe point gave way to the live device's writes.
    #[error("view of safe point {at} was dropped: {why}")]
    ViewDropped {
        /// The safe point it showed.
        at: crate::SafePointId,
        /// Why (for the daemon's log and the reader).
        why: String,
    },
    /// The machine could not give the memory a structure of the image needs.
    #[error(
        "not enough memory for {what}: it needs {bytes} bytes, which this machine could not \
         give; give a smaller --size or --history, or serve the image on a machine with more \
         memory"
    )]
    NoMemory {
        /// The structure.
        what: &'static str,
        /// Its size.
        bytes: u64,
    },
    /// No physical page is free and nothing can be retired (all in flight).
    #[error("no free page: every physical page is live or in flight")]
    NoSpace,
}

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}
