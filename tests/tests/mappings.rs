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
            v.check(status.success(), || {
                format!(
                    "leakscope exit {} (expected 0)\n--- leakscope stderr ---\n{stderr}",
                    describe_status(status)
                )
            });
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
    let mode = Mode::Attach {
        pid: run.fixture_pid,
        exited: false,
    };
    check(&run.report, &path, mode, run.status, &run.stderr);
}
