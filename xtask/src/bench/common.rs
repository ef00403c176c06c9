//! What the benchmark sections share: running programs and the Node.js
//! service under load, reading figures from their output, and the tables of
//! BENCHMARKS.md.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{needs, Available, Tools};
use crate::{output, repo_root, run, target_dir};

/// Sampling threshold of the sampled configurations (512 KiB, as in the issue).
pub(super) const SAMPLE_BYTES: &str = "524288";
/// Leaves of the distinct-stacks program: one allocation stack each.
pub(super) const LEAVES: u64 = 10_000;

/// The Node.js HTTP service that sections 3 and 4 load with wrk.
pub(super) struct HttpService {
    argv: Vec<String>,
    running: Running,
    url: String,
}

impl HttpService {
    /// Starts bench/http_service.js and warms it up with `warm_up` seconds of
    /// load; `leaking`: with its leaks (`--leak`).
    pub(super) fn start(warm_up: u32, leaking: bool) -> Result<Self> {
        let mut argv = words(&["node", "bench/http_service.js"]);
        if leaking {
            argv.push("--leak".into());
        }
        // Its first line is the port it listens on.
        let running = Running::target(&argv, "")?;
        let url = format!("http://127.0.0.1:{}/", running.log().trim());
        let service = HttpService { argv, running, url };
        service.load(warm_up)?;
        Ok(service)
    }

    pub(super) fn pid(&self) -> u32 {
        self.running.pid()
    }

    pub(super) fn wrk(&self, secs: u32) -> Vec<String> {
        words(&["wrk", "-t1", "-c16", &format!("-d{secs}s"), &self.url])
    }

    /// Loads it with wrk for `secs` seconds; returns the requests/s.
    pub(super) fn load(&self, secs: u32) -> Result<f64> {
        requests_per_sec(&self.wrk(secs))
    }

    /// Loads it with wrk for `secs` seconds; returns the requests/s and the
    /// CPU seconds that each of `pids` used meanwhile.
    pub(super) fn load_cpu(&self, secs: u32, pids: &[u32], ticks: f64) -> Result<(f64, Vec<f64>)> {
        let cpu = || pids.iter().map(|&pid| cpu_secs(pid, ticks)).collect::<Result<Vec<_>>>();
        let before = cpu()?;
        let rps = self.load(secs)?;
        let used = cpu()?
            .iter()
            .zip(&before)
            .map(|(after, before)| after - before)
            .collect();
        Ok((rps, used))
    }

    /// The section's commands: the service, its load, then `tracers`, with
    /// PORT and PID for what changes from run to run.
    pub(super) fn commands<'a>(&self, secs: u32, tracers: impl IntoIterator<Item = &'a Vec<String>>) -> Vec<String> {
        let shown = |argv: &Vec<String>| {
            let line = shell_line(argv).replace(&self.url, "http://127.0.0.1:PORT/");
            line.replace(&format!("-p {}", self.pid()), "-p PID")
        };
        let load = [&self.argv, &self.wrk(secs)].map(shown);
        load.into_iter().chain(tracers.into_iter().map(shown)).collect()
    }
}

/// Runs `rounds` rounds of every available (`Ok`) configuration, calling
/// `run(round, index, config)`; rounds count from 1. The order rotates by one
/// each round (A B C, B C A, C A B, …), so that drift, and following a given
/// configuration, hit all alike.
pub(super) fn interleave<C>(
    rounds: usize,
    configs: &[(&str, Available<C>)],
    mut run: impl FnMut(usize, usize, &C) -> Result<()>,
) -> Result<()> {
    for round in 1..=rounds {
        for k in 0..configs.len() {
            let i = (k + round - 1) % configs.len();
            if let Ok(config) = &configs[i].1 {
                run(round, i, config)?;
            }
        }
    }
    Ok(())
}

/// The headers of `rps_columns`, after the configuration's name.
const RPS_HEADER: [&str; 5] = ["configuration", "requests/s (median)", "min", "max", "× untraced"];

/// The requests/s columns of a configuration: median, min, max, and its
/// median over `untraced` with `decimals` places; `None` if not measured.
pub(super) fn rps_columns(values: &[f64], untraced: Option<f64>, decimals: usize) -> Option<Vec<String>> {
    let s = stats(values)?;
    Some(vec![
        format!("{:.0}", s.median),
        format!("{:.0}", s.min),
        format!("{:.0}", s.max),
        untraced.map_or("–".into(), |u| format!("{:.decimals$}", s.median / u)),
    ])
}

