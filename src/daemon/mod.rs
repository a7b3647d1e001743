//! Serving one image as one ublk device until the device is deleted: [`serve`] runs it, the
//! ublk target and its queues ([`target`], [`ublk`]) move the data, the backing store
//! ([`backing`], over one file or a [`pool`] of them) holds it, [`pacing`] decides when the daemon makes safe points of its own,
//! [`views`] serves read-only devices of past safe points, [`control`] answers the
//! control socket, [`export`] writes archives of its history for `rewind export`, and
//! [`handover`] hands the device to another binary (`rewind upgrade`).
//!
//! Uses only the leaves (`ipc`, `selector`, `size`, `time`) and the engine.

pub mod backing;
pub mod control;
pub mod export;
pub mod flusher;
pub mod group_commit;
pub mod handover;
pub mod notify;
pub mod pacing;
pub mod pool;
pub mod report;
pub mod ring_commit;
pub mod serve;
pub mod signals;
pub mod target;
pub mod ublk;
pub mod views;
