//! 8: the heap census of a large JS heap: leakscope's time, CPU and memory per
//! census, the target's event-loop delay while censuses run, and the pause of
//! a Node heap snapshot of the same heap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};

use super::{
    clock_ticks, cpu_secs, fmt_secs, needs, rel, shell_line, signal, target_note, unavailable, vm_mib, words, work_dir,
    Plan, Running, Section, Tools, MIB,
};

pub(super) const TITLE: &str = "8. Heap census of a large JS heap";

/// The goals: leakscope's memory under this share of the heap, and
/// the target's p99 event-loop delay within this many ms of untraced.
const MEMORY_SHARE: f64 = 0.10;
const DELAY_MARGIN_MS: f64 = 10.0;

/// perf_hooks' event-loop delay over one phase, ms.
struct Delay {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Delay {
    fn parse(line: Option<&str>) -> Result<Delay> {
        let line = line.context("the fixture printed no delay line")?;
        let value = |key: &str| -> Result<f64> {
            let mut words = line.split_whitespace();
            words.find(|w| *w == key);
            words
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key} in {line:?}"))
        };
        Ok(Delay {
            p50: value("p50_ms")?,
            p99: value("p99_ms")?,
            max: value("max_ms")?,
        })
    }

    fn cell(&self) -> String {
        format!("{:.2} ({:.2}; {:.2})", self.p99, self.p50, self.max)
    }
}

/// A process's resident memory outside its mappings of BPF maps, MiB:
/// leakscope's ring buffer is one (its data pages mapped twice), resident
/// from the moment the hunt maps it whatever the target does, the same
/// for any hunt of a node; the rest is what a census can add to.
fn rss_outside_bpf_maps_mib(pid: u32) -> Option<f64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut all, mut maps) = (0.0, 0.0);
    let mut in_bpf_map = false;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: f64 = kib.trim().trim_end_matches(" kB").parse().ok()?;
            all += kib;
            if in_bpf_map {
                maps += kib;
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('-') && !w.ends_with(':'))
        {
            in_bpf_map = line.ends_with("anon_inode:bpf-map");
        }
    }
    Some((all - maps) / 1024.0)
}

/// Samples [`rss_outside_bpf_maps_mib`] of `pid` every 50 ms on a thread
/// until [`OutsideMapsPeak::stop`]: its peak.
struct OutsideMapsPeak {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Option<f64>>,
}

