//! `cargo xtask bench [--quick] [--only SECTION]`: what tracing costs, against
//! an untraced run, a naive floor of empty uprobes and peer tools, then
//! leakscope's own costs at scale, and what `leakscope watch` costs a service
//! under load. Prints each table as it is measured and (re)writes BENCHMARKS.md.
//!
//! The machine is shared and noisy: configurations that are compared run
//! interleaved in one run (A B C A B C ..., so drift hits all alike), each
//! figure is the median of several repetitions with min and max beside it,
//! and comparisons are ratios within the run.
use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{build_release, output, require_root, setup};

// The sections import the shared helpers through `super::`.
use common::*;

mod common;

// One module per section.
mod attach;
mod cost;
mod debian_programs;
mod distinct_stacks;
mod heap_census;
mod http_service;
mod hunt_modes;
mod js_naming;
mod malloc_free;
mod maps_fill;
mod own_memory;
mod unwinding;
mod watch_escalation;
mod watch_overhead;

/// How much of each benchmark to run: the full run takes about 20 minutes on
/// 2 cores (sections 1-6b took 650 s), `--quick` a few.
struct Plan {
    quick: bool,
    /// Repetitions of each compared configuration (microbenchmark, attach).
    reps: usize,
    /// malloc+free pairs per microbenchmark run: 200k take ~4 s under the floor's probes.
    pairs: u64,
    /// Hunts of the distinct-stacks program.
    stack_reps: usize,
    /// Rounds of malloc+free over all stacks in the map-filling benchmark.
    fill_rounds: u64,
    /// Seconds of HTTP load per run, and runs per configuration.
    load_secs: u32,
    load_reps: usize,
    /// Rounds of the `leakscope watch` loads: its 1 % goal needs more than
    /// section 3, and a multiple of 3 gives each configuration each place in
    /// the rotating order equally often.
    watch_reps: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                quick,
                reps: 3,
                pairs: 50_000,
                stack_reps: 1,
                fill_rounds: 10,
                load_secs: 3,
                load_reps: 1,
                watch_reps: 1,
            }
        } else {
            Plan {
                quick,
                reps: 5,
                pairs: 200_000,
                stack_reps: 3,
                fill_rounds: 30,
                load_secs: 10,
                load_reps: 3,
                watch_reps: 6,
            }
        }
    }
}

/// What the benchmarks run, looked up once.
struct Tools {
    /// Relative to the repository root, which is the working directory.
    leakscope: String,
    /// Whether this leakscope has `hunt --sample-bytes` (sampling is under way).
    sampled: bool,
    /// Whether this leakscope has `watch` (it is under way).
    has_watch: bool,
    bpftrace: bool,
    heaptrack: bool,
    node: bool,
    wrk: bool,
}

impl Tools {
    fn find(leakscope: &Path) -> Result<Self> {
        let leakscope = rel(leakscope);
        let help = output(Command::new(&leakscope).args(["hunt", "--help"]))?;
        Ok(Tools {
            sampled: help.contains("--sample-bytes"),
            has_watch: output(Command::new(&leakscope).args(["watch", "--help"])).is_ok(),
            leakscope,
            bpftrace: setup::on_path("bpftrace"),
            heaptrack: setup::on_path("heaptrack"),
            node: setup::on_path("node"),
            wrk: setup::on_path("wrk"),
        })
    }

    /// `leakscope [-v] hunt ARGS` as an argument vector.
    fn hunt(&self, verbose: bool, args: &[&str]) -> Vec<String> {
        let mut argv = vec![self.leakscope.clone()];
        if verbose {
            argv.push("-v".into());
        }
        argv.push("hunt".into());
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// `leakscope watch ARGS` as an argument vector.
    fn watch(&self, args: &[&str]) -> Vec<String> {
        [vec![self.leakscope.clone(), "watch".into()], words(args)].concat()
    }

    /// Why the watch configurations cannot run, if they cannot.
    fn watching(&self) -> Available<()> {
        match self.has_watch {
            true => Ok(()),
            false => Err("not available: `leakscope watch --help` fails (no watch subcommand)".into()),
        }
    }

    /// Why the sampled configuration cannot run, if it cannot.
    fn sampling(&self) -> Available<()> {
        match self.sampled {
            true => Ok(()),
            false => Err("not available: `leakscope hunt --help` lists no --sample-bytes".into()),
        }
    }
}

/// A configuration that can run, or why it cannot (shown in its table).
type Available<T> = Result<T, String>;

fn needs(present: bool, tool: &str) -> Available<()> {
    match present {
        true => Ok(()),
        false => Err(format!("not available: `{tool}` not found")),
    }
}

type Benchmark = fn(&Plan, &Tools) -> Result<Section>;

/// Runs every benchmark and writes BENCHMARKS.md; with `only` (a section
/// number such as `4` or `2a`), runs that section alone and only prints it.
pub fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    require_root("the benchmarks")?;
    let started = Instant::now();
    let load_before = load_average()?;
    setup::setup()?;
    // Not part of `setup()`: only the benchmarks need bpftrace and wrk, and a
    // missing one is reported in its table rather than stopping the run.
    if let Err(e) = setup::bench_tools() {
        eprintln!("warning: {e:#}");
    }
    let tools = Tools::find(&build_release()?.join("leakscope"))?;
    let plan = Plan::new(quick);
    fs::create_dir_all(work_dir())?;

