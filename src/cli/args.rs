//! The command line's definition: clap parses it into these typed arguments, and `cli::run`
//! hands each command to its handler. The help texts live here too.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::daemon::pacing::{
    COALESCE_MS_DEFAULT, COALESCE_MS_MAX, IDLE_SECS_DEFAULT, IDLE_SECS_MAX,
};
use crate::selector::{parse_label, SELECTOR_VALUE_NAME};
use crate::size::parse_page_multiple;

const ABOUT: &str = "A block device that keeps its own history";

const LONG_ABOUT: &str = "\
rewind serves an image file or a block device as /dev/ublkbN (through ublk). Whenever a
block is overwritten, its previous contents stay in a history area of the same image, so
the device can be read or rolled back as it stood at any safe point of the recent past
(every flush of the filesystem above is one).";

const EXAMPLES: &str = "\
Examples:
  Serve a new 10 GiB image (its space reserved) with 2.5 GiB of history:
    rewind add /var/lib/rewind/vm.img --size 10G --history 2560M
  Format a block device, then serve it:
    rewind create /dev/sdb --size 900G --history 100G
    rewind add /dev/sdb
  Mark the state before an upgrade, then see the history window and what changed:
    rewind safepoint -n 0 --label before-upgrade
    rewind log -n 0
    rewind diff -n 0 --from before-upgrade
  See the devices and their history, then stop one (its image is closed cleanly
  before `del` returns):
    rewind list
    rewind stats -n 0
    rewind del -n 0

Sizes are bytes or numbers with K, M, G or T (powers of 1024), in whole 4K pages.
Daemon logs go to $REWIND_LOG_DIR, else /var/log/rewind, else /tmp, as rewind-IMAGE.log
(`rewind logs -n ID` shows them).";

const CREATE_EXAMPLES: &str = "\
Examples:
  rewind create vm.img --size 20G                  # history: 25% of the size (5G)
  rewind create vm.img --size 20G --history 8G
  rewind create /dev/sdb --size 900G --history 100G
  rewind create vm.img --size 20G --force          # reformat: its data and history are lost
  rewind create vm.img --size 20G --sparse         # take host space only as it is written
  rewind create pool.img --size 2T --backing a.img --backing /dev/sdc   # a pool (below)

The image holds the device, the history area and some metadata, so it is a little larger
than --size plus --history. A regular file is created or grown as needed, and its whole
size is reserved on the host file system (fallocate), so a write to the device never
fails for lack of host space. --sparse saves that space until the device writes it, at a
price: a write may then fail (the device returns an I/O error) when the host file system
is full, and each first write into a hole makes the host file system allocate on the
write path, which is slower (io_uring often hands such writes to kernel worker threads). On a
file system that cannot preallocate (some FUSE ones) the image is sparse, with a warning.
A block device must be large enough; --sparse does not apply to it.

A pool joins several files or block devices into one device (as dm-linear does): IMAGE
keeps the metadata (superblock, journal, checkpoints: a few percent of --size), and the
device's pages and its history area continue on each --backing in order (at most 7). Each
block device holds as much as it can; the files share the rest evenly, and are created or
grown as needed. Every file of the pool gets a label that names the pool, so `rewind add
IMAGE` finds the backings (where they were, or beside IMAGE if IMAGE was moved or copied)
and refuses a wrong one. Serve and inspect a pool through IMAGE only: name a backing, and rewind
says whose it is. A pool reads as a newer format to a rewind older than this one.";

const ADD_EXAMPLES: &str = "\
Examples:
  rewind add vm.img --size 20G          # creates vm.img if missing, prints /dev/ublkbN
  rewind add vm.img                     # serves an existing image
  rewind add /dev/sdb -n 7              # as /dev/ublkb7
  rewind add vm.img --foreground        # serve here; Ctrl-C stops the device cleanly
  rewind add vm.img --idle 10 --coalesce 1000   # fewer, coarser safe points
  rewind add vm.img --size 20G --sparse # a new image that takes host space as written
  rewind add vm.img --data-path copy    # no zero copy, even where the kernel has it
  rewind add replica.img --read-only --at mirror-1180   # a past safe point, read only

`add` needs root and the ublk driver (modprobe ublk_drv; Linux 6.0+). It starts a daemon
in the background, waits until the device is live and prints its path as the last line.
If the daemon fails, `add` prints why and exits non-zero.

If the daemon dies (kill -9, a crash), by default (--on-crash queue) the device stays
and its I/O waits: `rewind recover -n ID` starts a new daemon that takes it over and
reissues the waiting I/O, so programs using the device see a pause, not an error. For
that, every write is journaled before it completes, so none that completed is lost. With
--supervise a supervisor does the recovery by itself, and also kills and recovers a
daemon that stops answering its heartbeat. `rewind add` of the image of such a waiting
device recovers it too (what a service manager restarting `rewind add --foreground`
does; see `rewind install-units`). Run by systemd (NOTIFY_SOCKET set), the daemon tells it
when the device is live and pings its watchdog (WATCHDOG_USEC) while its engine answers.

--on-crash stop: the device fails its I/O and goes when the daemon dies (no recovery:
`rewind del`, then `rewind add` again, which recovers the image from its journal). A
write completes without waiting for its journal record, as on a disk with a volatile
write cache: only a flush (fsync) or a FUA write makes writes durable, and the daemon's
death, like a power cut, loses the writes since the last flush. One journal write per
request less.

Data path: on Linux 6.16 and later (ublk's UBLK_F_AUTO_BUF_REG) the daemon reads the
image straight into the pages of a read request and writes a write request's pages
straight to the image: no copy through the daemon, and no buffer per request. Older
kernels copy each request's data to or from a buffer of the daemon. --data-path auto (the
default) takes zero copy where the kernel offers it; `rewind list` and `rewind stats`
show which path a device uses.