// ---- running programs ------------------------------------------------------

/// Where the benchmarks build their programs and write reports; removed at the end.
pub(super) fn work_dir() -> std::path::PathBuf {
    target_dir().join("bench")
}

/// A path as seen from the repository root (the working directory), for
/// commands that read well in BENCHMARKS.md.
pub(super) fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root()).unwrap_or(path).display().to_string()
}

pub(super) fn words(argv: &[&str]) -> Vec<String> {
    argv.iter().map(|w| w.to_string()).collect()
}

pub(super) fn command(argv: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// The command as one would type it in a shell.
pub(super) fn shell_line(argv: &[String]) -> String {
    let quote = |w: &String| match w.contains(|c: char| !(c.is_ascii_alphanumeric() || "-_./=:".contains(c))) {
        true => format!("'{w}'"),
        false => w.clone(),
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// Builds bench/NAME.c as the issue asks (-O2 with frame pointers and debug
/// info, so stacks are whole and named); returns the binary's path.
pub(super) fn compile(name: &str) -> Result<String> {
    compile_as(name, name, "-fno-omit-frame-pointer")
}

/// Builds bench/NAME.c with -O2, debug info and `frames` (whether it keeps
/// frame pointers) into BINARY; returns the binary's path.
pub(super) fn compile_as(name: &str, binary: &str, frames: &str) -> Result<String> {
    let binary = work_dir().join(binary);
    run(Command::new("gcc")
        .args(["-O2", "-g", frames, "-pthread", "-o"])
        .arg(&binary)
        .arg(format!("bench/{name}.c")))?;
    Ok(rel(&binary))
}

/// The libc that `program` loads, which bpftrace must probe (leakscope finds it itself).
pub(super) fn libc_of(program: &str) -> Result<String> {
    let ldd = output(Command::new("ldd").arg(program))?;
    ldd.lines()
        .filter(|l| l.contains("libc.so"))
        .find_map(|l| l.split("=>").nth(1)?.split_whitespace().next().map(str::to_owned))
        .with_context(|| format!("no libc in `ldd {program}`:\n{ldd}"))
}

/// Runs a benchmarked program once and returns the figure it printed: the
/// last stdout line that is a number alone (tracers print lines around it).
pub(super) fn measure(argv: &[String]) -> Result<f64> {
    let out = command(argv).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            shell_line(argv),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .with_context(|| format!("`{}` printed no figure", shell_line(argv)))
}

/// Runs the command to the end and returns its stderr, failing unless it succeeds.
pub(super) fn output_stderr(argv: &[String]) -> Result<String> {
    let out = command(argv).stdout(Stdio::null()).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("`{}` failed ({}):\n{stderr}", shell_line(argv), out.status);
    }
    Ok(stderr)
}

pub(super) struct Timed {
    pub(super) secs: f64,
    pub(super) status: ExitStatus,
    pub(super) stdout: String,
}

/// An exit status as a shell shows it: the code, or 128 + the signal.
pub(super) fn exit(status: ExitStatus) -> String {
    status
        .code()
        .or(status.signal().map(|s| 128 + s))
        .map_or("?".into(), |c| c.to_string())
}

/// Runs the command to the end (whatever its status) and times it.
pub(super) fn timed(argv: &[String]) -> Result<Timed> {
    eprintln!("+ {}", shell_line(argv));
    let start = Instant::now();
    let out = command(argv).stderr(Stdio::null()).output()?;
    Ok(Timed {
        secs: start.elapsed().as_secs_f64(),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
    })
}

/// Leakscope's own CPU seconds in one hunt: to load and attach (mostly
/// the kernel's verifier), and in all.
pub(super) struct LeakscopeCpu {
    pub(super) attach_s: f64,
    pub(super) total_s: f64,
}

/// Runs a `leakscope -v hunt` to its end; returns its stdout (a launched
/// target's), its stderr and its own CPU time, read from /proc/PID/stat when
/// it logs that it attached and when it has exited but is not yet reaped (its
/// last work, the report, included; its target's not).
pub(super) fn run_measuring_cpu(argv: &[String], ticks: f64) -> Result<(String, String, LeakscopeCpu)> {
    eprintln!("+ {}", shell_line(argv));
    let mut child = command(argv).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let stdout = read_lines(child.stdout.take().expect("piped"));
    let stderr = child.stderr.take().expect("piped");
    let pid = child.id();
    let reader = thread::spawn(move || {
        let (mut log, mut attach_s) = (String::new(), None);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if attach_s.is_none() && line.contains(LOGGED[0]) {
                attach_s = cpu_secs(pid, ticks).ok();
            }
            log += &line;
            log.push('\n');
        }
        (log, attach_s)
    });
    // SAFETY: a plain waitid on our own child; WNOWAIT leaves it a zombie.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
    if waited != 0 {
        bail!("waitid: {}", std::io::Error::last_os_error());
    }
    let total_s = cpu_secs(pid, ticks);
    let status = child.wait()?;
    let (log, attach_s) = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("`{}` failed ({status}):\n{log}", shell_line(argv));
    }
    let attach_s = attach_s.with_context(|| format!("no `{}` line in:\n{log}", LOGGED[0]))?;
    let stdout = stdout.iter().collect::<Vec<_>>().join("\n");
    Ok((
        stdout,
        log,
        LeakscopeCpu {
            attach_s,
            total_s: total_s?,
        },
    ))
}

