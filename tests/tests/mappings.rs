//! mappings.c: mmap/munmap/mremap through libc and the raw syscall.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "mappings";

fn fixture() -> PathBuf {
    build_fixture(NAME, &[])
}

fn check(report: &Value, path: &Path, mode: Mode, status: ExitStatus, stderr: &str) {
    check_fixture_report(
        report,
        NAME,
        path,
        OriginRule::Module,
        mode,
        &expected::mappings(),
        |v| {
            v.check_exit_ok(status, stderr);
        },
    );
}

#[test]
fn launch() {
    let path = fixture();
    let run = run_launch(&path, &[], &[]);
    check(&run.report, &path, Mode::Launch, run.status, &run.stderr);
}

#[test]
fn attach_until_sigterm() {
    let path = fixture();
    let run = run_attach(&path, &[], Stop::Signal(libc::SIGTERM));
    check(&run.report, &path, run.mode_alive(), run.status, &run.stderr);
}