--read-only serves one safe point of an existing image (--at: an id, a label, a time or
an age; default the newest) as a read-only device, as a view is served, but with no live
device: the image is opened read-only (under a shared lock, so no daemon serves it live
meanwhile) and nothing is written to it, not even after a crash it had: its journal is
replayed in memory. For a replica (`rewind mirror` onto a rewind device, whose steps are
labelled mirror-<id>), an image copied from another machine, or an image whose daemon was
killed, once its device is deleted. The device cannot make safe points, roll back or pin;
`rewind view`, `rewind diff` and `rewind export -n ID` work (of its safe point, unless
told another). If its daemon dies, the device fails its I/O (--on-crash stop) until
`rewind del` removes it.";

const RECOVER_EXAMPLES: &str = "\
Examples:
  rewind list                 # its daemon died: \"daemon dead: needs `rewind recover -n 0`\"
  rewind recover -n 0         # a new daemon takes /dev/ublkb0 over; waiting I/O resumes

The image, options and log are those the dead daemon served the device with. The new
daemon replays the image's journal, so every write that had completed is there.";

const UPGRADE_EXAMPLES: &str = "\
Examples:
  install rewind-new /usr/local/bin/rewind  # a new file in the old one's place (cp would
                                            # fail: the running daemon's text file is busy)
  rewind upgrade -n 0                       # /dev/ublkb0 is served by it from now on
  rewind upgrade -n 0 --binary /opt/rewind-0.2/rewind --json

The daemon makes every write durable, then replaces itself with the new binary (same
pid), which takes the device over as `rewind recover` does: the kernel holds the device's
I/O for the moment between the two (the pause it prints), no program using the device sees
an error, and no completed write is lost. Needs a device added with --on-crash queue (the
default) and no views open. A supervisor (--supervise) is restarted from the new binary;
under systemd the unit keeps running, as the pid does not change.";

const SAFEPOINT_EXAMPLES: &str = "\
Examples:
  rewind safepoint -n 0                          # prints: safe point 12 at 2025-06-01 10:42:07
  rewind safepoint -n 0 --label before-upgrade
  rewind safepoint -n 0 --label nightly-0601 --json

The daemon makes the safe point at once and makes it durable before answering: every
write completed before the command is in it (writes still in flight may or may not be).
Data still in the page cache has not reached the device: run `sync` first (for a mounted
file system, `fsfreeze -f` then `-u` around it gives a clean state). A label names one
safe point: a label already used in the window is refused.";

const LOG_EXAMPLES: &str = "\
Examples:
  rewind log -n 0            # the window of /dev/ublkb0, from its daemon
  rewind log vm.img          # the window of an image no daemon serves (read only)
  rewind log -n 0 --json

Columns: ID, TIME (local), TRIGGER (format, flush, idle, user, reclaim, rollback), LABEL,
CHANGED (data first written in the epoch the safe point closed; '-' for the oldest, whose
epoch is gone), HELD (the history made after the safe point, until the next one: over the
window these add up to the history in use; older safe points may read some of it too) and,
when any safe point is pinned or shown by a view, KEPT BY.";

const DEL_EXAMPLES: &str = "\
Examples:
  rewind del -n 0        # stop /dev/ublkb0 and close its image
  rewind del -a          # every rewind device

A device that is mounted or held by another device is refused: unmount it first. A
device whose daemon died (quiesced) is deleted too: its waiting I/O fails, and the next
`rewind add` of its image recovers the image from its journal. A supervisor started by
`rewind add --supervise` is stopped first.";

/// Largest number of queues ublk accepts.
const QUEUES_MAX: i64 = libublk::sys::UBLK_MAX_NR_QUEUES as i64;
/// Largest queue depth ublk accepts.
const DEPTH_MAX: i64 = libublk::sys::UBLK_MAX_QUEUE_DEPTH as i64;

/// The `rewind` command line.
#[derive(Debug, Parser)]
#[command(
    name = "rewind",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Format an image file or block device, without serving it
    #[command(after_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
    /// Serve an image as /dev/ublkbN, creating the image if it is missing
    #[command(after_help = ADD_EXAMPLES)]
    Add(AddArgs),
    /// Stop and delete devices, closing their images cleanly
    #[command(after_help = DEL_EXAMPLES)]
    Del(DelArgs),
    /// List the rewind devices
    List(ListArgs),
    /// Show the figures of one device
    Stats(StatsArgs),
    /// Make a safe point now, optionally labelled
    #[command(name = "safepoint", after_help = SAFEPOINT_EXAMPLES)]
    Safepoint(SafepointArgs),
    /// Show the history window: the safe points that can still be reached
    #[command(after_help = LOG_EXAMPLES)]
    Log(LogArgs),
    /// Check all metadata of an image that is not being served, writing nothing
    Check(CheckArgs),
    /// Start a new daemon for a device whose daemon died; its waiting I/O resumes
    #[command(after_help = RECOVER_EXAMPLES)]
    Recover(RecoverArgs),
    /// Hand a live device to the rewind binary installed now, without taking it down
    #[command(after_help = UPGRADE_EXAMPLES)]
    Upgrade(UpgradeArgs),
    /// Make a past safe point the live state of an image again (metadata only, undoable)
    #[command(after_help = ROLLBACK_EXAMPLES)]
    Rollback(RollbackArgs),
    /// Show a past safe point as a read-only device, while the live device runs on
    #[command(after_help = VIEW_EXAMPLES)]
    View(ViewArgs),
    /// List the byte ranges that changed between two safe points, or since one
    #[command(after_help = DIFF_EXAMPLES)]
    Diff(DiffArgs),
    /// Find the first bad safe point: run a command against views of the safe points
    /// between a good one and a bad one
    #[command(after_help = BISECT_EXAMPLES)]
    Bisect(BisectArgs),
    /// Write a window of history to an archive file or stream (full or incremental)
    #[command(after_help = EXPORT_EXAMPLES)]
    Export(ExportArgs),
    /// Restore one safe point of an archive (or a chain of them) to a raw image or device
    #[command(after_help = IMPORT_EXAMPLES)]
    Import(ImportArgs),
    /// Keep a replica of a device (a raw image file or block device), safe point by safe point
    #[command(after_help = MIRROR_EXAMPLES)]
    Mirror(MirrorArgs),
    /// List or verify archives made by `rewind export`
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Keep a safe point from retiring when the history area fills up
    #[command(after_help = PIN_EXAMPLES)]
    Pin(PinArgs),
    /// Let a pinned safe point retire again
    #[command(after_help = PIN_EXAMPLES)]
    Unpin(PinArgs),
    /// Show the daemon's own log (the history window is `rewind log`)
    #[command(after_help = LOGS_EXAMPLES)]
    Logs(LogsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// Print the man page, or write one per command into a directory
    #[command(after_help = MAN_EXAMPLES)]
    Man(ManArgs),
    /// Install the systemd unit rewind@.service, shell completions and man pages
    #[command(name = "install-units", after_help = INSTALL_EXAMPLES)]
    InstallUnits(InstallUnitsArgs),
    /// The daemon behind `rewind add` (internal)
    #[command(name = "__serve", hide = true)]
    Serve(ServeArgs),
    /// The supervisor behind `rewind add --supervise` (internal)
    #[command(name = "__supervise", hide = true)]
    Supervise(SuperviseArgs),
}

