//! `leakscope hunt`: attach or launch, collect until the end, report.

use std::{
    collections::BTreeMap,
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf, StackTraceMap};
use leak_common::DropReason;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    attach::{self, AttachedProbe, Counters, Links, LoadOptions, ProbeStatus},
    cli::HuntArgs,
    collect::Collector,
    heap::Kind,
    preflight,
    report::{self, Frame, Mapping, ProbeReport, Report, Site, Totals},
    symbolize::Symbolizer,
    target::{self, Launched, Target},
};

/// How often the target's mappings are re-read, so that stacks stay
/// resolvable after it exits.
const MODULE_REFRESH: Duration = Duration::from_secs(1);
/// How often the ring buffer is drained.
const RING_POLL: Duration = Duration::from_millis(10);

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
    _ebpf: aya::Ebpf,
}

impl Attachment {
    pub fn detach(self) {
        let started = Instant::now();
        self.links.detach();
        log::info!("detached in {:.3} s", started.elapsed().as_secs_f64());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Duration,
    Interrupted,
    TargetExited,
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Duration => "duration",
            End::Interrupted => "interrupted",
            End::TargetExited => "target-exited",
        }
    }
}

/// Runs a hunt. Forks the command first in launch mode: no thread may exist
/// before that, so the async runtime is created here, afterwards.
pub fn run(args: &HuntArgs) -> Result<Outcome> {
    preflight::check()?;
    let (target, mut launched, libc) = if args.command.is_empty() {
        let pid = args.pid.context("either -p PID or -- COMMAND is required")?;
        let target = target::existing(pid)?;
        let libc = attach::find_libc(pid)?;
        (target, None, libc)
    } else {
        let launched = target::launch(&args.command)?;
        let libc = attach::libc_for_command(&launched.program)?;
        (launched.target.clone(), Some(launched), libc)
    };
    let attach_started = Instant::now();
    let options = LoadOptions {
        pid: target.pid,
        ring_buffer_bytes: args.ring_buffer_mib.max(1) * 1024 * 1024,
        max_stacks: args.max_stacks,
    };
    let mut ebpf = attach::load(&options)?;
    let (probes, links) = attach::attach(&mut ebpf, target.pid, libc.as_deref())?;
    if libc.is_none() {
        eprintln!(
            "leakscope: warning: PID {} maps no libc (a static binary?): malloc-family calls are not traced, only mmap/munmap/mremap",
            target.pid
        );
    }
    log::info!("loaded and attached in {:.3} s", attach_started.elapsed().as_secs_f64());
    let attached = probes.iter().filter(|p| p.status == ProbeStatus::Attached).count();
    for p in probes
        .iter()
        .filter_map(|p| Some((p.probe.name(), p.placement.as_ref()?)))
    {
        log::info!("probe {} at +{:#x}: {}", p.0, p.1.offset, p.1.reason);
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    let mut collector = Collector::new(target.pid);
    collector.refresh_modules();
    let announce = || eprintln!("leakscope: attached to PID {} ({attached} probes)", target.pid);
    let (end, exit_code) = runtime.block_on(collect_until_end(
        &mut ebpf,
        &mut collector,
        launched.as_mut(),
        args,
        announce,
    ))?;
    if let (Some(launched), None) = (launched, exit_code) {
        launched.detach();
    }
    let duration = started.elapsed();
    let report_started = Instant::now();

    // Everything the report needs from the kernel, then detach.
    let stack_map = StackTraceMap::try_from(ebpf.map("STACKS").context("STACKS map missing")?)?;
    let cutoff = monotonic_ns().saturating_sub(args.min_age.as_nanos() as u64);
    let totals = collector.heap.totals(cutoff);
    for &site in totals.keys() {
        let stack_id = collector.heap.site(site).stack_id;
        let _ = collector.raw_stack(stack_id, &stack_map);
    }
    let counters = Counters::read(&ebpf)?;
    if end != End::TargetExited {
        collector.refresh_modules();
    }

    let report = build_report(
        &collector, totals, &probes, &counters, &target, end, exit_code, duration,
    );
    log::info!(
        "report built {:.3} s after the hunt ended",
        report_started.elapsed().as_secs_f64()
    );

    Ok(Outcome {
        report,
        exit_code,
        attachment: Attachment { links, _ebpf: ebpf },
    })
}

/// Collects events until the hunt ends; returns why, and the exit code of a
/// launched command that exited.
async fn collect_until_end(
    ebpf: &mut aya::Ebpf,
    collector: &mut Collector,
    mut launched: Option<&mut Launched>,
    args: &HuntArgs,
    announce_attached: impl FnOnce(),
) -> Result<(End, Option<i32>)> {
    let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
    let stack_map = StackTraceMap::try_from(ebpf.map("STACKS").context("STACKS map missing")?)?;
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
    let started = Instant::now();

    let end = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), collector, &stack_map);
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
            _ = poll.tick() => drain(ring.get_mut(), collector, &stack_map),
            _ = tick(&mut summary) => print_summary(collector, started.elapsed()),
        }
    };
    // Events written before the end are still queued.
    drain(ring.get_mut(), collector, &stack_map);
    Ok(end)
}

