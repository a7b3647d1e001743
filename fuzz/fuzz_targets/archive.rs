//! Fuzz target `archive`: see `rewind_archive::fuzzing::archive_and_fixed` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rewind_archive::fuzzing::archive_and_fixed(data);
});
