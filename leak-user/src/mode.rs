//! What a hunt measures (`--mode`), and the overhead budget under which an
//! auto hunt trades its per-call probes for growth mode.
//!
//! The cost of the probes is estimated once per budget window (`hunt`) as
//! `Σ hits × trap cost + measured BPF run time`, as a share of the target's
//! CPU time over the same window (utime + stime of all its threads, from
//! /proc; at least one CPU-second per second, so that an idle target is not
//! judged by the few microseconds it ran). For a service that is busy on its
//! CPUs that share is the throughput it loses.

use std::{
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use aya::Ebpf;

use crate::{
    attach::{AttachedProbe, Counters, Links, ProbeSet, ProbeStatus},
    cli::Mode,
    placement::Handling,
    report::GrowthStart,
    uprobe_multi::ProgramRun,
};

/// Keeps a busy service at >= 90% of its throughput.
pub const DEFAULT_MAX_OVERHEAD_PCT: f64 = 10.0;
/// Sampled mode's interval when `--sample-bytes` is not given.
pub const DEFAULT_SAMPLE_BYTES: u64 = 512 << 10;
/// Growth mode takes a stack on every page fault: the cost follows the
/// growth of resident memory (field notes: within the noise on Node services).
pub const GROWTH_FAULT_PERIOD: u64 = 1;

/// What the probes of a hunt measure at a given moment: the one switch that
/// decides the probe set and how the report labels its figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// Every allocator call: exact outstanding bytes.
    Exact,
    /// Every call trapped, a Poisson sample recorded: estimates.
    Sampled { mean_bytes: u64 },
    /// No per-call probes: pages first touched per stack, mappings exactly.
    Growth,
}

impl Measure {
    pub fn name(self) -> &'static str {
        match self {
            Measure::Exact => "exact",
            Measure::Sampled { .. } => "sampled",
            Measure::Growth => "growth",
        }
    }

    pub fn sample_bytes(self) -> Option<u64> {
        match self {
            Measure::Sampled { mean_bytes } => Some(mean_bytes),
            _ => None,
        }
    }

    pub fn probe_set(self) -> ProbeSet {
        match self {
            Measure::Exact | Measure::Sampled { .. } => ProbeSet::Hunt,
            Measure::Growth => ProbeSet::Growth {
                fault_period: GROWTH_FAULT_PERIOD,
            },
        }
    }
}

/// A hunt's mode, resolved from the command line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub start: Measure,
    /// `--mode auto`: the start may be chosen from the target (`start_for_node`).
    pub auto: bool,
    /// The budget, in % of the target's CPU time; None: not enforced.
    pub max_overhead_pct: Option<f64>,
}

impl Plan {
    /// `--mode` defaults to auto when attaching and exact when launching
    /// (tests and CI want exact bytes); `--sample-bytes` alone means sampled.
    pub fn resolve(
        mode: Option<Mode>,
        sample_bytes: Option<u64>,
        max_overhead_pct: Option<f64>,
        attaching: bool,
    ) -> Result<Plan> {
        let mode = match (mode, sample_bytes) {
            (Some(mode), _) => mode,
            (None, Some(_)) => Mode::Sampled,
            (None, None) if attaching => Mode::Auto,
            (None, None) => Mode::Exact,
        };
        let start = match (mode, sample_bytes) {
            (Mode::Exact | Mode::Growth, Some(_)) => {
                bail!("--sample-bytes applies to --mode sampled or auto, not --mode {mode:?}")
            }
            (Mode::Exact, None) | (Mode::Auto, None) => Measure::Exact,
            (Mode::Sampled | Mode::Auto, Some(mean_bytes)) => Measure::Sampled { mean_bytes },
            (Mode::Sampled, None) => Measure::Sampled {
                mean_bytes: DEFAULT_SAMPLE_BYTES,
            },
            (Mode::Growth, None) => Measure::Growth,
        };
        let max_overhead_pct = match mode {
            Mode::Auto => Some(max_overhead_pct.unwrap_or(DEFAULT_MAX_OVERHEAD_PCT)),
            // Growth mode has no per-call probes to give up.
            Mode::Growth => None,
            Mode::Exact | Mode::Sampled => max_overhead_pct,
        };
        Ok(Plan {
            start,
            auto: mode == Mode::Auto,
            max_overhead_pct,
        })
    }

    /// Auto mode on a Node target that used `cores` of CPU before the hunt:
    /// when its per-call probes would take more than the budget, starts in
    /// growth mode instead of paying for them until the first budget window
    /// (and their verification when loading), and says why.
    pub fn start_for_node(&mut self, cores: f64) -> Option<GrowthStart> {
        let max_pct = self
            .max_overhead_pct
            .filter(|_| self.auto && self.start != Measure::Growth)?;
        // The meter's share: at least one CPU-second per second.
        let predicted_pct = 100.0 * NODE_PROBES_PER_CPU * cores / cores.max(1.0);
        if predicted_pct <= max_pct {
            return None;
        }
        self.start = Measure::Growth;
        Some(GrowthStart {
            target_cpu_pct: 100.0 * cores,
            predicted_overhead_pct: predicted_pct,
        })
    }
}

