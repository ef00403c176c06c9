//! Loads the eBPF object and attaches its programs to the target.
//!
//! The malloc family gets uprobes scoped to the target process (placed by
//! `placement`), in whichever object each function resolves to (`lookup`:
//! libc, or a preloaded or linked jemalloc, tcmalloc, mimalloc); mappings are
//! seen through the syscall tracepoints, which also catch raw
//! `syscall(SYS_mmap, ...)` calls.

use std::{
    collections::BTreeMap,
    fs,
    num::NonZeroU32,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        perf_event::{PerfEventConfig, PerfEventLink, PerfEventScope, SamplePolicy, SoftwareEvent},
        trace_point::TracePointLink,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
        PerfEvent, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use iced_x86::Register;
use leak_common::{counter, DropReason, Probe, V8FrameLayout, V8PageLayout, EXP_QUANTILES_LEN};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::{
    lookup::{self, ModuleRef},
    placement::{self, Handling, Placement},
    uprobe_multi::{self, MultiPrograms, ProgramRun},
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leak-ebpf"));

/// How a function is probed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// An entry program at the entry instruction, plus the shared return
    /// program (`alloc_return`): allocators.
    Paired,
    /// An entry program at the entry instruction, plus this return program.
    Around(&'static str),
    /// An entry program only, placed on the cheapest usable instruction.
    Entry,
    /// A return program only.
    Return,
}

/// One probed function: its symbol (a C name, or a mangled C++ prefix that
/// ends with the function's own name, so that parameter lists may change
/// between versions), the program and the argument registers it reads.
#[derive(Clone, Copy)]
struct ProbeSpec {
    probe: Probe,
    symbol: &'static str,
    /// The function's name in other versions of the module, if it moved.
    also_named: Option<&'static str>,
    program: &'static str,
    args: &'static [Register],
    hook: Hook,
}

impl ProbeSpec {
    const fn also_named(self, symbol: &'static str) -> ProbeSpec {
        ProbeSpec {
            also_named: Some(symbol),
            ..self
        }
    }

    fn names(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.symbol).chain(self.also_named)
    }
}

const fn spec(
    probe: Probe,
    symbol: &'static str,
    program: &'static str,
    args: &'static [Register],
    hook: Hook,
) -> ProbeSpec {
    ProbeSpec {
        probe,
        symbol,
        also_named: None,
        program,
        args,
        hook,
    }
}

use Register::{RDI, RDX, RSI};

/// The malloc family, as glibc, jemalloc, tcmalloc and mimalloc export it.
const MALLOC_PROBES: &[ProbeSpec] = &[
    spec(Probe::Malloc, "malloc", "size_enter", &[RDI], Hook::Paired),
    spec(Probe::Calloc, "calloc", "calloc_enter", &[RDI, RSI], Hook::Paired),
    spec(Probe::Realloc, "realloc", "realloc_enter", &[RDI, RSI], Hook::Paired),
    spec(
        Probe::Reallocarray,
        "reallocarray",
        "reallocarray_enter",
        &[RDI, RSI, RDX],
        Hook::Paired,
    ),
    spec(
        Probe::PosixMemalign,
        "posix_memalign",
        "posix_memalign_enter",
        &[RDI, RDX],
        Hook::Paired,
    ),
    spec(
        Probe::AlignedAlloc,
        "aligned_alloc",
        "align_size_enter",
        &[RSI],
        Hook::Paired,
    ),
    spec(Probe::Memalign, "memalign", "align_size_enter", &[RSI], Hook::Paired),
    spec(Probe::Valloc, "valloc", "size_enter", &[RDI], Hook::Paired),
    spec(Probe::Pvalloc, "pvalloc", "size_enter", &[RDI], Hook::Paired),
    spec(Probe::Free, "free", "free_enter", &[RDI], Hook::Entry),
];

/// Node.js and V8 internals (field notes: Node 20 / V8 11.3). Resolved from
/// .symtab as well as .dynsym: newer Node hides them from .dynsym.
const NODE_PROBES: &[ProbeSpec] = &[
    spec(
        Probe::ArrayBufferAllocate,
        "_ZN4node24NodeArrayBufferAllocator8Allocate",
        "arraybuffer_allocate_enter",
        &[RSI],
        Hook::Paired,
    ),
    spec(
        Probe::ArrayBufferAllocateUninitialized,
        "_ZN4node24NodeArrayBufferAllocator21AllocateUninitialized",
        "arraybuffer_allocate_enter",
        &[RSI],
        Hook::Paired,
    ),
    spec(
        Probe::ArrayBufferFree,
        "_ZN4node24NodeArrayBufferAllocator4Free",
        "arraybuffer_free",
        &[RSI],
        Hook::Entry,
    ),
    spec(
        Probe::V8AllocatePage,
        "_ZN2v88internal15MemoryAllocator12AllocatePage",
        "v8_allocate_page_enter",
        &[RDX],
        Hook::Paired,
    ),
    spec(
        Probe::V8AllocateLargePage,
        "_ZN2v88internal15MemoryAllocator17AllocateLargePage",
        "v8_allocate_large_page_enter",
        &[RSI, RDX],
        Hook::Paired,
    ),
    spec(
        Probe::V8FreePage,
        "_ZN2v88internal15MemoryAllocator4Free",
        "v8_free_page",
        &[RDX],
        Hook::Entry,
    ),
    spec(
        Probe::V8GcStart,
        "_ZN2v88internal4Heap14CollectGarbage",
        "v8_gc_start",
        &[],
        Hook::Entry,
    ),
    spec(
        Probe::V8GcEnd,
        "_ZN2v88internal4Heap25GarbageCollectionEpilogue",
        "v8_gc_end",
        &[RSI],
        Hook::Entry,
    ),
    spec(
        Probe::V8GcCollector,
        "_ZN2v88internal4Heap36GarbageCollectionEpilogueInSafepoint",
        "v8_gc_collector",
        &[RSI],
        Hook::Entry,
    ),
    spec(
        Probe::V8MarkCompact,
        "_ZN2v88internal4Heap11MarkCompactEv",
        "v8_mark_compact",
        &[],
        Hook::Entry,
    ),
    spec(
        Probe::V8SizeOfObjects,
        "_ZN2v88internal4Heap13SizeOfObjects",
        "v8_size_of_objects",
        &[],
        Hook::Return,
    ),
    spec(
        Probe::V8LargeObject,
        "_ZN2v88internal13HeapAllocator24AllocateRawLargeInternal",
        "v8_allocation_sample",
        &[RSI],
        Hook::Entry,
    ),
    spec(
        Probe::V8YoungRefill,
        "_ZN2v88internal33Runtime_AllocateInYoungGeneration",
        "v8_allocation_sample",
        &[],
        Hook::Entry,
    ),
    spec(
        Probe::V8MapGrow,
        "_ZN2v88internal15Runtime_MapGrow",
        "v8_allocation_sample",
        &[],
        Hook::Entry,
    ),
    spec(
        Probe::V8ArrayGrow,
        "_ZN2v88internal25Runtime_GrowArrayElements",
        "v8_allocation_sample",
        &[],
        Hook::Entry,
    ),
    spec(
        Probe::NodeTeardown,
        "_ZN4node15FreeEnvironment",
        "node_teardown",
        &[],
        Hook::Entry,
    ),
    // zlib's allocations, made on the thread pool, tell their owner: the
    // native stream object (before Node 24 a template per stream type, from
    // 24 on its CompressionStreamMemoryOwner base, inside the object).
    spec(
        Probe::NodeZlibAlloc,
        "_ZN4node12_GLOBAL__N_128CompressionStreamMemoryOwner12AllocForZlib",
        "owned_alloc_enter",
        &[RDI],
        Hook::Around("owned_alloc_return"),
    )
    .also_named("_ZN4node12_GLOBAL__N_117CompressionStreamINS0_11ZlibContextEE12AllocForZlib"),
];

/// The Node hooks of `watch`: JS heap pages and GCs, which fire a few times
/// per GC rather than per allocation.
const WATCH_NODE_PROBES: &[Probe] = &[
    Probe::V8AllocatePage,
    Probe::V8AllocateLargePage,
    Probe::V8FreePage,
    Probe::V8GcStart,
    Probe::V8GcEnd,
    Probe::V8GcCollector,
    Probe::V8MarkCompact,
    Probe::V8SizeOfObjects,
];

/// The Node hooks of growth mode: watch's, and the teardown. Not Buffer
/// backing stores: Buffer.alloc calls the allocator per Buffer, and its
/// three traps per request (Free's probe single-stepped) cost an HTTP
/// service ~50 µs of CPU per request (measured); their pages are seen as
/// page faults under NodeArrayBufferAllocator::Allocate instead.
const GROWTH_NODE_PROBES: &[Probe] = &[
    Probe::V8AllocatePage,
    Probe::V8AllocateLargePage,
    Probe::V8FreePage,
    Probe::V8GcStart,
    Probe::V8GcEnd,
    Probe::V8GcCollector,
    Probe::V8MarkCompact,
    Probe::V8SizeOfObjects,
    Probe::NodeTeardown,
];

const RETURN_PROGRAM: &str = "alloc_return";
/// Code read per probed function, for placement: more than any prologue decoded.
const PROLOGUE_BYTES: usize = 64;
const SYSCALL_PROBES: &[(Probe, &str)] = &[
    (Probe::Mmap, "mmap"),
    (Probe::Munmap, "munmap"),
    (Probe::Mremap, "mremap"),
];

/// State of one probe, as reported.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeStatus {
    /// Attached; whether it fired is decided from the hit counters.
    Attached,
    /// The function is not in the target (static binary, other libc).
    Missing,
}

