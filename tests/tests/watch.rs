//! `leakscope watch` (contract: README, "watch"): a real Prometheus server
//! scrapes its /metrics, promtool checks them, and a real HTTP server receives
//! its webhook alerts. Fixture: `late_leak`, quiet at first, then leaking
//! (`leak_slowly`) or churning without growth (`churn_steadily`).
//!
//! Targets matched by `--comm` run the fixture through a symlink with a name
//! unique to the test process (the kernel takes comm from the name executed),
//! so processes of concurrent tests never match.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use leakscope_tests::prometheus::{describe_series, free_port, label, promtool_check_metrics, Prometheus};
use leakscope_tests::webhook::{http_get, Response, Webhook};
use leakscope_tests::*;
use serde_json::Value;

const LISTENING_PREFIX: &str = "leakscope: watch listening on http://";
/// Start-up may load and verify the eBPF programs before the server is up.
const LISTEN_TIMEOUT: Duration = ATTACH_TIMEOUT;
/// Every target's series must reach Prometheus within this.
const SERIES_TIMEOUT: Duration = Duration::from_secs(60);
/// A process started or ended while watch runs must show within this (the
/// scan runs every --interval, 0.5 s here; probing a new process takes longer).
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM to exit.
const WATCH_STOP_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(250);
const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------
// Helpers

/// Calls `f` every [`POLL`] until it returns Ok, or returns its last Err
/// once `timeout` has passed.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(format!("after {timeout:?}: {e}")),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// A running `late_leak` (or other fixture process) and its stdout lines.
struct Fixture {
    proc: Proc,
    out: Lines,
    comm: String,
}

impl Fixture {
    /// Runs `program MODE QUIET_S KIB_PER_S` and waits for "ready" (so it has
    /// exec'd: its comm is final).
    fn start(program: &Path, mode: &str, quiet_s: u32, kib_per_s: u32) -> Fixture {
        let mut cmd = Command::new(program);
        cmd.args([mode, &quiet_s.to_string(), &kib_per_s.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let name = program.file_name().unwrap().to_string_lossy().into_owned();
        let mut proc = Proc::spawn(cmd, &format!("{name} {mode}"));
        let out = proc.take_stdout();
        if let Err(why) = out.wait_for(|l| l == "ready", Duration::from_secs(30)) {
            panic!("{name} {mode} never printed \"ready\" ({why})");
        }
        let comm = comm_of(proc.pid());
        Fixture { proc, out, comm }
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

/// `node -e` that idles, once it printed "ready".
fn start_node() -> Fixture {
    let mut cmd = Command::new("node");
    cmd.args(["-e", "console.log('ready'); setInterval(() => {}, 1000);"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn(cmd, "node");
    let out = proc.take_stdout();
    if let Err(why) = out.wait_for(|l| l == "ready", Duration::from_secs(60)) {
        panic!("node never printed \"ready\" ({why})");
    }
    let comm = comm_of(proc.pid());
    Fixture { proc, out, comm }
}

fn comm_of(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/comm: {e}"))
        .trim_end_matches('\n')
        .to_string()
}

/// `dir/<name>` -> `target`: running it gives the process the comm `name`.
fn alias(target: &Path, dir: &Path, name: &str) -> PathBuf {
    assert!(name.len() <= 15, "comm {name:?} would be truncated");
    let link = dir.join(name);
    symlink(target, &link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    link
}

/// A running `leakscope watch`.
struct Watch {
    proc: Proc,
    err: Lines,
    addr: String,
}

impl Watch {
    /// `leakscope watch --listen 127.0.0.1:<free port> <args>`; waits for
    /// its "watch listening on" line, which must name that address.
    fn start(args: &[String]) -> Watch {
        Watch::start_with(args, |_| {})
    }

    /// `start`, with `adjust` applied to the command first.
    fn start_with(args: &[String], adjust: impl FnOnce(&mut Command)) -> Watch {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(leakscope_bin());
        cmd.arg("watch")
            .args(["--listen", &addr])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut proc = Proc::spawn(cmd, "leakscope watch");
        let err = proc.take_stderr();
        match err.wait_for(|l| l.starts_with(LISTENING_PREFIX), LISTEN_TIMEOUT) {
            Ok(line) => {
                let said = line[LISTENING_PREFIX.len()..].trim().trim_end_matches('/');
                assert_eq!(
                    said,
                    addr,
                    "the listening line names another address than --listen {addr}: {line:?}\n--- watch stderr ---\n{}",
                    err.text(Duration::ZERO)
                );
            }
            Err(why) => {
                let status = proc.wait_timeout(Duration::from_secs(1));
                panic!(
                    "leakscope watch never printed \"{LISTENING_PREFIX}{addr}\" ({why}); exit: {}\nargs: {args:?}\n--- watch stderr ---\n{}",
                    status.map(describe_status).unwrap_or_else(|| "still running".into()),
                    err.text(Duration::from_secs(2))
                );
            }
        }
        Watch { proc, err, addr }
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    fn stderr(&self) -> String {
        self.err.text(Duration::ZERO)
    }

    /// Its stderr (and whether it still runs), for failure messages.
    fn context(&mut self) -> String {
        let state = match self.proc.try_status() {
            Some(s) => format!("exited: {}", describe_status(s)),
            None => "still running".into(),
        };
        format!("--- leakscope watch ({state}) stderr ---\n{}", self.stderr())
    }

    fn get(&self, path: &str) -> Result<Response, String> {
        let r = http_get(&self.addr, path, HTTP_TIMEOUT)?;
        if r.status != 200 {
            return Err(format!("GET {path}: HTTP {}: {}", r.status, r.body));
        }
        Ok(r)
    }

    fn metrics(&self) -> Result<String, String> {
        Ok(self.get("/metrics")?.body)
    }

    fn health(&self) -> Result<Value, String> {
        let body = self.get("/health")?.body;
        serde_json::from_str(&body).map_err(|e| format!("/health is not JSON ({e}): {body}"))
    }

    /// Waits for a stderr line starting with `prefix`.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        match poll(timeout, || {
            self.stderr()
                .lines()
                .find(|l| l.starts_with(prefix))
                .map(str::to_string)
                .ok_or_else(|| "not yet".to_string())
        }) {
            Ok(line) => line,
            Err(why) => panic!("no stderr line starting with {prefix:?} ({why})\n{}", self.context()),
        }
    }

    /// SIGTERM, then the exit status (panics unless it exits within
    /// [`WATCH_STOP_TIMEOUT`]).
    fn terminate(&mut self) -> ExitStatus {
        self.proc.signal(libc::SIGTERM);
        let err = &self.err;
        self.proc.wait_or_panic(WATCH_STOP_TIMEOUT, &|| {
            format!("after SIGTERM\n--- watch stderr ---\n{}", err.text(Duration::ZERO))
        })
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn pid(&self) -> Option<i32> {
        self.labels.get("pid")?.parse().ok()
    }
}

/// Parses the sample lines of the text format (comments skipped). Panics on a
/// line it cannot read: promtool is the judge of the format, this only reads
/// values for the checks.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            // key="value" pairs; values may hold \" \\ \n escapes
            let mut chars = body.char_indices();
            let close = loop {
                let mut key = String::new();
                let mut closed_at = None;
                for (i, c) in chars.by_ref() {
                    match c {
                        '}' => {
                            closed_at = Some(i);
                            break;
                        }
                        '=' => break,
                        ',' | ' ' => {}
                        c => key.push(c),
                    }
                }
                if let Some(i) = closed_at {
                    break i;
                }
                assert!(matches!(chars.next(), Some((_, '"'))), "label value not quoted: {line}");
                let mut val = String::new();
                let mut escaped = false;
                let mut ended = false;
                for (_, c) in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            ended = true;
                            break;
                        }
                        (true, 'n') => {
                            val.push('\n');
                            escaped = false;
                        }
                        (_, c) => {
                            val.push(c);
                            escaped = false;
                        }
                    }
                }
                assert!(ended, "unterminated label value: {line}");
                labels.insert(key, val);
            };
            rest = &body[close + 1..];
        }
        let value_text = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// pid -> comm of the series of metric `name`.
fn pids_of(samples: &[Sample], name: &str) -> BTreeMap<i32, String> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter_map(|s| Some((s.pid()?, s.labels.get("comm").cloned().unwrap_or_default())))
        .collect()
}

/// The value of metric `name` for `pid` (first series with that pid).
fn value_for(samples: &[Sample], name: &str, pid: i32) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.pid() == Some(pid))
        .map(|s| s.value)
}