/// A loopback address whose port was free a moment ago: bound to port 0,
/// then released (`leakscope watch --listen` takes no port 0).
pub(super) fn free_loopback_addr() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// The body of `GET http://ADDR/PATH`, if it answers 200 within 5 s.
pub(super) fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).ok()?;
    if status.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    // Read the body by its length when the server gives one: it may keep the connection open.
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).ok()?;
        }
        None => {
            reader.read_to_end(&mut body).ok()?;
        }
    }
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// The `Requests/sec:` figure of a wrk run.
pub(super) fn requests_per_sec(argv: &[String]) -> Result<f64> {
    let out = output(&mut command(argv))?;
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:")?.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in the output of `{}`:\n{out}", shell_line(argv)))
}

/// Sends a signal (`INT`, `TERM`) to a program: INT ends a hunt as Ctrl-C
/// would (it writes the report, then detaches); TERM stops a watch.
pub(super) fn signal(pid: u32, name: &str) -> Result<()> {
    run(Command::new("kill").args([&format!("-{name}"), &pid.to_string()]))
}

/// A program running in the background, one of whose output streams is read
/// line by line. Dropping it kills the program.
pub(super) struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// A benchmark target: reads its stdout and waits for a line containing `ready`.
    pub(super) fn target(argv: &[String], ready: &str) -> Result<Self> {
        let mut child = command(argv).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut running = Running {
            stdin: child.stdin.take(),
            child,
            lines: read_lines(stdout),
            seen: vec![],
        };
        running.wait_for(ready, Duration::from_secs(30))?;
        Ok(running)
    }

    /// A leakscope hunt or watch: reads its stderr (its announcements and log).
    pub(super) fn leakscope(argv: &[String]) -> Result<Self> {
        eprintln!("+ {}", shell_line(argv));
        let mut child = command(argv).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().expect("piped");
        Ok(Running {
            child,
            stdin: None,
            lines: read_lines(stderr),
            seen: vec![],
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines read so far.
    pub(super) fn log(&self) -> String {
        self.seen.join("\n")
    }

    /// Reads lines until one contains `needle`.
    pub(super) fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("no `{needle}` within {timeout:?}; got:\n{}", self.log()),
                Err(RecvTimeoutError::Disconnected) => bail!("it ended before `{needle}`; got:\n{}", self.log()),
            }
        }
    }

    /// Writes `line` and a newline to the program's stdin.
    pub(super) fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("no stdin")?;
        writeln!(stdin, "{line}")?;
        Ok(stdin.flush()?)
    }

    /// The last line read that starts with `prefix`.
    pub(super) fn last_line(&self, prefix: &str) -> Option<&str> {
        self.seen
            .iter()
            .rev()
            .find(|l| l.starts_with(prefix))
            .map(String::as_str)
    }

    /// Waits for the program to exit, calling `poll` with its pid every
    /// 50 ms meanwhile; returns its status and the last value `poll` gave.
    /// Fails (and kills it) if it has not exited within 5 minutes.
    pub(super) fn finish_polling(&mut self, poll: impl Fn(u32) -> Option<f64>) -> Result<(ExitStatus, Option<f64>)> {
        let limit = Duration::from_secs(300);
        let started = Instant::now();
        let mut last = None;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if started.elapsed() > limit {
                self.seen.extend(self.lines.try_iter());
                bail!(
                    "it did not exit within {limit:?} of being asked to; got:\n{}",
                    self.log()
                );
            }
            last = poll(self.pid()).or(last);
            thread::sleep(Duration::from_millis(50));
        };
        self.seen.extend(self.lines.iter());
        Ok((status, last))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The lines of a stream, read on a thread of their own.
