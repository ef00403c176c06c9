//! Launch mode passes the command's exit code through (exitcode.c exits 3),
//! leaves the child's stdout and stderr alone, and still reports.

use leakscope_tests::*;

#[test]
fn launch_passes_exit_code_through() {
    let path = build_fixture("exitcode", &[]);
    let run = run_launch(&path, &[], &[]);
    check_fixture_report(
        &run.report,
        "exitcode",
        &path,
        OriginRule::Module,
        Mode::Launch,
        &expected::exitcode(),
        |v| {
            v.check(run.stdout.lines().any(|l| l == "exitcode: to stdout"), || {
                format!(
                    "the child's stdout line is missing from leakscope's stdout:\n{}",
                    run.stdout
                )
            });
            v.check(run.stderr.lines().any(|l| l == "exitcode: to stderr"), || {
                format!(
                    "the child's stderr line is missing from leakscope's stderr:\n{}",
                    run.stderr
                )
            });
            v.check(run.status.code() == Some(3), || {
                format!(
                    "leakscope exit {} for a command that exits 3\n--- leakscope stderr ---\n{}",
                    describe_status(run.status),
                    run.stderr
                )
            });
        },
    );
}
