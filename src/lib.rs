//! `rewind`: a ublk block device that keeps the recent history of every block.
//!
//! The engine is in `rewind-history` and `rewind-remap`; this crate is the program around
//! it: the command line, the daemon and its ublk target, the backing store and the control
//! socket.

#![warn(missing_docs)]

pub mod cli;
pub mod daemon;
pub mod ipc;
pub mod runtime;
pub mod size;