pub(super) fn read_lines(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

// ---- reading figures -------------------------------------------------------

/// Phrases of leakscope's `-v` log followed by seconds, in table order.
pub(super) const LOGGED: [&str; 3] = ["loaded and attached in ", "report built ", "detached in "];

/// The seconds after `phrase` in a log, e.g. `loaded and attached in 0.181 s`.
pub(super) fn logged_secs(log: &str, phrase: &str) -> Option<f64> {
    log.lines()
        .find_map(|l| l.split_once(phrase))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
}

/// The first `"key": N` of a leakscope JSON report. The report is leakscope's
/// own pretty-printed JSON, and most sections need a few counts from it, which
/// this finds without parsing the whole report.
pub(super) fn json_count(json: &str, key: &str) -> Option<u64> {
    let rest = json.split_once(&format!("\"{key}\":"))?.1.trim_start();
    rest[..rest.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

/// Whether a report has the `node` section of a hunt with Node-specific probes.
pub(super) fn has_node_section(json: &str) -> bool {
    json.contains("\"node\": {")
}

/// The report's drop counters, e.g. `ring_buffer_full 0, stack_lost 12, …`.
pub(super) fn drops(json: &str) -> String {
    [
        "ring_buffer_full",
        "stack_lost",
        "pending_calls_full",
        "malformed_records",
    ]
    .iter()
    .map(|key| format!("{key} {}", json_count(json, key).map_or("?".into(), |n| n.to_string())))
    .collect::<Vec<_>>()
    .join(", ")
}

pub(super) const MIB: f64 = 1024.0 * 1024.0;

/// A size field of /proc/PID/status (VmHWM, VmRSS), in MiB.
pub(super) fn vm_mib(pid: u32, field: &str) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// A process's CPU time so far, user and system, all threads (utime + stime of /proc/PID/stat).
pub(super) fn cpu_secs(pid: u32, ticks_per_sec: f64) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // `PID (COMM) STATE …`: COMM may hold spaces and parentheses, so count
    // from the last `)`; the first field after it is field 3, and utime and
    // stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(utime), Some(stime)) => Ok((utime + stime) / ticks_per_sec),
        _ => bail!("no utime and stime in /proc/{pid}/stat: {stat}"),
    }
}

/// The clock ticks per second of /proc/PID/stat's times.
pub(super) fn clock_ticks() -> Result<f64> {
    let out = output(Command::new("getconf").arg("CLK_TCK"))?;
    out.trim()
        .parse()
        .with_context(|| format!("`getconf CLK_TCK` printed {out:?}"))
}

/// The sum of a metric's samples over all its label sets in Prometheus text
/// format; `None` if it has none.
pub(super) fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labels) => labels.split_once('}')?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.split_whitespace().next()?.parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

pub(super) struct BpfMap {
    /// From bpftool, when it is installed.
    pub(super) name: Option<String>,
    pub(super) kind: &'static str,
    pub(super) max_entries: u64,
    pub(super) memlock: u64,
}