#[derive(Clone, Debug)]
pub struct AttachedProbe {
    pub probe: Probe,
    pub status: ProbeStatus,
    /// The other names at the same address: one function, probed once.
    pub aliases: Vec<&'static str>,
    /// The probe whose hit counters and attach cookie serve this name (itself,
    /// unless it is an alias).
    pub counted_as: Probe,
    /// The object probed, as the target names it.
    pub module: Option<PathBuf>,
    /// Offset of the probe point in the module file.
    pub file_offset: Option<u64>,
    pub placement: Option<Placement>,
    pub has_return: bool,
}

impl AttachedProbe {
    fn missing(spec: &ProbeSpec) -> AttachedProbe {
        AttachedProbe {
            probe: spec.probe,
            status: ProbeStatus::Missing,
            aliases: vec![],
            counted_as: spec.probe,
            module: None,
            file_offset: None,
            placement: None,
            has_return: spec.hook != Hook::Entry,
        }
    }

    /// The function names this probe stands for: "aligned_alloc/memalign".
    pub fn display_name(&self) -> String {
        let names: Vec<&str> = [self.probe.name()]
            .into_iter()
            .chain(self.aliases.iter().copied())
            .collect();
        names.join("/")
    }
}

/// The attachments, taken out of their programs so that they can be closed
/// together: each uprobe unregistration waits for RCU grace periods (~0.2 s
/// here), so closing 20 of them one by one takes seconds.
#[derive(Default)]
pub struct Links {
    /// Multi-links, each with the functions its uprobes serve.
    multi: Vec<(Vec<Probe>, OwnedFd)>,
    /// With the function each serves: where multi-links are not available.
    uprobes: Vec<(Probe, UProbeLink)>,
    tracepoints: Vec<TracePointLink>,
    perf_events: Vec<PerfEventLink>,
    /// The programs of the multi-links; None once they proved unavailable.
    multi_programs: Option<MultiPrograms>,
}

