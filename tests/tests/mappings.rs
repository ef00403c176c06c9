//! mappings.c: mmap/munmap/mremap through libc and the raw syscall.

use std::path::{Path, PathBuf};

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "mappings";

fn fixture() -> PathBuf {
    build_fixture(NAME, &[])
}

fn check(report: &Value, path: &Path, mode: Mode) {
    let (heap, mmap) = check_sites(
        report,
        NAME,
        path,
        OriginRule::Module,
        &expected::mappings(),
    );
    check_totals_cover(report, heap, mmap);
    check_report_common(report, path, mode);
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
fn attach_until_sigterm() {
    let path = fixture();
    let run = run_attach(&path, &[], Stop::Signal(libc::SIGTERM));
    assert!(
        run.status.success(),
        "leakscope exit {} after SIGTERM\n{}",
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