    // One line per section, in BENCHMARKS.md order.
    let benchmarks: &[(&str, Benchmark)] = &[
        (malloc_free::TITLE, malloc_free::malloc_free),
        (attach::TITLE, attach::attach),
        (distinct_stacks::TITLE, distinct_stacks::distinct_stacks),
        (maps_fill::TITLE, maps_fill::maps_fill),
        (http_service::TITLE, http_service::http_service),
        (watch_overhead::TITLE, watch_overhead::watch_overhead),
        (watch_escalation::TITLE, watch_escalation::watch_escalation),
        (hunt_modes::TITLE, hunt_modes::hunt_modes),
        (cost::TITLE_FIXED, cost::fixed_costs),
        (cost::TITLE_PER_PAIR, cost::per_pair),
        (debian_programs::TITLE, debian_programs::debian_programs),
        (own_memory::TITLE, own_memory::own_memory),
        (heap_census::TITLE, heap_census::heap_census),
        (js_naming::TITLE, js_naming::js_naming),
        (unwinding::TITLE_FRAMES, unwinding::frames),
        (unwinding::TITLE_COST, unwinding::cost),
    ];
    let number = |title: &str| title.split('.').next().unwrap_or_default().to_owned();
    let benchmarks: Vec<_> = benchmarks
        .iter()
        .filter(|(title, _)| only.is_none_or(|only| number(title) == only))
        .collect();
    if benchmarks.is_empty() {
        bail!("no benchmark section {}", only.unwrap_or_default());
    }
    let mut sections = Vec::new();
    let mut failed = Vec::new();
    for &(title, benchmark) in benchmarks {
        eprintln!("\n=== {title}");
        let section = benchmark(&plan, &tools).unwrap_or_else(|e| {
            failed.push(title);
            Section::failed(title, &e)
        });
        println!("\n{}", section.markdown());
        sections.push(section);
    }
    fs::remove_dir_all(work_dir())?;
    if only.is_some() {
        eprintln!(
            "load average {load_before} before, {} after; BENCHMARKS.md left as it was (one section only)",
            load_average()?
        );
        return match failed.is_empty() {
            true => Ok(()),
            false => bail!("the benchmark failed: {}", failed.join("; ")),
        };
    }
    let load = format!("{load_before} before, {} after", load_average()?);
    let doc = document(&plan, &tools, &sections, &load, started.elapsed())?;
    fs::write("BENCHMARKS.md", doc).context("cannot write BENCHMARKS.md")?;
    eprintln!("wrote BENCHMARKS.md in {:.0} s", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("some benchmarks failed (see BENCHMARKS.md): {}", failed.join("; "));
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages. Other work on the machine competes
/// with leakscope's reader for the 2 cores (the floor has no reader), so the
/// ratios move with it.
fn load_average() -> Result<String> {
    let loadavg = fs::read_to_string("/proc/loadavg")?;
    Ok(loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// BENCHMARKS.md: when, where and how it was measured, then each section.
fn document(plan: &Plan, tools: &Tools, sections: &[Section], load: &str, took: Duration) -> Result<String> {
    // `gcc (Debian 12.2.0-14) 12.2.0`, `v20.20.2` (node), `wrk debian/4.1.0-3+b2 [epoll] Copyright …`:
    // the first line up to any `[`, named after the tool.
    let version = |argv: &[&str]| {
        // `wrk -v` exits 1: take stdout whatever the status.
        let out = Command::new(argv[0]).args(&argv[1..]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().next()?.split(" [").next()?.trim();
        let name = Path::new(argv[0]).file_name()?.to_string_lossy();
        Some(match line.starts_with(&*name) {
            true => line.to_owned(),
            false => format!("{name} {line}"),
        })
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo")?;
    let cpu = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name")?
            .split_once(':')
            .map(|(_, m)| m.trim().to_owned())
    });
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let mem_gib = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / MIB);
    let mut versions: Vec<String> = [
        ["gcc", "--version"],
        ["bpftrace", "--version"],
        ["heaptrack", "--version"],
        ["node", "--version"],
        ["wrk", "-v"],
    ]
    .iter()
    .filter(|argv| setup::on_path(argv[0]))
    .filter_map(|argv| version(argv))
    .collect();
    versions.push(format!(
        "{} (`{}`, the release build `cargo xtask dist` ships)",
        version(&[&tools.leakscope, "--version"]).unwrap_or_default(),
        tools.leakscope
    ));
    let command = if plan.quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let mut doc = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        doc,
        "Written by `{command}`, which sets up, builds, runs every benchmark below and rewrites this file. \
         The machine is shared and noisy: read the ratios, measured within one run, rather than the absolute \
         figures, which move between runs. Nothing here is asserted by the tests.\n"
    );
    let facts = [
        (
            "date",
            output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?
                .trim()
                .to_owned(),
        ),
        ("kernel", output(Command::new("uname").arg("-r"))?.trim().to_owned()),
        (
            "CPU",
            format!("{}, {cores} cores", cpu.unwrap_or_else(|| "unknown".into())),
        ),
        ("memory", mem_gib.map_or("unknown".into(), |g| format!("{g:.0} GiB"))),
        ("load average (1, 5, 15 min)", load.to_owned()),
        (
            "leakscope commit",
            output(Command::new("git").args(["describe", "--always", "--dirty"]))?
                .trim()
                .to_owned(),
        ),
        ("tools", versions.join("; ")),
        ("command", format!("`{command}` (took {:.0} s)", took.as_secs_f64())),
    ];
    doc += "| | |\n|---|---|\n";
    for (what, fact) in facts {
        let _ = writeln!(doc, "| {what} | {fact} |");
    }
    for section in sections {
        let _ = write!(doc, "\n{}", section.markdown());
    }
    Ok(doc)
}
