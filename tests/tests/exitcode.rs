//! Launch mode passes the command's exit code through (exitcode.c exits 3)
//! and still reports.

use leakscope_tests::*;

#[test]
fn launch_passes_exit_code_through() {
    let path = build_fixture("exitcode", &[]);
    let run = run_launch(&path, &[], &[]);
    assert_eq!(
        run.status.code(),
        Some(3),
        "leakscope exit {} for a command that exits 3\n{}",
        describe_status(run.status),
        run.stderr
    );
    check_sites(
        &run.report,
        "exitcode",
        &path,
        OriginRule::Module,
        &expected::exitcode(),
    );
    check_report_common(&run.report, &path, Mode::Launch);
}
