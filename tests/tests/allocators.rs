//! allocators.c: one leaking site per libc allocator, realloc corner cases,
//! a site that frees everything, large blocks malloc maps itself.

use std::path::{Path, PathBuf};

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "allocators";

fn fixture() -> PathBuf {
    build_fixture(NAME, &[])
}

fn check(report: &Value, path: &Path, mode: Mode) {
    let (heap, mmap) = check_sites(
        report,
        NAME,
        path,
        OriginRule::Module,
        &expected::allocators(),
    );
    check_totals_cover(report, heap, mmap);
    check_report_common(report, path, mode);
    for (name, calls) in expected::ALLOCATOR_CALLS {
        check_probe_hits(report, name, *calls);
    }
    let internal = u64_field(&report["totals"], "allocator_internal_bytes");
    assert!(
        internal >= expected::ALLOCATORS_LARGE_BYTES,
        "totals.allocator_internal_bytes {internal} < {} (malloc's own mappings of leak_large's blocks)",
        expected::ALLOCATORS_LARGE_BYTES
    );
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

#[test]
fn attach_until_duration() {
    let path = fixture();
    let run = run_attach(&path, &["--duration", "5"], Stop::Duration);
    assert!(
        run.status.success(),
        "leakscope exit {} at the end of --duration\n{}",
        describe_status(run.status),
        run.stderr
    );
    let d = run.report["duration_s"].as_f64().unwrap_or(-1.0);
    assert!((4.0..65.0).contains(&d), "duration_s {d} for --duration 5");
    check(
        &run.report,
        &path,
        Mode::Attach {
            pid: run.fixture_pid,
            exited: false,
        },
    );
}

#[test]
fn attach_until_target_exits() {
    let path = fixture();
    let run = run_attach(&path, &[], Stop::TargetExits);
    assert!(
        run.status.success(),
        "leakscope exit {} when the target exited\n{}",
        describe_status(run.status),
        run.stderr
    );
    check(
        &run.report,
        &path,
        Mode::Attach {
            pid: run.fixture_pid,
            exited: true,
        },
    );
}

#[test]
fn text_report() {
    let path = fixture();
    let (out, text) = run_launch_raw(&path, &[], "text", &[]);
    assert!(out.status.success(), "{}", out.describe());
    for needle in ["leak_malloc", "outstanding"] {
        assert!(
            text.contains(needle),
            "text report lacks {needle:?}:\n{text}"
        );
    }
}
