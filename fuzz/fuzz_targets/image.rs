//! Fuzz target `image`: see `rewind_history::fuzzing::image` for the input and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rewind_history::fuzzing::image(data);
});
