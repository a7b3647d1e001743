//! `rewind`: a ublk block device that keeps the recent history of every block.
//!
//! The engine is in `rewind-history` and `rewind-remap`; this crate is the program around
//! it, in three rooms that depend on each other one way only:
//!
//! ```text
//! cli  ->  runtime  ->  daemon  ->  rewind-history  ->  rewind-remap
//!                                  \->  rewind-archive  ->  rewind-history
//! ```
//!
//! - [`cli`]: the command line: its clap definitions, one file per group of commands, and
//!   how results are printed;
//! - [`runtime`]: what a command needs to know and do about the machine: the devices the
//!   kernel has and what their daemons recorded, the control client, starting daemons and
//!   supervising them;
//! - [`daemon`]: serving one image as one ublk device: the target and its queues, the
//!   backing store, pacing, views, the control server, exports, signals.
//!
//! `rewind-archive` (the archive of `rewind export` and `rewind import`) sits beside the
//! engine: the daemon exports through it, and `cli` exports an unserved image and imports
//! through it.
//!
//! A room uses the rooms to its right, never one to its left. `cli` also uses `daemon`
//! directly: `rewind add --foreground` and `__serve` serve in their own process, and the
//! commands on an image no daemon serves open it through the daemon's backing store (and
//! `--idle`/`--coalesce` take their defaults from the daemon's pacing). All rooms use the
//! leaves, which use no room:
//! - [`ipc`]: what the processes agree on: runtime paths, the control socket's wire format,
//!   the device json and pid files, the status pipe;
//! - [`selector`]: labels and the `--at`/`--to` forms;
//! - [`size`]: sizes as typed and printed;
//! - [`time`]: wall-clock times as read and printed;
//! - [`host`]: this machine and process as the engine sees them (boot id, host name, pid,
//!   clock), read from `/proc` here because the engine does no I/O of its own.
//!
//! Within the leaves, `ipc` uses `selector`, which uses `time`.

#![warn(missing_docs)]

pub mod cli;
pub mod daemon;
pub mod host;
pub mod ipc;
pub mod runtime;
pub mod selector;
pub mod size;
pub mod time;