impl Links {
    fn new() -> Links {
        Links {
            multi_programs: Some(MultiPrograms::new(EBPF_OBJECT)),
            ..Links::default()
        }
    }

    /// Takes out the uprobes of the functions `set` does not probe. A
    /// multi-link goes when none of its functions stays.
    fn take_uprobes_outside(&mut self, set: ProbeSet) -> Links {
        let (kept, taken) = std::mem::take(&mut self.uprobes)
            .into_iter()
            .partition(|(probe, _)| set.probes(*probe));
        self.uprobes = kept;
        let (kept, taken_multi) = std::mem::take(&mut self.multi)
            .into_iter()
            .partition(|(probes, _)| probes.iter().any(|probe| set.probes(*probe)));
        self.multi = kept;
        Links {
            multi: taken_multi,
            uprobes: taken,
            ..Links::default()
        }
    }

    /// The functions of the uprobes, once each.
    pub fn probes(&self) -> Vec<Probe> {
        let mut probes: Vec<Probe> = Vec::new();
        let all = self.multi.iter().flat_map(|(probes, _)| probes.iter().copied());
        for probe in all.chain(self.uprobes.iter().map(|(probe, _)| *probe)) {
            if !probes.contains(&probe) {
                probes.push(probe);
            }
        }
        probes
    }

    /// Run times of the multi-links' programs so far, which aya does not know of.
    pub fn multi_program_runs(&self) -> Vec<ProgramRun> {
        self.multi_programs.as_ref().map_or(Vec::new(), MultiPrograms::runs)
    }

    /// For a process about to exit: detaches the uprobes (the target runs
    /// unprobed at once), and hands the tracepoints and perf events to a
    /// child process that closes them as it exits, so that their grace
    /// periods do not hold up the caller's exit. They are disabled here
    /// first: the child's copies trace nothing.
    pub fn detach_before_exit(mut self) {
        let rest = Links {
            tracepoints: std::mem::take(&mut self.tracepoints),
            perf_events: std::mem::take(&mut self.perf_events),
            ..Links::default()
        };
        self.detach();
        if rest.tracepoints.is_empty() && rest.perf_events.is_empty() {
            return;
        }
        if let Err(e) = close_in_child(rest) {
            log::debug!("closing the tracepoints here: {e:#}");
        }
    }

    /// Detaches everything, with the grace periods overlapping.
    pub fn detach(self) {
        std::thread::scope(|scope| {
            for (_, link) in self.multi {
                scope.spawn(move || drop(link));
            }
            for (_, link) in self.uprobes {
                scope.spawn(move || drop(link));
            }
            for link in self.tracepoints {
                scope.spawn(move || drop(link));
            }
            drop(self.perf_events);
        });
    }
}

/// Forks a child that holds copies of the descriptors of `links` until this
/// process has closed its own (then exits, and its exit closes the last
/// copies); falls back to `Links::detach` here.
fn close_in_child(links: Links) -> Result<()> {
    let (read_end, write_end) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: the child makes only async-signal-safe calls (close, read, _exit).
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            links.detach();
            Err(e).context("fork")
        }
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: raw descriptor calls; the child owns nothing else.
            unsafe {
                // Not holding the caller's output open: readers wait for EOF.
                for fd in 0..=2 {
                    libc::close(fd);
                }
                libc::close(write_end.as_raw_fd());
                let mut byte = 0u8;
                libc::read(read_end.as_raw_fd(), std::ptr::from_mut(&mut byte).cast(), 1);
                libc::_exit(0)
            }
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(links);
            drop(write_end);
            Ok(())
        }
    }
}

pub struct LoadOptions {
    pub pid: u32,
    pub ring_buffer_bytes: u32,
    pub max_stacks: u32,
    /// Mean bytes between samples; None traces every call.
    pub sample_bytes: Option<u64>,
    /// Where the target's V8 keeps JS frame slots, when it is a known V8.
    pub v8_frames: Option<V8FrameLayout>,
    /// How the target's V8 page hooks are read, for Node targets.
    pub v8_pages: Option<V8PageLayout>,
    /// Per-call events are unwound by the unwind rules user space writes
    /// (`UnwindRules`), else by frame pointers.
    pub unwind_rules: bool,
}

pub fn load(options: &LoadOptions) -> Result<Ebpf> {
    if EBPF_OBJECT.is_empty() {
        bail!("this leakscope binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`");
    }
    let sample_bytes = options.sample_bytes.unwrap_or(0);
    let mut ebpf = EbpfLoader::new()
        .override_global("TARGET_TGID", &options.pid, true)
        .override_global("SAMPLE_BYTES", &sample_bytes, true)
        .override_global("V8_FRAME_LAYOUT", &options.v8_frames.unwrap_or_default(), true)
        .override_global("V8_PAGE_LAYOUT", &options.v8_pages.unwrap_or_default(), true)
        .override_global("UNWIND_BY_RULES", &u32::from(options.unwind_rules), true)
        .map_max_entries("EVENTS", options.ring_buffer_bytes)
        .map_max_entries("DELIVERED_STACKS", options.max_stacks)
        .load(EBPF_OBJECT)
        .map_err(load_error)?;
    if let Some(mean) = options.sample_bytes {
        let mut quantiles: Array<&mut MapData, u64> =
            Array::try_from(ebpf.map_mut("EXP_QUANTILES").context("EXP_QUANTILES map missing")?)?;
        for (index, gap) in exponential_quantiles(mean).into_iter().enumerate() {
            quantiles.set(index as u32, gap, 0)?;
        }
    }
    Ok(ebpf)
}