/// What the kernel does with a device's I/O when its daemon dies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OnCrashArg {
    /// The device stays; its I/O waits until `rewind recover` (or the supervisor) starts a
    /// new daemon, which reissues it: no error reaches the programs using the device, and no
    /// completed write is lost (each is journaled before it completes)
    #[default]
    Queue,
    /// The device fails its I/O and stops; no recovery (`rewind del`, then `rewind add`).
    /// Only a flush makes writes durable: the daemon's death loses the writes since the last
    /// flush
    Stop,
}

impl From<OnCrashArg> for crate::ipc::device::OnCrash {
    fn from(a: OnCrashArg) -> Self {
        match a {
            OnCrashArg::Queue => crate::ipc::device::OnCrash::Queue,
            OnCrashArg::Stop => crate::ipc::device::OnCrash::Stop,
        }
    }
}

/// How request data moves between the kernel and the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DataPathArg {
    /// Zero copy where the kernel has it (Linux 6.16 and later), else copy
    #[default]
    Auto,
    /// The kernel copies each request's data to or from a buffer of the daemon: works on
    /// every kernel, costs a copy of every byte read or written and 512 KiB of memory per
    /// request in flight
    Copy,
    /// The image is read into and written from the request's own pages, without a copy
    /// (ublk's UBLK_F_AUTO_BUF_REG); fails on a kernel older than 6.16
    ZeroCopy,
}

impl DataPathArg {
    /// The data path asked for; `None`: the best the kernel offers.
    pub fn wanted(self) -> Option<crate::ipc::device::DataPath> {
        match self {
            DataPathArg::Auto => None,
            DataPathArg::Copy => Some(crate::ipc::device::DataPath::Copy),
            DataPathArg::ZeroCopy => Some(crate::ipc::device::DataPath::ZeroCopy),
        }
    }
}

/// `rewind create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image file (created if missing) or block device
    pub image: PathBuf,
    /// Size of the device, e.g. 10G
    #[arg(long, short = 's', value_name = "SIZE", value_parser = parse_page_multiple)]
    pub size: u64,
    /// Size of the history area [default: 25% of --size, at least 64M]
    #[arg(long, value_name = "SIZE", value_parser = parse_page_multiple)]
    pub history: Option<u64>,
    /// Format even if IMAGE already holds a rewind image (its data and history are lost)
    #[arg(long)]
    pub force: bool,
    /// Do not reserve the image file's space: it takes host space as it is written, and a
    /// write fails if the host file system is full (see below)
    #[arg(long)]
    pub sparse: bool,
    /// Make IMAGE a pool whose data lives on this file or block device; repeat for more,
    /// in order (see below)
    #[arg(long, value_name = "FILE|DEVICE")]
    pub backing: Vec<PathBuf>,
}

/// `rewind add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Image file or block device; a missing file is created (needs --size)
    pub image: PathBuf,
    /// Size of the device for a new image (checked against an existing one), e.g. 10G
    #[arg(long, short = 's', value_name = "SIZE", value_parser = parse_page_multiple)]
    pub size: Option<u64>,
    /// Size of the history area for a new image [default: 25% of --size, at least 64M]
    #[arg(long, value_name = "SIZE", value_parser = parse_page_multiple)]
    pub history: Option<u64>,
    /// Create a new image file sparse instead of reserving its space: it takes host space as
    /// it is written, and a write fails if the host file system is full (see `rewind create
    /// --help`)
    #[arg(long)]
    pub sparse: bool,
    /// I/O queues, one thread each [default: one per 4 CPUs, 1 to 4]
    #[arg(long, short = 'q', value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=QUEUES_MAX))]
    pub queues: Option<u16>,
    /// Requests in flight per queue
    #[arg(long, short = 'd', value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u16).range(1..=DEPTH_MAX))]
    pub depth: u16,
    /// Device id: serve as /dev/ublkbID [default: the first free id]
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: Option<u32>,
    /// Serve in this process instead of a background daemon (Ctrl-C stops it cleanly)
    #[arg(long)]
    pub foreground: bool,
    /// Make a safe point after this many seconds without writes (0: never)
    #[arg(long, value_name = "SECONDS", default_value_t = IDLE_SECS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(0..=IDLE_SECS_MAX))]
    pub idle: u64,
    /// A flush less than this many milliseconds after the previous safe point makes no new
    /// one (it is durable all the same; 0: every flush makes one)
    #[arg(long, value_name = "MS", default_value_t = COALESCE_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(0..=COALESCE_MS_MAX))]
    pub coalesce: u64,
    /// What happens to the device's I/O if its daemon dies. (A third way, failing the
    /// waiting I/O but keeping the device for a later recovery, is not offered: it needs
    /// the kernel's UBLK_F_USER_RECOVERY_FAIL_IO, Linux 6.13+, which libublk 0.4.8 refuses.)
    #[arg(long, value_name = "WHAT", value_enum, default_value_t = OnCrashArg::Queue)]
    pub on_crash: OnCrashArg,
    /// Start a supervisor that recovers the device when its daemon dies or stops answering
    /// its heartbeat (needs --on-crash queue)
    #[arg(long, conflicts_with = "foreground")]
    pub supervise: bool,
    /// How request data moves between the kernel and the image; `rewind list` and `rewind
    /// stats` show which one a device uses, `rewind recover` keeps it
    #[arg(long, value_name = "PATH", value_enum, default_value_t = DataPathArg::Auto)]
    pub data_path: DataPathArg,
    /// Serve a safe point of IMAGE read-only (--at; default the newest) instead of the live
    /// device: nothing is written to the image (see below)
    #[arg(long, conflicts_with_all = [
        "size", "history", "sparse", "supervise", "on_crash", "idle", "coalesce",
    ])]
    pub read_only: bool,
    /// With --read-only: the safe point to serve: an id, a label, a time or an age
    #[arg(long, value_name = SELECTOR_VALUE_NAME, requires = "read_only")]
    pub at: Option<String>,
}

