//! Pools: one rewind image spread over several files or block devices (`rewind create IMAGE
//! --backing A --backing B`), in the manner of dm-linear.
//!
//! The engine sees one byte-addressed store either way (`FileStore`). In a pool, its first
//! `data_offset` bytes (superblock, journal, checkpoints) live in the image file the user
//! names, and its data area continues on the backings in order, each holding a share of it.
//! Every file of a pool starts with a label (this module: its format, and how `create`
//! shares the data area out) and holds its share of the store from `POOL_DATA_OFFSET` on.
//! `FORMAT.md`, "Pools", gives the bytes.
//!
//! The labels are written once, at create, and only read after. They name every file of
//! the pool, so a member on its own says whose it is, and a file put in the wrong place (or
//! another pool's member) is refused at open instead of being served as the data it is not.
//! The label is shaped like a version 1 superblock (its magic, version 2 at the same place,
//! a CRC32C of its first 200 bytes at byte 200): a rewind that knows only version 1 refuses
//! a pool's files as "a newer format", never misreads them.

use std::path::{Path, PathBuf};

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use rewind_history::format::SUPER_MAGIC;
use rewind_history::PAGE_SIZE;

use crate::size::human;

/// The format version of a pool's labels (an image's format, spread over files; the image
/// file's own superblock, past the label, has the image's version).
pub const POOL_VERSION: u32 = 2;
/// The most files a pool has: its image and up to seven backings.
pub const MAX_FILES: usize = 8;
/// The longest path a label records, in bytes.
pub const MAX_PATH: usize = 240;
/// Where a file's share of the store starts: after its label, on a 1 MiB boundary so the
/// data pages keep the alignment they have in a single-file image.
pub const POOL_DATA_OFFSET: u64 = 1 << 20;
/// The size of the label at offset 0 of each file.
pub const LABEL_BYTES: usize = PAGE_SIZE as usize;

/// What a file is in its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The image: the file users name, holding the metadata.
    Image,
    /// A backing, holding part of the data area.
    Member,
}

/// One file of a pool as the labels record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolFile {
    /// Its absolute path when the pool was created.
    pub path: PathBuf,
    /// The bytes of the store it holds, from `POOL_DATA_OFFSET` on.
    pub bytes: u64,
}

/// A file's label: the pool it belongs to, its place there, and every file of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// Image or member.
    pub role: Role,
    /// Its index in `files` (0 is the image).
    pub index: usize,
    /// The pool's identity: every file of one pool carries it.
    pub uuid: u64,
    /// When the pool was created, nanoseconds since the Unix epoch.
    pub created_ns: u64,
    /// The image first, then the backings in the order they continue the store.
    pub files: Vec<PoolFile>,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 8],
    version: U32,
    page_size: U32,
    role: U32,
    index: U32,
    uuid: U64,
    created_ns: U64,
    count: U32,
    /// CRC32C of the file table (`MAX_FILES` entries).
    table_crc: U32,
    zero: [u8; 152],
    /// CRC32C of the 200 bytes before it: where a version 1 superblock keeps its own.
    crc: U32,
    pad: U32,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct RawEntry {
    bytes: U64,
    path: [u8; MAX_PATH],
}

const HEADER_BYTES: usize = std::mem::size_of::<RawHeader>();
const TABLE_OFFSET: usize = 256;
const ENTRY_BYTES: usize = std::mem::size_of::<RawEntry>();
const TABLE_BYTES: usize = MAX_FILES * ENTRY_BYTES;
const _: () = assert!(HEADER_BYTES == 208 && TABLE_OFFSET + TABLE_BYTES <= LABEL_BYTES);

