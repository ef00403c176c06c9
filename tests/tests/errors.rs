//! Error paths: one "leakscope: error:" line on stderr and a non-zero exit
//! (2 for usage and environment errors), promptly.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use leakscope_tests::*;

fn assert_one_error(out: &HuntOutput, code: Option<i32>, must_contain: Option<&str>) {
    match code {
        Some(c) => assert_eq!(out.status.code(), Some(c), "exit code\n{}", out.describe()),
        None => assert!(!out.status.success(), "leakscope succeeded\n{}", out.describe()),
    }
    let errors = out.error_lines();
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one line starting {ERROR_PREFIX:?}\n{}",
        out.describe()
    );
    if let Some(needle) = must_contain {
        assert!(
            errors[0].contains(needle),
            "error line should contain {needle:?}: {}",
            errors[0]
        );
    }
}

fn hunt_pid(pid: &str, label: &str) -> HuntOutput {
    let dir = scratch_dir(label);
    let report = dir.join("report.json");
    run_leakscope(
        &[
            "hunt",
            "-p",
            pid,
            "--duration",
            "300",
            "--format",
            "json",
            "-o",
            report.to_str().unwrap(),
        ],
        ERROR_TIMEOUT,
        label,
    )
}

#[test]
fn pid_above_pid_max() {
    let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = (pid_max + 1).to_string();
    let out = hunt_pid(&pid, "no-such-pid");
    assert_one_error(&out, Some(2), Some(&pid));
}

#[test]
fn pid_of_reaped_process() {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id().to_string();
    child.wait().unwrap();
    let out = hunt_pid(&pid, "gone-pid");
    assert_one_error(&out, Some(2), Some(&pid));
}

#[test]
fn zombie_target() {
    let mut cmd = Command::new("true");
    cmd.stdin(Stdio::null());
    let zombie = Proc::spawn(cmd, "zombie");
    let pid = zombie.pid();
    // Not reaped: wait until the kernel shows it as a zombie.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z')) {
            break;
        }
        assert!(Instant::now() < deadline, "pid {pid} never became a zombie: {stat}");
        thread::sleep(Duration::from_millis(10));
    }
    let out = hunt_pid(&pid.to_string(), "zombie");
    assert_one_error(&out, None, None);
    drop(zombie);
}

#[test]
fn not_root() {
    // A copy that user nobody can reach and execute, whatever the path of
    // the real binary.
    let dir = std::env::temp_dir().join(format!("leakscope-tests-nonroot-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("leakscope");
    fs::copy(leakscope_bin(), &bin).expect("copy leakscope binary");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();

    let args: Vec<OsString> = [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin.to_str().unwrap(),
        "hunt",
        "--duration",
        "5",
        "--",
        "/bin/true",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let out = run_captured(Path::new("setpriv"), &args, ERROR_TIMEOUT, "not-root");
    let _ = fs::remove_dir_all(&dir);
    assert!(
        !out.stderr.contains("setpriv:"),
        "setpriv itself failed\n{}",
        out.describe()
    );
    assert_one_error(&out, Some(2), Some("root"));
}

/// A kernel thread has no user memory: refused, instead of an empty report
/// that blamed "a static binary?".
#[test]
fn kernel_thread() {
    // PF_KTHREAD in field 9 of /proc/PID/stat.
    let kthread = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let flags = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(6));
            flags
                .and_then(|f| f.parse::<u64>().ok())
                .is_some_and(|f| f & 0x0020_0000 != 0)
        })
        .expect("no kernel thread visible in /proc");
    let out = hunt_pid(&kthread.to_string(), "kernel-thread");
    assert_one_error(&out, Some(2), Some(&format!("PID {kthread} is a kernel thread")));
}

/// A /proc/PID/maps that cannot be read is not an exited process. Here
/// /proc/1/maps is not readable even by root (PID 1 belongs to the host's
/// container runtime); where it is readable, no other process is tried.
#[test]
fn unreadable_maps_is_not_an_exit() {
    let denied = match fs::read_to_string("/proc/1/maps") {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => true,
        Ok(_) => false,
        Err(e) => panic!("reading /proc/1/maps: {e}"),
    };
    if !denied {
        eprintln!("/proc/1/maps is readable here: nothing to check");
        return;
    }
    let out = hunt_pid("1", "pid1-maps");
    assert_one_error(&out, Some(2), Some("cannot read /proc/1/maps: Permission denied"));
    assert!(!out.stderr.contains("exited"), "{}", out.describe());
}

#[test]
fn usage_without_target() {
    let out = run_leakscope(&["hunt"], ERROR_TIMEOUT, "usage");
    assert_eq!(out.status.code(), Some(2), "usage error\n{}", out.describe());
}

