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

/// A static binary's malloc is not probed, and its heap grows by brk: the
/// hunt traces brk, so the leak shows as `brk` sites holding exactly what
/// the program break grew by during the hunt (it used to report 0 B).
#[test]
fn static_heap_is_traced_through_brk() {
    let path = build_fixture("static_heap", &["-static"]);
    let run = run_attach(&path, &[], Stop::Signal(libc::SIGINT));
    assert!(
        run.status.success(),
        "leakscope: {}\n{}",
        describe_status(run.status),
        run.stderr
    );
    let breaks: Vec<u64> = run
        .fixture_stdout
        .lines()
        .filter_map(|l| l.strip_prefix("break 0x"))
        .map(|hex| u64::from_str_radix(hex, 16).unwrap())
        .collect();
    let [before, after] = breaks[..] else {
        panic!("expected two break lines:\n{}", run.fixture_stdout)
    };
    let grown = after - before;
    // 2 MB leaked, less what the heap's free top (128 KiB padding) held before.
    assert!(
        grown >= 2000 * 1000 - (128 << 10),
        "the break grew by {grown} bytes only"
    );
    let brk_sites: Vec<&Value> = sites(&run.report).iter().filter(|s| s["allocator"] == "brk").collect();
    let held: u64 = brk_sites.iter().map(|s| u64_field(s, "outstanding_bytes")).sum();
    assert_eq!(held, grown, "brk sites {brk_sites:#?}\n{}", run.stderr);
    for site in &brk_sites {
        assert_eq!(site["kind"], "mmap");
        assert_eq!(site["mapping"]["prot"], "rw-");
    }
    let brk = probe(&run.report, "brk").unwrap_or_else(|| panic!("no brk probe in the report"));
    assert_eq!(brk["status"], "live");
    assert_eq!(u64_field(&run.report["totals"], "outstanding_bytes"), held);
}