impl Label {
    /// The 4 KiB label page.
    pub fn encode(&self) -> Vec<u8> {
        assert!(!self.files.is_empty() && self.files.len() <= MAX_FILES);
        let mut page = vec![0u8; LABEL_BYTES];
        for (i, f) in self.files.iter().enumerate() {
            let path = f.path.as_os_str().as_encoded_bytes();
            assert!(path.len() <= MAX_PATH, "checked by `check_path`");
            let mut entry = RawEntry {
                bytes: U64::new(f.bytes),
                path: [0; MAX_PATH],
            };
            entry.path[..path.len()].copy_from_slice(path);
            let at = TABLE_OFFSET + i * ENTRY_BYTES;
            page[at..at + ENTRY_BYTES].copy_from_slice(entry.as_bytes());
        }
        let table_crc = crc32c::crc32c(&page[TABLE_OFFSET..TABLE_OFFSET + TABLE_BYTES]);
        let mut h = RawHeader {
            magic: SUPER_MAGIC,
            version: U32::new(POOL_VERSION),
            page_size: U32::new(PAGE_SIZE as u32),
            role: U32::new(match self.role {
                Role::Image => 0,
                Role::Member => 1,
            }),
            index: U32::new(self.index as u32),
            uuid: U64::new(self.uuid),
            created_ns: U64::new(self.created_ns),
            count: U32::new(self.files.len() as u32),
            table_crc: U32::new(table_crc),
            zero: [0; 152],
            crc: U32::new(0),
            pad: U32::new(0),
        };
        h.crc = U32::new(crc32c::crc32c(&h.as_bytes()[..200]));
        page[..HEADER_BYTES].copy_from_slice(h.as_bytes());
        page
    }

    /// The label at the start of a file, given its first `LABEL_BYTES`: `Ok(None)` when the
    /// file is no pool's (an image of one file, or not rewind's at all), an error saying what is
    /// wrong when it is a pool's label that fails its checks.
    pub fn decode(page: &[u8]) -> Result<Option<Label>, String> {
        let Ok((h, _)) = RawHeader::read_from_prefix(page) else {
            return Ok(None);
        };
        if h.magic != SUPER_MAGIC || h.version.get() != POOL_VERSION {
            return Ok(None);
        }
        if page.len() < LABEL_BYTES {
            return Err("the pool label is cut short".into());
        }
        if h.crc.get() != crc32c::crc32c(&h.as_bytes()[..200]) {
            return Err("the pool label's header fails its checksum".into());
        }
        let table = &page[TABLE_OFFSET..TABLE_OFFSET + TABLE_BYTES];
        if h.table_crc.get() != crc32c::crc32c(table) {
            return Err("the pool label's file table fails its checksum".into());
        }
        if u64::from(h.page_size.get()) != PAGE_SIZE {
            return Err(format!(
                "the pool label says page size {}",
                h.page_size.get()
            ));
        }
        let count = h.count.get() as usize;
        let index = h.index.get() as usize;
        let role = match h.role.get() {
            0 => Role::Image,
            1 => Role::Member,
            r => return Err(format!("the pool label has an unknown role {r}")),
        };
        if !(2..=MAX_FILES).contains(&count)
            || index >= count
            || (role == Role::Image) != (index == 0)
        {
            return Err(format!(
                "the pool label is inconsistent: file {index} of {count}, role {role:?}"
            ));
        }
        let mut files = Vec::with_capacity(count);
        for i in 0..count {
            let (e, _) = RawEntry::read_from_prefix(&table[i * ENTRY_BYTES..])
                .map_err(|_| "the pool label's file table is cut short".to_string())?;
            let len = e.path.iter().position(|b| *b == 0).unwrap_or(MAX_PATH);
            let path = PathBuf::from(String::from_utf8_lossy(&e.path[..len]).into_owned());
            if path.as_os_str().is_empty() || !e.bytes.get().is_multiple_of(PAGE_SIZE) {
                return Err(format!("the pool label's entry {i} is not valid"));
            }
            files.push(PoolFile {
                path,
                bytes: e.bytes.get(),
            });
        }
        Ok(Some(Label {
            role,
            index,
            uuid: h.uuid.get(),
            created_ns: h.created_ns.get(),
            files,
        }))
    }