/// `rewind recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The device whose daemon died: /dev/ublkbID
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: u32,
}

/// `rewind upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The device: /dev/ublkbID
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: u32,
    /// The rewind binary to hand the device to [default: this one]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Print what was done as JSON
    #[arg(long)]
    pub json: bool,
}

/// `rewind __supervise`: what `rewind add --supervise` passes to the supervisor.
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The device
    #[arg(short = 'n', long = "number")]
    pub id: u32,
    /// Seconds between heartbeats
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// Seconds a heartbeat may take
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Heartbeats missed in a row before the daemon is killed and recovered
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub misses: u32,
}

/// `rewind safepoint`.
#[derive(Debug, Args)]
pub struct SafepointArgs {
    /// The device: /dev/ublkbID
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: u32,
    /// A name for it (at most 64 bytes, unique in the window, not readable as an id, a time or
    /// an age such as 5m: see `rewind rollback --help`)
    #[arg(long, short = 'l', value_name = "LABEL", value_parser = parse_label)]
    pub label: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `rewind log`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["id", "image"])))]
pub struct LogArgs {
    /// The device: /dev/ublkbID (asks its daemon)
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: Option<u32>,
    /// An image no daemon serves, read without writing
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// Print JSON: an array of {id, time, time_ns, trigger, label, changed_bytes, held_bytes,
    /// pinned, views}
    #[arg(long)]
    pub json: bool,
}

/// `rewind check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The image (not being served)
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `rewind rollback`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["id", "image"])))]
pub struct RollbackArgs {
    /// The device: /dev/ublkbID, which must not be mounted or open exclusively
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: Option<u32>,
    /// An image no daemon serves
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// The safe point: an id, a label, a time (the newest safe point at or before it) or an
    /// age such as 5m (see below; `rewind log` lists them)
    #[arg(long, value_name = SELECTOR_VALUE_NAME)]
    pub to: String,
    /// Print JSON: {to, undo, time, label}
    #[arg(long)]
    pub json: bool,
}

/// How `--at` and `--to` name a safe point, for the help of the commands that take them.
macro_rules! selectors_help {
    () => {
        "A safe point is named by its id (only digits), a label, a time or an age:
  1043                        the id (`rewind log` lists them)
  before-upgrade              a label given by `rewind safepoint --label`
  10:42:07, 10:42             today, local time: the newest safe point at or before it
  2026-11-24 10:42:07         local time; 2026-11-24T10:42:07+01:00 (RFC 3339) is exact
  90s, 5m, 2h, 1d             an age: the newest safe point at or before that long ago
Labels that could read as an id, a time or an age are refused when they are made."
    };
}

const ROLLBACK_EXAMPLES: &str = concat!(
    "Examples:
  umount /mnt                                # the device must not be in use
  rewind log -n 0                            # find the safe point
  rewind rollback -n 0 --to before-upgrade   # the live device is that safe point again
  rewind rollback disk.img --to 1041         # a stopped image, by id
  rewind rollback -n 0 --to 10:42:07         # the newest safe point at or before 10:42:07 today
  rewind rollback -n 0 --to 5m               # ... at or before five minutes ago

",
    selectors_help!(),
    "

The state being left becomes a safe point of its own (trigger `rollback`), printed as
the way back: `rewind rollback disk.img --to ID` with that id undoes the rollback while
the history window holds it. No data is copied; a crash in the middle leaves the image
at the old or the new state. After a rollback of a served device the kernel's cached
pages of it are dropped, so readers see the rolled-back contents."
);

const VIEW_EXAMPLES: &str = concat!(
    "Examples:
  rewind view -n 0 --at before-upgrade       # prints /dev/ublkb1: that safe point, read only
  mount -o ro,noload /dev/ublkb1 /mnt/past   # noload: ext4 must not replay its journal
  cp /mnt/past/etc/fstab /tmp/ && umount /mnt/past
  rewind del -n 1                            # the view goes; /dev/ublkb0 runs on
  rewind view -n 0 --at 5m --json            # five minutes ago

",
    selectors_help!(),
    "

The view is a second ublk device served by the daemon of the live device: it reads, byte
for byte, as the device stood at that safe point, and refuses writes. Several views may
be open at once. A view holds its safe point in the window until it is deleted (`rewind
del -n VIEW`, or `rewind del` of the live device, which deletes its views first). If the
history area fills up while pins and views hold all of it, the oldest view is dropped
rather than fail writes to the live device: its reads then fail with EIO, and `rewind
list`, `rewind stats` and the daemon's log say why. Views are not kept on disk: they end
with their daemon (`rewind recover` deletes the leftovers)."
);

const PIN_EXAMPLES: &str = concat!(
    "Examples:
  rewind pin -n 0 --at before-upgrade    # keep it while the window moves on
  rewind pin vm.img --at 1041            # on an image no daemon serves
  rewind unpin -n 0 --at before-upgrade
  rewind log -n 0                        # KEPT BY shows pins and views

",
    selectors_help!(),
    "

A pin is durable: it survives a restart. When the history area fills up, unpinned safe
points retire first; if pins and views hold everything, views are dropped, then the
oldest pins are released (the log says so) rather than fail writes to the live device."
);

