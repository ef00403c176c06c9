//! churn.c: 200,000 malloc/free pairs from one site (nothing outstanding),
//! a small leak as a positive control, and no dropped events.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Instant;

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "churn";

fn fixture() -> PathBuf {
    build_fixture(NAME, &[])
}

fn check(report: &Value, path: &Path, mode: Mode, status: ExitStatus, stderr: &str) {
    // check_fixture_report also requires every drop counter to be 0.
    check_fixture_report(report, NAME, path, OriginRule::Module, mode, &expected::churn(), |v| {
        v.check_exit_ok(status, stderr);
        check_probe_hits(v, report, "malloc", expected::CHURN_MALLOCS);
        check_probe_hits(v, report, "free", expected::CHURN_FREES);
    });
}

#[test]
fn launch() {
    let path = fixture();
    let start = Instant::now();
    let run = run_launch(&path, &[], &[]);
    eprintln!("churn launch took {:?}", start.elapsed());
    check(&run.report, &path, Mode::Launch, run.status, &run.stderr);
}

#[test]
fn attach_until_sigint() {
    let path = fixture();
    let start = Instant::now();
    let run = run_attach(&path, &[], Stop::Signal(libc::SIGINT));
    eprintln!("churn attach took {:?}", start.elapsed());
    check(&run.report, &path, run.mode_alive(), run.status, &run.stderr);
}
