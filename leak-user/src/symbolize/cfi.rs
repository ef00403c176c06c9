//! Recovering the caller that a frame-pointer walk skips, from `.eh_frame`.

use super::segments::LoadSegments;
use std::{collections::HashMap, fs::File};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EndianSlice, LittleEndian, RegisterRule, UnwindContext, UnwindSection,
    UnwindTableRow, X86_64,
};
use object::{Object, ObjectSection, ReadCache};

use super::maps::ProcessModules;

/// The parts of an ELF file needed to find the CFA rule at an address.
pub(super) struct Cfi {
    loads: LoadSegments,
    eh_frame: Vec<u8>,
    eh_frame_addr: u64,
    /// `.eh_frame_hdr` and its address: a binary search table over the FDEs.
    eh_frame_hdr: Option<(Vec<u8>, u64)>,
}

impl Cfi {
    pub(super) fn load(file: &File) -> Option<Self> {
        // Read on demand: only headers and two sections of what may be a
        // 100 MB binary are needed.
        let cache = ReadCache::new(file);
        let elf = object::File::parse(&cache)
            .map_err(|err| log::debug!("cannot parse ELF for unwind tables: {err}"))
            .ok()?;
        // The register numbers below are x86_64's.
        if elf.architecture() != object::Architecture::X86_64 {
            return None;
        }
        let section = |name: &str| {
            let section = elf.section_by_name(name)?;
            Some((section.data().ok()?.to_vec(), section.address()))
        };
        let (eh_frame, eh_frame_addr) = section(".eh_frame")?;
        Some(Self {
            loads: LoadSegments::of(&elf),
            eh_frame,
            eh_frame_addr,
            eh_frame_hdr: section(".eh_frame_hdr"),
        })
    }

    pub(super) fn vaddr(&self, file_offset: u64) -> Option<u64> {
        self.loads.vaddr(file_offset)
    }

    /// The frame at `vaddr` when its CFA is rsp-based; None when it is
    /// rbp-based (the function keeps a frame pointer) or unknown.
    pub(super) fn frameless_rule(&self, vaddr: u64) -> Option<FramelessRule> {
        let eh_frame = EhFrame::new(&self.eh_frame, LittleEndian);
        let mut bases = BaseAddresses::default().set_eh_frame(self.eh_frame_addr);
        let mut ctx = UnwindContext::new();
        let row: &UnwindTableRow<usize> = match &self.eh_frame_hdr {
            Some((hdr, hdr_addr)) => {
                bases = bases.set_eh_frame_hdr(*hdr_addr);
                let parsed = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8).ok()?;
                match parsed.table() {
                    Some(table) => {
                        table.unwind_info_for_address(&eh_frame, &bases, &mut ctx, vaddr, EhFrame::cie_from_offset)
                    }
                    None => linear(&eh_frame, &bases, &mut ctx, vaddr),
                }
            }
            None => linear(&eh_frame, &bases, &mut ctx, vaddr),
        }
        .ok()?;
        let CfaRule::RegisterAndOffset { register, offset } = row.cfa() else {
            return None;
        };
        if *register != X86_64::RSP {
            return None;
        }
        match row.register(X86_64::RA) {
            RegisterRule::Offset(ra) => Some(FramelessRule {
                cfa: *offset,
                return_address: offset.checked_add(ra)?,
            }),
            _ => None,
        }
    }
}

/// Scans every FDE: for files without a `.eh_frame_hdr` search table.
fn linear<'ctx>(
    eh_frame: &EhFrame<EndianSlice<'_, LittleEndian>>,
    bases: &BaseAddresses,
    ctx: &'ctx mut UnwindContext<usize>,
    vaddr: u64,
) -> gimli::Result<&'ctx UnwindTableRow<usize>> {
    eh_frame.unwind_info_for_address(bases, ctx, vaddr, EhFrame::cie_from_offset)
}

/// Offsets from the stack pointer inside a function without a frame pointer.
#[derive(Clone, Copy, Debug)]
pub(super) struct FramelessRule {
    /// The caller's stack pointer after the return (the CFA).
    cfa: i64,
    /// Where the return address is.
    return_address: i64,
}

/// Frames that a frame-pointer walk skips, at most this many.
pub const MAX_SKIPPED: usize = 3;

/// Recovers the callers that a frame-pointer walk skips when the innermost
/// frames keep no frame pointer: libc's syscall wrappers (mmap, munmap,
/// mremap), or libstdc++'s `operator new` calling malloc. The walk follows
/// `%rbp`, which still holds the frame of the first caller that set one up, so
/// the frameless functions' return addresses are missing. They are read from a
/// copy of the stack taken with the event, using the `.eh_frame` rules.
#[derive(Default)]
pub struct FramelessUnwinder {
    /// Rule per looked-up address (None: has a frame pointer, or unknown).
    rules: HashMap<u64, Option<FramelessRule>>,
}

impl FramelessUnwinder {
    /// `frame0` is the innermost frame of the walk: an exact instruction
    /// pointer, or a return address when `frame0_returns` (stacks taken at a
    /// return probe). `sp` is the user stack pointer at that moment and
    /// `window` the words at `sp` onwards. Returns the skipped return
    /// addresses, innermost first, zero-padded.
    pub fn skipped_callers(
        &mut self,
        modules: &ProcessModules,
        frame0: u64,
        frame0_returns: bool,
        sp: u64,
        window: &[u64],
    ) -> [u64; MAX_SKIPPED] {
        let mut skipped = [0; MAX_SKIPPED];
        // A return address is looked up at the call instruction before it.
        let mut pc = if frame0_returns { frame0.wrapping_sub(1) } else { frame0 };
        let mut frame_sp = sp;
        for slot in skipped.iter_mut() {
            let Some(rule) = self.rule(modules, pc) else { break };
            let Some(return_address) = word_at(window, sp, frame_sp.wrapping_add_signed(rule.return_address)) else {
                break;
            };
            *slot = return_address;
            frame_sp = frame_sp.wrapping_add_signed(rule.cfa);
            pc = return_address.wrapping_sub(1);
        }
        skipped
    }

    fn rule(&mut self, modules: &ProcessModules, pc: u64) -> Option<FramelessRule> {
        // Not cached while the module is unknown: it may be mapped later.
        let mapping = modules.find(pc)?;
        *self.rules.entry(pc).or_insert_with(|| {
            let module = mapping.file.as_ref()?;
            let cfi = module.cfi.get_or_init(|| Cfi::load(&module.file)).as_ref()?;
            cfi.frameless_rule(cfi.vaddr(mapping.file_offset(pc))?)
        })
    }
}

/// The window word at address `addr`; `window[0]` is at `sp`.
fn word_at(window: &[u64], sp: u64, addr: u64) -> Option<u64> {
    let delta = addr.checked_sub(sp)?;
    if delta % 8 != 0 {
        return None;
    }
    window.get(usize::try_from(delta / 8).ok()?).copied()
}
