//! `/tmp/perf-PID.map` is written by the target, and any user can put
//! anything there for their own process. jit_perfmap.c runs JIT-like code
//! (100 x 4096 B leaked from an anonymous executable mapping) as `nobody`
//! and makes its own perf map: valid, with a malformed line, a FIFO, or a
//! symlink to a file only root can read. The leak must be counted exactly
//! every time; the name must come from a valid map only; the hunt must never
//! block; nothing of the root-only file may reach the report.

use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use leakscope_tests::*;
use serde_json::Value;

const NOBODY: u32 = 65534;
const JIT_ADDRESS: u64 = 0x100_0000_0000;

/// jit_perfmap as `nobody` with `PERF_MAP=perf_map`, from a copy where
/// `nobody` can reach it whatever the checkout's parent directories allow.
/// The copy's directory is removed by the caller.
fn as_nobody(perf_map: &str) -> (Command, PathBuf) {
    static RUN: AtomicU32 = AtomicU32::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("leakscope-jit-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("jit_perfmap");
    std::fs::copy(build_fixture("jit_perfmap", &[]), &path).unwrap();
    let mut cmd = Command::new(&path);
    cmd.env("PERF_MAP", perf_map).uid(NOBODY).gid(NOBODY);
    (cmd, dir)
}

/// Hunts jit_perfmap (see [`as_nobody`]) until its workload is done, then
/// checks the JIT site's exact count.
fn hunt(perf_map: &str) -> Attach {
    let (mut cmd, dir) = as_nobody(perf_map);
    cmd.arg("--wait");
    let run = run_attach_command(&dir.join("jit_perfmap"), cmd, &[], Stop::Signal(libc::SIGINT));
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", run.fixture_pid));
    let _ = std::fs::remove_dir_all(&dir);
    let mut v = Verdict::new();
    v.check_exit_ok(run.status, &run.stderr);
    let jit = jit_sites(&run.report);
    v.check(
        jit.len() == 1
            && u64_field(jit[0], "outstanding_bytes") == 409_600
            && u64_field(jit[0], "outstanding_allocations") == 100,
        || format!("want one site of 100 x 4096 B called from the JIT code, got {jit:#?}"),
    );
    v.finish(&format!("jit_perfmap with PERF_MAP={perf_map}"), &run.stderr);
    run
}

/// Sites whose first frame is in the JIT code (the caller of malloc).
fn jit_sites(report: &Value) -> Vec<&Value> {
    sites(report)
        .iter()
        .filter(|s| {
            s["frames"][0]["address"]
                .as_str()
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                .is_some_and(|a| (JIT_ADDRESS..JIT_ADDRESS + 0x40).contains(&a))
        })
        .collect()
}

fn jit_function(report: &Value) -> Option<String> {
    jit_sites(report).first()?["frames"][0]["function"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn a_valid_perf_map_names_the_jit_frame() {
    let run = hunt("plain");
    assert_eq!(jit_function(&run.report).as_deref(), Some("jitLeak"), "{}", run.stderr);
}

#[test]
fn one_invalid_utf8_line_costs_only_that_line() {
    let run = hunt("badutf8");
    assert_eq!(jit_function(&run.report).as_deref(), Some("jitLeak"), "{}", run.stderr);
    assert!(run.stderr.contains("skipped 1 malformed lines"), "{}", run.stderr);
}

#[test]
fn a_fifo_perf_map_does_not_block_the_hunt() {
    // Before the fix the hunt blocked in open(2) with every probe attached.
    let run = hunt("fifo");
    assert_ne!(jit_function(&run.report).as_deref(), Some("jitLeak"));
    assert!(run.stderr.contains("not a regular file"), "{}", run.stderr);
}

#[test]
fn a_symlinked_perf_map_discloses_nothing() {
    let dir = scratch_dir("secret");
    let secret = dir.join("root-only");
    std::fs::write(
        &secret,
        format!("{JIT_ADDRESS:x} 40 JS:*SECRET_OF_ROOT /etc/shadow:1:1\n"),
    )
    .unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = hunt(&format!("symlink:{}", secret.display()));
    let text = run.report.to_string();
    assert!(
        !text.contains("SECRET_OF_ROOT"),
        "the root-only file reached the report"
    );
    assert!(run.stderr.contains("not reading /tmp/perf-"), "{}", run.stderr);
}

/// In `watch`, one target with a FIFO for a perf map used to block the
/// daemon: every target's monitoring stopped and SIGTERM was ignored.
#[test]
fn a_fifo_perf_map_does_not_block_watch() {
    let (mut cmd, dir) = as_nobody("fifo");
    cmd.arg("--wait").stdin(Stdio::null()).stdout(Stdio::piped());
    let mut target = Proc::spawn(cmd, "jit_perfmap");
    let out = target.take_stdout();
    out.wait_for(|l| l == "ready", Duration::from_secs(30)).unwrap();
    let addr = format!("127.0.0.1:{}", leakscope_tests::prometheus::free_port());
    let mut cmd = Command::new(leakscope_bin());
    cmd.args([
        "watch",
        "--interval",
        "0.5",
        "--listen",
        &addr,
        "-p",
        &target.pid().to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut watch = Proc::spawn(cmd, "leakscope watch");
    let err = watch.take_stderr();
    // The perf map is read when the target's probes attach.
    let refused = err.wait_for(|l| l.contains("not reading /tmp/perf-"), ATTACH_TIMEOUT);
    let listed = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        leakscope_tests::webhook::http_get(&addr, "/health", Duration::from_secs(5))
            .ok()
            .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
            .is_some_and(|health| {
                health["targets"]
                    .as_array()
                    .is_some_and(|ts| ts.iter().any(|t| t["pid"].as_i64() == Some(target.pid() as i64)))
            })
    });
    watch.signal(libc::SIGTERM);
    let status = watch.wait_or_panic(Duration::from_secs(60), &|| err.text(Duration::ZERO));
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", target.pid()));
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = err.text(Duration::from_secs(2));
    assert!(refused.is_ok(), "no warning about the FIFO\n{stderr}");
    assert!(listed, "/health never listed the target\n{stderr}");
    assert!(status.success(), "watch exit {}\n{stderr}", describe_status(status));
}
