//! What rewind's processes agree on: where they find each other (paths), what they say on
//! a daemon's control socket, what a daemon records about its device (libublk's json, pid
//! files), and the status line a new daemon sends the command that started it.
//!
//! A leaf: it uses no room of this crate, so the command line, the runtime and the daemon
//! can all use it.

pub mod control;
pub mod device;
pub mod paths;
pub mod status;
