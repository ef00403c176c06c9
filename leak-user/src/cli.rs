//! Command line. Other tools script against it: keep it stable.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "leakscope",
    version,
    about = "eBPF memory-leak tracer: which call stacks hold the memory that survives"
)]
pub struct Cli {
    /// More detail on stderr (probe placement, attach steps).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace a running process (-p PID) or launch one (-- COMMAND) and report
    /// the memory still outstanding per allocation call stack.
    Hunt(HuntArgs),
    /// Render a saved JSON report (`hunt --format json`) in another format.
    Report(ReportArgs),
    /// Compare two JSON reports: which call stacks hold more, or less.
    Diff(DiffArgs),
    /// Run COMMAND under a hunt and fail (exit 1) when memory held by any site,
    /// or in total, grows beyond a limit after warm-up: a CI leak gate.
    Check(CheckArgs),
    /// Run as a daemon: sample the memory of matching processes, attribute
    /// their growth cheaply, alert on growth or on nearing the memory limit,
    /// and hunt the leak on alert. Serves /metrics and /health.
    Watch(WatchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct HuntArgs {
    /// Process to attach to (all its threads).
    #[arg(short, long, conflicts_with = "command", required_unless_present = "command")]
    pub pid: Option<u32>,
    /// Stop after this many seconds (attach mode default: until Ctrl-C or exit).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Print a short live summary to stderr every SECS.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub interval: Option<Duration>,
    /// Only report allocations older than this.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "0")]
    pub min_age: Duration,
    /// Stacks listed in the text and Markdown reports.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Show every frame in the text and Markdown reports: runtime frames
    /// (libc start-up, the event loop, V8 entry code) are folded otherwise.
    #[arg(long)]
    pub full_stacks: bool,
    /// Sites kept in full in the report (every format); the others, the
    /// least important in the text report's order, are summed per kind in
    /// its `tail`, and are not symbolized. Default: every site.
    #[arg(long, value_name = "N")]
    pub max_sites: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// What is probed and so what the report measures (default: `auto` when
    /// attaching to a PID, `exact` when launching a command).
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// The sampling interval of sampled mode (and of auto mode's start): on
    /// average one sample every SIZE bytes allocated (e.g. 512KiB),
    /// Poisson-distributed; the report gives unbiased estimates. Mappings
    /// are always traced exactly. Without --mode it selects sampled mode.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub sample_bytes: Option<u64>,
    /// Most of the target's CPU time the probes may take, in percent: over
    /// it, the per-call probes are detached and the hunt carries on in growth
    /// mode. Enforced in auto mode (default 10: a busy service keeps >= 90%
    /// of its throughput); in exact and sampled mode only when given.
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub max_overhead: Option<f64>,
    /// Ring buffer size shared by all CPUs; raise it if drops are reported.
    /// Default: 8, or 64 when JS frames are named (a stack through JS
    /// frames is a 4 KiB record, with its V8 slots). Its pages count in
    /// leakscope's RSS twice (they are mapped twice).
    #[arg(long, value_name = "MIB")]
    pub ring_buffer_mib: Option<u32>,
    /// Distinct stacks the kernel side remembers as already sent (LRU, ~64
    /// bytes each). A forgotten stack is sent again, never lost: raise it only
    /// if ring-buffer traffic matters.
    #[arg(long, value_name = "N", default_value_t = 64 * 1024)]
    pub max_stacks: u32,
    /// How the kernel side walks the stacks of allocator calls (exact and
    /// sampled modes).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = StackWalk::FramePointers)]
    pub stack_walk: StackWalk,
    /// Command to launch and trace from its first instruction.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// One more sample of every series at this time into the hunt: `check`'s
    /// warm-up end, so that its baseline is the state then, not a second before.
    #[arg(skip)]
    pub sample_at: Option<Duration>,
}

/// What a hunt probes, and so what its report measures.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every allocator call: exact outstanding bytes per call stack.
    Exact,
    /// Every allocator call is trapped, a Poisson sample of them recorded:
    /// estimates (--sample-bytes sets the interval, default 512KiB).
    Sampled,
    /// No per-call probes: page faults (pages first touched) per call stack,
    /// mmap/munmap/mremap/brk exactly, V8's page and GC hooks. Costs
    /// per page of growth, not per allocation.
    Growth,
    /// Exact (sampled with --sample-bytes) while the probes stay within
    /// --max-overhead, growth mode from the moment they would not.
    Auto,
}

/// How the kernel side walks an allocator call's stack.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackWalk {
    /// By the frame-pointer chain, completed from 16 words of stack: stacks
    /// of code without frame pointers end early.
    FramePointers,
    /// By unwind rules read from each module's CFI (.eh_frame): whole stacks
    /// through code without frame pointers. A stack's first events go with
    /// a copy of the stack, from which leakscope reads the rules; until it
    /// has, a burst of calls of that stack has it cut short (`stacks_cut`).
    Cfi,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// For a terminal.
    Text,
    /// Schema leakscope/report/v1, for scripts and `leakscope report`/`diff`.
    Json,
    /// Collapsed stacks (`frame;frame BYTES`) for flame graph tools.
    Folded,
    /// An SVG flame graph of outstanding bytes.
    Flamegraph,
    /// Gzipped profile.proto, for `go tool pprof` and compatible viewers.
    Pprof,
    /// An investigation report to paste into an issue or a postmortem.
    Markdown,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// A report written by `leakscope hunt --format json`.
    #[arg(value_name = "FILE.json")]
    pub file: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Stacks listed in the text and Markdown reports.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Show every frame in the text and Markdown reports: runtime frames
    /// (libc start-up, the event loop, V8 entry code) are folded otherwise.
    #[arg(long)]
    pub full_stacks: bool,
    /// Sites kept in full in the report (every format); the others, the
    /// least important in the text report's order, are summed per kind in
    /// its `tail`. Default: the sites of the file.
    #[arg(long, value_name = "N")]
    pub max_sites: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct DiffArgs {
    /// The earlier JSON report.
    #[arg(value_name = "A.json")]
    pub a: PathBuf,
    /// The later JSON report.
    #[arg(value_name = "B.json")]
    pub b: PathBuf,
    #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
    pub format: DiffFormat,
    /// Write the comparison here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffFormat {
    Text,
    /// Schema leakscope/diff/v1.
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Largest growth allowed per site and in total, e.g. 10MB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_growth: u64,
    /// Largest growth rate allowed (robust slope after warm-up), e.g. 100KB/s.
    #[arg(long, value_name = "SIZE/s", value_parser = parse_rate)]
    pub max_rate: Option<f64>,
    /// Growth during the first SECS does not count (start-up, caches filling).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "0")]
    pub warmup: Duration,
    /// A load to run (with sh -c, untraced) once the warm-up is over; the
    /// check ends when it exits, and COMMAND is then sent SIGTERM.
    #[arg(long, value_name = "SHELL COMMAND")]
    pub load: Option<String>,
    /// Stop after this long even if COMMAND (or the load) still runs.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Also write the hunt's JSON report here.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The workload (or service) to trace.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// A process to watch (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Watch every process with this name (/proc/PID/comm), including ones
    /// that start later (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Watch every process in this memory cgroup and its children, as
    /// /proc/PID/cgroup names it, e.g. /system.slice/app.service (repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,
    /// Per-target rules (TOML, see the README); targets it names are watched too.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How often memory is sampled and processes are discovered.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "10")]
    pub interval: Duration,
    #[command(flatten)]
    pub rules: RuleArgs,
    /// POST every alert as JSON to this http:// URL.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Run `sh -c COMMAND` for every alert, with the alert JSON on stdin.
    #[arg(long, value_name = "COMMAND")]
    pub alert_command: Option<String>,
    /// The same alert (process, rule, severity) is sent again at most this often.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "3600")]
    pub alert_repeat: Duration,
    /// The alert level that starts a hunt of the process.
    #[arg(long, value_enum, default_value_t = EscalateOn::Warning)]
    pub escalate_on: EscalateOn,
    /// Length of an escalated hunt.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "60")]
    pub hunt_duration: Duration,
    /// What an escalated hunt measures (as `hunt --mode`); auto keeps it
    /// within the default overhead budget.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub hunt_mode: Mode,
    /// Sampling interval of an escalated hunt in auto or sampled mode (a
    /// larger interval costs less and estimates small sites less precisely).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "512KiB")]
    pub hunt_sample_bytes: u64,
    /// At most one hunt per process in this period.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "3600")]
    pub hunt_cooldown: Duration,
    /// Where escalated hunts write their reports (one directory per hunt).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/leakscope/reports")]
    pub reports: PathBuf,
    /// Address of the /metrics and /health server.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// Tier 1 only: no eBPF programs, no growth attribution before a hunt.
    #[arg(long)]
    pub no_probes: bool,
    /// Tier 2: take one stack every N page faults.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub fault_period: u64,
    /// Processes given probes (tier 2) at most; more are watched by tier 1 only.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_probed: usize,
}

/// Alert thresholds; a `--config` file can override them per target.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct RuleArgs {
    /// Growth rate fit window: the rate is the robust slope of anonymous
    /// memory over this long, and is judged only once it covers all of it.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "600")]
    pub window: Duration,
    /// Growth rate that raises a warning, e.g. 10MiB/h, 100KiB/s, 5MB/min.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, default_value = "10MiB/h")]
    pub warn_rate: f64,
    /// Growth rate that raises a critical alert.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, default_value = "100MiB/h")]
    pub crit_rate: f64,
    /// Memory use, in % of the memory limit, that raises a warning.
    #[arg(long, value_name = "PCT", default_value_t = 80.0)]
    pub warn_limit: f64,
    /// Memory use, in % of the limit, that raises a critical alert.
    #[arg(long, value_name = "PCT", default_value_t = 95.0)]
    pub crit_limit: f64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscalateOn {
    Warning,
    Critical,
    Never,
}

impl HuntArgs {
    /// A launch-mode hunt of `command` with every other option at its default
    /// (the defaults stay defined once, in the attributes above).
    pub fn launching(command: &[String]) -> HuntArgs {
        Self::parsed(["--"].into_iter().map(String::from).chain(command.iter().cloned()))
    }