/// The BPF maps a process holds, from the fdinfo of its map fds (Debian's
/// bpftool cannot tell which process holds a map; it names one by id).
pub(super) fn bpf_maps(pid: u32) -> Result<Vec<BpfMap>> {
    let mut ids = Vec::new();
    let mut maps = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(kind)) = (field("map_id:"), field("map_type:")) else {
            continue;
        };
        if ids.contains(&id) {
            continue;
        }
        ids.push(id);
        // enum bpf_map_type, for the kinds leakscope uses.
        let kind = match kind {
            1 => "hash",
            2 => "array",
            5 => "percpu_hash",
            6 => "percpu_array",
            7 => "stack_trace",
            9 => "lru_hash",
            27 => "ringbuf",
            _ => "other",
        };
        // `ID: TYPE  name NAME  flags …`
        let name = output(Command::new("bpftool").args(["map", "show", "id", &id.to_string()]))
            .ok()
            .and_then(|show| Some(show.split_once("  name ")?.1.split_whitespace().next()?.to_owned()));
        maps.push(BpfMap {
            name,
            kind,
            max_entries: field("max_entries:").unwrap_or(0),
            memlock: field("memlock:").unwrap_or(0),
        });
    }
    Ok(maps)
}

// ---- figures and the report ------------------------------------------------

pub(super) struct Stats {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

/// Median, min and max; `None` for no values.
pub(super) fn stats(values: &[f64]) -> Option<Stats> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Some(Stats {
        median,
        min: sorted[0],
        max: sorted[n - 1],
    })
}

pub(super) fn median(values: &[f64]) -> Option<f64> {
    stats(values).map(|s| s.median)
}

pub(super) fn fmt_ns(ns: f64) -> String {
    match ns {
        ns if ns >= 100.0 => format!("{ns:.0}"),
        ns => format!("{ns:.1}"),
    }
}

/// `median (min–max)` in seconds.
pub(super) fn fmt_secs(values: &[f64]) -> String {
    stats(values).map_or("–".into(), |s| format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max))
}

/// The figure columns of a configuration that was not measured.
pub(super) fn unavailable(why: &str) -> Vec<String> {
    vec![why.to_string()]
}

/// One benchmark's part of BENCHMARKS.md.
pub(super) struct Section {
    pub(super) title: &'static str,
    /// What is measured, and how.
    pub(super) about: String,
    /// The commands run, for a reader to rerun one.
    pub(super) commands: Vec<String>,
    pub(super) header: Vec<&'static str>,
    pub(super) rows: Vec<Vec<String>>,
    /// Findings: targets met or missed, limits hit.
    pub(super) notes: Vec<String>,
}

