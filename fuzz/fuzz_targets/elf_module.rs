#![no_main]
//! See `leakscope::fuzzing::elf_module`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leakscope::fuzzing::elf_module(data);
});
