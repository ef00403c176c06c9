//! mappings.c linked with -static: no libc is mapped, so leakscope warns
//! ("static"), marks the libc probes "missing" and still traces mmap, munmap
//! and mremap. Origins are matched on the fixture's source file, since libc's
//! wrappers live in the fixture binary too.

use std::path::{Path, PathBuf};

use leakscope_tests::*;
use serde_json::Value;

fn fixture() -> PathBuf {
    build_fixture("mappings", &["-static"])
}

fn check(report: &Value, stderr: &str, path: &Path, mode: Mode) {
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("static") && !l.starts_with(ERROR_PREFIX)),
        "no warning line containing \"static\" on stderr:\n{stderr}"
    );
    let (heap, mmap) = check_sites(
        report,
        "mappings",
        path,
        OriginRule::ModuleAndSource,
        &expected::mappings(),
    );
    check_totals_cover(report, heap, mmap);
    check_report_common(report, path, mode);
    for name in LIBC_PROBES {
        let p = probe(report, name)
            .unwrap_or_else(|| panic!("no probe {name:?} in report; probes: {}", report["probes"]));
        assert_eq!(
            p["status"].as_str(),
            Some("missing"),
            "libc probe in a static binary: {p}"
        );
    }
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
    check(&run.report, &run.stderr, &path, Mode::Launch);
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
        &run.stderr,
        &path,
        Mode::Attach {
            pid: run.fixture_pid,
            exited: false,
        },
    );
}
