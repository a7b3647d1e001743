//! What rewind's processes agree on.

pub mod control;
pub mod paths;