/// The CPU time of Node's per-call probes (malloc family and Buffer
/// allocator, trapped on every call whether sampled or not) per CPU-second
/// of node's own: the HTTP service of BENCHMARKS §5 took 6.5× its untraced
/// CPU per request in exact mode.
const NODE_PROBES_PER_CPU: f64 = 5.5;
/// How long a target's CPU time is read before attaching, at least: long
/// enough for /proc's 10 ms ticks to resolve a few % of a core.
const BUSY_WINDOW: Duration = Duration::from_millis(300);

/// A target's CPU time at a moment before attaching.
pub struct CpuBeforeAttach {
    pid: u32,
    at: Instant,
    cpu_s: f64,
}

impl CpuBeforeAttach {
    pub fn read(pid: u32) -> Option<CpuBeforeAttach> {
        Some(CpuBeforeAttach {
            pid,
            at: Instant::now(),
            cpu_s: cpu_seconds_precise(pid)?,
        })
    }

    /// Cores the target used since `read` (waiting out the rest of
    /// `BUSY_WINDOW` first); None once it is gone.
    pub fn cores_since(&self) -> Option<f64> {
        std::thread::sleep(BUSY_WINDOW.saturating_sub(self.at.elapsed()));
        let cpu_s = cpu_seconds_precise(self.pid)?;
        // A thread that exited in between takes its time with it.
        Some((cpu_s - self.cpu_s).max(0.0) / self.at.elapsed().as_secs_f64())
    }
}

/// Cost of a probe hit on top of its program's run time (the trap, the
/// uprobe handler, the return to user space), by how the kernel handles the
/// probed instruction. Measured on this machine kind with empty programs
/// (field notes): ~1 µs emulated, 8-13 µs single-stepped, +0.6 µs a uretprobe.
const EMULATED_TRAP_NS: f64 = 1_000.0;
const SINGLE_STEPPED_TRAP_NS: f64 = 10_000.0;
const RETURN_TRAP_NS: f64 = 600.0;

/// Kernel clock ticks per second of /proc/PID/stat's times (USER_HZ).
const TICKS_PER_S: f64 = 100.0;

#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    target_cpu_s: f64,
    probe_ns: f64,
}

/// The probes' cost to the target, read once per budget window.
pub struct OverheadMeter {
    pid: u32,
    /// Trap cost per hit of each uprobe'd function (probe, entry ns, return ns).
    traps: Vec<(leak_common::Probe, f64, f64)>,
    /// Keeps the kernel's per-program run-time accounting on.
    _run_time_stats: Option<OwnedFd>,
    last: Option<Reading>,
    /// Highest share seen, in %.
    pub peak_pct: f64,
}

impl OverheadMeter {
    pub fn new(pid: u32, probes: &[AttachedProbe]) -> OverheadMeter {
        let traps = probes
            .iter()
            .filter(|p| p.status == ProbeStatus::Attached && p.counted_as == p.probe)
            .filter_map(|p| {
                let entry = match p.placement.as_ref()?.handling {
                    Handling::SingleStepped => SINGLE_STEPPED_TRAP_NS,
                    Handling::Emulated | Handling::Refused => EMULATED_TRAP_NS,
                };
                Some((p.probe, entry, if p.has_return { RETURN_TRAP_NS } else { 0.0 }))
            })
            .collect();
        let run_time_stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|e| log::warn!("no BPF run-time statistics ({e}): the budget counts traps only"))
            .ok();
        OverheadMeter {
            pid,
            traps,
            _run_time_stats: run_time_stats,
            last: None,
            peak_pct: 0.0,
        }
    }

    /// The probes' share of the target's CPU time since the previous call,
    /// in %; None on the first call or once the target is gone.
    pub fn sample(&mut self, ebpf: &Ebpf, links: &Links, counters: &Counters) -> Option<f64> {
        let programs_ns = programs_run_ns(ebpf, links);
        let traps_ns = self.traps_ns(counters);
        log::debug!("probe cost so far: traps {traps_ns:.0} ns, programs {programs_ns:.0} ns");
        let reading = Reading {
            at: Instant::now(),
            target_cpu_s: cpu_seconds(self.pid)?,
            probe_ns: traps_ns + programs_ns,
        };
        let last = self.last.replace(reading)?;
        let wall_s = reading.at.duration_since(last.at).as_secs_f64();
        let cpu_s = (reading.target_cpu_s - last.target_cpu_s).max(wall_s);
        if cpu_s <= 0.0 {
            return None;
        }
        let pct = 100.0 * (reading.probe_ns - last.probe_ns) / 1e9 / cpu_s;
        self.peak_pct = self.peak_pct.max(pct);
        Some(pct)
    }

    fn traps_ns(&self, counters: &Counters) -> f64 {
        self.traps
            .iter()
            .map(|&(probe, entry, ret)| {
                counters.entry_hits(probe) as f64 * entry + counters.return_hits(probe) as f64 * ret
            })
            .sum()
    }
}