/// Why loading failed. Out of file descriptors is said as such: every map
/// and program is one, and blaming BTF or root sends the reader astray.
fn load_error(error: aya::EbpfError) -> anyhow::Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(cause) = source {
        let errno = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error);
        if matches!(errno, Some(libc::EMFILE | libc::ENFILE)) {
            return anyhow::anyhow!(
                "loading the eBPF programs failed: too many open files (each map and program takes a descriptor; raise `ulimit -n`): {error}"
            );
        }
        source = cause.source();
    }
    anyhow::Error::new(error)
        .context("loading the eBPF programs failed (is this kernel 5.15+ with BTF, and are we root?)")
}

/// Gaps between samples for the kernel side to draw from: the quantiles of
/// an exponential distribution of mean `mean` at the midpoints of
/// `EXP_QUANTILES_LEN` equal-probability slices.
fn exponential_quantiles(mean: u64) -> Vec<u64> {
    let n = EXP_QUANTILES_LEN as f64;
    (0..EXP_QUANTILES_LEN)
        .map(|i| (-(1.0 - (f64::from(i) + 0.5) / n).ln() * mean as f64).round().max(1.0) as u64)
        .collect()
}

/// The modules of the target that get uprobes.
pub struct TargetModules {
    /// The objects the malloc family may resolve to, in the dynamic loader's
    /// symbol-lookup order; empty for a static binary.
    pub lookup_order: Vec<ModuleRef>,
    /// The executable or library holding Node.js and V8, for Node targets.
    pub node: Option<ModuleRef>,
}

/// Whether `module` defines Node's or V8's hooks.
fn is_node(module: &ModuleRef) -> bool {
    find_functions(&module.open_path, NODE_PROBES, Symbols::All).is_ok_and(|found| !found.is_empty())
}

/// The modules of a running process.
pub fn target_modules(pid: u32) -> Result<TargetModules> {
    let lookup_order = lookup::process_lookup_order(pid)?;
    // node is the executable; embedders link libnode.
    let is_node_candidate = |(i, m): &(usize, &ModuleRef)| {
        *i == 0
            || m.path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnode"))
    };
    let node = lookup_order
        .iter()
        .enumerate()
        .filter(is_node_candidate)
        .map(|(_, m)| m)
        .find(|m| is_node(m))
        .cloned();
    Ok(TargetModules { lookup_order, node })
}

/// For launch mode, before exec: the modules of the command.
pub fn command_modules(program: &Path) -> Result<TargetModules> {
    let program = fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let node = Some(ModuleRef::local(program.clone())).filter(is_node);
    Ok(TargetModules {
        lookup_order: lookup::command_lookup_order(&program)?,
        node,
    })
}

/// A function found in an ELF file.
struct FunctionCode {
    file_offset: u64,
    vaddr: u64,
    code: Vec<u8>,
}

/// Which symbol tables name a function.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Symbols {
    /// .dynsym only: what other objects link against (and may interpose).
    Exported,
    /// .dynsym and .symtab: internals too.
    All,
}

/// The functions of `elf` matching `specs`, by spec symbol, with their code.
fn find_functions(elf: &Path, specs: &[ProbeSpec], tables: Symbols) -> Result<BTreeMap<&'static str, FunctionCode>> {
    // Mapped, not read: node is a 100 MB file, of which only the symbol
    // tables (17 MB) and a few prologues are touched, so only they take memory.
    let handle = fs::File::open(elf).with_context(|| format!("cannot read {}", elf.display()))?;
    // SAFETY: a read-only private mapping; a file truncated meanwhile could
    // fault, which executables and libraries in use are not.
    let data = unsafe { memmap2::Mmap::map(&handle) }.with_context(|| format!("cannot map {}", elf.display()))?;
    let file = object::File::parse(&*data).map_err(|e| anyhow!("{} is not a valid ELF file: {e}", elf.display()))?;
    let mut found = BTreeMap::new();
    let internal = file.symbols().filter(|_| tables == Symbols::All);
    for symbol in file.dynamic_symbols().chain(internal) {
        let Ok(name) = symbol.name() else { continue };
        // Mangled names carry each component's length, so a prefix ending in
        // the function's name cannot match another function.
        let matches = |spec: &&ProbeSpec| {
            spec.names()
                .any(|symbol| name == symbol || (symbol.starts_with("_Z") && name.starts_with(symbol)))
        };
        let Some(spec) = specs.iter().find(matches) else {
            continue;
        };
        if symbol.kind() != object::SymbolKind::Text
            || symbol.is_undefined()
            || symbol.address() == 0
            || found.contains_key(spec.symbol)
        {
            continue;
        }
        let vaddr = symbol.address();
        let segment = file
            .segments()
            .find(|s| (s.address()..s.address() + s.size()).contains(&vaddr));
        let Some(segment) = segment else { continue };
        let (segment_offset, _) = segment.file_range();
        let file_offset = vaddr - segment.address() + segment_offset;
        let start = file_offset as usize;
        let code = data
            .get(start..(start + PROLOGUE_BYTES).min(data.len()))
            .unwrap_or_default()
            .to_vec();
        found.insert(
            spec.symbol,
            FunctionCode {
                file_offset,
                vaddr,
                code,
            },
        );
    }
    Ok(found)
}

