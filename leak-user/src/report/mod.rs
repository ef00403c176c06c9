//! The report: what a hunt measured, independent of how it is rendered.
//! Schema `leakscope/report/v1`; fields are documented in the README.

pub mod census;
pub mod drops;
pub mod flamegraph;
pub mod folded;
pub mod json;
pub mod markdown;
pub mod pprof;
pub mod text;

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    io::Write,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

pub use crate::findings::Finding;
use crate::{cli::Format, heap::Kind};

pub const SCHEMA: &str = "leakscope/report/v1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema: String,
    pub target: TargetInfo,
    pub duration_s: f64,
    /// What the figures measure at the end: "exact" (every call traced),
    /// "sampled" (estimates) or "growth" (pages first touched; see `mode_description`).
    pub mode: String,
    /// Sampled mode: mean bytes between samples (Poisson).
    #[serde(default)]
    pub sample_bytes: Option<u64>,
    /// Why the hunt ended: "duration", "interrupted", "target-exited".
    pub ended_by: String,
    pub totals: Totals,
    /// Records lost, by reason; all zero means nothing was lost. Lost frees
    /// make figures over-counts, lost allocations under-counts.
    pub drops: BTreeMap<String, u64>,
    pub probes: Vec<ProbeReport>,
    pub sites: Vec<Site>,
    /// One per leak: the sites grouped by their application frame (see
    /// `findings`), most severe first.
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// The sites left out by `--max-sites`, summed per kind; empty when every
    /// site is listed. The totals count them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tail: Vec<TailSummary>,
    /// The leakscope command line that produced this report.
    #[serde(default)]
    pub command_line: Option<String>,
    /// Process-level growth: RSS against what the tracer sees.
    #[serde(default)]
    pub process: Option<ProcessGrowth>,
    /// Node.js targets only: memory by category, GCs, JS allocation samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeReport>,
    /// The overhead budget, when one was enforced, and the switch to growth
    /// mode it caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Overhead>,
    /// Modules in the stacks that named nothing: stripped, and no debug
    /// file was found for them (see docs/symbols.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules_without_symbols: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Overhead {
    /// `--max-overhead`: the probes' largest allowed share of the target's CPU time.
    pub max_overhead_pct: f64,
    /// The largest share measured over one budget window (1 s).
    pub peak_overhead_pct: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched: Option<ModeSwitch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_start: Option<GrowthStart>,
}

/// Auto mode started in growth mode: the per-call probes were predicted
/// over the budget from the target's CPU use before attaching.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GrowthStart {
    /// The target's CPU time over the moments before attaching, in % of a core.
    pub target_cpu_pct: f64,
    /// The share of its CPU time the per-call probes would have taken.
    pub predicted_overhead_pct: f64,
}

impl GrowthStart {
    /// Why, in one sentence.
    pub fn describe(&self) -> String {
        format!(
            "started in growth mode: the target used {:.0}% of a core before the hunt, at which Node's per-call \
             probes would take ~{:.0}% of its CPU time, over the budget; no malloc or Buffer probe was attached.",
            self.target_cpu_pct, self.predicted_overhead_pct
        )
    }
}

/// The per-call probes cost more than the budget and were detached.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ModeSwitch {
    /// Seconds into the hunt.
    pub at_s: f64,
    pub from: String,
    pub to: String,
    /// The share of the target's CPU time the probes took in the window that decided it.
    pub overhead_pct: f64,
    /// The probes detached and attached.
    pub detached: Vec<String>,
    pub attached: Vec<String>,
}

impl ModeSwitch {
    /// When, why and what changed, in one sentence.
    pub fn describe(&self) -> String {
        format!(
            "switched from {} to {} mode at {:.1} s: the probes took {:.1}% of the target's CPU time, over the budget; detached {}, attached {}. Heap (malloc) sites show the state of that moment.",
            self.from,
            self.to,
            self.at_s,
            self.overhead_pct,
            self.detached.join(", "),
            self.attached.join(", "),
        )
    }
}