/// `watch` refuses what it cannot do before it starts: a PID that does not
/// exist, no target at all, a webhook it cannot reach, a port in use.
#[test]
fn watch_refuses_bad_input() {
    let reports = scratch_dir("watch-errors");
    let reports = reports.to_str().unwrap();
    let watch = |args: &[&str], label: &str| {
        let mut argv = vec!["watch", "--reports", reports];
        argv.extend_from_slice(args);
        run_leakscope(&argv, ERROR_TIMEOUT, label)
    };
    let out = watch(&["-p", "4194304"], "watch-no-pid");
    assert_one_error(&out, Some(2), Some("no process with PID 4194304"));
    let out = watch(&[], "watch-nothing");
    assert_one_error(&out, Some(2), Some("nothing to watch"));
    let own = std::process::id().to_string();
    let out = watch(&["-p", &own, "--webhook", "https://example.com/hook"], "watch-https");
    assert_one_error(&out, Some(2), Some("only http://"));
    let out = watch(
        &["-p", &own, "--warn-rate", "2MiB/s", "--crit-rate", "1MiB/s"],
        "watch-rates",
    );
    assert_one_error(&out, Some(2), Some("warning growth rate is above the critical one"));
    // A negative window used to panic (exit 101).
    let config = Path::new(reports).join("negative-window.toml");
    fs::write(&config, format!("[[target]]\npid = {own}\nwindow = -5\n")).unwrap();
    let out = watch(&["--config", config.to_str().unwrap()], "watch-negative-window");
    assert_one_error(
        &out,
        Some(2),
        Some("[[target]] number 1: window: -5 must be a non-negative"),
    );
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let out = watch(&["-p", &own, "--listen", &address], "watch-port-in-use");
    assert_one_error(&out, Some(2), Some(&format!("cannot listen on {address}")));
}

/// `report`, `diff` and `watch --config` read the files they are given
/// whole: /dev/zero, a FIFO and a file past the bound are refused at once
/// (they used to grow memory until the OOM killer came).
#[test]
fn inputs_are_bounded() {
    let dir = scratch_dir("bounded-inputs");
    let fifo = dir.join("fifo");
    let _ = fs::remove_file(&fifo);
    let fifo_c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0, "mkfifo");
    // Sparse: past the 1 GiB bound for reports without using the disk.
    let huge = dir.join("huge.json");
    fs::File::create(&huge).unwrap().set_len((1 << 30) + 1).unwrap();
    let big_config = dir.join("big.toml");
    fs::write(&big_config, "#".repeat((1 << 20) + 1)).unwrap();
    let (fifo, huge, big_config) = (
        fifo.to_str().unwrap(),
        huge.to_str().unwrap(),
        big_config.to_str().unwrap(),
    );
    let not_regular = |path: &str| format!("cannot read {path}: not a regular file");
    for (args, label, error) in [
        (vec!["report", "/dev/zero"], "report-zero", not_regular("/dev/zero")),
        (vec!["report", fifo], "report-fifo", not_regular(fifo)),
        (
            vec!["report", huge],
            "report-huge",
            format!("cannot read {huge}: larger than the limit of 1.0 GiB"),
        ),
        (
            vec!["diff", "/dev/zero", "/dev/zero"],
            "diff-zero",
            not_regular("/dev/zero"),
        ),
        (
            vec!["diff", huge, huge],
            "diff-huge",
            format!("cannot read {huge}: larger than the limit"),
        ),
        (
            vec!["watch", "--config", "/dev/zero"],
            "config-zero",
            not_regular("/dev/zero"),
        ),
        (
            vec!["watch", "--config", big_config],
            "config-big",
            format!("cannot read {big_config}: larger than the limit of 1.0 MiB"),
        ),
    ] {
        let started = Instant::now();
        let out = run_leakscope(&args, ERROR_TIMEOUT, label);
        assert_one_error(&out, Some(2), Some(&error));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{label} took {:?}",
            started.elapsed()
        );
    }
}

/// Out of descriptors while loading the eBPF programs: said as such, not
/// blamed on BTF or root.
#[test]
fn loader_out_of_descriptors() {
    use std::os::unix::process::CommandExt as _;
    let mut sleeper = Command::new("sleep");
    sleeper.arg("300").stdin(Stdio::null());
    let target = Proc::spawn(sleeper, "sleep");
    let dir = scratch_dir("loader-emfile");
    let mut cmd = Command::new(leakscope_bin());
    cmd.args(["hunt", "-p", &target.pid().to_string(), "--duration", "300", "-o"])
        .arg(dir.join("report.txt"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe. 12 descriptors: enough to
    // start, not for the maps.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 12,
                rlim_max: 12,
            };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let mut tracer = Proc::spawn(cmd, "leakscope");
    let (out, err) = (tracer.take_stdout(), tracer.take_stderr());
    let status = tracer.wait_or_panic(ERROR_TIMEOUT, &|| err.text(Duration::ZERO));
    let out = HuntOutput {
        status,
        stdout: out.text(Duration::from_secs(1)),
        stderr: err.text(Duration::from_secs(1)),
    };
    assert_one_error(&out, Some(2), Some("too many open files"));
    assert!(!out.stderr.contains("BTF"), "{}", out.describe());
}
