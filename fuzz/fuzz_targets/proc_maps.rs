#![no_main]
//! See `leakscope::fuzzing::proc_maps`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        leakscope::fuzzing::proc_maps(text);
    }
});
