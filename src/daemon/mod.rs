//! Serving one image.

pub mod backing;
pub mod pacing;
pub mod serve;
pub mod target;
pub mod views;
