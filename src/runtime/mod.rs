//! What the command line needs to know and do about the machine: the rewind devices the
//! kernel has and what their daemons recorded ([`registry`], [`listing`]), asking a daemon
//! ([`client`]), deleting devices ([`removal`]), starting daemons ([`launch`]), keeping
//! one running ([`supervise`]), handing one to a new binary ([`upgrade`]), fetching archives
//! of a device's history ([`export`]) and keeping a replica of one ([`mirror`]).
//!
//! Uses the daemon's room for ublk control (`daemon::ublk`) and for what a daemon is
//! started with; the daemon uses nothing here.

pub mod client;
pub mod export;
pub mod launch;
pub mod listing;
pub mod mirror;
pub mod registry;
pub mod removal;
pub mod supervise;
pub mod upgrade;