/// Which probes a tracing session needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeSet {
    /// `hunt` in exact or sampled mode: every allocator, mappings, and all Node hooks.
    Hunt,
    /// `hunt` in growth mode: no per-call allocator probes. Page faults (one
    /// sample every `fault_period` faults), mappings and brk, and Node's
    /// page, GC and teardown hooks.
    Growth { fault_period: u64 },
    /// `watch` tier 2: growth mode's probes without Node's teardown hook.
    Watch { fault_period: u64 },
}

impl ProbeSet {
    /// Whether the set probes this function.
    fn probes(self, probe: Probe) -> bool {
        match self {
            ProbeSet::Hunt => true,
            ProbeSet::Growth { .. } => GROWTH_NODE_PROBES.contains(&probe),
            ProbeSet::Watch { .. } => WATCH_NODE_PROBES.contains(&probe),
        }
    }

    /// Page faults are sampled every this many faults; None: not traced.
    fn fault_period(self) -> Option<u64> {
        match self {
            ProbeSet::Hunt => None,
            ProbeSet::Growth { fault_period } | ProbeSet::Watch { fault_period } => Some(fault_period),
        }
    }
}

/// Attaches the probes of `set`. Modules are paths as the target sees them
/// (opened through /proc/PID/root so that containers work).
pub fn attach(
    ebpf: &mut Ebpf,
    pid: u32,
    modules: &TargetModules,
    set: ProbeSet,
) -> Result<(Vec<AttachedProbe>, Links)> {
    let mut probes = Vec::new();
    let mut links = Links::new();
    if set == ProbeSet::Hunt {
        attach_malloc_family(ebpf, pid, &modules.lookup_order, &mut probes, &mut links)?;
    }
    if let Some(node) = &modules.node {
        let specs: Vec<ProbeSpec> = NODE_PROBES
            .iter()
            .filter(|spec| set.probes(spec.probe))
            .copied()
            .collect();
        attach_node(ebpf, pid, node, &specs, &mut probes, &mut links);
    }
    for &(probe, syscall) in SYSCALL_PROBES {
        for phase in ["enter", "exit"] {
            attach_tracepoint(ebpf, "syscalls", &format!("sys_{phase}_{syscall}"), &mut links)?;
        }
        probes.push(attached_without_uprobe(probe, true));
    }
    attach_tracepoint(ebpf, "sched", "sched_process_exec", &mut links)?;
    if let Some(fault_period) = set.fault_period() {
        attach_growth_probes(ebpf, pid, fault_period, &mut probes, &mut links)?;
    } else if !malloc_probed(&probes) {
        // A hunt of a program without libc (static) has no malloc probes, so
        // the program break is all it sees of the heap. With malloc probed,
        // brk is malloc's business.
        attach_tracepoint(ebpf, "syscalls", "sys_exit_brk", &mut links)?;
        probes.push(attached_without_uprobe(Probe::Brk, false));
    }
    Ok((probes, links))
}

/// Whether a hunt traces malloc: not in a static binary, whose allocator
/// exports nothing to probe.
pub fn malloc_probed(probes: &[AttachedProbe]) -> bool {
    probes
        .iter()
        .any(|p| p.probe == Probe::Malloc && p.status == ProbeStatus::Attached)
}

/// Each function of the malloc family in the first object of the lookup
/// order that exports it: that is the one the process calls. Reported in
/// `MALLOC_PROBES` order.
fn attach_malloc_family(
    ebpf: &mut Ebpf,
    pid: u32,
    lookup_order: &[ModuleRef],
    probes: &mut Vec<AttachedProbe>,
    links: &mut Links,
) -> Result<()> {
    let before = probes.len();
    let mut unresolved: Vec<ProbeSpec> = MALLOC_PROBES.to_vec();
    for module in lookup_order {
        if unresolved.is_empty() {
            break;
        }
        let defined = match find_functions(&module.open_path, &unresolved, Symbols::Exported) {
            Ok(defined) => defined,
            Err(e) => {
                log::debug!("skipping {} in the lookup order: {e:#}", module.path.display());
                continue;
            }
        };
        let (here, elsewhere): (Vec<ProbeSpec>, Vec<ProbeSpec>) =
            unresolved.iter().partition(|spec| defined.contains_key(spec.symbol));
        if !here.is_empty() {
            attach_module(ebpf, pid, module, &here, &defined, probes, links)?;
        }
        unresolved = elsewhere;
    }
    probes.extend(unresolved.iter().map(AttachedProbe::missing));
    probes[before..].sort_by_key(|p| MALLOC_PROBES.iter().position(|spec| spec.probe == p.probe));
    Ok(())
}

/// Moves a session from the per-call probes of `ProbeSet::Hunt` to those
/// of `set`: attaches page faults and brk, and returns the uprobes `set`
/// lacks, still attached (detaching them takes seconds: do it elsewhere).
pub fn switch_to(
    ebpf: &mut Ebpf,
    pid: u32,
    set: ProbeSet,
    probes: &mut Vec<AttachedProbe>,
    links: &mut Links,
) -> Result<Links> {
    if let Some(fault_period) = set.fault_period() {
        attach_growth_probes(ebpf, pid, fault_period, probes, links)?;
    }
    Ok(links.take_uprobes_outside(set))
}

