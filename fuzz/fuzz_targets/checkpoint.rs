//! Fuzz target `checkpoint`: see `rewind_history::fuzzing::checkpoint` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rewind_history::fuzzing::checkpoint(data);
});
