//! mappings.c linked with -static: no libc is mapped, so leakscope warns
//! ("static"), marks the libc probes "missing" and still traces mmap, munmap
//! and mremap. Origins are matched on the fixture's source file, since libc's
//! wrappers live in the fixture binary too.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use leakscope_tests::*;
use serde_json::Value;

fn fixture() -> PathBuf {
    build_fixture("mappings", &["-static"])
}

fn check(report: &Value, path: &Path, mode: Mode, status: ExitStatus, stderr: &str) {
    check_fixture_report(
        report,
        "mappings",
        path,
        OriginRule::ModuleAndSource,
        mode,
        &expected::mappings(),
        |v| {
            v.check(status.success(), || {
                format!("leakscope exit {} (expected 0)", describe_status(status))
            });
            v.check(
                stderr
                    .lines()
                    .any(|l| l.contains("static") && !l.starts_with(ERROR_PREFIX)),
                || format!("no warning line containing \"static\" on stderr:\n{stderr}"),
            );
            for name in LIBC_PROBES {
                let status = probe(report, name).map(|p| p["status"].clone());
                v.check(status.as_ref().and_then(Value::as_str) == Some("missing"), || {
                    format!("libc probe {name} in a static binary: status {status:?} (expected \"missing\")")
                });
            }
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