    /// The same pool's label for file `index`.
    pub fn for_file(&self, index: usize) -> Label {
        Label {
            role: if index == 0 {
                Role::Image
            } else {
                Role::Member
            },
            index,
            ..self.clone()
        }
    }
}

/// Refuses a path a label cannot record: longer than `MAX_PATH` bytes or not UTF-8.
pub fn check_path(path: &Path) -> Result<(), String> {
    match path.to_str() {
        Some(s) if s.len() <= MAX_PATH => Ok(()),
        Some(_) => Err(format!(
            "{} is a path of more than {MAX_PATH} bytes, which a pool's label cannot record; \
             give a shorter one (a symbolic link to it will do)",
            path.display()
        )),
        None => Err(format!(
            "{} is not valid UTF-8, which a pool's label cannot record",
            path.display()
        )),
    }
}

/// A backing as `create` finds it: a block device holds what it has; a file gets a share.
#[derive(Clone, Copy, Debug)]
pub enum Capacity {
    /// A block device of this many bytes.
    Device(u64),
    /// A regular file, sized as the pool needs.
    File,
}

/// Shares `data_bytes` (the data area: pages of 4 KiB) out among the backings: each block
/// device, in order, holds as much as it can (its size less `POOL_DATA_OFFSET`); the files
/// share the rest evenly, in whole pages, the last taking what is left over. Every backing
/// must hold something, and together they must hold it all.
pub fn share(data_bytes: u64, backings: &[(PathBuf, Capacity)]) -> Result<Vec<u64>, String> {
    let mut left = data_bytes;
    let mut shares = vec![0u64; backings.len()];
    for (i, (path, c)) in backings.iter().enumerate() {
        if let Capacity::Device(len) = c {
            let usable = len.saturating_sub(POOL_DATA_OFFSET) / PAGE_SIZE * PAGE_SIZE;
            if usable == 0 {
                return Err(format!(
                    "{} is a block device of {}: a backing needs more than its 1 MiB label \
                     area",
                    path.display(),
                    human(*len)
                ));
            }
            shares[i] = usable.min(left);
            left -= shares[i];
        }
    }
    let files: Vec<usize> = (0..backings.len())
        .filter(|i| matches!(backings[*i].1, Capacity::File))
        .collect();
    if files.is_empty() && left > 0 {
        return Err(format!(
            "the backings hold {} of data and the device with its history needs {}: add a \
             --backing, or give a smaller --size or --history",
            human(data_bytes - left),
            human(data_bytes)
        ));
    }
    if !files.is_empty() {
        let pages = left / PAGE_SIZE;
        let each = pages / files.len() as u64;
        for (n, &i) in files.iter().enumerate() {
            let extra = if n + 1 == files.len() {
                pages % files.len() as u64
            } else {
                0
            };
            shares[i] = (each + extra) * PAGE_SIZE;
        }
    }
    if let Some(i) = shares.iter().position(|s| *s == 0) {
        return Err(format!(
            "--backing {} would hold nothing: the backings before it hold the whole data area \
             ({}); leave it out",
            backings[i].0.display(),
            human(data_bytes)
        ));
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> Label {
        Label {
            role: Role::Member,
            index: 2,
            uuid: 0x1234_5678_9abc_def0,
            created_ns: 42,
            files: vec![
                PoolFile {
                    path: "/a/pool.img".into(),
                    bytes: 8 << 20,
                },
                PoolFile {
                    path: "/dev/sdc".into(),
                    bytes: 1 << 30,
                },
                PoolFile {
                    path: "/b/two.img".into(),
                    bytes: 4096,
                },
            ],
        }
    }

    #[test]
    fn a_label_reads_back_as_written() {
        let l = label();
        assert_eq!(Label::decode(&l.encode()).unwrap(), Some(l.clone()));
        assert_eq!(
            Label::decode(&l.for_file(0).encode())
                .unwrap()
                .unwrap()
                .role,
            Role::Image
        );
    }

    #[test]
    fn any_flipped_byte_of_a_label_is_refused_or_changes_nothing() {
        let original = label();
        let page = original.encode();
        for i in 0..TABLE_OFFSET + TABLE_BYTES {
            let mut p = page.clone();
            p[i] ^= 0x40;
            match Label::decode(&p) {
                Err(_) | Ok(None) => {}
                // Padding no field reads.
                Ok(Some(l)) if l == original => {}
                Ok(Some(l)) => panic!("byte {i} flipped and still read as {l:?}"),
            }
        }
    }

    proptest::proptest! {
        /// Whatever a file starts with, reading its label never panics, and what it accepts
        /// encodes back to the same header and table.
        #[test]
        fn any_bytes_decode_without_panic(
            mut page in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..LABEL_BYTES + 1),
            count in 0u32..12,
        ) {
            // A pool's magic and version, so the checks past them run too.
            if page.len() >= 48 {
                page[..8].copy_from_slice(&SUPER_MAGIC);
                page[8..12].copy_from_slice(&POOL_VERSION.to_le_bytes());
                page[40..44].copy_from_slice(&count.to_le_bytes());
            }
            if let Ok(Some(l)) = Label::decode(&page) {
                proptest::prop_assert_eq!(Label::decode(&l.encode()), Ok(Some(l)));
            }
        }
    }

    #[test]
    fn a_version_1_superblock_is_no_label() {
        let mut page = vec![0u8; LABEL_BYTES];
        page[..8].copy_from_slice(&SUPER_MAGIC);
        page[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(Label::decode(&page), Ok(None));
        assert_eq!(Label::decode(&[0u8; LABEL_BYTES]), Ok(None));
    }

    /// A version 1 rewind checks a superblock's magic, then its CRC, then refuses a
    /// version above 1 as newer: a label must pass that CRC so that it is refused as a newer
    /// version, not as a damaged image. This build refuses it as a label.
    #[test]
    fn a_label_reads_to_a_version_1_reader_as_a_newer_version() {
        let page = label().encode();
        let (sb, _) = rewind_history::format::Superblock::read_from_prefix(&page[..])
            .expect("a label is superblock-shaped");
        assert_eq!(sb.magic, SUPER_MAGIC);
        assert_eq!(
            sb.crc.get(),
            sb.compute_crc(),
            "the CRC a version 1 reader checks"
        );
        assert_eq!(sb.version.get(), POOL_VERSION);
        const { assert!(POOL_VERSION > 1) };
        match rewind_history::format::Superblock::validate(&page) {
            Err(rewind_history::Error::Corrupt(why)) => assert!(why.contains("pool"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn devices_hold_what_they_have_and_files_share_the_rest() {
        let mib = 1u64 << 20;
        let b = |s: &str, c| (PathBuf::from(s), c);
        let shares = share(
            100 * mib,
            &[
                b("/dev/a", Capacity::Device(41 * mib)),
                b("/f1", Capacity::File),
                b("/f2", Capacity::File),
            ],
        )
        .unwrap();
        assert_eq!(shares[0], 40 * mib);
        assert_eq!(shares.iter().sum::<u64>(), 100 * mib);
        assert!(shares.iter().all(|s| s % PAGE_SIZE == 0));
        assert_eq!(shares[1], 30 * mib);
        // Devices too small, and no file to take the rest.
        let err = share(100 * mib, &[b("/dev/a", Capacity::Device(41 * mib))]).unwrap_err();
        assert!(err.contains("add a --backing"), "{err}");
        // A device holding it all leaves nothing to the file after it.
        let err = share(
            10 * mib,
            &[
                b("/dev/a", Capacity::Device(41 * mib)),
                b("/f", Capacity::File),
            ],
        )
        .unwrap_err();
        assert!(err.contains("--backing /f would hold nothing"), "{err}");
    }
}
