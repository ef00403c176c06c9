//! `cargo xtask fuzz [--seconds N]`: each cargo-fuzz target of `fuzz/` (the
//! parsers of untrusted input, see leak-user/src/fuzzing.rs) for N seconds,
//! from the seeds in `fuzz/seeds/TARGET`. A crash fails the run and leaves
//! its input in `fuzz/artifacts/TARGET`.
use std::{fs, process::Command};

use anyhow::Result;

use crate::{run, setup};

pub const TARGETS: [&str; 8] = [
    "perf_map_line",
    "proc_maps",
    "proc_status",
    "proc_stat",
    "proc_cgroup",
    "report_json",
    "watch_config",
    "elf_module",
];

/// Per target in the test suite's short pass.
pub const SHORT_PASS_SECONDS: u64 = 5;

fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    // The eBPF object is not needed to parse anything.
    cmd.args(["+nightly", "fuzz"]).env("AYA_BUILD_SKIP", "1");
    cmd
}

pub fn fuzz(seconds: u64) -> Result<()> {
    setup::cargo_fuzz()?;
    run(cargo_fuzz().args(["build", "-O"]))?;
    for target in TARGETS {
        // New inputs go to the first directory (not in git), the seeds are read only.
        let corpus = format!("fuzz/corpus/{target}");
        fs::create_dir_all(&corpus)?;
        run(cargo_fuzz()
            // -O: debug assertions and overflow checks as fuzz/Cargo.toml sets them.
            .args(["run", "-O", target, &corpus, &format!("fuzz/seeds/{target}"), "--"])
            .arg(format!("-max_total_time={seconds}"))
            // A parser that takes a second over a few KiB is a bug too.
            .args(["-timeout=5", "-max_len=65536", "-rss_limit_mb=2048"]))?;
    }
    Ok(())
}
