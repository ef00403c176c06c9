//! `leakscope hunt`: attach or launch, collect until the end, report.

use std::{
    collections::BTreeMap,
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use leak_common::DropReason;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::census_series;
use crate::{
    analyze::{self, GrowthPolicy},
    attach::{self, AttachedProbe, Counters, Links, LoadOptions, ProbeStatus},
    cli::{HuntArgs, StackWalk},
    collect::Collector,
    heap::{Kind, SiteId},
    mode::{self, Measure, OverheadMeter, Plan},
    node, preflight,
    report::{self, Frame, Mapping, ProbeReport, Report, Site, Totals},
    symbolize::{Symbolizer, JIT_MODULE},
    target::{self, Launched, Target},
    timeline::Timeline,
    unwind_rules::UnwindRules,
    v8::{self, JsFrame},
};

/// How often the target's mappings are re-read, so that stacks stay
/// resolvable after it exits.
const MODULE_REFRESH: Duration = Duration::from_secs(1);
/// JS allocation stacks kept in the report.
const MAX_ALLOCATION_SAMPLES: usize = 20;
/// Longest time between two samples of the growth series.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// How often the ring buffer is drained.
const RING_POLL: Duration = Duration::from_millis(10);
/// How often the probes' cost is checked against `--max-overhead`: a
/// service over budget pays for at most about this long.
const BUDGET_WINDOW: Duration = Duration::from_millis(250);
/// The first check comes sooner: a hunt attached to a busy service is
/// over budget from its first calls.
const FIRST_BUDGET_CHECK: Duration = Duration::from_millis(100);

pub struct Outcome {
    pub report: Report,
    /// The launched command's exit code, to pass through.
    pub exit_code: Option<i32>,
    /// The probes, still attached: detaching takes seconds (the kernel waits
    /// for grace periods per uprobe), so callers deliver the report first.
    pub attachment: Attachment,
}

pub struct Attachment {
    links: Links,
    /// The per-call probes given up for the budget, being detached.
    detaching: Option<std::thread::JoinHandle<()>>,
    _ebpf: aya::Ebpf,
}

impl Attachment {
    /// Detaches everything, waiting for it.
    pub fn detach(self) {
        self.detach_with(Links::detach);
    }

    /// Detaches before this process exits: see `Links::detach_before_exit`.
    pub fn detach_before_exit(self) {
        self.detach_with(Links::detach_before_exit);
    }

    fn detach_with(self, detach: fn(Links)) {
        let started = Instant::now();
        detach(self.links);
        if let Some(detaching) = self.detaching {
            let _ = detaching.join();
        }
        log::info!("detached in {:.3} s", started.elapsed().as_secs_f64());
    }
}

/// The probes of a hunt and what they measure, which the budget may change
/// while it runs.
struct Session {
    ebpf: aya::Ebpf,
    pid: u32,
    probes: Vec<AttachedProbe>,
    links: Links,
    measure: Measure,
    /// `--max-overhead` (%) and the meter, when the budget is enforced; no
    /// meter when the hunt starts in growth mode (nothing to meter, and its
    /// run-time statistics would slow every BPF program on the machine).
    budget: Option<(f64, Option<OverheadMeter>)>,
    switched: Option<report::ModeSwitch>,
    growth_start: Option<report::GrowthStart>,
    detaching: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Session {
    /// Checks the probes' cost against the budget; over it, moves to growth
    /// mode: per-call events from then on are ignored, their sites' series end.
    fn enforce_budget(&mut self, collector: &mut Collector, timeline: &mut Timeline) -> Result<()> {
        let Some((max_pct, Some(meter))) = self.budget.as_mut().filter(|_| self.measure != Measure::Growth) else {
            return Ok(());
        };
        let counters = Counters::read(&self.ebpf)?;
        let Some(pct) = meter.sample(&self.ebpf, &self.links, &counters) else {
            return Ok(());
        };
        if pct <= *max_pct {
            return Ok(());
        }
        let at_s = self.started.elapsed().as_secs_f64();
        eprintln!(
            "leakscope: the probes took {pct:.1}% of PID {}'s CPU time (budget {max_pct:.1}%): detaching the per-call probes, continuing in growth mode",
            self.pid
        );
        let before = self.probes.len();
        let growth = Measure::Growth;
        let detached_links = attach::switch_to(
            &mut self.ebpf,
            self.pid,
            growth.probe_set(),
            &mut self.probes,
            &mut self.links,
        )?;
        collector.end_per_call_tracing(monotonic_ns());
        collector.start_growth(mode::GROWTH_FAULT_PERIOD);
        collector.read_program_break(self.pid);
        timeline.end_kind(Kind::Malloc);
        let detached: Vec<String> = detached_links.probes().iter().map(|p| p.name().to_string()).collect();
        self.detaching = Some(std::thread::spawn(move || {
            let started = Instant::now();
            detached_links.detach();
            log::info!("per-call probes detached in {:.3} s", started.elapsed().as_secs_f64());
        }));
        self.switched = Some(report::ModeSwitch {
            at_s,
            from: self.measure.name().to_string(),
            to: growth.name().to_string(),
            overhead_pct: pct,
            detached,
            attached: self.probes[before..]
                .iter()
                .map(|p| p.probe.name().to_string())
                .collect(),
        });
        self.measure = growth;
        Ok(())
    }

    /// Growth mode: folds the kernel's page-fault counts into the model.
    fn fold_faults(&self, collector: &mut Collector) {
        if self.measure == Measure::Growth {
            match attach::fault_samples(&self.ebpf) {
                Ok(samples) => collector.fold_fault_samples(&samples, monotonic_ns()),
                Err(e) => log::warn!("cannot read the page-fault counts: {e:#}"),
            }
        }
    }

    /// Growth mode: fault stacks that hide their callers are sent whole.
    fn window_fault_stacks(&mut self, collector: &mut Collector) {
        let stacks = collector.take_stacks_to_window();
        if !stacks.is_empty() {
            if let Err(e) = attach::window_fault_stacks(&mut self.ebpf, &stacks) {
                log::warn!("cannot window fault stacks: {e:#}");
            }
        }
    }

    fn overhead(&self) -> Option<report::Overhead> {
        let (max_overhead_pct, meter) = self.budget.as_ref()?;
        Some(report::Overhead {
            max_overhead_pct: *max_overhead_pct,
            peak_overhead_pct: meter.as_ref().map_or(0.0, |m| m.peak_pct),
            switched: self.switched.clone(),
            growth_start: self.growth_start.clone(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Duration,
    Interrupted,
    TargetExited,
    LoadFinished,
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Duration => "duration",
            End::Interrupted => "interrupted",
            End::TargetExited => "target-exited",
            End::LoadFinished => "load-finished",
        }
    }
}

/// Takes heap censuses of a Node target after its full GCs, and without
/// one at attach and when none came for a while (such a census also counts
/// garbage: `census_series` judges growth soundly from both), one at a
/// time, on a thread of their own, then looks for the retaining paths of
/// the groups that grew. The target is never stopped; a census or path
/// search that a GC overlapped is dropped (objects may have moved under it).
struct CensusRunner {
    pid: u32,
    layout: std::sync::Arc<v8::census::CensusLayout>,
    running: Option<RunningJob>,
    /// Instances of the groups that grew at the last census, valid until
    /// the next full GC (the count then).
    trace_next: Option<(census_series::TraceTargets, u64)>,
    /// Full GCs seen when the last census after one started.
    full_gcs_at_last: u64,
    last_started: Option<Instant>,
    /// CPU time of the last census kept: censuses without a full GC are
    /// spaced by a multiple of it (not of its wall time, which at nice 19
    /// is mostly waiting on a busy machine).
    last_cpu: Duration,
    /// Wall time of the last census kept.
    last_wall: Duration,
    series: census_series::CensusSeries,
}

struct RunningJob {
    /// "census" or "retaining paths".
    kind: &'static str,
    /// A census taken right after a full GC.
    after_full_gc: bool,
    /// Set when a full GC ended during the job: it stops, to be dropped,
    /// so that a census after that GC can start.
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The job's result, and when it ended (seconds into the hunt).
    thread: std::thread::JoinHandle<(Result<JobResult>, f64)>,
    full_gcs: u64,
    /// When it started (seconds into the hunt).
    t_s: f64,
}

enum JobResult {
    Census(v8::census::Census),
    Paths(std::collections::HashMap<v8::census::GroupKey, Vec<String>>),
}

/// How long a launch waits for its command's exec event before its clock
/// starts; past it, the first samples are taken again at the exec's event.
const EXEC_EVENT_WAIT: Duration = Duration::from_secs(1);

/// Least time between two censuses.
const CENSUS_PERIOD: Duration = Duration::from_secs(1);
/// Without full GCs, a census every CENSUS_PERIOD at most, and at most
/// once per this many times the last one's CPU time: censuses without a
/// full GC take half a core at most (at nice 19: idle time).
const UNMARKED_SPACING: u32 = 2;
/// Time left after a full GC for V8 to finish sweeping its pages.
const SWEEP_WAIT_S: f64 = 0.2;

impl CensusRunner {
    /// A runner for a Node target, or why its heap cannot be counted.
    fn new(pid: u32, node: &crate::lookup::ModuleRef, namer: Option<&v8::JsNamer>) -> Result<CensusRunner, String> {
        let namer = namer.ok_or("its V8 is not one leakscope knows")?;
        let layout =
            v8::census::CensusLayout::read(&node.open_path, namer.layout().clone()).map_err(|e| format!("{e:#}"))?;
        Ok(CensusRunner {
            pid,
            layout: std::sync::Arc::new(layout),
            running: None,
            trace_next: None,
            full_gcs_at_last: 0,
            last_started: None,
            last_cpu: Duration::ZERO,
            last_wall: Duration::ZERO,
            series: census_series::CensusSeries::default(),
        })
    }

    /// Collects a finished job and starts the next one: the retaining paths
    /// of the last census's growing groups while no full GC intervened, else
    /// a census once a full GC has ended and its pages are swept, else,
    /// with no full GC pending, a census without one when none ran for a while.
    /// `started_ns`: when the hunt started (CLOCK_MONOTONIC, the clock of
    /// the GC events); `torn_down_at`: when node began freeing its heap on exit.
    fn tick(&mut self, stats: &node::NodeStats, started_ns: u64, torn_down_at: Option<f64>) {
        if let Some(running) = self.running.as_ref().filter(|r| stats.full_gcs > r.full_gcs) {
            running.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if self.running.as_ref().is_some_and(|r| r.thread.is_finished()) {
            self.collect(stats, torn_down_at);
        }
        let t_s = seconds_since(started_ns);
        if self.running.is_some() || stats.gc_in_progress() || torn_down_at.is_some() {
            return;
        }
        if let Some((targets, full_gcs)) = self.trace_next.take() {
            if full_gcs == stats.full_gcs {
                let (pid, layout) = (self.pid, self.layout.clone());
                self.spawn("retaining paths", false, full_gcs, started_ns, move |cancelled| {
                    let namer = v8::JsNamer::new(pid, None, layout.frames.clone());
                    v8::retainers::paths(pid, &layout, namer, &targets, cancelled).map(JobResult::Paths)
                });
                return;
            }
        }
        let since_last = self.last_started.map(|at| at.elapsed());
        let (pid, layout) = (self.pid, self.layout.clone());
        let census = move |cancelled: &std::sync::atomic::AtomicBool| {
            let namer = v8::JsNamer::new(pid, None, layout.frames.clone());
            v8::census::take(pid, &layout, namer, v8::census::Budget::default(), cancelled).map(JobResult::Census)
        };
        if stats.full_gcs > self.full_gcs_at_last {
            // A full GC ended since the last census after one: wait for its
            // sweeping, then count what survived it.
            let swept = stats
                .live_after_full
                .last()
                .is_some_and(|(gc_t, _)| t_s - gc_t >= SWEEP_WAIT_S);
            if swept && since_last.is_none_or(|d| d >= CENSUS_PERIOD) {
                self.full_gcs_at_last = stats.full_gcs;
                self.last_started = Some(Instant::now());
                self.spawn("census", true, stats.full_gcs, started_ns, census);
            }
            return;
        }
        // Not a census that the next full GC, if it comes as soon after the
        // last as that one did after the one before, would cut short.
        let cut_short = match stats.live_after_full.as_slice() {
            [.., (before, _), (last, _)] => {
                let next = last + (last - before);
                t_s < next && t_s + self.last_wall.as_secs_f64() > next
            }
            _ => false,
        };
        let spacing = CENSUS_PERIOD.max(self.last_cpu * UNMARKED_SPACING);
        if since_last.is_none_or(|d| d >= spacing) && !cut_short {
            self.last_started = Some(Instant::now());
            self.spawn("census", false, stats.full_gcs, started_ns, census);
        }
    }

    fn spawn(
        &mut self,
        kind: &'static str,
        after_full_gc: bool,
        full_gcs: u64,
        started_ns: u64,
        job: impl FnOnce(&std::sync::atomic::AtomicBool) -> Result<JobResult> + Send + 'static,
    ) {
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cancelled = cancel.clone();
        self.running = Some(RunningJob {
            kind,
            after_full_gc,
            cancel,
            thread: std::thread::spawn(move || {
                lower_own_priority();
                (job(&cancelled), seconds_since(started_ns))
            }),
            full_gcs,
            t_s: seconds_since(started_ns),
        });
    }

    /// Waits for the running job and keeps what it found if no GC overlapped it.
    fn collect(&mut self, stats: &node::NodeStats, torn_down_at: Option<f64>) {
        let Some(running) = self.running.take() else {
            return;
        };
        let result = match running.thread.join() {
            Ok((Ok(_), ended_s)) if stats.full_gc_overlapped(running.t_s, ended_s) => {
                Err("a GC ran during it".to_string())
            }
            // No GC events are kept after the teardown: it frees the heap anyway.
            Ok((Ok(_), ended_s)) if torn_down_at.is_some_and(|t| t <= ended_s) => {
                Err("node tore its heap down during it".to_string())
            }
            Ok((Ok(found), _)) => Ok(found),
            Ok((Err(e), _)) => Err(format!("{e:#}")),
            Err(_) => Err("its thread panicked".to_string()),
        };
        match result {
            Ok(JobResult::Census(census)) => {
                log::info!(
                    "heap census at {:.1} s: {} objects, {} bytes in {:.3} s ({})",
                    running.t_s,
                    census.objects,
                    census.live_bytes,
                    census.duration.as_secs_f64(),
                    if running.after_full_gc {
                        "after a full GC"
                    } else {
                        "without a full GC"
                    }
                );
                self.last_cpu = census.cpu;
                self.last_wall = census.duration;
                // Once a census after a full GC is in, path searches wait for
                // the next such census: the censuses between, which verdicts
                // need, come first.
                let paths_now = running.after_full_gc || !self.series.has_census_after_full_gc();
                let targets = census_series::growing(&census, &self.series);
                if paths_now && !targets.is_empty() {
                    self.trace_next = Some((targets, running.full_gcs));
                }
                self.series.add(running.t_s, census, running.after_full_gc);
            }
            Ok(JobResult::Paths(paths)) => self.series.set_retainers(paths),
            Err(reason) => self.series.dropped(format!("{}: {reason}", running.kind)),
        }
    }

    /// The series, after the running job (if any) is collected.
    fn finish(mut self, stats: &node::NodeStats, torn_down_at: Option<f64>) -> census_series::CensusSeries {
        self.collect(stats, torn_down_at);
        self.series
    }
}

/// Runs a hunt. Forks the command first in launch mode: no thread may exist
/// before that, so the async runtime is created here, afterwards.
/// A load run against the target (`check --load`): started after `after`,
/// it ends the hunt when it exits.
pub struct Load {
    pub shell_command: String,
    pub after: Duration,
}

pub fn run(args: &HuntArgs, load: Option<&Load>) -> Result<Outcome> {
    let mut plan = Plan::resolve(args.mode, args.sample_bytes, args.max_overhead, args.command.is_empty())?;
    preflight::check()?;
    let attach_started = Instant::now();
    let cpu_before = args.pid.filter(|_| plan.auto).and_then(mode::CpuBeforeAttach::read);
    let (target, mut launched, modules) = if args.command.is_empty() {
        let pid = args.pid.context("either -p PID or -- COMMAND is required")?;
        let target = target::existing(pid)?;
        let modules = attach::target_modules(pid)?;
        (target, None, modules)
    } else {
        let launched = target::launch(&args.command)?;
        let modules = attach::command_modules(&launched.program)?;
        (launched.target.clone(), Some(launched), modules)
    };
    let v8_target = modules.node.as_ref().map(|node| v8::target(target.pid, node));
    let growth_start = match (&modules.node, cpu_before) {
        (Some(_), Some(before)) => before.cores_since().and_then(|cores| plan.start_for_node(cores)),
        _ => None,
    };
    if let Some(start) = &growth_start {
        eprintln!("leakscope: PID {}: {}", target.pid, start.describe());
    }
    let v8_pages = v8_target.as_ref().map(|t| t.pages);
    let js_namer = v8_target.and_then(|t| t.namer);
    let mut census = modules
        .node
        .as_ref()
        .map(|node| CensusRunner::new(target.pid, node, js_namer.as_ref()));
    if let Some(Err(reason)) = &census {
        // Counting a heap whose layout is not known would count it wrong.
        log::warn!("no JS heap census: {reason}");
    }
    let options = LoadOptions {
        pid: target.pid,
        ring_buffer_bytes: args
            .ring_buffer_mib
            .unwrap_or(if js_namer.is_some() { 64 } else { 8 })
            .max(1)
            * 1024
            * 1024,
        max_stacks: args.max_stacks,
        sample_bytes: plan.start.sample_bytes(),
        v8_frames: js_namer.as_ref().map(|namer| namer.layout().frame),
        v8_pages,
        unwind_rules: args.stack_walk == StackWalk::Cfi,
    };
    let mut ebpf = attach::load(&options)?;
    let (probes, links) = attach::attach(&mut ebpf, target.pid, &modules, plan.start.probe_set())?;
    if !attach::malloc_probed(&probes) && plan.start != Measure::Growth {
        eprintln!(
            "leakscope: warning: PID {} no loaded object exports malloc (a static binary?): malloc-family calls are not traced, only mmap/munmap/mremap and the heap's growth (brk)",
            target.pid
        );
    }
    log::info!("loaded and attached in {:.3} s", attach_started.elapsed().as_secs_f64());
    // Loading parsed ELF, BTF and the eBPF object: glibc keeps the freed
    // heap unless asked, and the hunt's model would grow on top of it.
    // SAFETY: malloc_trim only releases free memory.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
    let attached = probes.iter().filter(|p| p.status == ProbeStatus::Attached).count();
    for p in probes
        .iter()
        .filter_map(|p| Some((p.probe.name(), p.placement.as_ref()?)))
    {
        log::info!("probe {} at +{:#x}: {}", p.0, p.1.offset, p.1.reason);
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    let mut collector = Collector::new(target.pid, plan.start.sample_bytes());
    if options.unwind_rules {
        collector.set_unwind_rules(UnwindRules::take(&mut ebpf)?);
    }
    if let Some(mut namer) = js_namer {
        namer.validate_with(attach::gc_epoch_reader(&mut ebpf)?);
        collector.set_js_namer(namer);
    }
    collector.started_ns = monotonic_ns();
    collector.refresh_modules();
    // Used when brk is traced (growth mode, a static binary); a launched
    // command's exec resets it.
    collector.read_program_break(target.pid);
    if plan.start == Measure::Growth {
        collector.start_growth(mode::GROWTH_FAULT_PERIOD);
    }
    let mut timeline = Timeline::new(target.pid);
    let announce = || {
        eprintln!(
            "leakscope: attached to PID {} ({attached} probes, {} mode)",
            target.pid,
            plan.start.name()
        )
    };
    let budget = plan.max_overhead_pct.map(|pct| {
        let meter = (plan.start != Measure::Growth).then(|| OverheadMeter::new(target.pid, &probes));
        (pct, meter)
    });
    let mut session = Session {
        ebpf,
        pid: target.pid,
        probes,
        links,
        measure: plan.start,
        budget,
        switched: None,
        growth_start,
        detaching: None,
        started,
    };
    let (end, exit_code) = runtime.block_on(collect_until_end(
        &mut session,
        (
            &mut collector,
            &mut timeline,
            census.as_mut().and_then(|c| c.as_mut().ok()),
        ),
        launched.as_mut(),
        (args, load),
        announce,
    ))?;
    // The series end where the hunt ends.
    session.fold_faults(&mut collector);
    timeline.sample(&collector.heap, started.elapsed().as_secs_f64());
    if let (Some(launched), None) = (launched, exit_code) {
        launched.detach();
    }
    let duration = started.elapsed();
    let report_started = Instant::now();

    // Everything the report needs from the kernel, then detach.
    let cutoff = monotonic_ns().saturating_sub(args.min_age.as_nanos() as u64);
    let totals = collector.heap.totals(cutoff);
    let counters = Counters::read(&session.ebpf)?;
    // The kernel counts run time while a budget's meter holds the statistics
    // on, or while `kernel.bpf_stats_enabled` is set (the benchmarks do).
    let runs = mode::program_runs(&session.ebpf, &session.links);
    let programs_ns: f64 = runs.iter().map(|run| run.run_ns as f64).sum();
    if session.budget.is_some() || programs_ns > 0.0 {
        log::info!("the BPF programs ran {:.3} ms in all", programs_ns / 1e6);
        for run in runs.iter().filter(|run| run.runs > 0) {
            log::info!(
                "program {} ran {:.3} ms in {} runs",
                run.name,
                run.run_ns as f64 / 1e6,
                run.runs
            );
        }
    }
    if end != End::TargetExited {
        collector.refresh_modules();
    }

    let is_node = modules.node.is_some();
    let ended = Ended {
        target,
        is_node,
        measure: session.measure,
        sample_bytes: plan.start.sample_bytes(),
        overhead: session.overhead(),
        end,
        exit_code,
        duration,
    };
    let mut report = build_report(
        &collector,
        &timeline,
        totals,
        &session.probes,
        &counters,
        &ended,
        args.max_sites,
    );
    if let (Some(node), Some(census)) = (report.node.as_mut(), census) {
        node.heap_census = Some(match census {
            Ok(runner) => runner
                .finish(&collector.node, collector.torn_down_at)
                .report(&GrowthPolicy::default()),
            Err(reason) => report::HeapCensus {
                unavailable: Some(reason),
                ..Default::default()
            },
        });
    }
    report::drops::mark_and_warn(&mut report);
    report.findings = crate::findings::of(&report);
    log::info!(
        "report built {:.3} s after the hunt ended",
        report_started.elapsed().as_secs_f64()
    );

    Ok(Outcome {
        report,
        exit_code,
        attachment: Attachment {
            links: session.links,
            detaching: session.detaching,
            _ebpf: session.ebpf,
        },
    })
}

/// Collects events until the hunt ends; returns why, and the exit code of a
/// launched command that exited.
async fn collect_until_end(
    session: &mut Session,
    (collector, timeline, mut census): (&mut Collector, &mut Timeline, Option<&mut CensusRunner>),
    mut launched: Option<&mut Launched>,
    (args, load): (&HuntArgs, Option<&Load>),
    announce_attached: impl FnOnce(),
) -> Result<(End, Option<i32>)> {
    let ring = RingBuf::try_from(session.ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
    // SAFETY: the descriptor stays owned by the AsyncFd and is never replaced.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE)? };
    // Handlers first: the attach announcement is the cue to start a workload
    // and later to press Ctrl-C.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // A launched child is watched through SIGCHLD (it is our ptrace tracee);
    // another process through a pidfd. Both are set up before the child can run.
    let mut child_changed = signal(SignalKind::child())?;
    let exited = match launched.as_deref_mut() {
        Some(launched) => {
            launched.release()?;
            // The hunt's clock (and `check`'s warm-up) starts at the exec:
            // samples taken before its event is read would hold the pre-exec
            // process, and restarting every site's series at a later sample
            // made a loaded machine's sites look born after the warm-up.
            let waited = Instant::now();
            while collector.execs == 0 && waited.elapsed() < EXEC_EVENT_WAIT {
                tokio::time::sleep(Duration::from_millis(2)).await;
                drain(ring.get_mut(), collector);
            }
            None
        }
        // SAFETY: as above.
        None => {
            Some(unsafe { AsyncFd::register_with_interest(pidfd_open(collector.modules.pid())?, Interest::READABLE)? })
        }
    };
    announce_attached();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut refresh = tokio::time::interval(MODULE_REFRESH);
    // The kernel side wakes this reader only when the ring is half full.
    let mut poll = tokio::time::interval(RING_POLL);
    let mut summary = args.interval.filter(|d| !d.is_zero()).map(tokio::time::interval);
    let mut sample = tokio::time::interval(args.interval.unwrap_or(SAMPLE_PERIOD).clamp(RING_POLL, SAMPLE_PERIOD));
    // The meter's first reading, from which the first window counts.
    session.enforce_budget(collector, timeline)?;
    let mut budget_window = tokio::time::interval_at(tokio::time::Instant::now() + FIRST_BUDGET_CHECK, BUDGET_WINDOW);
    let mut load_run = std::pin::pin!(run_load(load));
    let started = Instant::now();
    let mut execs_seen = collector.execs;
    let mut extra_sample_at = args.sample_at.map(|at| tokio::time::Instant::now() + at);

    let end = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), collector);
                guard.clear_ready();
                collector.refresh_modules_if_changed();
            }
            _ = readable(exited.as_ref()) => break (End::TargetExited, None),
            _ = child_changed.recv(), if launched.is_some() => {
                let launched = launched.as_deref_mut().expect("guarded by is_some");
                if let Some(code) = launched.poll(|| collector.refresh_modules()) {
                    break (End::TargetExited, Some(code));
                }
            }
            _ = interrupt.recv() => break (End::Interrupted, None),
            _ = terminate.recv() => break (End::Interrupted, None),
            _ = sleep_until(deadline) => break (End::Duration, None),
            _ = refresh.tick() => collector.refresh_modules(),
            _ = poll.tick() => {
                drain(ring.get_mut(), collector);
                session.window_fault_stacks(collector);
                // Often, so that a census starts soon after a full GC and
                // is judged by the GC events drained up to now.
                if let Some(census) = census.as_deref_mut() {
                    census.tick(&collector.node, collector.started_ns, collector.torn_down_at);
                }
            }
            _ = tick(&mut summary) => print_summary(collector, started.elapsed()),
            _ = budget_window.tick(), if session.budget.is_some() => {
                drain(ring.get_mut(), collector);
                session.enforce_budget(collector, timeline)?;
            }
            _ = sleep_until(extra_sample_at), if extra_sample_at.is_some() => {
                extra_sample_at = None;
                drain(ring.get_mut(), collector);
                session.fold_faults(collector);
                timeline.sample(&collector.heap, started.elapsed().as_secs_f64());
            }
            _ = sample.tick() => {
                drain(ring.get_mut(), collector);
                session.fold_faults(collector);
                if collector.execs != execs_seen {
                    execs_seen = collector.execs;
                    timeline.reset_sites();
                }
                timeline.sample(&collector.heap, started.elapsed().as_secs_f64());
            }
            status = &mut load_run => {
                log::info!("the load exited: {status:?}");
                break (End::LoadFinished, None);
            }
        }
    };
    // Events written before the end are still queued.
    drain(ring.get_mut(), collector);
    Ok(end)
}

/// Runs the load once its delay is over; pending forever without one.
async fn run_load(load: Option<&Load>) -> std::io::Result<std::process::ExitStatus> {
    let Some(load) = load else {
        return std::future::pending().await;
    };
    tokio::time::sleep(load.after).await;
    eprintln!("leakscope: starting the load: {}", load.shell_command);
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&load.shell_command)
        .status()
        .await
}

async fn readable(fd: Option<&AsyncFd<OwnedFd>>) {
    match fd {
        Some(fd) => {
            let _ = fd.readable().await;
        }
        None => std::future::pending().await,
    }
}

fn drain(ring: &mut RingBuf<MapData>, collector: &mut Collector) {
    while let Some(record) = ring.next() {
        collector.apply(&record);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn print_summary(collector: &Collector, elapsed: Duration) {
    let totals = collector.heap.totals(u64::MAX);
    let bytes: u64 = totals.values().map(|t| t.bytes).sum();
    eprintln!(
        "leakscope: {:>6.1} s  outstanding {} at {} sites  ({} events)",
        elapsed.as_secs_f64(),
        report::human_bytes(bytes),
        totals.len(),
        collector.events
    );
}

/// How the hunt ended.
struct Ended {
    target: Target,
    is_node: bool,
    /// What the probes measured at the end.
    measure: Measure,
    /// The sampling interval of the per-call phase.
    sample_bytes: Option<u64>,
    overhead: Option<report::Overhead>,
    end: End,
    exit_code: Option<i32>,
    duration: Duration,
}

fn build_report(
    collector: &Collector,
    timeline: &Timeline,
    totals: std::collections::HashMap<u32, crate::heap::SiteTotals>,
    probes: &[AttachedProbe],
    counters: &Counters,
    ended: &Ended,
    max_sites: Option<usize>,
) -> Report {
    let now = monotonic_ns();
    let mut symbolizer = Symbolizer::new();
    let policy = GrowthPolicy::default();
    let mut ages = collector.heap.ages_s(now);
    let hunt_s = ended.duration.as_secs_f64();
    // A site records the probe that fired; name every function at that address.
    let allocator_names: std::collections::HashMap<_, _> = probes
        .iter()
        .filter(|p| p.counted_as == p.probe)
        .map(|p| (p.probe, p.display_name()))
        .collect();
    // Frames are filled in below, for the sites kept only.
    let mut sites: Vec<(Site, SiteId)> = totals
        .iter()
        .map(|(&id, t)| {
            let key = collector.heap.site(id);
            let series = timeline.site_series(id);
            let growth = series
                .as_ref()
                .map(|series| analyze::analyze_site(series, &ages.remove(&id).unwrap_or_default(), hunt_s, &policy));
            let site = Site {
                kind: key.kind,
                allocator: allocator_names
                    .get(&key.probe)
                    .cloned()
                    .unwrap_or_else(|| key.probe.name().to_string()),
                outstanding_bytes: t.bytes,
                outstanding_allocations: t.allocations,
                oldest_age_s: now.saturating_sub(t.oldest_ts_ns) as f64 / 1e9,
                v8_space: (key.kind == Kind::V8Heap).then(|| v8::pages::space_name(key.detail)),
                mapping: (key.kind == Kind::Mmap).then(|| Mapping {
                    anonymous: key.anonymous,
                    prot: report::prot_string(key.detail),
                }),
                frames: Vec::new(),
                allocated_bytes: collector.heap.allocated(id).0,
                allocated_allocations: collector.heap.allocated(id).1,
                growth_bytes_per_s: growth.as_ref().and_then(|g| g.slope_bytes_per_s),
                verdict: growth.as_ref().map(|g| g.verdict),
                verdict_caveat: None,
                growth: growth.map(|g| g.stats),
                series,
                owned_by: None,
            };
            (site, id)
        })
        .collect();
    drop(ages);
    sites.sort_by(|(a, _), (b, _)| {
        b.outstanding_bytes
            .cmp(&a.outstanding_bytes)
            .then(b.outstanding_allocations.cmp(&a.outstanding_allocations))
    });
    let sites_for_node: Vec<(Kind, Option<String>, u64, u64)> = sites
        .iter()
        .map(|(s, _)| {
            (
                s.kind,
                s.v8_space.clone(),
                s.outstanding_bytes,
                s.outstanding_allocations,
            )
        })
        .collect();
    // Heap (malloc) memory was measured unless the hunt began in growth mode.
    let malloc_measured =
        ended.overhead.as_ref().is_some_and(|o| o.switched.is_some()) || ended.measure != Measure::Growth;
    let mut by_kind: BTreeMap<String, u64> = Kind::ALL
        .iter()
        .filter(|&&k| (ended.is_node && k != Kind::Malloc) || k == Kind::Mmap || (k == Kind::Malloc && malloc_measured))
        .map(|k| (k.name().to_string(), 0))
        .collect();
    let (touched, held): (Vec<&Site>, Vec<&Site>) =
        sites.iter().map(|(s, _)| s).partition(|s| s.kind == Kind::PagesTouched);
    for site in &held {
        *by_kind.entry(site.kind.name().to_string()).or_default() += site.outstanding_bytes;
    }
    let mut drops: BTreeMap<String, u64> = DropReason::ALL
        .iter()
        .map(|&r| (r.name().to_string(), counters.drops(r)))
        .collect();
    drops.insert("malformed_records".to_string(), collector.malformed);
    let totals = Totals {
        outstanding_bytes: held.iter().map(|s| s.outstanding_bytes).sum(),
        outstanding_allocations: held.iter().map(|s| s.outstanding_allocations).sum(),
        by_kind,
        allocator_internal_bytes: collector.heap.allocator_internal_bytes(),
        pages_touched_bytes: touched.iter().map(|s| s.outstanding_bytes).sum(),
        reserved_bytes: collector.heap.reserved_bytes(),
    };
    let mut tail = Vec::new();
    let kept = report::split_tail(sites, |(s, _)| s, max_sites.unwrap_or(usize::MAX), &mut tail);
    let mut shared = report::SharedFrames::default();
    let index_of: std::collections::HashMap<SiteId, usize> =
        kept.iter().enumerate().map(|(index, &(_, id))| (id, index)).collect();
    let sites = kept
        .into_iter()
        .map(|(mut site, id)| {
            let key = collector.heap.site(id);
            // An owner that holds nothing at the end is not a site: its blocks were freed.
            site.owned_by = key.owner.and_then(|owner| index_of.get(&owner).copied());
            let addrs = collector.stack(key.stack).unwrap_or_default();
            // Heap stacks are taken at the return probe: frame 0 is a return
            // address too. A fault's frame 0 is the faulting instruction.
            let symbolized = symbolizer.symbolize(&collector.modules, addrs, key.kind == Kind::Malloc);
            let js = collector.js_frames(key.stack);
            site.frames = shared.share_all(frames(symbolized, &js, ended.is_node));
            site
        })
        .collect();

    Report {
        schema: report::SCHEMA.to_string(),
        target: report::TargetInfo {
            pid: ended.target.pid,
            command: ended.target.command.clone(),
            exited: ended.end == End::TargetExited,
            exit_code: ended.exit_code,
        },
        duration_s: hunt_s,
        mode: ended.measure.name().to_string(),
        sample_bytes: ended.sample_bytes,
        ended_by: ended.end.name().to_string(),
        totals,
        drops,
        probes: probes.iter().map(|p| probe_report(p, counters)).collect(),
        sites,
        findings: Vec::new(),
        tail,
        command_line: Some(command_line()),
        process: Some(timeline.process(&policy)),
        node: ended.is_node.then(|| {
            node_report(
                collector,
                timeline,
                &sites_for_node,
                &mut symbolizer,
                &mut shared,
                &policy,
            )
        }),
        overhead: ended.overhead.clone(),
        modules_without_symbols: symbolizer.modules_without_symbols().map(str::to_string).collect(),
    }
}

fn probe_report(p: &AttachedProbe, counters: &Counters) -> ProbeReport {
    let hits = counters.entry_hits(p.counted_as);
    let return_hits = p.has_return.then(|| counters.return_hits(p.counted_as));
    let status = match p.status {
        ProbeStatus::Missing => "missing",
        // A return-only probe counts no entries.
        ProbeStatus::Attached if hits > 0 || return_hits.is_some_and(|r| r > 0) => "live",
        ProbeStatus::Attached => "never-fired",
    };
    ProbeReport {
        name: p.probe.name().to_string(),
        aliases: p.aliases.iter().map(|a| a.to_string()).collect(),
        module: p.module.as_ref().map(|m| m.display().to_string()),
        offset: p.file_offset.map(|o| format!("{o:#x}")),
        placement: p.placement.as_ref().map(|pl| pl.reason.clone()),
        status: status.to_string(),
        hits,
        return_hits,
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
/// Makes the calling thread the last to get a CPU (nice 19): a census
/// competes with the target for none it needs.
fn lower_own_priority() {
    // SAFETY: plain syscalls on the calling thread; failure leaves the priority as it was.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) } != 0;
    if failed {
        log::info!(
            "cannot lower the census thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Seconds since `started_ns` on CLOCK_MONOTONIC.
fn seconds_since(started_ns: u64) -> f64 {
    monotonic_ns().saturating_sub(started_ns) as f64 / 1e9
}

fn monotonic_ns() -> u64 {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// A descriptor that becomes readable when the process exits.
fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: plain syscall; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        anyhow::bail!("process {pid} exited before the probes were attached ({err})");
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// How this leakscope was invoked, shell-quoted where needed.
fn command_line() -> String {
    let quote = |arg: String| {
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            arg
        } else {
            format!("'{}'", arg.replace('\'', "'\\''"))
        }
    };
    std::env::args().map(quote).collect::<Vec<_>>().join(" ")
}

/// The report frames of one machine frame. JS frames that V8 itself named
/// take those names, one frame per inlining level, innermost first (the
/// perf map, if any, named the same code: tests/tests/node.rs checks that
/// they agree). In a Node target, code outside every file and absent from
/// the perf map is JIT code all the same.
fn js_or_native(mut frame: Frame, js: &[JsFrame], is_node: bool) -> Vec<Frame> {
    if js.is_empty() {
        if is_node && frame.function.is_none() && frame.module.is_none() {
            frame.function = Some("[v8 jit]".to_string());
        }
        return vec![frame];
    }
    js.iter()
        .enumerate()
        .map(|(level, named)| Frame {
            address: frame.address.clone(),
            function: Some(named.function.clone()),
            file: named.script.clone(),
            line: named.line,
            column: named.column,
            module: Some(JIT_MODULE.to_string()),
            inlined: level + 1 < js.len(),
        })
        .collect()
}

/// The report frames of a symbolized stack and its JS frames (aligned, or
/// empty): one per function, inlined ones included.
pub(crate) fn frames(symbolized: Vec<crate::symbolize::Frame>, js: &[&[JsFrame]], is_node: bool) -> Vec<Frame> {
    symbolized
        .into_iter()
        .enumerate()
        .flat_map(|(i, f)| {
            let js = js.get(i).copied().unwrap_or_default();
            // JIT code has no DWARF inlined levels: JS names replace the one frame.
            Frame::expand(f).flat_map(move |frame| match frame.inlined {
                true => vec![frame],
                false => js_or_native(frame, js, is_node),
            })
        })
        .collect()
}

/// Memory by category, GCs and JS allocation samples of a Node.js target.
/// `sites`: (kind, V8 space, bytes, allocations) of every reported site.
fn node_report(
    collector: &Collector,
    timeline: &Timeline,
    sites: &[(Kind, Option<String>, u64, u64)],
    symbolizer: &mut Symbolizer,
    shared: &mut report::SharedFrames,
    policy: &GrowthPolicy,
) -> report::NodeReport {
    let stats = &collector.node;
    let (t_s, bytes): (Vec<f64>, Vec<u64>) = stats.live_after_full.iter().copied().unzip();
    let (live_rate, live_verdict) = analyze::analyze_totals(&t_s, &bytes, policy);
    let mut pages_by_space: BTreeMap<String, report::PagesHeld> = BTreeMap::new();
    for (_, space, bytes, pages) in sites.iter().filter(|s| s.0 == Kind::V8Heap) {
        let held = pages_by_space.entry(space.clone().unwrap_or_default()).or_default();
        held.pages += pages;
        held.bytes += bytes;
    }
    let categories = Kind::ALL
        .iter()
        .map(|&kind| {
            let series = timeline.kind_series(kind);
            let (mut rate, mut verdict) = analyze::analyze_totals(&series.t_s, &series.bytes, policy);
            // Live bytes after full GCs separate a JS-heap leak from a heap
            // that merely has not been collected yet: prefer them when there are enough.
            if kind == Kind::V8Heap && live_verdict != report::Verdict::InsufficientData {
                (rate, verdict) = (live_rate, live_verdict);
            }
            let held = sites.iter().filter(|s| s.0 == kind).map(|s| s.2).sum();
            (
                kind.name().to_string(),
                report::Category {
                    bytes: held,
                    growth_bytes_per_s: rate,
                    verdict,
                },
            )
        })
        .collect();
    let mut samples: Vec<_> = stats.samples.iter().collect();
    samples.sort_by_key(|(_, (count, _))| std::cmp::Reverse(*count));
    let allocation_samples = samples
        .into_iter()
        .take(MAX_ALLOCATION_SAMPLES)
        .map(|(&(probe, stack), &(count, bytes))| {
            let addrs = collector.stack(stack).unwrap_or_default();
            // Taken at an entry probe: frame 0 is an exact instruction pointer.
            let symbolized = symbolizer.symbolize(&collector.modules, addrs, false);
            let js = collector.js_frames(stack);
            report::AllocationSample {
                reason: node::sample_reason(probe).to_string(),
                samples: count,
                bytes,
                frames: shared.share_all(frames(symbolized, &js, true)),
            }
        })
        .collect();
    report::NodeReport {
        gc: report::GcCounts {
            minor: stats.minor_gcs,
            full: stats.full_gcs,
            time_s: stats.gc_seconds,
        },
        live_after_full_gc: report::TimeSeries { t_s, bytes },
        live_after_full_gc_growth_bytes_per_s: live_rate,
        pages_by_space,
        allocation_samples,
        categories,
        torn_down_at_s: collector.torn_down_at,
        heap_census: None,
    }
}
