//! Where a frame-pointer walk stopped following code.
//!
//! Code built without frame pointers may keep any value in %rbp, and the BPF
//! walk then follows it as long as it points up the stack: the "return
//! addresses" it reads are data. The first frame outside every executable
//! mapping of the target ends the stack; everything after it came from
//! following that garbage.

use super::ProcessModules;

/// How many of `addrs` (innermost first) are code. Frame 0 (the probed
/// instruction or the allocator's return address) always is; after it each
/// return address is looked up at the call instruction (address − 1), in the
/// target's executable file mappings, its anonymous executable mappings (JIT
/// code) and its perf map.
pub fn code_frames(modules: &ProcessModules, addrs: &[u64]) -> usize {
    let beyond = addrs
        .iter()
        .skip(1)
        .position(|&address| !modules.is_code(address.saturating_sub(1)));
    beyond.map_or(addrs.len(), |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_first_data_address() {
        let mut modules = ProcessModules::new(std::process::id());
        modules.refresh().unwrap();
        let code = code_frames as *const () as u64;
        let data = &modules as *const ProcessModules as u64;
        assert_eq!(code_frames(&modules, &[code, code + 1, code + 1]), 3);
        assert_eq!(code_frames(&modules, &[code, code + 1, data, code + 1]), 2);
        assert_eq!(code_frames(&modules, &[data, 0x1234, code + 1]), 1);
        assert_eq!(code_frames(&modules, &[]), 0);
    }
}
