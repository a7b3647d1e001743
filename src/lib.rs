//! `rewind`: a ublk block device that keeps the recent history of every block.
//!
//! The engine is in `rewind-history` and `rewind-remap`; this crate is the program around
//! it: the command line, the daemon and its ublk target, the backing store and the control
//! socket.

#![warn(missing_docs)]

pub mod backing;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod devices;
pub mod host;
pub mod image;
pub mod launch;
pub mod pacing;
pub mod paths;
pub mod size;
pub mod supervise;
pub mod target;
pub mod timeline;
pub mod views;