const BISECT_EXAMPLES: &str = concat!(
    "Examples:
  # when did /etc/fstab go missing? (mount -o ro,noload: a view of a mounted ext4 has a
  # journal to replay, and a view is read only)
  rewind bisect -n 0 --good before-upgrade -- sh -c \
    'mount -o ro,noload \"$REWIND_VIEW\" /mnt/b || exit 125; test -f /mnt/b/etc/fstab; r=$?; umount /mnt/b; exit $r'
  rewind bisect -n 0 --good 09:00 --bad 1180 --json -- ./check.sh   # between two points

",
    selectors_help!(),
    "

Each step opens a read-only view of one safe point (as `rewind view`), runs COMMAND with
REWIND_VIEW=/dev/ublkbN (the view), REWIND_SAFE_POINT (its id) and REWIND_DEVICE (the
live device) in its environment, then deletes the view, whatever the command did. The exit
status judges the safe point, as in `git bisect run`: 0 good, 125 cannot tell (skipped),
1-127 bad; 126 and 127 (cannot run), 128 or more (a crash) or a signal stop the search. The safe points between
--good and --bad are searched in about log2(N) steps, assuming every safe point before the
first bad one is good. The answer, the first bad safe point's id, goes to standard output;
the steps and the command's own output go to standard error. With --bad now the live
device is taken as bad without a test: if no safe point is bad, the change came after the
newest. Ctrl-C (SIGINT or SIGTERM) stops the command and the search, and deletes the
view.");

const DIFF_EXAMPLES: &str = concat!(
    "Examples:
  rewind diff -n 0 --from before-upgrade           # what changed since: offset and length
  rewind diff -n 0 --from 1041 --to 1180 --json    # between two safe points, for scripts
  rewind diff -n 0 --from 5m --json | jq .changed_bytes   # bytes that differ from 5m ago

",
    selectors_help!(),
    "

From the metadata alone, nothing is read: a range is listed where the device reads from
other pages at the two points (or zeros at one), so a page rewritten with the same bytes
is listed and a page not written between them never is. Ranges are in bytes, ascending,
whole pages, and never touch; --to defaults to the live device (`now`)."
);

/// `rewind bisect`.
#[derive(Debug, Args)]
pub struct BisectArgs {
    /// The live device: /dev/ublkbID
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: u32,
    /// A safe point known good (see below)
    #[arg(long, value_name = SELECTOR_VALUE_NAME)]
    pub good: String,
    /// A safe point known bad, or `now`: the live device (not tested)
    #[arg(long, value_name = SELECTOR_VALUE_NAME, default_value = "now")]
    pub bad: String,
    /// Print JSON: {good, bad, steps: [{safe_point, time, label, view, verdict, status}],
    /// first_bad, maybe_first_bad}
    #[arg(long)]
    pub json: bool,
    /// The test, after --: exit 0 good, 125 cannot tell, 1-127 bad; REWIND_VIEW names the
    /// view device, REWIND_SAFE_POINT its safe point
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `rewind diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The device: /dev/ublkbID
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: u32,
    /// One safe point (see below)
    #[arg(long, value_name = SELECTOR_VALUE_NAME)]
    pub from: String,
    /// The other: a safe point, or `now` for the live device
    #[arg(long, value_name = SELECTOR_VALUE_NAME, default_value = "now")]
    pub to: String,
    /// Print JSON: {from, to, extents: [{offset, length}], changed_bytes}
    #[arg(long)]
    pub json: bool,
}

const EXPORT_EXAMPLES: &str = concat!(
    "\
Examples:
  rewind export -n 0 -o vm.rwa                          # the whole window
  rewind export -n 0 --from before-upgrade --to 1180 -o - | ssh backup 'cat > vm-1180.rwa'
  rewind export -n 0 --from 1180 --incremental -o vm-1300.rwa   # what changed after 1180
  rewind export vm.img -o vm.rwa                        # an image no daemon serves

An archive holds a window of safe points: their times and labels, and for each the pages
that changed since the one before; a full archive (the default) also holds every page of
the device at its first safe point, so it restores alone. With --incremental it holds only
the changes after --from, and continues the archive that ends at --from: `rewind import`
takes them together, in order. Every page is checksummed; `rewind archive verify` checks
an archive without restoring it.

The export holds its safe points (as a view does) while it runs, so the window does not
move under it; if the history area fills up meanwhile, reclaim may take them back, which
ends the export with an error. Safe points are made by flushes, idle gaps and `rewind
safepoint`: make one first to export the state of now. A file is written under a
temporary name and appears only when complete.

",
    selectors_help!()
);

const IMPORT_EXAMPLES: &str = concat!(
    "\
Examples:
  rewind import vm.rwa -o restored.img                  # the newest safe point it holds
  rewind import vm.rwa --at 1100 -o restored.img
  rewind import vm-1180.rwa vm-1300.rwa --at 1250 -o restored.img   # a chain, in order
  ssh backup cat vm.rwa | rewind import - --at before-upgrade -o /dev/vdb

The output is a raw image of the device as it read at that safe point: a new file (written
under a temporary name, renamed when complete), or a block device at least as large,
written in place (pages that read as zeros are zeroed). Each archive is read once, front
to back, and only as far as the safe point needs. Every page is checked against its
checksum before it is written: a truncated, reordered or damaged archive is refused with
an error (a block device then holds a partial restore; a file is not created).

",
    selectors_help!()
);

const MIRROR_EXAMPLES: &str = "\
Examples:
  rewind mirror -n 0 --to /backup/vm-replica.img         # runs until stopped (Ctrl-C, kill)
  rewind mirror -n 0 --to /dev/nbd0 --rate 20M           # read at most 20 MiB/s from the device
  rewind mirror -n 0 --to /backup/vm-replica.img --once  # one step, then exit (cron)
  rewind mirror -n 0 --to /dev/ublkb3                    # onto a rewind device: each step a safe point

The replica is a raw image of the device as it read at one safe point: a file (made at the
device's size if missing) or a block device at least as large, which can be mounted
read-only, copied or served by anything that reads raw images. Each step takes what changed
between the safe point the replica holds and the device's newest one (through the daemon,
as `rewind export --incremental` would), or the whole newest one when the replica's safe
point has left the window. The changes go first to a log beside the mirror's state file
(synced), then onto the replica (synced), then the state moves on.

A mirror killed or crashed at any point, or a daemon that stops mid-step, leaves either the
replica as it was, or a replica being brought forward: the state file says so
(\"applying\") and the next `rewind mirror` of it finishes the step from the log before
anything else. While that is so, the replica holds a mix of two safe points: do not use it
until the mirror has run again. `rewind stats -n ID` (and `list --json`) show a running
mirror: the safe point the replica holds and how far it lags, in safe points and seconds.

A replica that must be whole at every instant, whatever crashes: make it a rewind device on
this machine (`rewind add replica.img --size SIZE`; its image may live on NBD, iSCSI or
any other block device) and mirror onto its /dev/ublkbN. After each step is synced, the
mirror makes a safe point on it labelled mirror-<id> (the source's safe point). Each such
safe point is a complete step: `rewind view -n N --at mirror-<id>` serves it read-only
while the mirror goes on, and `rewind add replica.img --read-only --at mirror-<id>` after a
crash of either side; the replica keeps a history of its own. While a step is applied, the
replica's history area holds what the step overwrites: a step larger than that area (a full
rewrite, the first step) retires the earlier marks, and the mirror warns. Give the replica
a history area as large as its size where every instant matters.

The state file: --state, default TARGET.mirror.json beside a file, or
/var/lib/rewind/mirror-NAME.json for a block device /dev/NAME; two mirrors never share one
(a lock beside it). It remembers the image it mirrors (a mirror of another image into the
same replica is refused and ends) and the replica itself (a replica deleted or replaced by
another file or device is rewritten whole). --rate is at least 64K.";

/// `rewind mirror`.
#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The device: /dev/ublkbID
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: u32,
    /// The replica: a raw image file or a block device
    #[arg(long, value_name = "FILE|DEVICE")]
    pub to: PathBuf,
    /// The mirror's state file (default: see below)
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Read at most this many bytes per second from the device (K, M, G suffixes)
    #[arg(long, value_name = "BYTES", value_parser = crate::size::parse_size)]
    pub rate: Option<u64>,
    /// Seconds between looks for a newer safe point
    #[arg(long, value_name = "SECONDS", default_value_t = 1)]
    pub interval: u64,
    /// One step (finish an interrupted one, or bring the replica to the newest safe
    /// point), then exit
    #[arg(long)]
    pub once: bool,
    /// Print JSON lines, one per step: {at, lag_safe_points, bytes, full, seconds}
    #[arg(long)]
    pub json: bool,
}

/// `rewind export`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["id", "image"])))]
pub struct ExportArgs {
    /// The device: /dev/ublkbID (its daemon writes the archive)
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: Option<u32>,
    /// An image no daemon serves, read without writing
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// The first safe point (default: the oldest in the window; see below)
    #[arg(long, value_name = SELECTOR_VALUE_NAME)]
    pub from: Option<String>,
    /// The last safe point (default: the newest)
    #[arg(long, value_name = SELECTOR_VALUE_NAME)]
    pub to: Option<String>,
    /// Only what changed after --from: continues the archive that ends at --from
    #[arg(long, requires = "from")]
    pub incremental: bool,
    /// The archive: a new file, or - for standard output
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Replace FILE if it exists
    #[arg(long)]
    pub force: bool,
    /// Print JSON: {archive, from, to, incremental_after, safe_points, data_pages, zero_pages,
    /// bytes, seconds}
    #[arg(long)]
    pub json: bool,
}

/// `rewind import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The archive, or a full archive followed by the incremental ones that continue it, in
    /// order (- for standard input, alone)
    #[arg(value_name = "ARCHIVE", required = true)]
    pub archives: Vec<PathBuf>,
    /// The safe point to restore (default: the newest of the last archive; see below)
    #[arg(long, value_name = SELECTOR_VALUE_NAME)]
    pub at: Option<String>,
    /// A new raw image file, or a block device to overwrite
    #[arg(short = 'o', long = "output", value_name = "IMAGE|DEVICE")]
    pub output: PathBuf,
    /// Replace the file if it exists
    #[arg(long)]
    pub force: bool,
    /// Print JSON: {output, at, time, label, data_pages, zero_pages, bytes_read, seconds}
    #[arg(long)]
    pub json: bool,
}

/// `rewind archive ...`.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Show what an archive holds: its safe points, their times, labels and sizes
    Ls {
        /// The archive (- for standard input)
        #[arg(value_name = "ARCHIVE")]
        archive: PathBuf,
        /// Print JSON: {source_uuid, device_bytes, incremental_after, bytes, safe_points:
        /// [{id, time, time_ns, trigger, label, data_bytes, zeroed_bytes}]}
        #[arg(long)]
        json: bool,
    },
    /// Read archives whole and check every checksum, without restoring anything
    Verify {
        /// The archives
        #[arg(value_name = "ARCHIVE", required = true)]
        archives: Vec<PathBuf>,
        /// Print JSON: [{archive, ok, error, records, pages, bytes}]
        #[arg(long)]
        json: bool,
    },
}