/// `leakscope_target_rss_bytes` in Prometheus as pid -> comm.
fn prometheus_pids(prom: &Prometheus) -> Result<BTreeMap<i32, String>, String> {
    let result = prom.query("leakscope_target_rss_bytes")?;
    Ok(result
        .iter()
        .filter_map(|s| {
            Some((
                label(s, "pid")?.parse().ok()?,
                label(s, "comm").unwrap_or_default().to_string(),
            ))
        })
        .collect())
}

/// A health entry of `pid`, if listed.
fn health_of(health: &Value, pid: i32) -> Option<&Value> {
    health["targets"]
        .as_array()?
        .iter()
        .find(|t| t["pid"].as_i64() == Some(pid as i64))
}

// ---------------------------------------------------------------------------
// 1. Prometheus scrapes watch

#[test]
fn prometheus_scrapes_watch() {
    let fixture = build_fixture("late_leak", &[]);
    let dir = scratch_dir("watch-scrape");
    let tag = std::process::id() % 100_000;
    let comm = format!("lswatch{tag}");
    let aliased = alias(&fixture, &dir, &comm);

    // By -p: one fixture and node; by --comm: the aliased fixture. All three
    // churn or idle: none grows.
    let by_pid = Fixture::start(&fixture, "steady", 0, 256);
    let by_comm = Fixture::start(&aliased, "steady", 0, 256);
    let node = start_node();
    assert_eq!(by_pid.comm, "late_leak");
    assert_eq!(by_comm.comm, comm);

    let reports = dir.join("reports");
    let mut watch = Watch::start(&[
        "-p".into(),
        by_pid.pid().to_string(),
        "-p".into(),
        node.pid().to_string(),
        "--comm".into(),
        comm.clone(),
        "--interval".into(),
        "0.5".into(),
        "--reports".into(),
        reports.display().to_string(),
    ]);
    let prom = Prometheus::start(&watch.addr);

    let mut want: BTreeMap<i32, String> = [&by_pid, &by_comm, &node]
        .iter()
        .map(|f| (f.pid(), f.comm.clone()))
        .collect();
    let covers = |seen: &BTreeMap<i32, String>, want: &BTreeMap<i32, String>| {
        want.iter().all(|(pid, comm)| seen.get(pid) == Some(comm))
    };
    let seen = poll(SERIES_TIMEOUT, || {
        let seen = prometheus_pids(&prom)?;
        if covers(&seen, &want) {
            Ok(seen)
        } else {
            Err(format!("Prometheus has pid -> comm {seen:?}"))
        }
    });
    if let Err(why) = seen {
        let metrics = watch
            .metrics()
            .unwrap_or_else(|e| format!("(GET /metrics failed: {e})"));
        panic!(
            "Prometheus never had leakscope_target_rss_bytes for every target {want:?} ({why})\n\
             scrape targets:\n{}\n--- /metrics ---\n{metrics}\n{}\n--- prometheus log ---\n{}",
            prom.targets(),
            watch.context(),
            prom.log_text()
        );
    }
    for f in [&by_pid, &by_comm, &node] {
        let line = format!("leakscope: watching PID {} ({})", f.pid(), f.comm);
        assert!(
            watch.stderr().lines().any(|l| l == line),
            "no line {line:?}\n{}",
            watch.context()
        );
    }

    // The exposition as served: valid and lint-free, and consistent.
    let text = watch
        .metrics()
        .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", watch.context()));
    let verdict = promtool_check_metrics(&text);
    assert!(verdict.ok(), "{verdict}\n--- /metrics ---\n{text}");
    let samples = parse_metrics(&text);
    let mut v = Verdict::new();
    for s in samples.iter().filter(|s| s.name.starts_with("leakscope_target_")) {
        match (s.pid(), s.labels.get("comm")) {
            (Some(pid), Some(c)) => {
                if let Some(expected) = want.get(&pid) {
                    v.check(c == expected, || format!("{s:?}: comm should be {expected:?}"));
                }
                v.check(pid != watch.pid(), || format!("watch watches itself: {s:?}"));
            }
            _ => v.fail(format!("per-target series without pid and comm labels: {s:?}")),
        }
    }
    for (&pid, comm) in &want {
        for name in [
            "leakscope_target_rss_bytes",
            "leakscope_target_anon_bytes",
            "leakscope_target_file_bytes",
            "leakscope_target_alert_state",
        ] {
            v.check(value_for(&samples, name, pid).is_some(), || {
                format!("no {name} for pid {pid} ({comm})")
            });
        }
        let rss = value_for(&samples, "leakscope_target_rss_bytes", pid).unwrap_or(0.0);
        let anon = value_for(&samples, "leakscope_target_anon_bytes", pid).unwrap_or(0.0);
        v.check(rss > 0.0 && anon > 0.0 && anon <= rss, || {
            format!("pid {pid} ({comm}): rss {rss}, anon {anon} (expected 0 < anon <= rss)")
        });
        // Nothing grows here, and the rate rule cannot fire before the
        // default 600 s window is covered.
        v.check(
            value_for(&samples, "leakscope_target_alert_state", pid) == Some(0.0),
            || format!("pid {pid} ({comm}): alert_state is not 0"),
        );
    }
    let rss_pids = pids_of(&samples, "leakscope_target_rss_bytes");
    let targets = samples.iter().find(|s| s.name == "leakscope_targets").map(|s| s.value);
    v.check(targets == Some(rss_pids.len() as f64), || {
        format!(
            "leakscope_targets {targets:?}, but leakscope_target_rss_bytes has {} pids: {rss_pids:?}",
            rss_pids.len()
        )
    });
    for name in ["leakscope_self_rss_bytes", "leakscope_self_cpu_seconds_total"] {
        v.check(samples.iter().any(|s| s.name == name), || format!("no {name}"));
    }
    let ctx = watch.context();
    v.finish("/metrics", &format!("--- /metrics ---\n{text}\n{ctx}"));

    // A process started after watch, matching --comm, is picked up.
    let late = Fixture::start(&aliased, "steady", 0, 256);
    want.insert(late.pid(), late.comm.clone());
    watch.wait_line(
        &format!("leakscope: watching PID {} ({comm})", late.pid()),
        SCAN_TIMEOUT,
    );
    let late_in_metrics = poll(SCAN_TIMEOUT, || {
        let text = watch.metrics()?;
        match pids_of(&parse_metrics(&text), "leakscope_target_rss_bytes").get(&late.pid()) {
            Some(c) if *c == comm => Ok(()),
            other => Err(format!("comm label {other:?} for pid {}:\n{text}", late.pid())),
        }
    });
    if let Err(why) = late_in_metrics {
        panic!("the late process never showed in /metrics ({why})\n{}", watch.context());
    }
    if let Err(why) = poll(SCAN_TIMEOUT, || {
        let seen = prometheus_pids(&prom)?;
        if covers(&seen, &want) {
            Ok(())
        } else {
            Err(format!("Prometheus has {seen:?}"))
        }
    }) {
        panic!(
            "Prometheus never had the late process {} ({why})\n{}",
            late.pid(),
            watch.context()
        );
    }

    // A process that exits is dropped: all its series go.
    let gone = by_pid.pid();
    drop(by_pid); // SIGKILL and reap
    want.remove(&gone);
    let dropped = poll(SCAN_TIMEOUT, || {
        let text = watch.metrics()?;
        let samples = parse_metrics(&text);
        let left: Vec<&Sample> = samples.iter().filter(|s| s.pid() == Some(gone)).collect();
        if !left.is_empty() {
            return Err(format!("series of pid {gone} left: {left:?}"));
        }
        let rss_pids = pids_of(&samples, "leakscope_target_rss_bytes");
        match want.keys().find(|p| !rss_pids.contains_key(p)) {
            Some(p) => Err(format!("pid {p} vanished too: {text}")),
            None => Ok(()),
        }
    });
    if let Err(why) = dropped {
        panic!("pid {gone} killed, but /metrics still ({why})\n{}", watch.context());
    }
    // ... and Prometheus marks them stale at its next scrape.
    let stale = poll(SCAN_TIMEOUT, || {
        let r = prom.query(&format!("leakscope_target_rss_bytes{{pid=\"{gone}\"}}"))?;
        if r.is_empty() {
            Ok(())
        } else {
            Err(describe_series(&r))
        }
    });
    if let Err(why) = stale {
        panic!("Prometheus still has pid {gone} ({why})\n{}", watch.context());
    }

    let status = watch.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "watch exit {} after SIGTERM (expected 0)\n{}",
        describe_status(status),
        watch.context()
    );
    drop((by_comm, node, late));
}