    /// An attach-mode hunt of `pid` with every other option at its default.
    pub fn attaching(pid: u32) -> HuntArgs {
        Self::parsed(["-p".to_string(), pid.to_string()])
    }

    fn parsed(hunt_argv: impl IntoIterator<Item = String>) -> HuntArgs {
        let argv = ["leakscope", "hunt"].into_iter().map(String::from).chain(hunt_argv);
        let Command::Hunt(args) = Cli::parse_from(argv).command else {
            unreachable!("parsed a hunt command line")
        };
        args
    }
}

/// A byte count: `4096`, `512k`, `512KiB`, `10MB`, `1.5G` (k/M/G are powers
/// of 1024 either way: memory is counted in binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512KiB, 10MB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use B, KiB, MiB, GiB)")),
    };
    Ok((value * scale as f64).round() as u64)
}

/// A rate in bytes per second: a size per `s` (the default), `min` or `h`:
/// `100KB/s`, `5MB/min`, `10MiB/h`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (size, per_s) = match t.rsplit_once('/') {
        None => (t, 1.0),
        Some((size, "s")) => (size, 1.0),
        Some((size, "min" | "m")) => (size, 60.0),
        Some((size, "h")) => (size, 3600.0),
        Some((_, unit)) => return Err(format!("`{s}`: unknown time unit `{unit}` (use /s, /min, /h)")),
    };
    Ok(parse_size(size)? as f64 / per_s)
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let pct: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage"))?;
    if !(pct > 0.0 && pct <= 100.0) {
        return Err(format!("`{s}` must be a percentage in (0, 100]"));
    }
    Ok(pct)
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    seconds(secs).map_err(|_| format!("`{s}` must be a non-negative number of seconds"))
}

