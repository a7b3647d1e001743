//! Fuzz target `journal`: see `rewind_history::fuzzing::journal` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rewind_history::fuzzing::journal(data);
});
