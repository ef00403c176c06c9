//! threads.c: four threads leak from one site concurrently; blocks allocated
//! by one thread and freed by another leave nothing.

use std::path::{Path, PathBuf};

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "threads";

fn fixture() -> PathBuf {
    build_fixture(NAME, &[])
}

fn check(report: &Value, path: &Path, mode: Mode) {
    // Explicitly (check_sites also rejects it as unexpected): the arenas
    // malloc maps for new threads are allocator-internal, not mmap sites.
    for site in sites(report) {
        let origin = origin_frame(site, path, OriginRule::Module);
        let in_thread_leak = origin.is_some_and(|f| f["function"].as_str() == Some("thread_leak"));
        assert!(
            !(site["kind"].as_str() == Some("mmap") && in_thread_leak),
            "mmap site attributed to thread_leak (malloc's arena mapping?): {site}"
        );
    }
    let (heap, mmap) = check_sites(report, NAME, path, OriginRule::Module, &expected::threads());
    check_totals_cover(report, heap, mmap);
    check_report_common(report, path, mode);
    let internal = u64_field(&report["totals"], "allocator_internal_bytes");
    assert!(
        internal > 0,
        "totals.allocator_internal_bytes is 0: the new threads' malloc arenas are not counted"
    );
    check_probe_hits(report, "malloc", 4 * 25 + 50);
    check_probe_hits(report, "free", 50);
}

#[test]
fn launch() {
    let path = fixture();
    let run = run_launch(&path, &[], &[]);
    assert!(
        run.status.success(),
        "leakscope exit {} (fixture exits 0)\n{}",
        describe_status(run.status),
        run.stderr
    );
    check(&run.report, &path, Mode::Launch);
}

#[test]
fn attach_until_sigint() {
    let path = fixture();
    let run = run_attach(&path, &[], Stop::Signal(libc::SIGINT));
    assert!(
        run.status.success(),
        "leakscope exit {} after SIGINT\n{}",
        describe_status(run.status),
        run.stderr
    );
    check(
        &run.report,
        &path,
        Mode::Attach {
            pid: run.fixture_pid,
            exited: false,
        },
    );
}
