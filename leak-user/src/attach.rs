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
    maps::{MapData, PerCpuArray},
    programs::{
        trace_point::TracePointLink,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use iced_x86::Register;
use leak_common::{counter, DropReason, Probe};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::placement::{self, Handling, Placement};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leak-ebpf"));

/// Allocator probes: the entry program for each function and the argument
/// registers it reads. All of them also get the shared return probe, except free.
const LIBC_PROBES: &[(Probe, &str, &[Register])] = &[
    (Probe::Malloc, "size_enter", &[Register::RDI]),
    (Probe::Calloc, "calloc_enter", &[Register::RDI, Register::RSI]),
    (Probe::Realloc, "realloc_enter", &[Register::RDI, Register::RSI]),
    (
        Probe::Reallocarray,
        "reallocarray_enter",
        &[Register::RDI, Register::RSI, Register::RDX],
    ),
    (
        Probe::PosixMemalign,
        "posix_memalign_enter",
        &[Register::RDI, Register::RDX],
    ),
    (Probe::AlignedAlloc, "align_size_enter", &[Register::RSI]),
    (Probe::Memalign, "align_size_enter", &[Register::RSI]),
    (Probe::Valloc, "size_enter", &[Register::RDI]),
    (Probe::Pvalloc, "size_enter", &[Register::RDI]),
    (Probe::Free, "free_enter", &[Register::RDI]),
];
const RETURN_PROGRAM: &str = "alloc_return";
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
    fn missing(probe: Probe) -> AttachedProbe {
        AttachedProbe {
            probe,
            status: ProbeStatus::Missing,
            aliases: vec![],
            counted_as: probe,
            file_offset: None,
            placement: None,
            has_return: probe != Probe::Free,
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
        });
    }
}

pub struct LoadOptions {
    pub pid: u32,
    pub ring_buffer_bytes: u32,
    pub max_stacks: u32,
}

pub fn load(options: &LoadOptions) -> Result<Ebpf> {
    if EBPF_OBJECT.is_empty() {
        bail!("this leakscope binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`");
    }
    EbpfLoader::new()
        .override_global("TARGET_TGID", &options.pid, true)
        .map_max_entries("EVENTS", options.ring_buffer_bytes)
        .map_max_entries("STACKS", options.max_stacks)
        .load(EBPF_OBJECT)
        .context("loading the eBPF programs failed (is this kernel 5.15+ with BTF, and are we root?)")
}

/// Where the target's libc is: its path as the target names it, or `None` for
/// a process without one (static binary).
pub fn find_libc(pid: u32) -> Result<Option<PathBuf>> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).with_context(|| format!("process {pid} has exited"))?;
    Ok(maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            let name = Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
        })
        .map(PathBuf::from))
}

/// For launch mode, before exec: the libc the command will map, or `None` when
/// it is a static executable. A dynamic executable is assumed to use the same
/// system libc as leakscope (the README says so).
pub fn libc_for_command(program: &Path) -> Result<Option<PathBuf>> {
    let data = fs::read(program).with_context(|| format!("cannot read {}", program.display()))?;
    if let Ok(file) = object::File::parse(&*data) {
        let has_interpreter = match &file {
            object::File::Elf64(elf) => {
                use object::read::elf::ProgramHeader as _;
                let endian = elf.endian();
                elf.elf_program_headers()
                    .iter()
                    .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP)
            }
            _ => true,
        };
        if !has_interpreter {
            return Ok(None);
        }
    }
    find_libc(std::process::id())
}

/// A function found in an ELF file.
struct FunctionCode {
    file_offset: u64,
    vaddr: u64,
    code: Vec<u8>,
}

