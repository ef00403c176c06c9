//! Loads the eBPF object and attaches its programs to the target.
//!
//! libc's allocators get uprobes scoped to the target process (placed by
//! `placement`); mappings are seen through the syscall tracepoints, which also
//! catch raw `syscall(SYS_mmap, ...)` calls.

use std::{
    collections::BTreeMap,
    fs,
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{
        perf_event::{PerfEventConfig, PerfEventLink, PerfEventScope, SamplePolicy, SoftwareEvent},
        trace_point::TracePointLink,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
        PerfEvent, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use iced_x86::Register;
use leak_common::{counter, DropReason, Probe, V8FrameLayout, EXP_QUANTILES_LEN};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::placement::{self, Handling, Placement};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leak-ebpf"));

/// How a function is probed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// An entry program at the entry instruction, plus the shared return
    /// program (`alloc_return`): allocators.
    Paired,
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
    program: &'static str,
    args: &'static [Register],
    hook: Hook,
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
        program,
        args,
        hook,
    }
}

use Register::{RDI, RDX, RSI};

const LIBC_PROBES: &[ProbeSpec] = &[
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
];

/// The Node hooks of `watch`: JS heap pages and GCs, which fire a few times
/// per GC rather than per allocation.
const WATCH_NODE_PROBES: &[Probe] = &[
    Probe::V8AllocatePage,
    Probe::V8AllocateLargePage,
    Probe::V8FreePage,
    Probe::V8GcStart,
    Probe::V8GcEnd,
    Probe::V8SizeOfObjects,
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
    uprobes: Vec<UProbeLink>,
    tracepoints: Vec<TracePointLink>,
    perf_events: Vec<PerfEventLink>,
}

impl Links {
    /// Detaches everything, with the grace periods overlapping.
    pub fn detach(self) {
        std::thread::scope(|scope| {
            for link in self.uprobes {
                scope.spawn(move || drop(link));
            }
            for link in self.tracepoints {
                scope.spawn(move || drop(link));
            }
            drop(self.perf_events);
        });
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
        .map_max_entries("EVENTS", options.ring_buffer_bytes)
        .map_max_entries("DELIVERED_STACKS", options.max_stacks)
        .load(EBPF_OBJECT)
        .context("loading the eBPF programs failed (is this kernel 5.15+ with BTF, and are we root?)")?;
    if let Some(mean) = options.sample_bytes {
        let mut quantiles: Array<&mut MapData, u64> =
            Array::try_from(ebpf.map_mut("EXP_QUANTILES").context("EXP_QUANTILES map missing")?)?;
        for (index, gap) in exponential_quantiles(mean).into_iter().enumerate() {
            quantiles.set(index as u32, gap, 0)?;
        }
    }
    Ok(ebpf)
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

/// The modules of the target that get uprobes, by their path as the target
/// names them.
pub struct TargetModules {
    /// None for a process without one (a static binary).
    pub libc: Option<PathBuf>,
    /// The executable or library holding Node.js and V8, for Node targets.
    pub node: Option<PathBuf>,
}

fn is_libc(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
}

/// Whether `path` (as seen from here) defines Node's or V8's hooks.
fn is_node(path: &Path) -> bool {
    find_functions(path, NODE_PROBES).is_ok_and(|found| !found.is_empty())
}

/// The modules of a running process.
pub fn target_modules(pid: u32) -> Result<TargetModules> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).with_context(|| format!("process {pid} has exited"))?;
    let mut paths: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(PathBuf::from)
        .collect();
    paths.dedup();
    let seen_from_here =
        |path: &Path| PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path));
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut node_candidates = exe.iter().chain(paths.iter().filter(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libnode"))
    }));
    Ok(TargetModules {
        libc: paths.iter().find(|p| is_libc(p)).cloned(),
        node: node_candidates.find(|&p| is_node(&seen_from_here(p))).cloned(),
    })
}

/// For launch mode, before exec: the modules of the command. A static
/// executable has no libc; a dynamic one is assumed to use the same system
/// libc as leakscope (the README says so).
pub fn command_modules(program: &Path) -> Result<TargetModules> {
    let data = fs::read(program).with_context(|| format!("cannot read {}", program.display()))?;
    let is_static = match object::File::parse(&*data) {
        Ok(object::File::Elf64(elf)) => {
            use object::read::elf::ProgramHeader as _;
            let endian = elf.endian();
            !elf.elf_program_headers()
                .iter()
                .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP)
        }
        _ => false,
    };
    let program = fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    Ok(TargetModules {
        libc: if is_static {
            None
        } else {
            target_modules(std::process::id())?.libc
        },
        node: is_node(&program).then_some(program),
    })
}

/// A function found in an ELF file.
struct FunctionCode {
    file_offset: u64,
    vaddr: u64,
    code: Vec<u8>,
}

