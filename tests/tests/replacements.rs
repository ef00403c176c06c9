//! replacements.c under jemalloc, tcmalloc and mimalloc (preloaded or
//! linked): the probes go where the process's `malloc` resolves, so every
//! leak is counted exactly and every freed site is empty.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "replacements";
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const TCMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4";
const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2.0";

/// `allocator` is the library as named to the loader; the report names the
/// file the process mapped (the soname link resolved, in attach mode) or that name.
fn check(report: &Value, path: &Path, mode: Mode, status: ExitStatus, stderr: &str, allocator: &str) {
    let file =
        fs::canonicalize(allocator).unwrap_or_else(|e| panic!("{allocator}: {e} (cargo xtask setup installs it)"));
    check_fixture_report(
        report,
        NAME,
        path,
        OriginRule::Module,
        mode,
        &expected::replacements(),
        |v| {
            v.check_exit_ok(status, stderr);
            for (name, calls) in expected::REPLACEMENT_CALLS {
                check_probe_hits(v, report, name, *calls);
                let module = probe(report, name).and_then(|p| p["module"].as_str());
                let same_file = module.is_some_and(|m| fs::canonicalize(m).is_ok_and(|m| m == file));
                v.check(same_file, || {
                    format!("probe {name} is in {module:?}, expected {allocator}")
                });
            }
        },
    );
}

fn attach_preloaded(library: &str) {
    let path = build_fixture(NAME, &[]);
    let mut cmd = Command::new(&path);
    cmd.arg("--wait").env("LD_PRELOAD", library);
    let run = run_attach_command(&path, cmd, &[], Stop::Signal(libc::SIGINT));
    check(&run.report, &path, run.mode_alive(), run.status, &run.stderr, library);
}

fn launch_preloaded(library: &str) {
    let path = build_fixture(NAME, &[]);
    let run = run_launch_env(&path, &[], &[("LD_PRELOAD", library)], &[]);
    check(&run.report, &path, Mode::Launch, run.status, &run.stderr, library);
}

#[test]
fn attach_jemalloc() {
    attach_preloaded(JEMALLOC);
}

#[test]
fn attach_tcmalloc() {
    attach_preloaded(TCMALLOC);
}

#[test]
fn attach_mimalloc() {
    attach_preloaded(MIMALLOC);
}

#[test]
fn launch_jemalloc() {
    launch_preloaded(JEMALLOC);
}

#[test]
fn launch_tcmalloc() {
    launch_preloaded(TCMALLOC);
}

#[test]
fn launch_mimalloc() {
    launch_preloaded(MIMALLOC);
}

/// Linked, not preloaded: DT_NEEDED puts jemalloc before libc.
#[test]
fn launch_linked_jemalloc() {
    // Named before the source: without --no-as-needed the linker drops it.
    let path: PathBuf = build_fixture(NAME, &["-Wl,--no-as-needed", JEMALLOC]);
    let run = run_launch(&path, &[], &[]);
    check(&run.report, &path, Mode::Launch, run.status, &run.stderr, JEMALLOC);
}

/// glibc's own malloc, for the zero-size blocks and as the baseline.
#[test]
fn launch_glibc() {
    let path = build_fixture(NAME, &[]);
    let run = run_launch(&path, &[], &[]);
    let libc = probe(&run.report, "malloc")
        .and_then(|p| p["module"].as_str())
        .unwrap_or("")
        .to_string();
    assert!(libc.contains("/libc.so"), "malloc probed in {libc:?}");
    check(&run.report, &path, Mode::Launch, run.status, &run.stderr, &libc);
}