/// `rewind view`.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// The live device: /dev/ublkbID
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: u32,
    /// The safe point to show (see below)
    #[arg(long, value_name = SELECTOR_VALUE_NAME)]
    pub at: String,
    /// Print JSON: {device, id, of, at, time, label}
    #[arg(long)]
    pub json: bool,
}

/// `rewind pin` and `rewind unpin`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["id", "image"])))]
pub struct PinArgs {
    /// The device: /dev/ublkbID (asks its daemon)
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: Option<u32>,
    /// An image no daemon serves
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// The safe point (see below)
    #[arg(long, value_name = SELECTOR_VALUE_NAME)]
    pub at: String,
    /// Print JSON: {id, pinned, time, label}
    #[arg(long)]
    pub json: bool,
}

/// `rewind del`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
pub struct DelArgs {
    /// The device to delete: /dev/ublkbID
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: Option<u32>,
    /// Delete every rewind device
    #[arg(short = 'a', long)]
    pub all: bool,
}

/// `rewind list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

const LOGS_EXAMPLES: &str = "\
Examples:
  rewind logs -n 0                 # the last 50 lines of the log of /dev/ublkb0's daemon
  rewind logs -n 0 --lines 200 -f  # more, then what it logs from now on (Ctrl-C ends it)
  rewind logs disk.img             # the log of the daemon that served disk.img last

