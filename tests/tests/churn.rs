//! churn.c: 200,000 malloc/free pairs from one site (nothing outstanding),
//! a small leak as a positive control, and no dropped events.

use std::path::{Path, PathBuf};
use std::time::Instant;

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "churn";

fn fixture() -> PathBuf {
    build_fixture(NAME, &[])
}

fn check(report: &Value, path: &Path, mode: Mode) {
    let (heap, mmap) = check_sites(report, NAME, path, OriginRule::Module, &expected::churn());
    check_totals_cover(report, heap, mmap);
    // Asserts, among others, that every drop counter is 0.
    check_report_common(report, path, mode);
    check_probe_hits(report, "malloc", expected::CHURN_MALLOCS);
    check_probe_hits(report, "free", expected::CHURN_FREES);
}

#[test]
fn launch() {
    let path = fixture();
    let start = Instant::now();
    let run = run_launch(&path, &[], &[]);
    eprintln!("churn launch took {:?}", start.elapsed());
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
    let start = Instant::now();
    let run = run_attach(&path, &[], Stop::Signal(libc::SIGINT));
    eprintln!("churn attach took {:?}", start.elapsed());
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