/// The named functions of `elf` (from .dynsym and .symtab), with their code.
/// The functions of `elf` (from .dynsym and .symtab) matching `specs`, by spec symbol.
fn find_functions(elf: &Path, specs: &[ProbeSpec]) -> Result<BTreeMap<&'static str, FunctionCode>> {
    // Mapped, not read: node is a 100 MB file, of which only the symbol
    // tables (17 MB) and a few prologues are touched, so only they take memory.
    let handle = fs::File::open(elf).with_context(|| format!("cannot read {}", elf.display()))?;
    // SAFETY: a read-only private mapping; a file truncated meanwhile could
    // fault, which executables and libraries in use are not.
    let data = unsafe { memmap2::Mmap::map(&handle) }.with_context(|| format!("cannot map {}", elf.display()))?;
    let file = object::File::parse(&*data).map_err(|e| anyhow!("{} is not a valid ELF file: {e}", elf.display()))?;
    let mut found = BTreeMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        let Ok(name) = symbol.name() else { continue };
        // Mangled names carry each component's length, so a prefix ending in
        // the function's name cannot match another function.
        let matches =
            |spec: &&ProbeSpec| name == spec.symbol || (spec.symbol.starts_with("_Z") && name.starts_with(spec.symbol));
        let Some(spec) = specs.iter().find(matches) else {
            continue;
        };
        if symbol.kind() != object::SymbolKind::Text || symbol.address() == 0 || found.contains_key(spec.symbol) {
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
    /// `hunt`: every allocator, mappings, and all Node hooks.
    Hunt,
    /// `watch` tier 2: no allocator probes. Page faults (one sample every
    /// `fault_period` faults), mappings and brk, and Node's page and GC hooks.
    Watch { fault_period: u64 },
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
    let mut links = Links::default();
    match (&modules.libc, set) {
        (Some(libc), ProbeSet::Hunt) => attach_module(ebpf, pid, libc, LIBC_PROBES, &mut probes, &mut links)?,
        (None, ProbeSet::Hunt) => probes.extend(LIBC_PROBES.iter().map(AttachedProbe::missing)),
        (_, ProbeSet::Watch { .. }) => {}
    }
    if let Some(node) = &modules.node {
        let specs: Vec<ProbeSpec> = NODE_PROBES
            .iter()
            .filter(|spec| set == ProbeSet::Hunt || WATCH_NODE_PROBES.contains(&spec.probe))
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
    if let ProbeSet::Watch { fault_period } = set {
        attach_tracepoint(ebpf, "syscalls", "sys_exit_brk", &mut links)?;
        probes.push(attached_without_uprobe(Probe::Brk, false));
        attach_page_faults(ebpf, pid, fault_period, &mut links)?;
        probes.push(attached_without_uprobe(Probe::PageFault, false));
    }
    Ok((probes, links))
}

/// Node's hooks are internals that move between versions: a missing one is
/// a warning, not a failed session.
fn attach_node(
    ebpf: &mut Ebpf,
    pid: u32,
    node: &Path,
    specs: &[ProbeSpec],
    probes: &mut Vec<AttachedProbe>,
    links: &mut Links,
) {
    let before = probes.len();
    if let Err(e) = attach_module(ebpf, pid, node, specs, probes, links) {
        eprintln!("leakscope: warning: node: {e:#}");
    }
    for p in probes[before..].iter().filter(|p| p.status == ProbeStatus::Missing) {
        eprintln!(
            "leakscope: warning: node: {} not found or not placeable in {}: not traced",
            p.probe.name(),
            node.display()
        );
    }
    let live = probes[before..]
        .iter()
        .filter(|p| p.status == ProbeStatus::Attached)
        .count();
    eprintln!(
        "leakscope: node: {live} of {} Node/V8 hooks attached in {}",
        specs.len(),
        node.display()
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
    let threads = fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("process {pid} has exited"))?;
    for tid in threads.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let attached = program.attach(
            PerfEventConfig::Software(SoftwareEvent::PageFaults),
            PerfEventScope::OneProcess { pid: tid, cpu: None },
            SamplePolicy::Period(period.max(1)),
            true,
        );
        match attached {
            Ok(link) => links.perf_events.push(program.take_link(link)?),
            // The thread exited since the directory was read.
            Err(e) if Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => {
                return Err(e).with_context(|| format!("cannot open page-fault events on thread {tid}"))
            }
            Err(_) => {}
        }
    }
    Ok(())
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

fn attach_module(
    ebpf: &mut Ebpf,
    pid: u32,
    module: &Path,
    specs: &[ProbeSpec],
    probes: &mut Vec<AttachedProbe>,
    links: &mut Links,
) -> Result<()> {
    let host_path = PathBuf::from(format!("/proc/{pid}/root")).join(module.strip_prefix("/").unwrap_or(module));
    let functions = find_functions(&host_path, specs)?;
    let scope = || UProbeScope::OneProcess(NonZeroU32::new(pid).expect("pid is not 0"));

    // Probe each address once: glibc's aligned_alloc is memalign.
    let mut first_at: BTreeMap<u64, usize> = BTreeMap::new();
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
            Hook::Paired | Hook::Return => placement::place_at_entry(&function.code, function.vaddr),
        };
        let placed = match placed {
            Ok(placed) => placed,
            Err(e) if probe.is_node() => {
                log::warn!("cannot place a probe on {} in {}: {e}", probe.name(), module.display());
                probes.push(AttachedProbe::missing(spec));
                continue;
            }
            Err(e) => bail!("cannot place a probe on {} in {}: {e}", probe.name(), module.display()),
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
        let points = match spec.hook {
            Hook::Entry => vec![(spec.program, file_offset)],
            Hook::Return => vec![(spec.program, entry)],
            Hook::Paired => vec![(spec.program, file_offset), (RETURN_PROGRAM, entry)],
        };
        for (program, offset) in points {
            links
                .uprobes
                .push(attach_uprobe(ebpf, program, &host_path, offset, probe, scope())?);
        }
        first_at.insert(function.vaddr, probes.len());
        probes.push(AttachedProbe {
            probe,
            status: ProbeStatus::Attached,
            aliases: vec![],
            counted_as: probe,
            file_offset: Some(file_offset),
            placement: Some(placed),
            has_return: spec.hook != Hook::Entry,
        });
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
        let functions = find_functions(module, specs).unwrap();
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
        let libc = target_modules(std::process::id())
            .unwrap()
            .libc
            .expect("leakscope maps a libc");
        let placed = placements(&libc, LIBC_PROBES);
        assert_eq!(
            placed.len(),
            LIBC_PROBES.len(),
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
