//! allocators.c: one leaking site per libc allocator, realloc corner cases,
//! a site that frees everything, large blocks malloc maps itself.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "allocators";

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
        &expected::allocators(),
        |v| {
            v.check_exit_ok(status, stderr);
            for (name, calls) in expected::ALLOCATOR_CALLS {
                check_probe_hits(v, report, name, *calls);
            }
            let internal = report["totals"]["allocator_internal_bytes"].as_u64();
            v.check(internal.is_some_and(|b| b >= expected::ALLOCATORS_LARGE_BYTES), || {
                format!(
                    "totals.allocator_internal_bytes {internal:?} < {} (malloc's own mappings of leak_large's blocks)",
                    expected::ALLOCATORS_LARGE_BYTES
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
fn attach_until_sigint() {
    let path = fixture();
    let run = run_attach(&path, &[], Stop::Signal(libc::SIGINT));
    check(&run.report, &path, run.mode_alive(), run.status, &run.stderr);
}

#[test]
fn attach_until_duration() {
    let path = fixture();
    let run = run_attach(&path, &["--duration", "5"], Stop::Duration);
    let d = run.report["duration_s"].as_f64().unwrap_or(-1.0);
    assert!(
        (4.0..65.0).contains(&d),
        "duration_s {d} for --duration 5\n--- leakscope stderr ---\n{}",
        run.stderr
    );
    check(&run.report, &path, run.mode_alive(), run.status, &run.stderr);
}

#[test]
fn attach_until_target_exits() {
    let path = fixture();
    let run = run_attach(&path, &[], Stop::TargetExits);
    let mode = Mode::Attach {
        pid: run.fixture_pid,
        exited: true,
    };
    check(&run.report, &path, mode, run.status, &run.stderr);
}

#[test]
fn text_report() {
    let path = fixture();
    let (out, text) = run_launch_raw(&path, &[], "text", &[]);
    assert!(out.status.success(), "{}", out.describe());
    for needle in ["leak_malloc", "outstanding"] {
        assert!(text.contains(needle), "text report lacks {needle:?}:\n{text}");
    }
}
