//! What the command line needs about the machine.

pub mod launch;
pub mod registry;
pub mod supervise;
