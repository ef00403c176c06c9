//! Tier 2: which code paths grow a process's memory, without allocator
//! probes. Page faults (first touches of pages) are counted per user stack
//! in the kernel; mmap, munmap, mremap and brk are modelled as in a hunt;
//! Node targets add V8's page and GC hooks. The cost follows memory growth,
//! not the allocation rate.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuHashMap, RingBuf};
use leak_common::Probe;
use serde::Serialize;

use crate::{
    attach::{self, Counters, Links, LoadOptions, ProbeSet},
    collect::Collector,
    heap::{Kind, PAGE_SIZE},
    hunt,
    report::{frame_label, Frame},
    symbolize::Symbolizer,
    v8,
};

/// Small: tier 2 sees few events (mappings, new stacks), drained often.
const RING_BUFFER_BYTES: u32 = 4 << 20;
/// Stacks the kernel side remembers as sent, and distinct fault stacks counted.
const MAX_STACKS: u32 = 16 * 1024;
/// Fault stacks counted before the coldest half is dropped from the kernel's
/// map, so that new code paths always find room in a daemon running for weeks.
const PRUNE_FAULT_STACKS_AT: usize = MAX_STACKS as usize * 3 / 4;
/// Stacks kept in user space before the session is started afresh: the
/// daemon's memory stays bounded however many code paths a target runs.
const MAX_KNOWN_STACKS: usize = 64 * 1024;

/// A code path that touched new pages.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GrowingPath {
    /// Bytes of new pages per second, averaged over about one window.
    pub bytes_per_s: f64,
    /// Bytes of pages first touched since watching began.
    pub faulted_bytes: u64,
    /// Innermost first: `function (file:line)`.
    pub frames: Vec<String>,
}

/// Page faults of one stack.
#[derive(Default)]
struct FaultPath {
    samples: u64,
    /// Exponentially weighted bytes/s.
    rate: f64,
}

pub struct Attribution {
    ebpf: aya::Ebpf,
    links: Links,
    ring: RingBuf<MapData>,
    collector: Collector,
    fault_period: u64,
    faults: HashMap<u64, FaultPath>,
    /// Samples of the stacks pruned from `faults`.
    pruned_samples: u64,
    is_node: bool,
}

impl Attribution {
    pub fn start(pid: u32, fault_period: u64) -> Result<Attribution> {
        let modules = attach::target_modules(pid)?;
        let v8_target = modules.node.as_ref().map(|node| v8::target(pid, node));
        let v8_pages = v8_target.as_ref().map(|t| t.pages);
        let js_namer = v8_target.and_then(|t| t.namer);
        let options = LoadOptions {
            pid,
            ring_buffer_bytes: RING_BUFFER_BYTES,
            max_stacks: MAX_STACKS,
            sample_bytes: None,
            v8_frames: js_namer.as_ref().map(|namer| namer.layout().frame),
            v8_pages,
            // No per-call probes.
            unwind_rules: false,
        };
        let mut ebpf = attach::load(&options)?;
        let (_, links) = attach::attach(&mut ebpf, pid, &modules, ProbeSet::Watch { fault_period })?;
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
        let mut collector = Collector::new(pid, None);
        if let Some(mut namer) = js_namer {
            namer.validate_with(attach::gc_epoch_reader(&mut ebpf)?);
            collector.set_js_namer(namer);
        }
        collector.refresh_modules();
        collector.read_program_break(pid);
        Ok(Attribution {
            ebpf,
            links,
            ring,
            collector,
            fault_period,
            faults: HashMap::new(),
            pruned_samples: 0,
            is_node: modules.node.is_some(),
        })
    }

    pub fn drain(&mut self) {
        while let Some(record) = self.ring.next() {
            self.collector.apply(&record);
        }
        self.collector.refresh_modules_if_changed();
    }

