//! What a hunt leaves behind once it is over: no uprobe breakpoint in the
//! target, no BPF program or link, and a target that works on unharmed.
//! Uprobes go in multi-links (one per program and module) where the kernel
//! has them (6.6+); tracepoints may be closed by a short-lived child.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leakscope_tests::{bpf, *};
use serde_json::Value;

const NAME: &str = "faults";
/// The kernel frees a closed program after an RCU grace period.
const GONE_WITHIN: Duration = Duration::from_secs(30);

/// The uprobes placed by `objects`' links, and how many of those links are
/// multi-links.
fn uprobes(objects: &[bpf::BpfObject]) -> (u32, usize) {
    let links = objects.iter().filter(|o| o.kind == bpf::BpfKind::Link);
    let multi = links.clone().filter(|o| o.event_type == "uprobe_multi").count();
    (links.map(|o| o.uprobes).sum(), multi)
}

/// While attached: libc's allocators carry breakpoints placed by
/// multi-links, one per program (malloc's return probe serves the whole
/// family), fewer links than uprobes.
fn assert_probed_by_multi_links(target_pid: i32, objects: &[bpf::BpfObject]) {
    assert!(
        bpf::patched_libc_bytes(target_pid) > 0,
        "no uprobe breakpoint in the target's libc"
    );
    let (placed, multi) = uprobes(objects);
    assert!(multi > 0, "no uprobe multi-link (kernel 6.6+ has them): {objects:?}");
    assert!(
        placed as usize > multi && placed as usize >= LIBC_PROBES.len(),
        "{placed} uprobes in {multi} multi-links: {objects:?}"
    );
}

/// After the hunt: the breakpoints are gone as soon as leakscope has exited;
/// its programs and links (tracepoints may close in a child) soon after.
fn assert_nothing_left(target_pid: i32, objects: &[bpf::BpfObject]) {
    assert_eq!(
        bpf::patched_libc_bytes(target_pid),
        0,
        "breakpoints left in the target's libc"
    );
    bpf::assert_gone_within(objects, GONE_WITHIN);
}

fn check(report: &Value, path: &Path, mode: Mode) {
    check_fixture_report(
        report,
        NAME,
        path,
        OriginRule::Module,
        mode,
        &expected::faults("steady"),
        |_| {},
    );
}

#[test]
fn an_ended_hunt_leaves_nothing_behind() {
    let path = build_fixture(NAME, &[]);
    let mut cmd = Command::new(&path);
    cmd.env("FAULT", "steady")
        .arg("--wait")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut target = Proc::spawn(cmd, NAME);
    let target_out = target.take_stdout();
    target_out.wait_for(|l| l == "ready", Duration::from_secs(30)).unwrap();
    let pid = target.pid();
    assert_eq!(bpf::patched_libc_bytes(pid), 0, "libc patched before any hunt");

    let report_path = scratch_dir("cost-attach").join("report.json");
    let mut cmd = attach_hunt(pid, &report_path, &[]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut hunt = Proc::spawn(cmd, "leakscope");
    let err = hunt.take_stderr();
    if let Err(why) = err.wait_for(|l| l.starts_with(ATTACHED_PREFIX), ATTACH_TIMEOUT) {
        panic!("not attached ({why})\n{}", err.text(Duration::from_secs(1)));
    }
    let objects = bpf::bpf_objects(hunt.pid());
    assert_probed_by_multi_links(pid, &objects);
    target.signal(libc::SIGUSR1);
    target_out.wait_for(|l| l == "done", WORKLOAD_TIMEOUT).unwrap();
    hunt.signal(libc::SIGINT);
    let status = hunt.wait_or_panic(STOP_TIMEOUT, &|| err.text(Duration::ZERO));
    assert!(
        status.success(),
        "leakscope: {}\n{}",
        describe_status(status),
        err.text(Duration::ZERO)
    );
    assert_nothing_left(pid, &objects);

    let stderr = err.text(Duration::from_secs(1));
    let text = fs::read_to_string(&report_path).unwrap_or_else(|e| panic!("no report ({e})\n{stderr}"));
    check(
        &parse_report(&text, &stderr),
        &path,
        Mode::Attach { pid, exited: false },
    );
    // The target goes on unharmed and ends as it would have.
    target.signal(libc::SIGTERM);
    let status = target.wait_or_panic(Duration::from_secs(30), &|| stderr.clone());
    assert!(
        status.success(),
        "the target after the hunt: {}",
        describe_status(status)
    );
}

/// A hunt that launched its target and ended by `--duration` leaves the
/// target running, unprobed.
#[test]
fn a_launched_hunt_leaves_nothing_behind() {
    let path = build_fixture(NAME, &[]);
    let report_path = scratch_dir("cost-launch").join("report.json");
    let mut cmd = Command::new(leakscope_bin());
    cmd.args(["hunt", "--duration", "3", "--format", "json", "--top", "1000", "-o"])
        .arg(&report_path)
        .arg("--")
        .arg(&path)
        .arg("--wait")
        .env("FAULT", "steady")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut hunt = Proc::spawn(cmd, "leakscope");
    // The target writes to leakscope's stdout, which it inherited.
    let out = hunt.take_stdout();
    let err = hunt.take_stderr();
    if let Err(why) = out.wait_for(|l| l == "ready", ATTACH_TIMEOUT) {
        panic!("the target never started ({why})\n{}", err.text(Duration::from_secs(1)));
    }
    // leakscope forks the target before it starts any thread.
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", hunt.pid())).unwrap();
    let pid: i32 = children
        .split_whitespace()
        .next()
        .expect("the launched target")
        .parse()
        .unwrap();
    let objects = bpf::bpf_objects(hunt.pid());
    assert_probed_by_multi_links(pid, &objects);
    let status = hunt.wait_or_panic(STOP_TIMEOUT, &|| err.text(Duration::ZERO));
    let stderr = err.text(Duration::from_secs(1));
    assert!(status.success(), "leakscope: {}\n{stderr}", describe_status(status));
    let text = fs::read_to_string(&report_path).unwrap_or_else(|e| panic!("no report ({e})\n{stderr}"));
    let report = parse_report(&text, &stderr);
    assert_eq!(u64_field(&report["target"], "pid"), pid as u64);
    assert_nothing_left(pid, &objects);

    // Unprobed, the target still runs its workload and exits cleanly.
    // SAFETY: plain kill(2) on a pid we read from the report.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    out.wait_for(|l| l == "done", WORKLOAD_TIMEOUT).unwrap();
    assert_eq!(bpf::patched_libc_bytes(pid), 0, "breakpoints back in the target's libc");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}/exe")).exists() {
        assert!(Instant::now() < deadline, "the target did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
