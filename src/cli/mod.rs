//! The command line.

pub mod args;
pub mod history;
pub mod image;
