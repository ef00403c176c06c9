//! The fault matrix (faults.c): the target has hundreds of threads, forks,
//! execs, or is killed mid-hunt; leakscope is killed; two hunts trace one
//! target at once. Counts stay exact, the report is written whenever
//! leakscope lives to write it, and a killed leakscope leaves no BPF program
//! and no breakpoint in the target behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use leakscope_tests::{bpf, *};
use serde_json::Value;

const NAME: &str = "faults";

fn check(fault: &str, report: &Value, path: &Path, mode: Mode, status: ExitStatus, stderr: &str) {
    check_fixture_report(
        report,
        NAME,
        path,
        OriginRule::Module,
        mode,
        &expected::faults(fault),
        |v| v.check_exit_ok(status, stderr),
    );
}

fn launch(fault: &str) {
    let path = build_fixture(NAME, &[]);
    std::env::set_var("FAULT", fault);
    let run = run_launch(&path, &[], &[]);
    check(fault, &run.report, &path, Mode::Launch, run.status, &run.stderr);
}

#[test]
fn hundreds_of_threads() {
    launch("threads");
}

#[test]
fn forked_children_are_not_followed() {
    launch("fork");
}

#[test]
fn an_exec_starts_a_new_model() {
    launch("exec");
}

/// `faults --wait` (FAULT=steady), once it printed "ready".
struct Target {
    proc: Proc,
    out: Lines,
}

impl Target {
    fn start() -> Target {
        let mut cmd = Command::new(build_fixture(NAME, &[]));
        cmd.env("FAULT", "steady")
            .arg("--wait")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn(cmd, "faults");
        let out = proc.take_stdout();
        out.wait_for(|l| l == "ready", Duration::from_secs(30)).unwrap();
        Target { proc, out }
    }

    /// Runs the workload (12 x 1212 leaked).
    fn work(&self) {
        self.proc.signal(libc::SIGUSR1);
        self.out.wait_for(|l| l == "done", WORKLOAD_TIMEOUT).unwrap();
    }
}

/// [`attach_hunt`] of PID, once it is attached.
struct Hunt {
    proc: Proc,
    err: Lines,
    report: PathBuf,
}

impl Hunt {
    fn start(pid: i32) -> Hunt {
        let report = scratch_dir("faults").join("report.json");
        let mut cmd = attach_hunt(pid, &report, &[]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut proc = Proc::spawn(cmd, "leakscope");
        let err = proc.take_stderr();
        if let Err(why) = err.wait_for(|l| l.starts_with(ATTACHED_PREFIX), ATTACH_TIMEOUT) {
            panic!("not attached ({why})\n{}", err.text(Duration::from_secs(1)));
        }
        Hunt { proc, err, report }
    }

    /// Waits for it to end by itself or after `signal`, then reads the report.
    fn finish(mut self, signal: Option<i32>) -> (Value, ExitStatus, String) {
        if let Some(signal) = signal {
            self.proc.signal(signal);
        }
        let status = self.proc.wait_or_panic(STOP_TIMEOUT, &|| self.err.text(Duration::ZERO));
        let stderr = self.err.text(Duration::from_secs(2));
        let text = fs::read_to_string(&self.report).unwrap_or_else(|e| panic!("no report ({e})\n{stderr}"));
        (parse_report(&text, &stderr), status, stderr)
    }
}

#[test]
fn target_killed_mid_hunt() {
    let mut target = Target::start();
    let hunt = Hunt::start(target.proc.pid());
    target.work();
    let pid = target.proc.pid();
    target.proc.signal(libc::SIGKILL);
    target
        .proc
        .wait_timeout(Duration::from_secs(30))
        .expect("SIGKILL ends the target");
    let (report, status, stderr) = hunt.finish(None);
    let path = build_fixture(NAME, &[]);
    check(
        "steady",
        &report,
        &path,
        Mode::Attach { pid, exited: true },
        status,
        &stderr,
    );
}

#[test]
fn two_hunts_at_once() {
    let target = Target::start();
    let pid = target.proc.pid();
    let hunts = [Hunt::start(pid), Hunt::start(pid)];
    target.work();
    let path = build_fixture(NAME, &[]);
    for hunt in hunts {
        let (report, status, stderr) = hunt.finish(Some(libc::SIGINT));
        check(
            "steady",
            &report,
            &path,
            Mode::Attach { pid, exited: false },
            status,
            &stderr,
        );
    }
}

#[test]
fn a_killed_tracer_leaves_nothing_behind() {
    let target = Target::start();
    let pid = target.proc.pid();
    assert_eq!(bpf::patched_libc_bytes(pid), 0, "libc patched before any hunt");
    let mut hunt = Hunt::start(pid);
    let objects = bpf::bpf_objects(hunt.proc.pid());
    assert!(!objects.is_empty(), "the hunt holds no BPF program or link");
    assert!(
        bpf::patched_libc_bytes(pid) > 0,
        "no uprobe breakpoint in the target's libc"
    );
    hunt.proc.signal(libc::SIGKILL);
    hunt.proc
        .wait_timeout(Duration::from_secs(30))
        .expect("SIGKILL ends leakscope");
    // Programs are freed once the last reference goes, after an RCU grace period.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<&bpf::BpfObject> = objects.iter().filter(|o| bpf::bpf_object_exists(o)).collect();
        let patched = bpf::patched_libc_bytes(pid);
        if left.is_empty() && patched == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after leakscope was killed: BPF objects {left:?} still loaded, {patched} libc bytes still patched"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The target runs on unharmed.
    target.work();
}