impl Section {
    /// An empty section of the Node.js service under wrk, or one that says
    /// why it cannot run (Err) when node or wrk is missing.
    /// Its columns: the configuration, `rps_columns`, then `more`.
    pub(super) fn for_node_service(
        title: &'static str,
        about: String,
        more: &[&'static str],
        tools: &Tools,
    ) -> std::result::Result<Section, Box<Section>> {
        let mut section = Section {
            title,
            about,
            commands: vec![],
            header: [&RPS_HEADER[..], more].concat(),
            rows: vec![],
            notes: vec![],
        };
        match needs(tools.node, "node").and(needs(tools.wrk, "wrk")) {
            Ok(()) => Ok(section),
            Err(why) => {
                section.rows.push([vec!["all".into()], unavailable(&why)].concat());
                Err(Box::new(section))
            }
        }
    }

    pub(super) fn failed(title: &'static str, error: &anyhow::Error) -> Self {
        Section {
            title,
            about: String::new(),
            commands: vec![],
            header: vec!["result"],
            rows: vec![vec![format!("**failed**: {}", format!("{error:#}").replace('\n', " "))]],
            notes: vec![],
        }
    }

    pub(super) fn markdown(&self) -> String {
        let mut md = format!("## {}\n\n", self.title);
        if !self.about.is_empty() {
            let _ = writeln!(md, "{}\n", self.about);
        }
        if !self.commands.is_empty() {
            let _ = writeln!(md, "```sh\n{}\n```\n", self.commands.join("\n"));
        }
        let row = |cells: &[String]| format!("| {} |\n", cells.join(" | ").replace('\n', " "));
        md += &row(&self.header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
        md += &row(&vec!["---".to_string(); self.header.len()]);
        for cells in &self.rows {
            // A row that was not measured has fewer cells: the rest are blank.
            let mut cells = cells.clone();
            cells.resize(self.header.len(), String::new());
            md += &row(&cells);
        }
        for note in &self.notes {
            let _ = write!(md, "\n- {note}");
        }
        if !self.notes.is_empty() {
            md.push('\n');
        }
        md
    }
}

/// "met" or "missed by N %" for a figure against an issue target (lower is better).
pub(super) fn target_note(what: &str, value: f64, limit: f64, unit: &str, why: &str) -> String {
    if value <= limit {
        format!("Issue target, {what}: **met** ({value:.2}{unit}).")
    } else {
        let over = (value / limit - 1.0) * 100.0;
        format!("Issue target, {what}: **missed** ({value:.2}{unit}, {over:.0} % over). {why}")
    }
}

/// "met" or "missed" for requests/s as a ratio to untraced against an issue target (higher is better).
pub(super) fn throughput_note(what: &str, ratio: f64, target: f64, decimals: usize, why: &str) -> String {
    if ratio >= target {
        format!("Issue target, {what}: **met** ({ratio:.decimals$} ×).")
    } else {
        format!("Issue target, {what}: **missed** ({ratio:.decimals$} ×). {why}")
    }
}

/// The trap floor of tracing `target` (a command whose libc is `libc`):
/// bench/empty_probes.c's empty programs, on multi-links as leakscope's, where
/// leakscope places its probes on malloc (entry and return) and free.
/// With `session`, malloc's entry is a session uprobe whose program declines
/// the return probe, as a sampler could for a call it passes over.
pub(super) struct TrapFloor {
    empty_probes: String,
    pub(super) libc: String,
    /// File offsets of the probes.
    pub(super) malloc: u64,
    pub(super) free: u64,
}

impl TrapFloor {
    /// Reads leakscope's placements from its `-v` log of a hunt of `idle`, a
    /// command that makes no pairs.
    pub(super) fn at_placements(tools: &Tools, libc: &str, idle: &[String]) -> Result<Self> {
        let report = rel(&work_dir().join("placements.json"));
        let mut args = vec!["--mode", "exact", "--format", "json", "-o", &report, "--"];
        args.extend(idle.iter().map(String::as_str));
        let log = output_stderr(&tools.hunt(true, &args))?;
        let placed = |symbol: &str| -> Result<u64> {
            let phrase = format!("probe {symbol} at +");
            let offset = log
                .lines()
                .find_map(|l| l.split_once(&phrase)?.1.split(':').next())
                .with_context(|| format!("no `{phrase}` line in:\n{log}"))?;
            let past = u64::from_str_radix(offset.trim_start_matches("0x"), 16)?;
            Ok(file_offset(libc, symbol)? + past)
        };
        Ok(TrapFloor {
            empty_probes: compile("empty_probes")?,
            libc: libc.to_string(),
            malloc: placed("malloc")?,
            free: placed("free")?,
        })
    }

    pub(super) fn argv(&self, session: bool, target: &[String]) -> Vec<String> {
        let malloc = if session {
            vec![format!("session:{:#x}", self.malloc)]
        } else {
            vec![
                format!("entry:{:#x}", self.malloc),
                format!("return:{:#x}", self.malloc),
            ]
        };
        [
            vec![self.empty_probes.clone(), self.libc.clone()],
            malloc,
            vec![format!("entry:{:#x}", self.free), "--".into()],
            target.to_vec(),
        ]
        .concat()
    }
}

/// The file offset of `symbol` (a dynamic symbol) in the ELF file `module`.
fn file_offset(module: &str, symbol: &str) -> Result<u64> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let symbols = output(Command::new("nm").args(["-D", "--defined-only", module]))?;
    let address = symbols
        .lines()
        .find_map(|l| {
            let [value, _, name] = l.split_whitespace().collect::<Vec<_>>()[..] else {
                return None;
            };
            (name.split('@').next() == Some(symbol)).then(|| hex(value))?
        })
        .with_context(|| format!("no symbol {symbol} in {module}"))?;
    let headers = output(Command::new("readelf").args(["-lW", module]))?;
    headers
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["LOAD", offset, vaddr, _, filesz, ..] => Some((hex(offset)?, hex(vaddr)?, hex(filesz)?)),
            _ => None,
        })
        .find(|&(_, vaddr, size)| (vaddr..vaddr + size).contains(&address))
        .map(|(offset, vaddr, _)| address - vaddr + offset)
        .with_context(|| format!("{symbol} of {module} is in no LOAD segment"))
}