/// `secs` as a duration; negative, NaN and out-of-range values are errors
/// (`Duration::from_secs_f64` panics on them).
pub fn seconds(secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{secs} must be a non-negative number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_attach_and_launch_forms() {
        let cli =
            Cli::try_parse_from(["leakscope", "hunt", "-p", "42", "--duration", "1.5", "--format", "json"]).unwrap();
        let Command::Hunt(h) = cli.command else {
            panic!("not hunt")
        };
        assert_eq!(h.pid, Some(42));
        assert_eq!(h.duration, Some(Duration::from_millis(1500)));
        assert_eq!(h.format, Format::Json);

        let cli = Cli::try_parse_from(["leakscope", "hunt", "--top", "5", "--", "./app", "--flag", "x"]).unwrap();
        let Command::Hunt(h) = cli.command else {
            panic!("not hunt")
        };
        assert_eq!(h.command, ["./app", "--flag", "x"]);
        assert_eq!(h.pid, None);
    }

    #[test]
    fn parses_sizes_and_check() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("10MB"), Ok(10 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
        let cli = Cli::try_parse_from([
            "leakscope",
            "check",
            "--max-growth",
            "10MB",
            "--max-rate",
            "1MB/s",
            "--warmup",
            "2",
            "--",
            "./svc",
        ])
        .unwrap();
        let Command::Check(c) = cli.command else {
            panic!("not check")
        };
        assert_eq!(
            (c.max_growth, c.max_rate, c.warmup),
            (10 << 20, Some(f64::from(1 << 20)), Duration::from_secs(2))
        );
        assert_eq!(c.command, ["./svc"]);
        assert!(Cli::try_parse_from(["leakscope", "check", "--max-growth", "1"]).is_err());
    }

    #[test]
    fn parses_rates_and_watch() {
        assert_eq!(parse_rate("100KB/s"), Ok(102_400.0));
        assert_eq!(parse_rate("2KiB"), Ok(2048.0));
        assert_eq!(parse_rate("6KiB/min"), Ok(102.4));
        assert_eq!(parse_rate("36KiB/h"), Ok(10.24));
        assert!(parse_rate("1MB/fortnight").is_err());
        let cli = Cli::try_parse_from([
            "leakscope",
            "watch",
            "-p",
            "7",
            "-p",
            "8",
            "--comm",
            "node",
            "--warn-rate",
            "1MiB/h",
            "--interval",
            "0.5",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else {
            panic!("not watch")
        };
        assert_eq!((w.pids, w.comms), (vec![7, 8], vec!["node".to_string()]));
        assert_eq!(w.rules.warn_rate, 1048576.0 / 3600.0);
        assert_eq!(w.rules.crit_rate, 100.0 * 1048576.0 / 3600.0);
        assert_eq!(w.interval, Duration::from_millis(500));
        assert_eq!(w.escalate_on, EscalateOn::Warning);
        assert_eq!(w.listen, "127.0.0.1:9464".parse().unwrap());
    }

    #[test]
    fn parses_report_and_diff() {
        let cli = Cli::try_parse_from(["leakscope", "report", "a.json", "--format", "pprof", "-o", "a.pb.gz"]).unwrap();
        let Command::Report(r) = cli.command else {
            panic!("not report")
        };
        assert_eq!((r.file, r.format, r.top), (PathBuf::from("a.json"), Format::Pprof, 20));
        let cli = Cli::try_parse_from(["leakscope", "diff", "a.json", "b.json", "--format", "json"]).unwrap();
        let Command::Diff(d) = cli.command else {
            panic!("not diff")
        };
        assert_eq!(
            (d.a, d.b, d.format),
            ("a.json".into(), "b.json".into(), DiffFormat::Json)
        );
        assert!(Cli::try_parse_from(["leakscope", "diff", "a.json"]).is_err());
    }

    #[test]
    fn rejects_missing_target_and_bad_seconds() {
        assert!(Cli::try_parse_from(["leakscope", "hunt"]).is_err());
        assert!(Cli::try_parse_from(["leakscope", "hunt", "-p", "1", "--duration", "-3"]).is_err());
        assert!(Cli::try_parse_from(["leakscope", "hunt", "-p", "1", "--", "x"]).is_err());
    }
}