async fn readable(fd: Option<&AsyncFd<OwnedFd>>) {
    match fd {
        Some(fd) => {
            let _ = fd.readable().await;
        }
        None => std::future::pending().await,
    }
}

fn drain(ring: &mut RingBuf<MapData>, collector: &mut Collector, stack_map: &StackTraceMap<&MapData>) {
    while let Some(record) = ring.next() {
        collector.apply(&record, stack_map);
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

#[allow(clippy::too_many_arguments)]
fn build_report(
    collector: &Collector,
    totals: std::collections::HashMap<u32, crate::heap::SiteTotals>,
    probes: &[AttachedProbe],
    counters: &Counters,
    target: &Target,
    end: End,
    exit_code: Option<i32>,
    duration: Duration,
) -> Report {
    let now = monotonic_ns();
    let mut symbolizer = Symbolizer::new();
    // A site records the probe that fired; name every function at that address.
    let allocator_names: std::collections::HashMap<_, _> = probes
        .iter()
        .filter(|p| p.counted_as == p.probe)
        .map(|p| (p.probe, p.display_name()))
        .collect();
    let mut sites: Vec<Site> = totals
        .iter()
        .map(|(&id, t)| {
            let key = collector.heap.site(id);
            let mut addrs: Vec<u64> = collector.cached_stack(key.stack_id).unwrap_or_default().to_vec();
            if !addrs.is_empty() {
                let skipped = key.skipped_callers.iter().copied().filter(|&a| a != 0);
                addrs.splice(1..1, skipped);
            }
            // Heap stacks are taken at the return probe: frame 0 is a return address too.
            let frames = symbolizer.symbolize(&collector.modules, &addrs, key.kind == Kind::Malloc);
            Site {
                kind: key.kind,
                allocator: allocator_names
                    .get(&key.probe)
                    .cloned()
                    .unwrap_or_else(|| key.probe.name().to_string()),
                outstanding_bytes: t.bytes,
                outstanding_allocations: t.allocations,
                oldest_age_s: now.saturating_sub(t.oldest_ts_ns) as f64 / 1e9,
                mapping: (key.kind == Kind::Mmap).then(|| Mapping {
                    anonymous: key.anonymous,
                    prot: report::prot_string(key.prot),
                }),
                frames: frames.into_iter().map(Frame::from).collect(),
                allocated_bytes: collector.heap.allocated(id).0,
                allocated_allocations: collector.heap.allocated(id).1,
                growth_bytes_per_s: None,
                verdict: None,
                growth: None,
                series: None,
            }
        })
        .collect();
    sites.sort_by(|a, b| {
        b.outstanding_bytes
            .cmp(&a.outstanding_bytes)
            .then(b.outstanding_allocations.cmp(&a.outstanding_allocations))
    });

    let mut by_kind: BTreeMap<String, u64> = [("malloc".to_string(), 0), ("mmap".to_string(), 0)].into();
    for site in &sites {
        *by_kind.entry(kind_name(site.kind).to_string()).or_default() += site.outstanding_bytes;
    }
    let mut drops: BTreeMap<String, u64> = DropReason::ALL
        .iter()
        .map(|&r| (r.name().to_string(), counters.drops(r)))
        .collect();
    drops.insert("malformed_records".to_string(), collector.malformed);

    Report {
        schema: report::SCHEMA.to_string(),
        target: report::TargetInfo {
            pid: target.pid,
            command: target.command.clone(),
            exited: end == End::TargetExited,
            exit_code,
        },
        duration_s: duration.as_secs_f64(),
        mode: "exact".to_string(),
        ended_by: end.name().to_string(),
        totals: Totals {
            outstanding_bytes: sites.iter().map(|s| s.outstanding_bytes).sum(),
            outstanding_allocations: sites.iter().map(|s| s.outstanding_allocations).sum(),
            by_kind,
            allocator_internal_bytes: collector.heap.allocator_internal_bytes(),
        },
        drops,
        probes: probes.iter().map(|p| probe_report(p, counters)).collect(),
        sites,
        command_line: Some(command_line()),
        process: None,
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Malloc => "malloc",
        Kind::Mmap => "mmap",
    }
}

fn probe_report(p: &AttachedProbe, counters: &Counters) -> ProbeReport {
    let hits = counters.entry_hits(p.counted_as);
    let status = match p.status {
        ProbeStatus::Missing => "missing",
        ProbeStatus::Attached if hits > 0 => "live",
        ProbeStatus::Attached => "never-fired",
    };
    ProbeReport {
        name: p.probe.name().to_string(),
        aliases: p.aliases.iter().map(|a| a.to_string()).collect(),
        offset: p.file_offset.map(|o| format!("{o:#x}")),
        placement: p.placement.as_ref().map(|pl| pl.reason.clone()),
        status: status.to_string(),
        hits,
        return_hits: p.has_return.then(|| counters.return_hits(p.counted_as)),
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
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
