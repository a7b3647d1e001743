//! Fuzz target `superblock`: see `rewind_history::fuzzing::superblock` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rewind_history::fuzzing::superblock(data);
});