Each daemon logs to $REWIND_LOG_DIR, else /var/log/rewind, else /tmp, as rewind-IMAGE.log;
RUST_LOG=debug before `rewind add` makes it say more. Under systemd (JOURNAL_STREAM set),
a daemon in the foreground logs with syslog priorities, for the journal.";

/// `rewind logs`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["id", "image"])))]
pub struct LogsArgs {
    /// The device: /dev/ublkbID (its daemon need not be running)
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: Option<u32>,
    /// The image whose daemon's log to show
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// How many of the last lines to print
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub lines: usize,
    /// Go on printing what is logged, until interrupted
    #[arg(short = 'f', long)]
    pub follow: bool,
}

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  rewind completions bash > /etc/bash_completion.d/rewind
  rewind completions zsh > /usr/local/share/zsh/site-functions/_rewind
  rewind completions fish > ~/.config/fish/completions/rewind.fish";

/// `rewind completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

const MAN_EXAMPLES: &str = "\
Examples:
  rewind man | man -l -                       # read it now
  rewind man --dir /usr/local/share/man/man1  # rewind.1 and rewind-add.1, ... for `man rewind-add`";

const INSTALL_EXAMPLES: &str = "\
Examples:
  rewind install-units && systemctl daemon-reload
  rewind create /var/lib/rewind/vm1.img --size 64G
  systemctl enable --now rewind@$(systemd-escape --path /var/lib/rewind/vm1.img).service
  systemctl status 'rewind@var-lib-rewind-vm1.img'    # Status: serving /dev/ublkb0
  rewind install-units --root /tmp/pkg                 # into a staging tree, for a package

Writes /etc/systemd/system/rewind@.service (running this rewind binary, by its full path,
or --binary), bash, zsh and fish completions and the man pages, under /usr/local/share;
files already there are replaced. The unit runs `rewind add IMAGE --foreground` as a
Type=notify service: ready once the device is live, a watchdog ping every 15 s while the
engine answers (WatchdogSec=30), restarted when it fails, which recovers the device (its
I/O waits meanwhile). `systemctl stop` and `rewind del` both stop the device cleanly.
Options for `rewind add` go in /etc/rewind/INSTANCE.conf, INSTANCE being the escaped path
(`systemd-escape --path IMAGE`), as REWIND_ADD_OPTS=\"--idle 5 --coalesce 50\".";

/// `rewind install-units`.
#[derive(Debug, Args)]
pub struct InstallUnitsArgs {
    /// Install under this directory instead of / (a staging tree for a package)
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: std::path::PathBuf,
    /// The rewind the unit runs [default: this one, by its full path]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<std::path::PathBuf>,
}

/// `rewind man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write rewind.1 and one rewind-COMMAND.1 per command into this directory (created if
    /// missing) instead of printing rewind.1
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

/// `rewind stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The device: /dev/ublkbID
    #[arg(short = 'n', long = "number", value_name = "ID")]
    pub id: u32,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `rewind __serve`: what `rewind add` and `rewind recover` pass to the daemon they start
