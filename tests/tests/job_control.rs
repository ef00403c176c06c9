//! A launched command under job control behaves as without leakscope:
//! SIGSTOP stops it, SIGCONT continues it at once (leakscope, its ptrace
//! tracer, used to keep it stopped until the hunt ended), and it is traced
//! throughout (ticker.c's 40 leaked blocks are all counted).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use leakscope_tests::*;

fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn ticks(lines: &Lines) -> usize {
    lines.text(Duration::ZERO).lines().filter(|l| *l == "tick").count()
}

#[test]
fn sigstop_then_sigcont_resumes_a_launched_command() {
    let path = build_fixture("ticker", &[]);
    let report_path = scratch_dir("job-control").join("report.json");
    let mut cmd = Command::new(leakscope_bin());
    cmd.args(["hunt", "--format", "json", "--top", "1000", "-o"])
        .arg(&report_path)
        .arg("--")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut tracer = Proc::spawn(cmd, "leakscope");
    let out = tracer.take_stdout();
    let err = tracer.take_stderr();
    let ctx = || format!("--- leakscope stderr ---\n{}", err.text(Duration::ZERO));
    out.wait_for(|l| l == "tick", ATTACH_TIMEOUT)
        .unwrap_or_else(|why| panic!("no tick ({why})\n{}", ctx()));
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tracer.pid())).unwrap();
    let child: i32 = children
        .split_whitespace()
        .next()
        .expect("the launched child")
        .parse()
        .unwrap();

    // SAFETY: kill(2) on the launched child.
    unsafe { libc::kill(child, libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(state(child), Some('T' | 't')) {
        assert!(Instant::now() < deadline, "SIGSTOP did not stop the child\n{}", ctx());
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopped_at = ticks(&out);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ticks(&out), stopped_at, "the child ticked while stopped");

    // SAFETY: as above.
    unsafe { libc::kill(child, libc::SIGCONT) };
    let status = tracer.wait_or_panic(Duration::from_secs(60), &|| {
        format!(
            "the child did not finish after SIGCONT (state {:?}, {} of 40 ticks)\n{}",
            state(child),
            ticks(&out),
            ctx()
        )
    });
    assert_eq!(ticks(&out), 40);
    let stderr = err.text(Duration::from_secs(2));
    let report = parse_report(&std::fs::read_to_string(&report_path).unwrap(), &stderr);
    check_fixture_report(
        &report,
        "ticker",
        &path,
        OriginRule::Module,
        Mode::Launch,
        &expected::ticker(),
        |v| v.check_exit_ok(status, &stderr),
    );
}
