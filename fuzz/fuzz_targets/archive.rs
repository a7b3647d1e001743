//! Fuzz target `archive`: see `rewind_archive::fuzzing::archive` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rewind_archive::fuzzing::archive(data);
});