    /// Folds in the fault counts since the last update, `dt_s` ago; rates
    /// average over about `window_s`.
    pub fn update(&mut self, dt_s: f64, window_s: f64) -> Result<()> {
        self.drain();
        let keep = (-dt_s / window_s.max(dt_s)).exp();
        for path in self.faults.values_mut() {
            path.rate *= keep;
        }
        for (stack, samples) in attach::fault_samples(&self.ebpf)? {
            let path = self.faults.entry(stack).or_default();
            let new_bytes = samples.saturating_sub(path.samples) * self.fault_period * PAGE_SIZE;
            path.samples = samples;
            path.rate += (1.0 - keep) * new_bytes as f64 / dt_s.max(1e-3);
        }
        if self.faults.len() > PRUNE_FAULT_STACKS_AT {
            self.prune_coldest_half()?;
        }
        Ok(())
    }

    /// Forgets the half of the fault stacks growing slowest, here and in the
    /// kernel. Faults counted between the read above and the removal are lost.
    fn prune_coldest_half(&mut self) -> Result<()> {
        let mut by_rate: Vec<(u64, f64)> = self.faults.iter().map(|(&stack, p)| (stack, p.rate)).collect();
        by_rate.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut map: PerCpuHashMap<&mut MapData, u64, u64> =
            PerCpuHashMap::try_from(self.ebpf.map_mut("FAULT_STACKS").context("FAULT_STACKS map missing")?)?;
        for &(stack, _) in &by_rate[..by_rate.len() / 2] {
            let _ = map.remove(&stack);
            self.pruned_samples += self.faults.remove(&stack).map_or(0, |p| p.samples);
        }
        Ok(())
    }

    /// Whether the user-space state outgrew its bound (start afresh then).
    pub fn is_oversized(&self) -> bool {
        self.collector.stack_count() > MAX_KNOWN_STACKS
    }

    /// The `n` paths growing fastest now.
    pub fn growing_paths(&self, symbolizer: &mut Symbolizer, n: usize) -> Vec<GrowingPath> {
        let mut paths: Vec<(&u64, &FaultPath)> = self.faults.iter().filter(|(_, p)| p.rate >= 1.0).collect();
        paths.sort_by(|a, b| b.1.rate.total_cmp(&a.1.rate));
        paths
            .into_iter()
            .take(n)
            .map(|(&stack, path)| {
                let addrs = self.collector.fault_stack(stack);
                // Frame 0 is the faulting instruction, not a return address.
                let frames = symbolizer.symbolize(&self.collector.modules, addrs, false);
                let js = self.collector.fault_js_frames(stack);
                GrowingPath {
                    bytes_per_s: path.rate,
                    faulted_bytes: path.samples * self.fault_period * PAGE_SIZE,
                    frames: hunt::frames(frames, &js, self.is_node)
                        .into_iter()
                        .map(frame_text)
                        .collect(),
                }
            })
            .collect()
    }

    /// Pages first touched since watching began, in bytes.
    pub fn faulted_bytes(&self) -> u64 {
        (self.pruned_samples + self.faults.values().map(|p| p.samples).sum::<u64>()) * self.fault_period * PAGE_SIZE
    }

    /// Memory held by what the probes see: `mmap`, `brk`, and for Node `v8_heap`.
    pub fn tracked_bytes(&self) -> BTreeMap<&'static str, u64> {
        let mut tracked = BTreeMap::new();
        for (site, totals) in self.collector.heap.totals(u64::MAX) {
            let key = self.collector.heap.site(site);
            let name = match (key.kind, key.probe) {
                (_, Probe::Brk) => "brk",
                (kind, _) => kind.name(),
            };
            *tracked.entry(name).or_default() += totals.bytes;
        }
        for name in ["mmap", "brk"] {
            tracked.entry(name).or_default();
        }
        if self.collector.node.full_gcs + self.collector.node.minor_gcs > 0 {
            tracked.entry(Kind::V8Heap.name()).or_default();
        }
        tracked
    }

    /// The kernel side's hit and drop counters.
    pub fn counters(&self) -> Result<Counters> {
        Counters::read(&self.ebpf)
    }

    /// Detaches (this takes seconds: uprobes go one grace period at a time).
    pub fn detach(self) {
        self.links.detach();
    }
}

fn frame_text(frame: Frame) -> String {
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!("{} ({}:{line})", frame_label(&frame), crate::report::file_name(file)),
        _ => frame_label(&frame),
    }
}
