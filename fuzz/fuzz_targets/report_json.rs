#![no_main]
//! See `leakscope::fuzzing::report_json`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        leakscope::fuzzing::report_json(text);
    }
});