// ---------------------------------------------------------------------------
// 2. A leak is alerted and escalated; a steady process is not

/// Both fixtures move this much per second after their quiet start.
const RATE_KIB: u32 = 2048;
const QUIET_S: u32 = 3;
const HUNT_S: f64 = 5.0;
/// --window: the growth-rate fit window.
const WINDOW: Duration = Duration::from_secs(4);
/// From the leak's start to its webhook alert, at most.
const ALERT_TIMEOUT: Duration = Duration::from_secs(40);
/// An escalated hunt: attach (as `hunt`'s own bound), 5 s, report.
const HUNT_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn leak_is_alerted_and_escalated_steady_is_not() {
    let fixture = build_fixture("late_leak", &[]);
    let dir = scratch_dir("watch-leak");
    let tag = std::process::id() % 100_000;
    let leak_comm = format!("lsleak{tag}");
    let steady_comm = format!("lssteady{tag}");
    let leak_path = alias(&fixture, &dir, &leak_comm);
    let steady_path = alias(&fixture, &dir, &steady_comm);
    let reports = dir.join("reports");
    let hook = Webhook::start();
    // The alert command appends each alert's JSON (its stdin) here.
    let alerts_file = dir.join("alerts-from-command.json");

    // Watch first, by comm: the fixtures are picked up at a scan, quiet,
    // and the leak starts while watched.
    let mut watch = Watch::start(&[
        "--comm".into(),
        leak_comm.clone(),
        "--comm".into(),
        steady_comm.clone(),
        "--interval".into(),
        "0.5".into(),
        "--window".into(),
        WINDOW.as_secs().to_string(),
        "--warn-rate".into(),
        "512KiB/s".into(),
        "--crit-rate".into(),
        "1GiB/s".into(),
        "--hunt-duration".into(),
        "5".into(),
        "--hunt-sample-bytes".into(),
        "64KiB".into(),
        "--reports".into(),
        reports.display().to_string(),
        "--webhook".into(),
        hook.url("/hook"),
        "--alert-command".into(),
        format!("cat >> {}", alerts_file.display()),
    ]);
    // No series of the leaker can start before it does.
    let leaker_spawned = Instant::now();
    let leaker = Fixture::start(&leak_path, "leak", QUIET_S, RATE_KIB);
    let steady = Fixture::start(&steady_path, "steady", QUIET_S, RATE_KIB);
    let (lp, sp) = (leaker.pid(), steady.pid());
    // "active" comes QUIET_S after "ready": waited for at once, so the
    // instant is the leak's start (to a scheduler tick).
    if let Err(why) = leaker.out.wait_for(|l| l == "active", Duration::from_secs(30)) {
        panic!("the leaker never printed \"active\" ({why})");
    }
    let leak_start = Instant::now();
    if let Err(why) = steady.out.wait_for(|l| l == "active", Duration::from_secs(30)) {
        panic!("the steady fixture never printed \"active\" ({why})");
    }
    watch.wait_line(&format!("leakscope: watching PID {lp} ({leak_comm})"), SCAN_TIMEOUT);
    watch.wait_line(&format!("leakscope: watching PID {sp} ({steady_comm})"), SCAN_TIMEOUT);

    // The webhook gets the leaker's growth-rate alert.
    let is_leak_alert = |a: &Value| a["pid"].as_i64() == Some(lp as i64) && a["rule"] == "growth-rate";
    let left = ALERT_TIMEOUT.saturating_sub(leak_start.elapsed());
    let Some((alert_at, alert)) = hook.wait_for(is_leak_alert, left) else {
        let health = watch.health().map(|h| h.to_string()).unwrap_or_else(|e| e);
        panic!(
            "no growth-rate alert for the leaker (pid {lp}) within {ALERT_TIMEOUT:?} of the leak's start\n\
             --- webhook ---\n{}\n--- /health ---\n{health}\n{}",
            hook.describe(),
            watch.context()
        );
    };
    let latency = alert_at.duration_since(leak_start);
    eprintln!("alert {latency:?} after the leak started: {alert}");
    let mut v = Verdict::new();
    check_alert(&mut v, &alert, lp, &leak_comm, "webhook");
    // A rate rule fires only once the series covers the whole --window.
    v.check(alert_at.duration_since(leaker_spawned) >= WINDOW, || {
        format!(
            "the alert came {:?} after the leaker was started: before a {WINDOW:?} series could exist",
            alert_at.duration_since(leaker_spawned)
        )
    });

    // The alert command got the same alert on its stdin (it runs after the webhook).
    let from_command = poll(Duration::from_secs(10), || {
        let text = fs::read_to_string(&alerts_file).map_err(|e| e.to_string())?;
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .filter_map(Result::ok)
            .find(|a| a["at"] == alert["at"] && is_leak_alert(a))
            .ok_or_else(|| format!("not among the command's alerts yet: {text}"))
    });
    match from_command {
        Ok(a) => v.check(a == alert, || format!("the command got {a}, the webhook {alert}")),
        Err(why) => v.check(false, || format!("--alert-command: {why}")),
    }

    // The escalated hunt writes its report directory.
    let prefix = format!("leakscope: hunt of PID {lp} written to ");
    let line = watch.wait_line(&prefix, HUNT_TIMEOUT);
    let hunt_dir = PathBuf::from(&line[prefix.len()..]);
    check_report_dir(&mut v, &hunt_dir, &reports, &fixture, lp, &leak_comm);

    // /health: the leaker is leaking, with the report listed; the steady one
    // healthy, every time it is looked at.
    let mut steady_seen = Vec::new();
    let health = poll(SCAN_TIMEOUT, || {
        let h = watch.health()?;
        if let Some(s) = health_of(&h, sp) {
            steady_seen.push(s.clone());
        }
        let l = health_of(&h, lp).ok_or_else(|| format!("no leaker in {h}"))?;
        let listed = l["reports"]
            .as_array()
            .is_some_and(|r| r.iter().any(|d| d.as_str().map(Path::new) == Some(hunt_dir.as_path())));
        if l["status"] == "leaking" && listed {
            Ok(h)
        } else {
            Err(format!(
                "leaker not (yet) leaking with reports [{}]: {l}",
                hunt_dir.display()
            ))
        }
    })
    .unwrap_or_else(|why| panic!("/health ({why})\n{}", watch.context()));
    v.check(health["status"] == "ok", || {
        format!("/health status {}", health["status"])
    });
    let l = health_of(&health, lp).unwrap();
    v.check(l["comm"] == leak_comm.as_str(), || format!("/health leaker comm: {l}"));
    v.check(l["growth_bytes_per_s"].as_f64().is_some_and(|g| g > 0.0), || {
        format!("/health leaker growth_bytes_per_s: {l}")
    });
    v.check(matches!(l["tier"].as_u64(), Some(1 | 2)), || {
        format!("/health leaker tier: {l}")
    });
    if l["last_alert"].is_null() {
        v.fail(format!("/health leaker has no last_alert: {l}"));
    } else {
        check_alert(&mut v, &l["last_alert"], lp, &leak_comm, "/health last_alert");
    }

    // The steady process churns as much as the leaker leaks, for at least as
    // long again as the leaker took to be alerted: it stays healthy.
    let until = alert_at + latency.max(Duration::from_secs(10));
    while Instant::now() < until {
        match watch.health() {
            Ok(h) => match health_of(&h, sp) {
                Some(s) => steady_seen.push(s.clone()),
                None => v.fail(format!("/health does not list the steady pid {sp}: {h}")),
            },
            Err(e) => v.fail(format!("/health: {e}")),
        }
        thread::sleep(Duration::from_millis(500));
    }
    v.check(!steady_seen.is_empty(), || {
        "the steady process was never in /health".into()
    });
    for s in &steady_seen {
        if s["status"] != "healthy" || !s["last_alert"].is_null() {
            v.fail(format!("steady pid {sp} in /health: {s}"));
            break;
        }
    }

    // The whole run: alerts only for the leaker, one growth-rate warning
    // (re-sent at most every --alert-repeat, 3600 s by default).
    let bodies = hook.json_bodies();
    for (at, a) in &bodies {
        v.check(a["pid"].as_i64() != Some(sp as i64), || {
            format!("alert for the steady process: {a}")
        });
        // The quiet phase allocates nothing.
        v.check(*at >= leak_start, || format!("alert before the leak started: {a}"));
        v.check(a["schema"] == "leakscope/alert/v1", || format!("alert schema: {a}"));
    }
    let leak_warnings = bodies
        .iter()
        .filter(|(_, a)| is_leak_alert(a) && a["severity"] == "warning")
        .count();
    v.check(leak_warnings == 1, || {
        format!("{leak_warnings} growth-rate warnings for the leaker (expected exactly 1)")
    });
    let err = watch.stderr();
    v.check(
        err.lines().any(|l| {
            l.starts_with(&format!(
                "leakscope: ALERT warning PID {lp} ({leak_comm}): growth-rate: "
            ))
        }),
        || "no stderr ALERT line for the leaker".into(),
    );
    v.check(
        !err.lines()
            .any(|l| l.starts_with("leakscope: ALERT") && l.contains(&format!("PID {sp} "))),
        || "stderr has an ALERT for the steady process".into(),
    );
    v.check(
        !err.lines()
            .any(|l| l.starts_with(&format!("leakscope: hunt of PID {sp} "))),
        || "the steady process was hunted".into(),
    );
    let entries: Vec<String> = fs::read_dir(&reports)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    v.check(entries.len() == 1, || {
        format!("--reports holds {entries:?} (expected the leaker's one hunt)")
    });

    // /metrics agrees, and passes promtool with alerts and a hunt counted.
    match watch.metrics() {
        Ok(text) => {
            let verdict = promtool_check_metrics(&text);
            v.check(verdict.ok(), || format!("{verdict}\n--- /metrics ---\n{text}"));
            let samples = parse_metrics(&text);
            let get = |name: &str, pid: i32| value_for(&samples, name, pid);
            v.check(get("leakscope_target_alert_state", lp) == Some(1.0), || {
                format!(
                    "leaker alert_state {:?} (expected 1, warning)",
                    get("leakscope_target_alert_state", lp)
                )
            });
            v.check(get("leakscope_target_alert_state", sp) == Some(0.0), || {
                format!(
                    "steady alert_state {:?} (expected 0)",
                    get("leakscope_target_alert_state", sp)
                )
            });
            v.check(get("leakscope_target_hunts_total", lp) == Some(1.0), || {
                format!(
                    "leaker hunts_total {:?} (expected 1)",
                    get("leakscope_target_hunts_total", lp)
                )
            });
            v.check(get("leakscope_target_hunts_total", sp).unwrap_or(0.0) == 0.0, || {
                "the steady process has hunts".into()
            });
            let warnings = samples
                .iter()
                .find(|s| {
                    s.name == "leakscope_alerts_total"
                        && s.labels.get("severity").map(String::as_str) == Some("warning")
                })
                .map(|s| s.value);
            v.check(warnings.is_some_and(|w| w >= 1.0), || {
                format!("leakscope_alerts_total{{severity=\"warning\"}} {warnings:?} (expected >= 1)")
            });
        }
        Err(e) => v.fail(format!("GET /metrics: {e}")),
    }

    let status = watch.terminate();
    v.check(status.code() == Some(0), || {
        format!("watch exit {} after SIGTERM (expected 0)", describe_status(status))
    });
    let ctx = watch.context();
    v.finish(
        "leak alerted and escalated, steady not",
        &format!("--- webhook ---\n{}\n{ctx}", hook.describe()),
    );
    drop((leaker, steady));
}