impl OutsideMapsPeak {
    fn start(pid: u32) -> OutsideMapsPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak: Option<f64> = None;
            while !stopped.load(Ordering::Relaxed) {
                if let Some(mib) = rss_outside_bpf_maps_mib(pid) {
                    peak = Some(peak.map_or(mib, |p| p.max(mib)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        OutsideMapsPeak { stop, thread }
    }

    fn stop(self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().ok().flatten()
    }
}

/// The live bytes and seconds of each `heap census at T s: N objects, B bytes in D s (…)` line.
fn censuses(log: &str) -> Vec<(f64, f64)> {
    log.lines()
        .filter_map(|line| {
            let rest = line.split_once("heap census at ")?.1;
            let (_, counts) = rest.split_once(" objects, ")?;
            let (bytes, secs) = counts.split_once(" bytes in ")?;
            Some((bytes.parse().ok()?, secs.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

pub(super) fn heap_census(plan: &Plan, tools: &Tools) -> Result<Section> {
    // A full GC every gc_s: a census (seconds for a large heap) that a GC
    // overlaps is dropped, as objects may have moved under it.
    let (heap_mib, phase_s, gc_s) = if plan.quick { (256, 16, 5) } else { (1024, 40, 12) };
    let target_argv = words(&[
        "node",
        "--expose-gc",
        "--max-old-space-size=4096",
        "bench/census_heap.js",
        &heap_mib.to_string(),
        &phase_s.to_string(),
        &gc_s.to_string(),
    ]);
    let report = rel(&work_dir().join("census.json"));
    let mut section = Section {
        title: TITLE,
        about: format!(
            "`bench/census_heap.js` fills the system node's heap with {heap_mib} MiB of live objects (records \
             in a Map and in arrays, their strings and arrays, closures), then runs phases of {phase_s} s in \
             which it forces a full GC every {gc_s} s while perf_hooks' `monitorEventLoopDelay` (1 ms resolution) \
             samples its event loop: one phase untraced, one under `hunt --mode growth -p PID`, which takes a \
             census after each full GC and between them (on its own threads, at nice 19, never stopping the target). leakscope's \
             CPU is utime+stime of /proc/PID/stat over the traced phase; its VmHWM is its peak RSS, read until it \
             exits; census times are its `-v` log's `heap census at …` lines (a census that a GC overlaps is dropped, and counted as such). Last, the same heap is written by \
             `v8.writeHeapSnapshot()`, which stops the event loop for as long as it runs; node's peak RSS is \
             `process.resourceUsage().maxRSS` after it. One run."
        ),
        commands: vec![],
        header: vec![
            "configuration",
            "event-loop delay p99, ms (p50; max)",
            "censuses (dropped)",
            "census wall time, s",
            "live bytes per census (median)",
            "leakscope CPU over the phase",
            "leakscope VmHWM",
            "leakscope peak RSS outside BPF maps",
            "target stopped for",
        ],
        rows: vec![],
        notes: vec![],
    };
    if let Err(why) = needs(tools.node, "node") {
        section.rows.push([vec!["all".into()], unavailable(&why)].concat());
        return Ok(section);
    }
    let mut target = Running::target(&target_argv, "ready")?;
    target.send_line("build")?;
    target.wait_for("built", Duration::from_secs(900))?;
    let built_mib: f64 = target
        .last_line("built ")
        .and_then(|l| l["built ".len()..].trim().parse().ok())
        .context("no heap size in the fixture's `built` line")?;
    let phase_timeout = Duration::from_secs(phase_s + 120);

    target.send_line("go")?;
    target.wait_for("delay", phase_timeout)?;
    let untraced = Delay::parse(target.last_line("delay"))?;

    let pid = target.pid().to_string();
    let hunt = tools.hunt(
        true,
        &["--mode", "growth", "-p", &pid, "--format", "json", "-o", &report],
    );
    let mut tracer = Running::leakscope(&hunt)?;
    tracer.wait_for("loaded and attached in", Duration::from_secs(120))?;
    let ticks = clock_ticks()?;
    let cpu_before = cpu_secs(tracer.pid(), ticks)?;
    // Attached, before any census: what the census adds is on top.
    let attached_rss = vm_mib(tracer.pid(), "VmRSS").context("no VmRSS of leakscope")?;
    let attached_outside = rss_outside_bpf_maps_mib(tracer.pid()).context("no smaps of leakscope")?;
    let outside = OutsideMapsPeak::start(tracer.pid());
    target.send_line("go")?;
    target.wait_for("delay", phase_timeout)?;
    let cpu = cpu_secs(tracer.pid(), ticks)? - cpu_before;
    let ring_rss = vm_mib(tracer.pid(), "VmRSS").zip(rss_outside_bpf_maps_mib(tracer.pid()));
    let outside_peak = outside.stop().context("no smaps of leakscope during the phase")?;
    signal(tracer.pid(), "INT")?;
    let (status, hwm) = tracer.finish_polling(|pid| vm_mib(pid, "VmHWM"))?;
    ensure!(status.success(), "the hunt failed ({status}):\n{}", tracer.log());
    let traced = Delay::parse(target.last_line("delay"))?;
    let taken = censuses(&tracer.log());
    let dropped = tracer.log().matches("dropped a census").count();
    let secs: Vec<f64> = taken.iter().map(|&(_, s)| s).collect();
    let mut live: Vec<f64> = taken.iter().map(|&(b, _)| b).collect();
    live.sort_by(f64::total_cmp);
    let hwm = hwm.context("no VmHWM of leakscope")?;

    target.send_line("snapshot")?;
    target.wait_for("snapshot", Duration::from_secs(1800))?;
    let snapshot = target.last_line("snapshot").unwrap_or_default().to_owned();
    let snapshot_value = |key: &str| {
        let mut words = snapshot.split_whitespace();
        words.find(|w| *w == key);
        words.next().and_then(|v| v.parse::<f64>().ok())
    };
    let pause = snapshot_value("pause_s").context("no pause in the snapshot line")?;
    let snapshot_rss = snapshot_value("max_rss_mib").context("no RSS in the snapshot line")?;

    section.commands = vec![shell_line(&target_argv), shell_line(&hunt)];
    section.rows = vec![
        vec![
            "untraced".into(),
            untraced.cell(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            "0 s".into(),
        ],
        vec![
            "leakscope hunt --mode growth (censuses after full GCs and between them)".into(),
            traced.cell(),
            format!("{} ({dropped})", taken.len()),
            if secs.is_empty() { "–".into() } else { fmt_secs(&secs) },
            live.get(live.len() / 2)
                .map_or("–".into(), |b| format!("{:.1} MiB", b / MIB)),
            format!("{cpu:.2} s ({:.2} s per census)", cpu / taken.len().max(1) as f64),
            format!("{hwm:.1} MiB ({attached_rss:.1} MiB once attached)"),
            format!("{outside_peak:.1} MiB ({attached_outside:.1} MiB once attached)"),
            "0 s (never stopped)".into(),
        ],
        vec![
            "v8.writeHeapSnapshot() of the same heap".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            format!("{pause:.2} s (node's peak RSS {snapshot_rss:.0} MiB)"),
        ],
    ];
    section.notes = vec![
        format!("The heap: {built_mib:.0} MiB used after a full GC (v8.getHeapStatistics()), the fixture's own count."),
        target_note(
            "leakscope's memory for the censuses under 10 % of the heap",
            (outside_peak - attached_outside) / built_mib,
            MEMORY_SHARE,
            " × the heap",
            "",
        ),
        format!(
            "leakscope's memory for the censuses is the peak of its resident memory outside its mappings of BPF \
             maps (sampled every 50 ms from /proc/PID/smaps), {outside_peak:.1} MiB, less the same once attached, \
             {attached_outside:.1} MiB. The BPF maps' mappings are its ring buffer (64 MiB for a node target, \
             its pages mapped twice), resident from when the hunt maps it, after `loaded and attached`, whatever \
             the heap ({}): VmHWM counts them, {hwm:.1} MiB, {:.2} × the heap.",
            ring_rss.map_or("not read".to_string(), |(rss, outside)| format!(
                "{:.1} MiB of RSS at the phase's end",
                rss - outside
            )),
            hwm / built_mib
        ),
        {
            let over = traced.p99 - untraced.p99;
            let verdict = if over <= DELAY_MARGIN_MS { "met" } else { "missed" };
            format!(
                "Issue target, the target's p99 event-loop delay during censuses within {DELAY_MARGIN_MS:.0} ms of \
                 untraced: **{verdict}** ({:.2} ms against {:.2} ms, {over:+.2} ms). The forced full GCs are in \
                 both phases; the census reads the target's memory through /proc/PID/mem from its own threads.",
                traced.p99, untraced.p99
            )
        },
    ];
    Ok(section)
}
