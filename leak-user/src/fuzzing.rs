//! Entry points of the parsers of untrusted input, for the fuzz targets in
//! `fuzz/` (`cargo xtask fuzz`). Whatever the bytes, each must return: a
//! panic, an overflow or a hang is a bug. The inputs are what a traced
//! process or a user controls: its perf map, /proc files and binaries,
//! saved reports, the watch config.

use std::time::Duration;

use crate::{
    cli::{Format, RuleArgs},
    diff, lookup,
    report::{self, drops, json},
    symbolize::{self, maps::MapsEntry, perfmap},
    target::ProcStat,
    timeline,
    watch::{memory, targets},
};

/// One line of `/tmp/perf-PID.map` (the file belongs to the target's user).
pub fn perf_map_line(line: &str) {
    if let Some((start, symbol)) = perfmap::parse_line(line) {
        assert!(symbol.end >= start, "a JIT range ends before it starts: {line:?}");
    }
}

/// `/proc/PID/maps` (paths are the target's to choose).
pub fn proc_maps(text: &str) {
    for line in text.lines() {
        let _ = MapsEntry::parse(line);
    }
}

/// An ELF file the target maps, as the symbolizer, the unwinder and the
/// allocator lookup read it (from a memfd: leakscope reads modules through
/// descriptors too). Offsets spread over the file stand for the addresses
/// of stacks.
pub fn elf_module(data: &[u8]) {
    // SAFETY: plain syscall with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"elf_module".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor we own.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    std::io::Write::write_all(&mut file, data).expect("a memfd takes any bytes");
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{fd}"));
    let _ = lookup::read_dynamic(&path);
    let len = data.len() as u64;
    let offsets: Vec<u64> = (0..8).map(|i| len * i / 8).chain([len, u64::MAX]).collect();
    symbolize::read_as_module(file, &offsets);
}

/// `/proc/PID/status`.
pub fn proc_status(text: &str) {
    let _ = memory::parse_status(text);
    let _ = timeline::vm_rss_bytes(text);
}

/// `/proc/PID/stat` (the command name inside the parentheses is the target's).
pub fn proc_stat(text: &str) {
    let _ = ProcStat::parse(text);
}

/// `/proc/PID/cgroup`.
pub fn proc_cgroup(text: &str) {
    let _ = memory::memory_cgroup(text);
}

/// A saved JSON report, as `report` and `diff` read it; one that parses is
/// rendered in every format and diffed against itself.
pub fn report_json(text: &str) {
    let Ok(mut report) = json::parse(text) else {
        return;
    };
    drops::mark_verdicts(&mut report);
    let _ = drops::warning(&report);
    for format in [
        Format::Text,
        Format::Json,
        Format::Folded,
        Format::Flamegraph,
        Format::Pprof,
        Format::Markdown,
    ] {
        let _ = report::render(
            &report,
            format,
            report::Listing {
                top: 20,
                full_stacks: false,
            },
        );
    }
    let d = diff::diff(&report, &report);
    let _ = diff::render_text(&d);
    let _ = diff::render_json(&d);
}

/// The watch `--config` file.
pub fn watch_config(text: &str) {
    let defaults = RuleArgs {
        window: Duration::from_secs(600),
        warn_rate: 10.0 * 1048576.0 / 3600.0,
        crit_rate: 100.0 * 1048576.0 / 3600.0,
        warn_limit: 80.0,
        crit_limit: 95.0,
    };
    if let Ok(selections) = targets::parse_config(text, &defaults) {
        for selection in &selections {
            let _ = targets::check_rules(&selection.rules);
        }
    }
}
