//! threads.c: four threads leak from one site concurrently; blocks allocated
//! by one thread and freed by another leave nothing.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "threads";

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
        &expected::threads(),
        |v| {
            v.check_exit_ok(status, stderr);
            // Explicitly (check_sites also flags it as unexpected): the arenas
            // malloc maps for new threads are allocator-internal, not mmap sites.
            for site in report["sites"].as_array().into_iter().flatten() {
                let origin = origin_frame(site, path, OriginRule::Module);
                let in_thread_leak = origin.is_some_and(|f| f["function"].as_str() == Some("thread_leak"));
                v.check(!(site["kind"].as_str() == Some("mmap") && in_thread_leak), || {
                    format!("mmap site attributed to thread_leak (malloc's arena mapping?): {site}")
                });
            }
            let internal = report["totals"]["allocator_internal_bytes"].as_u64();
            v.check(internal.is_some_and(|b| b > 0), || {
                format!("totals.allocator_internal_bytes {internal:?}: the new threads' malloc arenas are not counted")
            });
            check_probe_hits(v, report, "malloc", 4 * 25 + 50);
            check_probe_hits(v, report, "free", 50);
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