/// The probes of growth attribution: brk, and page faults every `fault_period`.
fn attach_growth_probes(
    ebpf: &mut Ebpf,
    pid: u32,
    fault_period: u64,
    probes: &mut Vec<AttachedProbe>,
    links: &mut Links,
) -> Result<()> {
    // A hunt of a static binary has brk already: attached twice, it would count twice.
    if !probes.iter().any(|p| p.probe == Probe::Brk) {
        attach_tracepoint(ebpf, "syscalls", "sys_exit_brk", links)?;
        probes.push(attached_without_uprobe(Probe::Brk, false));
    }
    attach_page_faults(ebpf, pid, fault_period, links)?;
    probes.push(attached_without_uprobe(Probe::PageFault, false));
    Ok(())
}

/// Has the kernel side send every fault of these stacks with its stack
/// window. A full map leaves the rest counted per stack.
pub fn window_fault_stacks(ebpf: &mut Ebpf, stacks: &[u64]) -> Result<()> {
    let mut map: HashMap<&mut MapData, u64, u8> =
        HashMap::try_from(ebpf.map_mut("FAULT_WINDOWED").context("FAULT_WINDOWED map missing")?)?;
    for stack in stacks {
        if let Err(e) = map.insert(stack, 1, 0) {
            log::debug!("fault stack {stack:#x} stays counted, not windowed: {e}");
        }
    }
    Ok(())
}

/// A reader of the target's mark-compact epoch (`leak_common::gc_epoch`),
/// which the kernel side's GC hooks keep.
pub fn gc_epoch_reader(ebpf: &mut Ebpf) -> Result<crate::v8::frames::EpochReader> {
    let map: Array<MapData, u64> = Array::try_from(ebpf.take_map("GC_EPOCH").context("GC_EPOCH map missing")?)?;
    Ok(Box::new(move || map.get(&0, 0).ok()))
}