/// What a report's figures are, by mode, for every renderer.
pub fn mode_description(mode: &str) -> &'static str {
    match mode {
        "exact" => "Every allocator call was traced, so byte counts, allocation counts and ages are measured.",
        "sampled" => {
            "Allocations were sampled, so heap byte and allocation counts are estimates; mappings are traced exactly."
        }
        "growth" => {
            "Allocator calls were not traced (growth mode): pages_touched sites count the pages each call stack \
             touched first (page faults), not bytes still outstanding, and are not part of the totals; mappings \
             (mmap, brk, malloc's large blocks) are traced exactly."
        }
        _ => "Unknown mode.",
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeReport {
    pub gc: GcCounts,
    /// Live JS heap bytes after each full (mark-compact) GC.
    pub live_after_full_gc: TimeSeries,
    /// Robust slope of `live_after_full_gc`: the JS-heap leak signal.
    pub live_after_full_gc_growth_bytes_per_s: Option<f64>,
    /// V8 pages outstanding at the end, by space ("new", "old", "code", "large", "new_large").
    pub pages_by_space: BTreeMap<String, PagesHeld>,
    /// Sampled JS heap allocation stacks, most frequent first.
    pub allocation_samples: Vec<AllocationSample>,
    /// One verdict per category: where to look first.
    pub categories: BTreeMap<String, Category>,
    /// When Node began tearing down (seconds into the hunt): Node then frees
    /// the JS heap and every Buffer, so the report keeps the state of that moment.
    #[serde(default)]
    pub torn_down_at_s: Option<f64>,
    /// What the JS heap held at censuses taken after full GCs (docs/heap-census.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_census: Option<HeapCensus>,
}

/// Censuses of the JS heap: live objects by group, counted from outside.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HeapCensus {
    pub censuses: Vec<CensusPoint>,
    /// Fastest growing first.
    pub groups: Vec<CensusGroup>,
    /// Censuses and retaining-path searches not kept (a GC ran during one, the
    /// budget ran out), by reason (`census: …`, `retaining paths: …`).
    #[serde(default)]
    pub dropped: Vec<DroppedCensuses>,
    /// Why no census could be taken (an unsupported V8, say).
    #[serde(default)]
    pub unavailable: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CensusPoint {
    /// Seconds into the hunt.
    pub t_s: f64,
    /// Bytes of the objects walked (old space and large objects), free
    /// space (FreeSpace) excluded.
    pub live_bytes: u64,
    /// Free space (FreeSpace objects) on the pages walked.
    #[serde(default)]
    pub free_bytes: u64,
    pub objects: u64,
    /// Wall time the census took; the target ran on meanwhile.
    pub duration_s: f64,
    /// How long the target was stopped for it (always 0: it never is).
    pub frozen_s: f64,
    /// leakscope's CPU time for it.
    pub cpu_s: f64,
    /// Bytes that could not be parsed as objects, so are in no group.
    pub unparsed_bytes: u64,
    pub pages: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CensusGroup {
    /// object, closure, array, string, map, set, context, typed_array, native, other.
    pub kind: String,
    /// Constructor, function or type name.
    pub name: String,
    /// Property names (objects).
    pub shape: Vec<String>,
    /// `file:line:col` of a closure's function.
    pub location: Option<String>,
    pub enclosing_function: Option<String>,
    pub count_first: u64,
    pub count_last: u64,
    pub bytes_first: u64,
    pub bytes_last: u64,
    /// Maps and Sets: their entries at the first and the last census.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_first: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_last: Option<u64>,
    /// Typed arrays and ArrayBuffers: their backing stores' bytes at the last census.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_bytes_last: Option<u64>,
    pub growth_bytes_per_s: Option<f64>,
    pub verdict: Verdict,
    /// Retaining paths of sampled instances, most common first.
    pub retained_by: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DroppedCensuses {
    pub reason: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GcCounts {
    pub minor: u64,
    pub full: u64,
    /// Seconds between GC starts and ends.
    pub time_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TimeSeries {
    pub t_s: Vec<f64>,
    pub bytes: Vec<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PagesHeld {
    pub pages: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AllocationSample {
    /// "large-object", "young-refill", "map-grow" or "array-grow".
    pub reason: String,
    pub samples: u64,
    /// Bytes requested, where the hook knows them (large objects).
    pub bytes: u64,
    pub frames: Vec<Arc<Frame>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Category {
    /// Outstanding at the end.
    pub bytes: u64,
    pub growth_bytes_per_s: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TargetInfo {
    pub pid: u32,
    pub command: String,
    pub exited: bool,
    /// Exit code (or 128+signal) of a launched command that exited.
    pub exit_code: Option<i32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Outstanding bytes per site kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Mapped inside allocator calls (malloc arenas, large blocks): already
    /// counted by the malloc sites, so not part of `outstanding_bytes`.
    pub allocator_internal_bytes: u64,
    /// Growth mode: pages first touched by all `pages_touched` sites. Not
    /// outstanding memory, so not part of `outstanding_bytes`.
    #[serde(default)]
    pub pages_touched_bytes: u64,
    /// Address space mapped PROT_NONE (glibc's per-thread arena heaps, V8's
    /// reservations): it holds nothing, so it is no site's memory, not part of
    /// `outstanding_bytes` and never growth. Arena heaps are also in
    /// `allocator_internal_bytes`.
    #[serde(default)]
    pub reserved_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeReport {
    pub name: String,
    /// Other names at the same address, covered by this probe.
    pub aliases: Vec<String>,
    /// The object probed (the one the target's calls resolve to), for uprobes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Probe point as a file offset in the module ("0x..."), for uprobes.
    pub offset: Option<String>,
    /// Why the probe sits where it does.
    pub placement: Option<String>,
    /// "live" (fired), "never-fired", "missing" (not in the target), "alias".
    pub status: String,
    pub hits: u64,
    pub return_hits: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Site {
    pub kind: Kind,
    /// The allocator function (or syscall) called.
    pub allocator: String,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub oldest_age_s: f64,
    /// Mapping sites only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<Mapping>,
    /// V8 heap sites only: the space of the pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v8_space: Option<String>,
    /// Innermost first. Empty when the stack was lost (see drops). A frame
    /// on many stacks is stored once.
    pub frames: Vec<Arc<Frame>>,
    /// Everything this site allocated during the hunt, freed or not.
    #[serde(default)]
    pub allocated_bytes: u64,
    #[serde(default)]
    pub allocated_allocations: u64,
    /// Robust slope of `series.bytes` (Theil–Sen), bytes per second.
    #[serde(default)]
    pub growth_bytes_per_s: Option<f64>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// Why lost events may have changed the verdict (see `drops`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict_caveat: Option<String>,
    /// The numbers behind the verdict.
    #[serde(default)]
    pub growth: Option<GrowthStats>,
    /// Outstanding memory of this site sampled over the hunt.
    #[serde(default)]
    pub series: Option<Series>,
    /// Index in `sites` of the site whose live blocks this site's blocks
    /// were allocated on behalf of (node's zlib state: its stream object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_by: Option<usize>,
}

/// Whether a site (or the process) keeps growing.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Steady growth with old survivors.
    Leak,
    /// Growth, but not (yet) steady or not old.
    Growing,
    /// Grew, then flat: a cache filling up.
    Plateau,
    Stable,
    InsufficientData,
}

/// Samples over the hunt: `t_s[i]` seconds after it began.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub t_s: Vec<f64>,
    pub bytes: Vec<u64>,
    pub allocations: Vec<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GrowthStats {
    /// Share of consecutive samples in which the value rose.
    pub share_rising: f64,
    /// Growth over the whole hunt (last sample − first), bytes.
    pub net_growth_bytes: i64,
    /// Ages of the surviving allocations at the end: median and 90th percentile.
    pub age_p50_s: f64,
    pub age_p90_s: f64,
}

/// RSS (from /proc/PID/status) against the memory the tracer tracks: a gap
/// that grows is memory the probes do not see (fragmentation, other allocators).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessGrowth {
    pub t_s: Vec<f64>,
    pub rss_bytes: Vec<u64>,
    pub tracked_bytes: Vec<u64>,
    pub rss_growth_bytes_per_s: Option<f64>,
    pub tracked_growth_bytes_per_s: Option<f64>,
    pub verdict: Option<Verdict>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Mapping {
    pub anonymous: bool,
    /// Like /proc/PID/maps: "rw-".
    pub prot: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Frame {
    pub address: String,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// JS frames named from V8: the column of `line` (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    pub module: Option<String>,
    /// The function was inlined into the next frame (its caller): both are
    /// the same machine frame, at the same address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

impl Frame {
    /// One frame per function at a symbolized address: the inlined ones,
    /// innermost first, then the one they were compiled into.
    pub fn expand(f: crate::symbolize::Frame) -> impl Iterator<Item = Frame> {
        let address = format!("{:#x}", f.address);
        let module = f.module;
        let inlined: Vec<Frame> = f
            .inlined
            .into_iter()
            .map(|level| Frame {
                address: address.clone(),
                function: level.function,
                file: level.file,
                line: level.line,
                column: None,
                module: module.clone(),
                inlined: true,
            })
            .collect();
        let outer = Frame {
            address,
            function: f.function,
            file: f.file,
            line: f.line,
            column: None,
            module,
            inlined: false,
        };
        inlined.into_iter().chain(std::iter::once(outer))
    }
}

impl Report {
    /// Sites measured: those listed and those summed in the tail.
    pub fn site_count(&self) -> u64 {
        self.sites.len() as u64 + self.tail.iter().map(|t| t.sites).sum::<u64>()
    }
}

/// Builds each distinct frame once: the frames of `main` and of the
/// allocator wrappers are on nearly every stack.
#[derive(Default)]
pub struct SharedFrames(HashSet<Arc<Frame>>);

impl SharedFrames {
    pub fn share(&mut self, frame: Frame) -> Arc<Frame> {
        if let Some(shared) = self.0.get(&frame) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(frame);
        self.0.insert(Arc::clone(&shared));
        shared
    }

    pub fn share_all(&mut self, frames: Vec<Frame>) -> Vec<Arc<Frame>> {
        // Not `collect()`ed: that reuses the frames' own allocation in place
        // and keeps all of it, ~15 times what the pointers need, for every
        // stack until the report is written (measured with heaptrack: 126
        // MiB of 185 at 32k stacks).
        let mut shared = Vec::with_capacity(frames.len());
        shared.extend(frames.into_iter().map(|f| self.share(f)));
        shared
    }
}

/// What the sites left out of a report hold, for one kind of memory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TailSummary {
    pub kind: Kind,
    pub sites: u64,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    #[serde(default)]
    pub allocated_bytes: u64,
    #[serde(default)]
    pub allocated_allocations: u64,
}

/// Keeps the `max` items whose sites a reader sees first (`ranked` order),
/// in their order, and adds the rest to `tail`. Generic so that a hunt can
/// drop sites before it symbolizes them.
pub fn split_tail<T>(items: Vec<T>, site: impl Fn(&T) -> &Site, max: usize, tail: &mut Vec<TailSummary>) -> Vec<T> {
    if items.len() <= max {
        return items;
    }
    let mut keep = vec![false; items.len()];
    for i in rank_order(items.iter().map(&site)).into_iter().take(max) {
        keep[i] = true;
    }
    let mut kept = Vec::with_capacity(max);
    for (item, keep) in items.into_iter().zip(keep) {
        if keep {
            kept.push(item);
            continue;
        }
        let s = site(&item);
        let summary = match tail.iter().position(|t| t.kind == s.kind) {
            Some(i) => &mut tail[i],
            None => {
                tail.push(TailSummary {
                    kind: s.kind,
                    sites: 0,
                    outstanding_bytes: 0,
                    outstanding_allocations: 0,
                    allocated_bytes: 0,
                    allocated_allocations: 0,
                });
                tail.last_mut().expect("just pushed")
            }
        };
        summary.sites += 1;
        summary.outstanding_bytes += s.outstanding_bytes;
        summary.outstanding_allocations += s.outstanding_allocations;
        summary.allocated_bytes += s.allocated_bytes;
        summary.allocated_allocations += s.allocated_allocations;
    }
    tail.sort_by_key(|t| t.kind);
    kept
}

/// `--max-sites` on a report: the sites beyond `max` join its tail, and
/// the indices of the rest (owners, findings) follow them.
pub fn limit_sites(report: &mut Report, max: usize) {
    let sites: Vec<(usize, Site)> = std::mem::take(&mut report.sites).into_iter().enumerate().collect();
    let kept = split_tail(sites, |(_, s)| s, max, &mut report.tail);
    let new_index: HashMap<usize, usize> = kept.iter().enumerate().map(|(new, &(old, _))| (old, new)).collect();
    report.sites = kept
        .into_iter()
        .map(|(_, mut site)| {
            site.owned_by = site.owned_by.and_then(|old| new_index.get(&old).copied());
            site
        })
        .collect();
    report.findings = crate::findings::of(report);
}

/// The sites of the stack formats (folded, flame graph, pprof), which add
/// up to the totals: the listed ones, then one per kind of the tail, its
/// stack a single frame naming how many sites it stands for.
pub fn stack_sites(report: &Report) -> Vec<Cow<'_, Site>> {
    let tail = report.tail.iter().map(|t| {
        Cow::Owned(Site {
            kind: t.kind,
            allocator: String::new(),
            outstanding_bytes: t.outstanding_bytes,
            outstanding_allocations: t.outstanding_allocations,
            oldest_age_s: 0.0,
            mapping: None,
            v8_space: None,
            frames: vec![Arc::new(Frame {
                address: "0x0".to_string(),
                function: Some(format!("[{}]", plural(t.sites, "more site"))),
                file: None,
                line: None,
                column: None,
                module: None,
                inlined: false,
            })],
            allocated_bytes: t.allocated_bytes,
            allocated_allocations: t.allocated_allocations,
            growth_bytes_per_s: None,
            verdict: None,
            verdict_caveat: None,
            growth: None,
            series: None,
            owned_by: None,
        })
    });
    report.sites.iter().map(Cow::Borrowed).chain(tail).collect()
}

/// One sentence on the sites left out by `--max-sites`, if any.
pub fn tail_description(report: &Report) -> Option<String> {
    if report.tail.is_empty() {
        return None;
    }
    let sites: u64 = report.tail.iter().map(|t| t.sites).sum();
    let parts: Vec<String> = report
        .tail
        .iter()
        .map(|t| {
            format!(
                "{} {} in {}",
                t.kind.name(),
                human_bytes(t.outstanding_bytes),
                plural(t.outstanding_allocations, "allocation")
            )
        })
        .collect();
    Some(format!(
        "{} summarised (--max-sites) hold {}",
        plural(sites, "more site"),
        parts.join("; ")
    ))
}

/// Writes `report` in `format` to `out`. JSON is streamed: a large report
/// is never held as one string.
pub fn write(report: &Report, format: Format, listing: Listing, out: &mut dyn Write) -> anyhow::Result<()> {
    match format {
        Format::Json => json::write(report, out)?,
        Format::Text => out.write_all(text::render(report, listing).as_bytes())?,
        Format::Folded => out.write_all(folded::render(report).as_bytes())?,
        Format::Flamegraph => out.write_all(&flamegraph::render(report)?)?,
        Format::Pprof => out.write_all(&pprof::render(report)?)?,
        Format::Markdown => out.write_all(markdown::render(report, listing).as_bytes())?,
    }
    Ok(())
}

/// [`write`] into memory.
pub fn render(report: &Report, format: Format, listing: Listing) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    write(report, format, listing, &mut out)?;
    Ok(out)
}

/// What the text and Markdown reports list.
#[derive(Clone, Copy, Debug)]
pub struct Listing {
    /// Sites listed; the stack formats always cover every site, so that
    /// they add up to the totals.
    pub top: usize,
    /// Every frame, the runtime's too (`--full-stacks`).
    pub full_stacks: bool,
}

/// Sites as a reader should see them: by verdict (leak, growing, plateau,
/// stable, too little data, none), then growth rate, then bytes held.
pub fn ranked(report: &Report) -> Vec<&Site> {
    rank_order(report.sites.iter())
        .into_iter()
        .map(|i| &report.sites[i])
        .collect()
}

/// The rank (from 1, in `ranked`) of the site whose blocks `site`'s were
/// allocated on behalf of.
pub fn owner_rank(report: &Report, ranked: &[&Site], site: &Site) -> Option<usize> {
    let owner = report.sites.get(site.owned_by?)?;
    ranked.iter().position(|s| std::ptr::eq(*s, owner)).map(|i| i + 1)
}

/// The indices of `sites` in [`ranked`] order.
fn rank_order<'a>(sites: impl Iterator<Item = &'a Site>) -> Vec<usize> {
    let sites: Vec<&Site> = sites.collect();
    let mut order: Vec<usize> = (0..sites.len()).collect();
    let severity = |s: &Site| s.verdict.map_or(Verdict::InsufficientData as u8 + 1, |v| v as u8);
    let growth = |s: &Site| s.growth_bytes_per_s.unwrap_or(f64::NEG_INFINITY);
    order.sort_by(|&a, &b| {
        let (a, b) = (sites[a], sites[b]);
        severity(a)
            .cmp(&severity(b))
            .then(growth(b).total_cmp(&growth(a)))
            .then(b.outstanding_bytes.cmp(&a.outstanding_bytes))
    });
    order
}

impl Verdict {
    /// The name used in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Leak => "leak",
            Verdict::Growing => "growing",
            Verdict::Plateau => "plateau",
            Verdict::Stable => "stable",
            Verdict::InsufficientData => "insufficient-data",
        }
    }
}

/// A frame's name where a stack is a list of names (folded, flame graph,
/// pprof): the function, else where the code is (the address as captured,
/// not an offset: the report has no module bases), else `[unknown]`.
pub fn frame_label(frame: &Frame) -> String {
    match (&frame.function, &frame.module) {
        (Some(function), _) => function.clone(),
        (None, Some(module)) => format!("{}@{}", file_name(module), frame.address),
        (None, None) => "[unknown]".to_string(),
    }
}

/// The last component of a path: modules are shown by file name.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `prot_string` of a mapping moved by mremap from one made before the hunt.
pub const PROT_UNKNOWN: u8 = 0xff;

pub fn prot_string(prot: u8) -> String {
    if prot == PROT_UNKNOWN {
        return "???".to_string();
    }
    let bit = |mask: u8, c: char| if prot & mask != 0 { c } else { '-' };
    [bit(1, 'r'), bit(2, 'w'), bit(4, 'x')].iter().collect()
}

/// "1 allocation", "2 allocations".
pub fn plural(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Human-readable byte counts: "512 B", "12.5 KiB", "3.0 MiB".
pub fn human_bytes(bytes: impl Into<u128>) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let bytes: u128 = bytes.into();
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const LISTING: Listing = Listing {
        top: 20,
        full_stacks: false,
    };

    /// A report with every kind of site the renderers must handle: growth
    /// analysis set and unset, a lost stack, an unnamed frame, and names that
    /// need escaping (`;`, `<`, `&`). Built from JSON, as a saved report is read.
    pub(crate) fn sample_report() -> Report {
        let frame = |function: Option<&str>, line: Option<u32>, address: &str| {
            serde_json::json!({
                "address": address, "function": function, "file": function.map(|_| "/src/app.c"),
                "line": line, "module": "/usr/lib/libapp.so",
            })
        };
        let main = frame(Some("main"), Some(90), "0x401200");
        serde_json::from_value(serde_json::json!({
            "schema": SCHEMA,
            "target": {"pid": 4242, "command": "./app --mode=a&b <cfg>", "exited": false, "exit_code": null},
            "duration_s": 60.0, "mode": "exact", "ended_by": "duration",
            "totals": {"outstanding_bytes": 50664, "outstanding_allocations": 17,
                       "by_kind": {"malloc": 42472, "mmap": 8192}, "allocator_internal_bytes": 0},
            "drops": {"ring_buffer_full": 0, "stack_lost": 1, "pending_calls_full": 0, "malformed_records": 0},
            "probes": [
                {"name": "malloc", "aliases": [], "offset": "0x9a0e0", "placement": "entry", "status": "live",
                 "hits": 120, "return_hits": 120},
                {"name": "pvalloc", "aliases": [], "offset": "0x9b000", "placement": "entry",
                 "status": "never-fired", "hits": 0, "return_hits": 0},
            ],
            "sites": [
                {"kind": "malloc", "allocator": "malloc", "outstanding_bytes": 40960, "outstanding_allocations": 10,
                 "oldest_age_s": 58.5, "allocated_bytes": 81920, "allocated_allocations": 20,
                 "frames": [frame(Some("cache_insert"), Some(31), "0x401100"),
                            frame(Some("handle_request"), Some(55), "0x401150"), main.clone()],
                 "growth_bytes_per_s": 700.0, "verdict": "leak",
                 "growth": {"share_rising": 0.9, "net_growth_bytes": 40000, "age_p50_s": 30.0, "age_p90_s": 54.0},
                 "series": {"t_s": [0.0, 30.0, 60.0], "bytes": [960, 20960, 40960], "allocations": [1, 5, 10]}},
                {"kind": "mmap", "allocator": "mmap", "outstanding_bytes": 8192, "outstanding_allocations": 2,
                 "oldest_age_s": 50.0, "mapping": {"anonymous": true, "prot": "rw-"},
                 "frames": [frame(Some("std::array<int; 2>::fill"), None, "0x7f00001000"),
                            frame(None, None, "0x7f00001234"), main.clone()],
                 "growth_bytes_per_s": 10.0, "verdict": "plateau"},
                {"kind": "malloc", "allocator": "calloc", "outstanding_bytes": 1000, "outstanding_allocations": 4,
                 "oldest_age_s": 59.9, "allocated_bytes": 1000, "allocated_allocations": 4,
                 "frames": [frame(Some("parse_config"), Some(12), "0x401300"), main],
                 "growth_bytes_per_s": 0.0, "verdict": "stable"},
                {"kind": "malloc", "allocator": "malloc", "outstanding_bytes": 512, "outstanding_allocations": 1,
                 "oldest_age_s": 1.0, "frames": []},
            ],
            "command_line": "leakscope hunt -p 4242 --duration 60 --format json -o a.json",
            "process": {"t_s": [0.0, 30.0, 60.0], "rss_bytes": [4000000, 4030000, 4060000],
                        "tracked_bytes": [10000, 30000, 50664], "rss_growth_bytes_per_s": 1000.0,
                        "tracked_growth_bytes_per_s": 678.0, "verdict": "leak"},
        }))
        .expect("the sample report matches the schema")
    }

    /// The sample report as a hunt without growth analysis writes it.
    pub(crate) fn without_analysis(mut report: Report) -> Report {
        report.command_line = None;
        report.process = None;
        for site in &mut report.sites {
            site.allocated_bytes = 0;
            site.allocated_allocations = 0;
            site.growth_bytes_per_s = None;
            site.verdict = None;
            site.growth = None;
            site.series = None;
        }
        report
    }

    #[test]
    fn max_sites_keeps_the_ranked_first_and_sums_the_rest_per_kind() {
        let mut report = sample_report();
        limit_sites(&mut report, 2);
        let kept: Vec<&str> = report
            .sites
            .iter()
            .map(|s| s.frames[0].function.as_deref().unwrap())
            .collect();
        assert_eq!(kept, ["cache_insert", "std::array<int; 2>::fill"]);
        // The calloc site and the lost stack.
        let malloc = TailSummary {
            kind: Kind::Malloc,
            sites: 2,
            outstanding_bytes: 1512,
            outstanding_allocations: 5,
            allocated_bytes: 1000,
            allocated_allocations: 4,
        };
        assert_eq!(report.tail, std::slice::from_ref(&malloc));
        assert_eq!(report.site_count(), 4);
        // A second pass adds to the same kind's summary.
        limit_sites(&mut report, 0);
        let mmap = TailSummary {
            kind: Kind::Mmap,
            sites: 1,
            outstanding_bytes: 8192,
            outstanding_allocations: 2,
            allocated_bytes: 0,
            allocated_allocations: 0,
        };
        let malloc = TailSummary {
            sites: 3,
            outstanding_bytes: 1512 + 40960,
            outstanding_allocations: 15,
            allocated_bytes: 1000 + 81920,
            allocated_allocations: 24,
            ..malloc
        };
        assert_eq!(report.tail, [malloc, mmap]);
        assert!(report.sites.is_empty());
        let folded = String::from_utf8(render(&report, Format::Folded, LISTING).unwrap()).unwrap();
        assert_eq!(folded, "[malloc];[3 more sites] 42472\n[mmap];[1 more site] 8192\n");
        let text = String::from_utf8(render(&report, Format::Text, LISTING).unwrap()).unwrap();
        assert!(
            text.contains("4 more sites summarised (--max-sites) hold malloc 41.5 KiB in 15 allocations; mmap 8.0 KiB in 2 allocations"),
            "{text}"
        );
        assert!(!text.contains("no outstanding allocations"), "{text}");
    }

    #[test]
    fn without_max_sites_nothing_is_summed() {
        let mut report = sample_report();
        limit_sites(&mut report, 4);
        assert_eq!((report.sites.len(), report.tail.len()), (4, 0));
    }

    #[test]
    fn owners_follow_their_sites_past_max_sites() {
        let mut report = sample_report();
        let at = |report: &Report, function: &str| {
            report
                .sites
                .iter()
                .position(|s| s.frames[0].function.as_deref() == Some(function))
                .unwrap()
        };
        let (cache, fill) = (at(&report, "cache_insert"), at(&report, "std::array<int; 2>::fill"));
        let left_out = (0..report.sites.len()).find(|&i| i != cache && i != fill).unwrap();
        report.sites[fill].owned_by = Some(cache);
        report.sites[cache].owned_by = Some(left_out);
        limit_sites(&mut report, 2);
        let (cache, fill) = (at(&report, "cache_insert"), at(&report, "std::array<int; 2>::fill"));
        assert_eq!(report.sites[fill].owned_by, Some(cache));
        assert_eq!(report.sites[cache].owned_by, None, "its owner is in the tail");
        let ranked = ranked(&report);
        let cache_rank = ranked
            .iter()
            .position(|s| std::ptr::eq(*s, &report.sites[cache]))
            .unwrap()
            + 1;
        assert_eq!(owner_rank(&report, &ranked, &report.sites[fill]), Some(cache_rank));
        let text = String::from_utf8(render(&report, Format::Text, LISTING).unwrap()).unwrap();
        let owned_line = format!("\n    allocated on behalf of the blocks of #{cache_rank}\n");
        assert_eq!(text.matches(&owned_line).count(), 1, "{text}");
        let markdown = String::from_utf8(render(&report, Format::Markdown, LISTING).unwrap()).unwrap();
        assert!(
            markdown.contains(&format!(
                "- **Allocated on behalf of** the blocks of call stack {cache_rank}\n"
            )),
            "{markdown}"
        );
    }

    #[test]
    fn equal_frames_are_stored_once() {
        let report = sample_report();
        let mut shared = SharedFrames::default();
        let main = |site: &Site| (**site.frames.last().unwrap()).clone();
        let a = shared.share(main(&report.sites[0]));
        let b = shared.share(main(&report.sites[2]));
        assert!(Arc::ptr_eq(&a, &b), "`main` of two stacks is one frame");
        let other = shared.share((*report.sites[0].frames[0]).clone());
        assert!(!Arc::ptr_eq(&a, &other));
    }

    #[test]
    fn formats_bytes_and_protection() {
        assert_eq!(human_bytes(512u64), "512 B");
        assert_eq!(human_bytes(12 * 1024 + 512u64), "12.5 KiB");
        assert_eq!(human_bytes(3u64 << 20), "3.0 MiB");
        assert_eq!(prot_string(3), "rw-");
        assert_eq!(prot_string(0), "---");
        assert_eq!(prot_string(5), "r-x");
        assert_eq!(prot_string(PROT_UNKNOWN), "???");
    }

    #[test]
    fn labels_frames_by_function_then_module() {
        let mut frame = Frame {
            address: "0x7f0012".into(),
            function: Some("parse_request".into()),
            file: None,
            line: None,
            column: None,
            module: Some("/usr/lib/libapp.so".into()),
            inlined: false,
        };
        assert_eq!(frame_label(&frame), "parse_request");
        frame.function = None;
        assert_eq!(frame_label(&frame), "libapp.so@0x7f0012");
        frame.module = None;
        assert_eq!(frame_label(&frame), "[unknown]");
    }
}