/// A firing growth-rate warning for the leaker, as the contract shapes it.
fn check_alert(v: &mut Verdict, a: &Value, pid: i32, comm: &str, what: &str) {
    let mut bad = Vec::new();
    let mut want = |ok: bool, msg: &str| {
        if !ok {
            bad.push(msg.to_string());
        }
    };
    want(a["schema"] == "leakscope/alert/v1", "schema");
    want(a["state"] == "firing", "state");
    // 2 MiB/s is over --warn-rate 512KiB/s and far under --crit-rate 1GiB/s.
    want(a["severity"] == "warning", "severity (expected warning)");
    want(a["rule"] == "growth-rate", "rule");
    want(a["pid"].as_i64() == Some(pid as i64), "pid");
    want(a["comm"] == comm, "comm");
    want(a["message"].as_str().is_some_and(|m| !m.is_empty()), "message");
    // It fired, so the rate is at least --warn-rate; the fixture leaks
    // 2 MiB/s, and anonymous memory cannot grow much faster than that
    // (1.5x leaves room for the fit over a 4 s window of 0.5 s samples).
    let rate = a["growth_bytes_per_s"].as_f64();
    want(
        rate.is_some_and(|r| (0.5 * MIB..=1.5 * RATE_KIB as f64 * 1024.0).contains(&r)),
        "growth_bytes_per_s (expected 512 KiB/s..3 MiB/s)",
    );
    let (rss, anon) = (a["rss_bytes"].as_u64(), a["anon_bytes"].as_u64());
    want(
        matches!((rss, anon), (Some(r), Some(an)) if an > 0 && an <= r),
        "rss_bytes/anon_bytes (expected 0 < anon <= rss)",
    );
    want(
        a["at"]
            .as_str()
            .is_some_and(|t| t.len() >= 20 && t.as_bytes()[10] == b'T' && (t.ends_with('Z') || t.ends_with("+00:00"))),
        "at (expected RFC 3339 UTC)",
    );
    // Tier 2 attributes the growth: some growing path's frames name leak_slowly,
    // which touches (faults) every page it leaks.
    let paths = a["growing_paths"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let leak_path = paths.iter().find(|p| {
        p["frames"]
            .as_array()
            .is_some_and(|fs| fs.iter().any(|f| f.as_str().is_some_and(|f| f.contains("leak_slowly"))))
    });
    want(
        leak_path.is_some_and(|p| {
            p["bytes_per_s"].as_f64().is_some_and(|b| b > 0.0) && p["faulted_bytes"].as_u64().is_some_and(|b| b > 0)
        }),
        "growing_paths (expected one naming leak_slowly, with bytes_per_s > 0 and faulted_bytes > 0)",
    );
    if !bad.is_empty() {
        v.fail(format!("{what} alert: wrong {}: {a}", bad.join(", ")));
    }
}

/// DIR/<comm>-<pid>-<yyyymmddThhmmssZ>/ with the four files, the report
/// holding the leak.
fn check_report_dir(v: &mut Verdict, dir: &Path, reports: &Path, fixture: &Path, pid: i32, comm: &str) {
    let reports = reports.canonicalize().unwrap_or_else(|_| reports.to_path_buf());
    let parent_ok = dir
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .is_some_and(|p| p == reports);
    v.check(parent_ok, || {
        format!(
            "hunt directory {} is not in --reports {}",
            dir.display(),
            reports.display()
        )
    });
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = name.strip_prefix(&format!("{comm}-{pid}-")).unwrap_or("");
    let stamp_ok = stamp.len() == 16
        && stamp.char_indices().all(|(i, c)| match i {
            8 => c == 'T',
            15 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    v.check(stamp_ok, || {
        format!("hunt directory name {name:?} (expected {comm}-{pid}-yyyymmddThhmmssZ)")
    });
    let read = |file: &str| fs::read(dir.join(file)).unwrap_or_default();
    for file in ["report.json", "report.pb.gz", "report.md", "alert.json"] {
        v.check(!read(file).is_empty(), || {
            format!("{}/{file} is missing or empty", dir.display())
        });
    }
    v.check(read("report.pb.gz").starts_with(&[0x1f, 0x8b]), || {
        "report.pb.gz is not gzip".into()
    });
    v.check(
        String::from_utf8_lossy(&read("report.md")).contains("leak_slowly"),
        || "report.md does not name leak_slowly".into(),
    );
    match serde_json::from_slice::<Value>(&read("alert.json")) {
        Ok(a) => check_alert(v, &a, pid, comm, "alert.json"),
        Err(e) => v.fail(format!("alert.json is not JSON: {e}")),
    }
    let report: Value = match serde_json::from_slice(&read("report.json")) {
        Ok(r) => r,
        Err(e) => {
            v.fail(format!("report.json is not JSON: {e}"));
            return;
        }
    };
    v.check(report["schema"] == REPORT_SCHEMA, || {
        format!("report schema {}", report["schema"])
    });
    v.check(report["target"]["pid"].as_i64() == Some(pid as i64), || {
        format!("report target.pid {} (expected {pid})", report["target"]["pid"])
    });
    v.check(report["mode"] == "sampled", || {
        format!("report mode {} (expected sampled)", report["mode"])
    });
    v.check(report["sample_bytes"].as_u64() == Some(64 << 10), || {
        format!(
            "report sample_bytes {} (expected 65536, --hunt-sample-bytes)",
            report["sample_bytes"]
        )
    });
    let duration = report["duration_s"].as_f64().unwrap_or(f64::NAN);
    v.check((HUNT_S - 0.5..=HUNT_S + 1.5).contains(&duration), || {
        format!("report duration_s {duration} (expected ~{HUNT_S}, --hunt-duration)")
    });
    // The leak is 2 MiB/s throughout the hunt, so the site holds about
    // 2 MiB/s x duration_s (~10 MiB) of allocations made during it. Sampled at
    // N = 64 KiB, the estimate of B bytes has a relative standard error of
    // about sqrt(N/B) = sqrt(64 KiB / 10 MiB) ~ 8% (see tests/sampling.rs);
    // +-50% is over 6 sigma, and also absorbs a second of attach time counted
    // in duration_s.
    let expected = RATE_KIB as f64 * 1024.0 * if duration.is_finite() { duration } else { HUNT_S };
    let site = report["sites"].as_array().and_then(|ss| {
        ss.iter().find(|s| {
            s["frames"]
                .as_array()
                .is_some_and(|fs| fs.iter().any(|f| f["function"] == "leak_slowly"))
        })
    });
    match site {
        None => v.fail(format!(
            "report.json has no site with a leak_slowly frame\n{}",
            describe_sites(&report, "late_leak", fixture, OriginRule::Module)
        )),
        Some(s) => {
            let bytes = s["outstanding_bytes"].as_u64().unwrap_or(0) as f64;
            eprintln!(
                "leak_slowly site: {bytes} bytes estimated, {expected} leaked in {duration} s ({:+.1}%)",
                (bytes / expected - 1.0) * 100.0
            );
            v.check((0.5 * expected..=1.5 * expected).contains(&bytes), || {
                format!("leak_slowly site holds {bytes} bytes (expected {expected} +-50%: 2 MiB/s x {duration} s): {s}")
            });
        }
    }
}

#[test]
fn metrics_parser_reads_labels_and_values() {
    let s =
        parse_metrics("# HELP a x\n# TYPE a gauge\na{pid=\"1\",comm=\"x \\\"y\\\"\"} 2.5\nb 3 1700000000\nc{} +Inf\n");
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].name, "a");
    assert_eq!(s[0].pid(), Some(1));
    assert_eq!(s[0].labels["comm"], "x \"y\"");
    assert_eq!(s[0].value, 2.5);
    assert_eq!((s[1].name.as_str(), s[1].value), ("b", 3.0));
    assert!(s[1].labels.is_empty());
    assert_eq!(s[2].value, f64::INFINITY);
}

/// Pages first touched inside libc's `memset` (no frame pointer): the
/// frame-pointer walk from the fault skips the function that called it, and
/// the growing path must still name it, right after `memset`.
#[test]
fn growing_path_names_the_caller_of_memset() {
    let fixture = build_fixture("late_leak", &[]);
    let leaker = Fixture::start(&fixture, "zeroed", 0, 1024);
    let mut watch = Watch::start(&[
        "-p".into(),
        leaker.pid().to_string(),
        "--interval".into(),
        "0.5".into(),
        "--escalate-on".into(),
        "never".into(),
        "--reports".into(),
        scratch_dir("watch-memset").display().to_string(),
    ]);
    let found = poll(SCAN_TIMEOUT, || {
        let health = watch.health()?;
        let target = health_of(&health, leaker.pid()).ok_or("the leaker is not in /health")?;
        let paths = target["growing_paths"].as_array().cloned().unwrap_or_default();
        let frames = |p: &Value| -> Vec<String> {
            p["frames"]
                .as_array()
                .map(|f| f.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        paths
            .iter()
            .map(frames)
            .find(|f| f.first().is_some_and(|f| f.contains("memset")))
            .ok_or_else(|| format!("no path starts in memset: {paths:?}"))
    });
    let frames = found.unwrap_or_else(|why| panic!("{why}\n{}", watch.context()));
    assert!(
        frames.get(1).is_some_and(|f| f.starts_with("leak_zeroed ")),
        "the caller of memset is recovered: {frames:?}"
    );
    assert!(watch.terminate().success(), "{}", watch.context());
}

/// The endpoint cannot starve the monitor. Under a descriptor limit of 256,
/// 400 idle connections used to take every descriptor: scrapes failed and
/// the target was dropped and added again. Now scrapes go on during the
/// flood, the target stays, idle connections are closed after the header
/// timeout (5 s), and an oversized request head is refused.
#[test]
fn connection_flood_neither_fails_scrapes_nor_drops_targets() {
    use std::io::{Read as _, Write as _};
    use std::os::unix::process::CommandExt as _;

    let fixture = Fixture::start(&build_fixture("late_leak", &[]), "steady", 0, 64);
    let mut watch = Watch::start_with(
        &[
            "-p".into(),
            fixture.pid().to_string(),
            "--interval".into(),
            "0.5".into(),
        ],
        |cmd| {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: 256,
                        rlim_max: 256,
                    };
                    match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
            }
        },
    );
    let watching = format!("leakscope: watching PID {}", fixture.pid());
    watch.wait_line(&watching, SCAN_TIMEOUT);
    let target_pid = fixture.pid();
    let series_of_target = |text: &str| value_for(&parse_metrics(text), "leakscope_target_rss_bytes", target_pid);
    poll(SERIES_TIMEOUT, || {
        watch
            .metrics()
            .map(|m| series_of_target(&m))
            .and_then(|v| v.ok_or("no series yet".into()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", watch.context()));

    let flood: Vec<std::net::TcpStream> = (0..400)
        .map(|i| std::net::TcpStream::connect(&watch.addr).unwrap_or_else(|e| panic!("flood connection {i}: {e}")))
        .collect();
    // Scrapes during the flood, over several sampling rounds.
    for round in 0..8 {
        let metrics = watch
            .metrics()
            .unwrap_or_else(|e| panic!("scrape {round} during the flood: {e}\n{}", watch.context()));
        assert!(
            series_of_target(&metrics).is_some(),
            "scrape {round}: the target's series is gone"
        );
        thread::sleep(Duration::from_millis(500));
    }
    let stderr = watch.stderr();
    assert_eq!(
        stderr.matches(&watching).count(),
        1,
        "the target was dropped or added again:\n{stderr}"
    );
    assert!(!stderr.contains("no longer watching"), "{stderr}");

    // Every idle connection is closed by now (the header timeout is 5 s).
    thread::sleep(Duration::from_secs(2));
    for (i, mut conn) in flood.into_iter().enumerate() {
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut byte = [0u8; 1];
        let read = conn.read(&mut byte);
        assert!(
            matches!(read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "idle connection {i} is still open: {read:?}"
        );
    }

    // A request head past the bound: refused, never read to its end.
    let mut big = std::net::TcpStream::connect(&watch.addr).unwrap();
    big.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let _ = big.write_all(head.as_bytes());
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "oversized head answered: {answer}"
    );
    assert!(
        watch.metrics().is_ok(),
        "scrape after the oversized request\n{}",
        watch.context()
    );
    assert!(watch.terminate().success(), "{}", watch.context());
}

/// A watch escalation of a Node target takes the heap census like any hunt
/// of one: its report holds the census groups that grew (the fixture leaks
/// in bursts between censuses), located, and with the variables that hold
/// them.
#[test]
fn escalated_hunt_of_a_node_target_takes_heap_censuses() {
    let dir = scratch_dir("watch-census");
    let reports = dir.join("reports");
    let script = workspace_root().join("tests/fixtures/node/census_leaks.js");
    let mut cmd = Command::new("node");
    cmd.args(["--expose-gc".as_ref(), script.as_os_str(), "60".as_ref()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let fixture = Proc::spawn(cmd, "node census_leaks.js");
    let pid = fixture.pid();
    // The memory-limit rule fires at the first sample: the hunt starts at once.
    let mut watch = Watch::start(&[
        "-p".into(),
        pid.to_string(),
        "--interval".into(),
        "0.5".into(),
        "--warn-limit".into(),
        "0.01".into(),
        "--hunt-duration".into(),
        "24".into(),
        "--reports".into(),
        reports.display().to_string(),
    ]);
    let prefix = format!("leakscope: hunt of PID {pid} written to ");
    let line = watch.wait_line(&prefix, HUNT_TIMEOUT);
    let report_path = PathBuf::from(&line[prefix.len()..]).join("report.json");
    let report: Value = serde_json::from_slice(&fs::read(&report_path).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", report_path.display(), watch.context()));
    let census = &report["node"]["heap_census"];
    let context = || format!("{}\n{}", serde_json::to_string_pretty(census).unwrap(), watch.stderr());
    let censuses = census["censuses"]
        .as_array()
        .unwrap_or_else(|| panic!("no censuses\n{}", context()));
    assert!(censuses.len() >= 5, "{}", context());
    let groups = census["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("no groups\n{}", context()));
    let group = |kind: &str, name: &str| {
        groups
            .iter()
            .find(|g| g["kind"] == kind && g["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} group {name}\n{}", context()))
    };
    for (kind, name, holder) in [("object", "CachedResult", "resultCache"), ("closure", "onData", "bus")] {
        let g = group(kind, name);
        let (first, last) = (g["count_first"].as_u64().unwrap(), g["count_last"].as_u64().unwrap());
        assert!(last > first, "{name}: {g}\n{}", context());
        assert!(matches!(g["verdict"].as_str(), Some("leak" | "growing")), "{name}: {g}");
        let paths = strings(&g["retained_by"]);
        assert!(
            paths.iter().any(|p| p.contains(holder)),
            "{name}: {paths:?}\n{}",
            context()
        );
    }
    let on_data = group("closure", "onData");
    assert_eq!(on_data["enclosing_function"], "handleRequest", "{on_data}");
    assert!(
        on_data["location"]
            .as_str()
            .is_some_and(|l| l.contains("census_leaks.js")),
        "{on_data}"
    );
    assert!(watch.terminate().success(), "{}", watch.context());
}