/// Page-fault samples per user stack (content hash) so far, summed over CPUs.
pub fn fault_samples(ebpf: &Ebpf) -> Result<Vec<(u64, u64)>> {
    let map: PerCpuHashMap<&MapData, u64, u64> =
        PerCpuHashMap::try_from(ebpf.map("FAULT_STACKS").context("FAULT_STACKS map missing")?)?;
    map.iter()
        .map(|entry| entry.map(|(stack, per_cpu)| (stack, per_cpu.iter().sum())))
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// Node's hooks are internals that move between versions: a missing one is
/// a warning, not a failed session.
fn attach_node(
    ebpf: &mut Ebpf,
    pid: u32,
    node: &ModuleRef,
    specs: &[ProbeSpec],
    probes: &mut Vec<AttachedProbe>,
    links: &mut Links,
) {
    let before = probes.len();
    let attached = find_functions(&node.open_path, specs, Symbols::All)
        .and_then(|functions| attach_module(ebpf, pid, node, specs, &functions, probes, links));
    if let Err(e) = attached {
        eprintln!("leakscope: warning: node: {e:#}");
    }
    for p in probes[before..].iter().filter(|p| p.status == ProbeStatus::Missing) {
        eprintln!(
            "leakscope: warning: node: {} not found or not placeable in {}: not traced",
            p.probe.name(),
            node.path.display()
        );
    }
    let live = probes[before..]
        .iter()
        .filter(|p| p.status == ProbeStatus::Attached)
        .count();
    eprintln!(
        "leakscope: node: {live} of {} Node/V8 hooks attached in {}",
        specs.len(),
        node.path.display()
    );
}

/// A probe that is a tracepoint or perf event rather than a uprobe.
fn attached_without_uprobe(probe: Probe, has_return: bool) -> AttachedProbe {
    AttachedProbe {
        status: ProbeStatus::Attached,
        has_return,
        ..AttachedProbe::missing(&spec(probe, probe.name(), "", &[], Hook::Entry))
    }
}

/// Software page-fault events on every thread of `pid`, inherited by the
/// threads they create: the cost stays with the target (a per-CPU event
/// would run the program for every fault on the machine).
fn attach_page_faults(ebpf: &mut Ebpf, pid: u32, period: u64, links: &mut Links) -> Result<()> {
    let program: &mut PerfEvent = ebpf.program_mut("page_fault").context("program missing")?.try_into()?;
    program.load().context("the kernel rejected page_fault")?;
    let threads =
        fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| crate::target::proc_read_error(pid, "task", e))?;
    for tid in threads.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let attached = program.attach(
            PerfEventConfig::Software(SoftwareEvent::PageFaults),
            PerfEventScope::OneProcess { pid: tid, cpu: None },
            SamplePolicy::Period(period.max(1)),
            true,
        );
        match attached {
            Ok(link) => links.perf_events.push(program.take_link(link)?),
            // The thread exited since the directory was read, or is exiting
            // (ESRCH; a zombie keeps its entry).
            Err(e) if thread_alive(pid, tid) && !no_such_process(&e) => {
                return Err(e).with_context(|| format!("cannot open page-fault events on thread {tid}"))
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// Whether an error comes from ESRCH.
fn no_such_process(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.raw_os_error() == Some(libc::ESRCH))
}

/// Whether thread `tid` of `pid` exists and has not exited (state Z or X).
fn thread_alive(pid: u32, tid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).is_ok_and(|stat| {
        // The state follows the command's closing parenthesis.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, None | Some('Z' | 'X'))
    })
}

/// Attaches the program named like the tracepoint.
fn attach_tracepoint(ebpf: &mut Ebpf, category: &str, name: &str, links: &mut Links) -> Result<()> {
    let program: &mut TracePoint = ebpf.program_mut(name).context("program missing")?.try_into()?;
    program.load().with_context(|| format!("the kernel rejected {name}"))?;
    let link = program
        .attach(category, name)
        .with_context(|| format!("cannot attach to tracepoint {category}:{name}"))?;
    links.tracepoints.push(program.take_link(link)?);
    Ok(())
}

/// Probes `specs` at `functions` (found in `module`). A function that
/// cannot be probed is reported missing, with a warning: the report then
/// says it is not traced, rather than the hunt failing.
fn attach_module(
    ebpf: &mut Ebpf,
    pid: u32,
    module: &ModuleRef,
    specs: &[ProbeSpec],
    functions: &BTreeMap<&'static str, FunctionCode>,
    probes: &mut Vec<AttachedProbe>,
    links: &mut Links,
) -> Result<()> {
    // Probe each address once: glibc's aligned_alloc is memalign.
    let mut first_at: BTreeMap<u64, usize> = BTreeMap::new();
    let mut points = Vec::new();
    for spec in specs {
        let probe = spec.probe;
        let Some(function) = functions.get(spec.symbol) else {
            probes.push(AttachedProbe::missing(spec));
            continue;
        };
        if let Some(&index) = first_at.get(&function.vaddr) {
            let primary = &mut probes[index];
            let mut alias = AttachedProbe {
                probe,
                aliases: vec![primary.probe.name()],
                ..primary.clone()
            };
            alias.aliases.extend(primary.aliases.iter().copied());
            primary.aliases.push(probe.name());
            probes.push(alias);
            continue;
        }
        let placed = match spec.hook {
            Hook::Entry => placement::place_entry_only(&function.code, function.vaddr, spec.args),
            Hook::Paired | Hook::Around(_) | Hook::Return => placement::place_at_entry(&function.code, function.vaddr),
        };
        let placed = match placed {
            Ok(placed) => placed,
            Err(e) => {
                let message = format!(
                    "cannot place a probe on {} in {}: {e}",
                    probe.name(),
                    module.path.display()
                );
                if probe.is_node() {
                    log::warn!("{message}");
                } else {
                    eprintln!("leakscope: warning: {message}: not traced");
                }
                probes.push(AttachedProbe::missing(spec));
                continue;
            }
        };
        if placed.handling == Handling::SingleStepped {
            log::debug!(
                "{}: probe at +{:#x} is single-stepped (slower): {}",
                probe.name(),
                placed.offset,
                placed.reason
            );
        }
        let file_offset = function.file_offset + placed.offset;
        let entry = function.file_offset;
        // A return probe always sits on the entry: it hijacks the return address there.
        let at = |program, file_offset, returns| UprobePoint {
            program,
            file_offset,
            returns,
            probe,
        };
        match spec.hook {
            Hook::Entry => points.push(at(spec.program, file_offset, false)),
            Hook::Return => points.push(at(spec.program, entry, true)),
            Hook::Paired => points.extend([at(spec.program, file_offset, false), at(RETURN_PROGRAM, entry, true)]),
            Hook::Around(returns) => points.extend([at(spec.program, file_offset, false), at(returns, entry, true)]),
        }
        first_at.insert(function.vaddr, probes.len());
        probes.push(AttachedProbe {
            probe,
            status: ProbeStatus::Attached,
            aliases: vec![],
            counted_as: probe,
            module: Some(module.path.clone()),
            file_offset: Some(file_offset),
            placement: Some(placed),
            has_return: spec.hook != Hook::Entry,
        });
    }
    attach_points(ebpf, pid, module, &points, links)
}

/// One uprobe to place.
struct UprobePoint {
    program: &'static str,
    file_offset: u64,
    /// A return probe (the program is a uretprobe).
    returns: bool,
    probe: Probe,
}

/// Places `points` in `module`: one multi-link per program and per side of
/// the growth-mode switch (so that the switch can close the per-call ones),
/// or, where multi-links fail (kernels before 6.6), one perf event per point.
fn attach_points(
    ebpf: &mut Ebpf,
    pid: u32,
    module: &ModuleRef,
    points: &[UprobePoint],
    links: &mut Links,
) -> Result<()> {
    let mut groups: BTreeMap<(&str, bool, bool), Vec<&UprobePoint>> = BTreeMap::new();
    for point in points {
        let key = (point.program, point.returns, GROWTH_NODE_PROBES.contains(&point.probe));
        groups.entry(key).or_default().push(point);
    }
    for ((program, returns, _), group) in groups {
        if let Some(multi) = links.multi_programs.as_mut() {
            let offsets: Vec<uprobe_multi::Point> = group
                .iter()
                .map(|p| uprobe_multi::Point {
                    file_offset: p.file_offset,
                    cookie: p.probe as u64,
                })
                .collect();
            match multi.attach(ebpf, program, &module.open_path, &offsets, returns, pid) {
                Ok(link) => {
                    log::debug!(
                        "{program}: one uprobe multi-link for {} probes in {}",
                        group.len(),
                        module.path.display()
                    );
                    links.multi.push((group.iter().map(|p| p.probe).collect(), link));
                    continue;
                }
                Err(e) => {
                    log::debug!("uprobe multi-links unavailable ({e:#}): one perf event per uprobe");
                    links.multi_programs = None;
                }
            }
        }
        for point in group {
            let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).expect("pid is not 0"));
            let link = attach_uprobe(ebpf, program, &module.open_path, point.file_offset, point.probe, scope)?;
            links.uprobes.push((point.probe, link));
        }
    }
    Ok(())
}