/// The named functions of `elf` (from .dynsym and .symtab), with their code.
fn find_functions(elf: &Path, names: &[&str]) -> Result<BTreeMap<String, FunctionCode>> {
    let data = fs::read(elf).with_context(|| format!("cannot read {}", elf.display()))?;
    let file = object::File::parse(&*data).map_err(|e| anyhow!("{} is not a valid ELF file: {e}", elf.display()))?;
    let mut found = BTreeMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        let Ok(name) = symbol.name() else { continue };
        if symbol.kind() != object::SymbolKind::Text
            || symbol.address() == 0
            || !names.contains(&name)
            || found.contains_key(name)
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
            .get(start..(start + 64).min(data.len()))
            .unwrap_or_default()
            .to_vec();
        found.insert(
            name.to_string(),
            FunctionCode {
                file_offset,
                vaddr,
                code,
            },
        );
    }
    Ok(found)
}

/// Attaches every probe. `libc` is the target's libc path as the target sees
/// it (opened through /proc/PID/root so that containers work).
pub fn attach(ebpf: &mut Ebpf, pid: u32, libc: Option<&Path>) -> Result<(Vec<AttachedProbe>, Links)> {
    let mut probes = Vec::new();
    let mut links = Links::default();
    match libc {
        Some(libc) => attach_libc(ebpf, pid, libc, &mut probes, &mut links)?,
        None => probes.extend(LIBC_PROBES.iter().map(|&(probe, _, _)| AttachedProbe::missing(probe))),
    }
    for &(probe, syscall) in SYSCALL_PROBES {
        for phase in ["enter", "exit"] {
            attach_tracepoint(ebpf, "syscalls", &format!("sys_{phase}_{syscall}"), &mut links)?;
        }
        probes.push(AttachedProbe {
            status: ProbeStatus::Attached,
            ..AttachedProbe::missing(probe)
        });
    }
    attach_tracepoint(ebpf, "sched", "sched_process_exec", &mut links)?;
    Ok((probes, links))
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

fn attach_libc(
    ebpf: &mut Ebpf,
    pid: u32,
    libc: &Path,
    probes: &mut Vec<AttachedProbe>,
    links: &mut Links,
) -> Result<()> {
    let host_path = PathBuf::from(format!("/proc/{pid}/root")).join(libc.strip_prefix("/").unwrap_or(libc));
    let names: Vec<&str> = LIBC_PROBES.iter().map(|(p, _, _)| p.name()).collect();
    let functions = find_functions(&host_path, &names)?;
    let scope = || UProbeScope::OneProcess(NonZeroU32::new(pid).expect("pid is not 0"));

    // Probe each address once: glibc's aligned_alloc is memalign.
    let mut first_at: BTreeMap<u64, usize> = BTreeMap::new();
    for &(probe, program_name, args) in LIBC_PROBES {
        let Some(function) = functions.get(probe.name()) else {
            probes.push(AttachedProbe::missing(probe));
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
        let has_return = probe != Probe::Free;
        let placed = if has_return {
            placement::place_at_entry(&function.code, function.vaddr)
        } else {
            placement::place_entry_only(&function.code, function.vaddr, args)
        }
        .map_err(|e| anyhow!("cannot place a probe on {} in {}: {e}", probe.name(), libc.display()))?;
        if placed.handling == Handling::SingleStepped {
            log::debug!(
                "{}: probe at +{:#x} is single-stepped (slower): {}",
                probe.name(),
                placed.offset,
                placed.reason
            );
        }
        let file_offset = function.file_offset + placed.offset;
        links.uprobes.push(attach_uprobe(
            ebpf,
            program_name,
            &host_path,
            file_offset,
            probe,
            scope(),
        )?);
        if has_return {
            let entry = function.file_offset;
            links
                .uprobes
                .push(attach_uprobe(ebpf, RETURN_PROGRAM, &host_path, entry, probe, scope())?);
        }
        first_at.insert(function.vaddr, probes.len());
        probes.push(AttachedProbe {
            probe,
            status: ProbeStatus::Attached,
            aliases: vec![],
            counted_as: probe,
            file_offset: Some(file_offset),
            placement: Some(placed),
            has_return,
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
