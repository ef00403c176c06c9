//! Lost events bias the figures, and the report says which way. drops.c
//! frees everything it held while leakscope is stopped and its 1 MiB ring
//! buffer fills: those frees are lost, so the held site is an over-count.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use leakscope_tests::*;

const HELD_BYTES: u64 = 1000 * 4096;

#[test]
fn lost_frees_are_reported_as_over_counts_on_stderr_and_in_the_report() {
    let path = build_fixture("drops", &[]);
    let dir = scratch_dir("drops");
    let report_path = dir.join("report.json");

    let mut cmd = Command::new(&path);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut target = Proc::spawn(cmd, "fixture drops");
    let target_out = target.take_stdout();
    target_out.wait_for(|l| l == "ready", Duration::from_secs(30)).unwrap();

    let mut cmd = Command::new(leakscope_bin());
    cmd.args(["hunt", "-p", &target.pid().to_string(), "--ring-buffer-mib", "1"])
        .args(["--format", "json", "-o"])
        .arg(&report_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut tracer = Proc::spawn(cmd, "leakscope");
    let tracer_err = tracer.take_stderr();
    tracer_err
        .wait_for(|l| l.starts_with(ATTACHED_PREFIX), ATTACH_TIMEOUT)
        .unwrap_or_else(|why| panic!("never attached ({why}):\n{}", tracer_err.text(Duration::ZERO)));

    target.signal(libc::SIGUSR1);
    target_out.wait_for(|l| l == "held", WORKLOAD_TIMEOUT).unwrap();
    // The reader drains every 10 ms: the held blocks are recorded.
    thread::sleep(Duration::from_millis(500));
    // With the reader stopped the ring buffer fills, and the frees after are lost.
    tracer.signal(libc::SIGSTOP);
    target.signal(libc::SIGUSR2);
    target_out.wait_for(|l| l == "freed", WORKLOAD_TIMEOUT).unwrap();
    tracer.signal(libc::SIGCONT);
    thread::sleep(Duration::from_millis(500));
    tracer.signal(libc::SIGINT);
    let ctx = || tracer_err.text(Duration::ZERO);
    let status = tracer.wait_or_panic(STOP_TIMEOUT, &ctx);
    let stderr = tracer_err.text(Duration::from_secs(1));
    assert!(status.success(), "leakscope: {}\n{stderr}", describe_status(status));

    let report = parse_report(&std::fs::read_to_string(&report_path).unwrap(), &stderr);
    assert!(
        u64_field(&report["drops"], "ring_buffer_full") > 0,
        "{}",
        report["drops"]
    );
    // Every held block was freed, yet all of them are still counted.
    let held = find_site(&report, &path, "hold").unwrap_or_else(|| panic!("no hold site\n{stderr}"));
    assert_eq!(u64_field(held, "outstanding_bytes"), HELD_BYTES);
    assert_eq!(u64_field(held, "outstanding_allocations"), 1000);

    // JSON on the output, yet stderr says which way the figures are off.
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("leakscope: warning: events were lost"))
        .unwrap_or_else(|| panic!("no drop warning on stderr:\n{stderr}"));
    assert!(warning.contains("over-counts (frees were lost)"), "{warning}");
    assert!(warning.contains("under-counts (allocations were lost)"), "{warning}");

    // A lost free can make any growth verdict, a lost allocation hide growth.
    for site in sites(&report) {
        let caveat = site["verdict_caveat"].as_str();
        match site["verdict"].as_str() {
            Some("leak" | "growing" | "plateau") => {
                assert_eq!(caveat, Some("lost frees may have inflated this growth"), "{site}")
            }
            Some(_) => assert_eq!(caveat, Some("lost allocations may hide growth"), "{site}"),
            None => assert_eq!(caveat, None, "{site}"),
        }
    }

    // Rendered again as text: the drops line says the same, never "lower bounds".
    let text = run_leakscope(
        &["report", report_path.to_str().unwrap(), "--format", "text"],
        ERROR_TIMEOUT,
        "leakscope report",
    );
    assert!(text.status.success(), "{}", text.describe());
    let drops_line = text.stdout.lines().find(|l| l.starts_with("drops:")).unwrap();
    assert!(drops_line.contains("over-counts (frees were lost)"), "{drops_line}");
    assert!(
        text.stderr.contains("leakscope: warning: events were lost"),
        "{}",
        text.stderr
    );

    target.signal(libc::SIGTERM);
    target.wait_or_panic(Duration::from_secs(30), &|| "fixture after SIGTERM".into());
}