fn attach_uprobe(
    ebpf: &mut Ebpf,
    program_name: &str,
    target: &Path,
    file_offset: u64,
    probe: Probe,
    scope: UProbeScope,
) -> Result<UProbeLink> {
    let program: &mut UProbe = ebpf.program_mut(program_name).context("program missing")?.try_into()?;
    if program.fd().is_err() {
        program
            .load()
            .with_context(|| format!("the kernel rejected {program_name}"))?;
    }
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(file_offset),
        cookie: Some(probe as u64),
    };
    let link = program.attach(point, target, scope).with_context(|| {
        format!(
            "cannot place the uprobe for {} at {}+{file_offset:#x}",
            probe.name(),
            target.display()
        )
    })?;
    Ok(program.take_link(link)?)
}

/// Hit and drop counters summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    slots: Vec<u64>,
}

impl Counters {
    pub fn read(ebpf: &Ebpf) -> Result<Counters> {
        let map = ebpf.map("COUNTERS").context("COUNTERS map missing")?;
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let slots = (0..counter::SLOTS)
            .map(|slot| array.get(&slot, 0).map(|values| values.iter().sum()))
            .collect::<Result<_, _>>()?;
        Ok(Counters { slots })
    }

    fn slot(&self, index: u32) -> u64 {
        self.slots.get(index as usize).copied().unwrap_or(0)
    }

    pub fn entry_hits(&self, probe: Probe) -> u64 {
        self.slot(counter::entry_hits(probe))
    }

    pub fn return_hits(&self, probe: Probe) -> u64 {
        self.slot(counter::return_hits(probe))
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.slot(counter::drops(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each probe of `specs` goes in the real `module` of this machine.
    fn placements(module: &Path, specs: &[ProbeSpec]) -> BTreeMap<&'static str, Placement> {
        let functions = find_functions(module, specs, Symbols::All).unwrap();
        specs
            .iter()
            .filter_map(|spec| {
                let f = functions.get(spec.symbol)?;
                let placed = match spec.hook {
                    Hook::Entry => placement::place_entry_only(&f.code, f.vaddr, spec.args),
                    _ => placement::place_at_entry(&f.code, f.vaddr),
                };
                Some((spec.symbol, placed.unwrap()))
            })
            .collect()
    }

    #[test]
    fn places_probes_in_this_machines_libc() {
        let modules = target_modules(std::process::id()).unwrap();
        let libc = modules
            .lookup_order
            .iter()
            .find(|m| m.path.to_string_lossy().contains("/libc.so"))
            .expect("leakscope maps a libc");
        let placed = placements(&libc.open_path, MALLOC_PROBES);
        assert_eq!(
            placed.len(),
            MALLOC_PROBES.len(),
            "every libc allocator is found: {placed:?}"
        );
        // Allocators start at their entry (their return probe needs it); free
        // moves to an emulated instruction before %rdi changes (glibc 2.36:
        // `test %rdi,%rdi` is single-stepped, the `je` after it is emulated).
        assert_eq!(placed["malloc"].offset, 0);
        let free = &placed["free"];
        assert_eq!(free.handling, Handling::Emulated, "{free:?}");
        assert!(free.offset > 0, "{free:?}");
    }

    /// The malloc replacements `cargo xtask setup` installs.
    pub const MALLOC_REPLACEMENTS: &[&str] = &[
        "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
        "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2.0",
    ];

    #[test]
    fn places_probes_in_the_malloc_replacements() {
        for library in MALLOC_REPLACEMENTS {
            let placed = placements(Path::new(library), MALLOC_PROBES);
            eprintln!("{library}: {placed:#?}");
            for symbol in ["malloc", "calloc", "realloc", "free", "posix_memalign", "aligned_alloc"] {
                let p = placed
                    .get(symbol)
                    .unwrap_or_else(|| panic!("{library} exports {symbol}"));
                assert_ne!(p.handling, Handling::Refused, "{library} {symbol}: {p:?}");
            }
        }
    }

    #[test]
    fn places_probes_in_this_machines_node() {
        let Ok(node) = fs::canonicalize("/usr/bin/node") else {
            panic!("node is needed for this test (cargo xtask setup checks for it)");
        };
        let placed = placements(&node, NODE_PROBES);
        // ArrayBuffer Free starts with `lock sub`: never probed there.
        let free = &placed["_ZN4node24NodeArrayBufferAllocator4Free"];
        assert_ne!(free.offset, 0, "{free:?}");
        assert_ne!(free.handling, Handling::Refused);
        for (symbol, p) in &placed {
            assert_ne!(p.handling, Handling::Refused, "{symbol}: {p:?}");
        }
        assert!(
            placed.len() >= NODE_PROBES.len() - 1,
            "hooks missing from node: {:?}",
            placed.keys()
        );
    }

    #[test]
    fn exponential_quantiles_have_the_mean() {
        let gaps = exponential_quantiles(512 << 10);
        assert_eq!(gaps.len(), EXP_QUANTILES_LEN as usize);
        let mean = gaps.iter().sum::<u64>() as f64 / gaps.len() as f64;
        // The midpoint quantiles cut off the far tail: ~0.5% below the true mean.
        assert!((mean / f64::from(512 << 10) - 1.0).abs() < 0.01, "{mean}");
        assert!(gaps.windows(2).all(|w| w[0] <= w[1]));
    }
}