/// (`ServeOptions::args`).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The image, absolute
    pub image: PathBuf,
    /// Queues
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=QUEUES_MAX))]
    pub queues: u16,
    /// Depth of each queue
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=DEPTH_MAX))]
    pub depth: u16,
    /// Device id
    #[arg(short = 'n', long = "number")]
    pub id: Option<u32>,
    /// Descriptor of the status pipe to the `rewind add` (or `recover`) that started it
    #[arg(long)]
    pub status_fd: Option<i32>,
    /// The daemon's log file, to report
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Seconds without writes before an idle safe point (0: never)
    #[arg(long, default_value_t = IDLE_SECS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(0..=IDLE_SECS_MAX))]
    pub idle: u64,
    /// Milliseconds of flush coalescing (0: none)
    #[arg(long, default_value_t = COALESCE_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(0..=COALESCE_MS_MAX))]
    pub coalesce: u64,
    /// What happens to the device's I/O if this daemon dies
    #[arg(long, value_enum, default_value_t = OnCrashArg::Queue)]
    pub on_crash: OnCrashArg,
    /// Take over device --number, left quiesced by a daemon that died
    #[arg(long, requires = "id")]
    pub recover: bool,
    /// How request data moves between the kernel and the image (a device taken over keeps
    /// its own)
    #[arg(long, value_enum, default_value_t = DataPathArg::Auto)]
    pub data_path: DataPathArg,
    /// Serve this safe point of the image read-only instead of the live device
    #[arg(long, value_name = "ID")]
    pub read_only_at: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::device::DataPath;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rewind").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_parses_sizes() {
        let cli = parse(&["create", "a.img", "--size", "10G", "--history", "2560M"]).unwrap();
        match cli.command {
            Command::Create(a) => {
                assert_eq!(a.size, 10 << 30);
                assert_eq!(a.history, Some(2560 << 20));
                assert!(!a.force);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        let e = parse(&["create", "a.img", "--size", "1000"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert!(e.to_string().contains("not a multiple of 4096"), "{e}");
        let e = parse(&["add", "a.img", "--size", "1.5G"]).unwrap_err();
        assert!(e.to_string().contains("fractions"), "{e}");
        let e = parse(&["create", "a.img"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn add_defaults_and_limits() {
        let cli = parse(&["add", "a.img"]).unwrap();
        match cli.command {
            Command::Add(a) => {
                assert_eq!(a.depth, 128);
                assert_eq!(a.queues, None);
                assert_eq!(a.id, None);
                assert!(!a.foreground);
                assert_eq!((a.idle, a.coalesce), (2, 100));
                assert_eq!(a.on_crash, OnCrashArg::Queue);
                assert!(!a.supervise);
                assert_eq!(a.data_path, DataPathArg::Auto);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["add", "a.img", "--on-crash", "stop", "--supervise"])
            .unwrap()
            .command
        {
            Command::Add(a) => assert_eq!((a.on_crash, a.supervise), (OnCrashArg::Stop, true)),
            other => panic!("{other:?}"),
        }
        match parse(&["add", "a.img", "--data-path", "zero-copy"])
            .unwrap()
            .command
        {
            Command::Add(a) => assert_eq!(a.data_path.wanted(), Some(DataPath::ZeroCopy)),
            other => panic!("{other:?}"),
        }
        let e = parse(&["add", "a.img", "--data-path", "fast"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        let e = parse(&["add", "a.img", "--on-crash", "later"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        let e = parse(&["add", "a.img", "--supervise", "--foreground"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        match parse(&["recover", "-n", "3"]).unwrap().command {
            Command::Recover(a) => assert_eq!(a.id, 3),
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "add",
            "a.img",
            "-n",
            "7",
            "-q",
            "2",
            "-d",
            "64",
            "--foreground",
        ])
        .unwrap();
        match cli.command {
            Command::Add(a) => {
                assert_eq!(
                    (a.id, a.queues, a.depth, a.foreground),
                    (Some(7), Some(2), 64, true)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&["add", "a.img", "--depth", "0"]).unwrap_err().kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            parse(&["add", "a.img", "--queues", "0"])
                .unwrap_err()
                .kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            parse(&["add", "a.img", "-n", "-1"]).unwrap_err().kind(),
            ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn add_idle_and_coalesce() {
        match parse(&["add", "a.img", "--idle", "0", "--coalesce", "0"])
            .unwrap()
            .command
        {
            Command::Add(a) => assert_eq!((a.idle, a.coalesce), (0, 0)),
            other => panic!("{other:?}"),
        }
        match parse(&["add", "a.img", "--idle", "30", "--coalesce", "1000"])
            .unwrap()
            .command
        {
            Command::Add(a) => assert_eq!((a.idle, a.coalesce), (30, 1000)),
            other => panic!("{other:?}"),
        }
        for bad in [
            ["--idle", "-1"],
            ["--idle", "1.5"],
            ["--idle", "86401"],
            ["--coalesce", "60001"],
            ["--coalesce", "fast"],
        ] {
            let e = parse(&["add", "a.img", bad[0], bad[1]]).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::ValueValidation | ErrorKind::UnknownArgument
                ),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn safepoint_parses_a_label_and_refuses_bad_ones() {
        match parse(&[
            "safepoint",
            "-n",
            "0",
            "--label",
            "before-upgrade",
            "--json",
        ])
        .unwrap()
        .command
        {
            Command::Safepoint(a) => {
                assert_eq!(a.id, 0);
                assert_eq!(a.label.as_deref(), Some("before-upgrade"));
                assert!(a.json);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["safepoint", "-n", "3"]).unwrap().command {
            Command::Safepoint(a) => assert_eq!((a.id, a.label, a.json), (3, None, false)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&["safepoint", "--label", "x"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        let long = "x".repeat(65);
        for (label, why) in [
            (long.as_str(), "65 bytes"),
            ("", "empty"),
            ("123", "safe point id"),
        ] {
            let e = parse(&["safepoint", "-n", "0", "--label", label]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{label}: {e}");
            assert!(e.to_string().contains(why), "{label}: {e}");
        }
    }

    #[test]
    fn log_takes_a_device_or_an_image() {
        match parse(&["log", "-n", "2"]).unwrap().command {
            Command::Log(a) => assert_eq!((a.id, a.image, a.json), (Some(2), None, false)),
            other => panic!("{other:?}"),
        }
        match parse(&["log", "vm.img", "--json"]).unwrap().command {
            Command::Log(a) => {
                assert_eq!(a.id, None);
                assert_eq!(a.image.as_deref(), Some(std::path::Path::new("vm.img")));
                assert!(a.json);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&["log"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["log", "-n", "1", "vm.img"]).unwrap_err().kind(),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn del_needs_exactly_one_target() {
        assert_eq!(
            parse(&["del"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["del", "-n", "1", "-a"]).unwrap_err().kind(),
            ErrorKind::ArgumentConflict
        );
        assert!(matches!(
            parse(&["del", "-a"]).unwrap().command,
            Command::Del(DelArgs {
                id: None,
                all: true
            })
        ));
        assert!(matches!(
            parse(&["del", "-n", "3"]).unwrap().command,
            Command::Del(DelArgs {
                id: Some(3),
                all: false
            })
        ));
    }

    #[test]
    fn bisect_arguments() {
        match parse(&[
            "bisect", "-n", "2", "--good", "before", "--", "sh", "-c", "exit 1",
        ])
        .unwrap()
        .command
        {
            Command::Bisect(a) => {
                assert_eq!(
                    (a.id, a.good.as_str(), a.bad.as_str()),
                    (2, "before", "now")
                );
                assert_eq!(a.command, ["sh", "-c", "exit 1"]);
            }
            other => panic!("parsed as {other:?}"),
        }
        // The command is required, and comes after --.
        for args in [
            &["bisect", "-n", "2", "--good", "1"][..],
            &["bisect", "-n", "2", "--good", "1", "sh"],
        ] {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }

    #[test]
    fn view_and_pin_arguments() {
        match parse(&["view", "-n", "0", "--at", "5m", "--json"])
            .unwrap()
            .command
        {
            Command::View(a) => assert_eq!((a.id, a.at.as_str(), a.json), (0, "5m", true)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&["view", "-n", "0"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["view", "--at", "3"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        match parse(&["pin", "vm.img", "--at", "before"]).unwrap().command {
            Command::Pin(a) => {
                assert_eq!(a.image.as_deref(), Some(std::path::Path::new("vm.img")));
                assert_eq!((a.id, a.at.as_str()), (None, "before"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["unpin", "-n", "2", "--at", "10:42:07"])
            .unwrap()
            .command
        {
            Command::Unpin(a) => assert_eq!((a.id, a.at.as_str()), (Some(2), "10:42:07")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&["pin", "-n", "1", "vm.img", "--at", "3"])
                .unwrap_err()
                .kind(),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            parse(&["pin", "--at", "3"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn stats_needs_an_id_and_serve_is_hidden() {
        assert_eq!(
            parse(&["stats"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains("__serve"), "{help}");
        assert!(help.contains("Examples:"), "{help}");
    }
}