/// Run time of every program of the session so far, per the kernel's
/// statistics (counted while they are on: while a budget is enforced).
pub fn programs_run_ns(ebpf: &Ebpf, links: &Links) -> f64 {
    program_runs(ebpf, links).iter().map(|run| run.run_ns as f64).sum()
}

/// Each loaded program's run time so far, per the kernel's statistics.
pub fn program_runs(ebpf: &Ebpf, links: &Links) -> Vec<ProgramRun> {
    let loaded_by_aya = ebpf.programs().filter_map(|(name, program)| {
        let info = program.info().ok()?;
        Some(ProgramRun {
            name: name.to_string(),
            run_ns: info.run_time().as_nanos() as u64,
            runs: info.run_count(),
        })
    });
    loaded_by_aya.chain(links.multi_program_runs()).collect()
}

/// utime + stime of all of `pid`'s threads (fields 14 and 15 of /proc/PID/stat).
/// A process's CPU time to the nanosecond: the sum of its threads' run time
/// in /proc/PID/task/*/schedstat. /proc/PID/stat counts 10 ms ticks, which
/// a 0.3 s reading of a target busy in short bursts can miss altogether.
/// Threads that exit are not counted: for short readings only. Falls back
/// to /proc/PID/stat without schedstat.
fn cpu_seconds_precise(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        match schedstat.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()) {
            Some(run_ns) => ns += run_ns,
            None => return cpu_seconds(pid),
        }
    }
    Some(ns as f64 / 1e9)
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_resolve_from_the_command_line() {
        let plan = |mode, sample, budget, attaching| Plan::resolve(mode, sample, budget, attaching).unwrap();
        // Attach: auto within the default budget; launch: exact, no budget.
        assert_eq!(
            plan(None, None, None, true),
            Plan {
                start: Measure::Exact,
                auto: true,
                max_overhead_pct: Some(DEFAULT_MAX_OVERHEAD_PCT)
            }
        );
        assert_eq!(plan(None, None, None, false).max_overhead_pct, None);
        assert_eq!(plan(None, None, Some(5.0), false).max_overhead_pct, Some(5.0));
        // --sample-bytes alone is sampled mode, as before --mode existed.
        assert_eq!(
            plan(None, Some(4096), None, false).start,
            Measure::Sampled { mean_bytes: 4096 }
        );
        assert_eq!(
            plan(Some(Mode::Auto), Some(4096), None, false),
            Plan {
                start: Measure::Sampled { mean_bytes: 4096 },
                auto: true,
                max_overhead_pct: Some(DEFAULT_MAX_OVERHEAD_PCT)
            }
        );
        assert_eq!(
            plan(Some(Mode::Sampled), None, None, true).start.sample_bytes(),
            Some(DEFAULT_SAMPLE_BYTES)
        );
        let growth = plan(Some(Mode::Growth), None, Some(3.0), true);
        assert_eq!((growth.start, growth.max_overhead_pct), (Measure::Growth, None));
        assert!(Plan::resolve(Some(Mode::Exact), Some(4096), None, true).is_err());
        assert!(Plan::resolve(Some(Mode::Growth), Some(4096), None, true).is_err());
    }

    #[test]
    fn auto_starts_a_busy_node_target_in_growth_mode() {
        let auto = || Plan::resolve(None, None, None, true).unwrap();
        // Idle (a test fixture waiting for a signal): per-call probes fit.
        let mut idle = auto();
        assert_eq!(idle.start_for_node(0.001), None);
        assert_eq!(idle.start, Measure::Exact);
        // 5 % of a core: the probes would take ~27 % of the meter's CPU-second.
        let mut busy = auto();
        let why = busy.start_for_node(0.05).unwrap();
        assert_eq!(busy.start, Measure::Growth);
        assert!((why.predicted_overhead_pct - 27.5).abs() < 1e-9, "{why:?}");
        // An explicit mode is what the user asked for.
        let mut exact = Plan::resolve(Some(Mode::Exact), None, Some(10.0), true).unwrap();
        assert_eq!(exact.start_for_node(2.0), None);
        assert_eq!(exact.start, Measure::Exact);
        // A budget above the probes' cost keeps them.
        let mut generous = Plan::resolve(None, None, Some(600.0), true).unwrap();
        assert_eq!(generous.start_for_node(3.0), None);
    }
}
