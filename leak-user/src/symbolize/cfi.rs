//! A module's unwind tables (CFI: `.eh_frame`, `.debug_frame`): how to find
//! a frame's caller from the frame's registers, at any address of its code.

use super::segments::LoadSegments;
use std::fs::File;

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EhFrameHdr, EndianSlice, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, UnwindTableRow, X86_64,
};
use object::{Object, ObjectSection, ReadCache};

/// The parts of an ELF file needed to find the unwind rule at an address.
pub(super) struct Cfi {
    loads: LoadSegments,
    /// `.eh_frame` and its address.
    eh_frame: Option<(Vec<u8>, u64)>,
    /// `.eh_frame_hdr` and its address: a binary search table over the FDEs.
    eh_frame_hdr: Option<(Vec<u8>, u64)>,
    /// `.debug_frame`, for code `.eh_frame` does not cover.
    debug_frame: Option<Vec<u8>>,
}

/// What the CFI says of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CfiRow {
    Rule(FrameRule),
    /// No entry covers the address (code without CFI: frame pointers may).
    Uncovered,
    /// A rule that this unwinder does not evaluate (DWARF expressions).
    Unsupported,
}

/// Which register a frame's CFA (the caller's stack pointer) is relative to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CfaBase {
    Sp,
    Bp,
}

/// How to find the caller's registers from a frame's, at one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FrameRule {
    pub(super) cfa_base: CfaBase,
    pub(super) cfa_offset: i64,
    /// Where the return address is, from the CFA; None: the outermost frame
    /// (`_start`, a thread's start: the return address is undefined).
    pub(super) return_address: Option<i64>,
    /// Where the caller's %rbp was saved, from the CFA; None: unchanged.
    pub(super) saved_bp: Option<i64>,
}

impl Cfi {
    pub(super) fn load(file: &File) -> Option<Self> {
        // Read on demand: only headers and a few sections of what may be a
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
        let eh_frame = section(".eh_frame");
        let debug_frame = section(".debug_frame").map(|(data, _)| data);
        if eh_frame.is_none() && debug_frame.is_none() {
            return None;
        }
        Some(Self {
            loads: LoadSegments::of(&elf),
            eh_frame,
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame,
        })
    }

    pub(super) fn vaddr(&self, file_offset: u64) -> Option<u64> {
        self.loads.vaddr(file_offset)
    }

    /// The rule at ELF virtual address `vaddr`: from `.eh_frame`, else `.debug_frame`.
    pub(super) fn row(&self, vaddr: u64) -> CfiRow {
        let mut ctx = UnwindContext::new();
        let row = match self.eh_frame_row(&mut ctx, vaddr) {
            Err(gimli::Error::NoUnwindInfoForAddress) => self.debug_frame_row(&mut ctx, vaddr),
            found => found,
        };
        match row {
            Ok(row) => frame_rule(row),
            Err(gimli::Error::NoUnwindInfoForAddress) => CfiRow::Uncovered,
            Err(err) => {
                log::debug!("unwind tables at {vaddr:#x}: {err}");
                CfiRow::Unsupported
            }
        }
    }

    fn eh_frame_row<'ctx>(
        &self,
        ctx: &'ctx mut UnwindContext<usize>,
        vaddr: u64,
    ) -> gimli::Result<&'ctx UnwindTableRow<usize>> {
        let Some((data, address)) = &self.eh_frame else {
            return Err(gimli::Error::NoUnwindInfoForAddress);
        };
        let eh_frame = EhFrame::new(data, LittleEndian);
        let bases = BaseAddresses::default().set_eh_frame(*address);
        if let Some((hdr, hdr_address)) = &self.eh_frame_hdr {
            let bases = bases.clone().set_eh_frame_hdr(*hdr_address);
            if let Some(table) = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8)?.table() {
                return table.unwind_info_for_address(&eh_frame, &bases, ctx, vaddr, EhFrame::cie_from_offset);
            }
        }
        eh_frame.unwind_info_for_address(&bases, ctx, vaddr, EhFrame::cie_from_offset)
    }

    fn debug_frame_row<'ctx>(
        &self,
        ctx: &'ctx mut UnwindContext<usize>,
        vaddr: u64,
    ) -> gimli::Result<&'ctx UnwindTableRow<usize>> {
        let Some(data) = &self.debug_frame else {
            return Err(gimli::Error::NoUnwindInfoForAddress);
        };
        let debug_frame: DebugFrame<EndianSlice<'_, LittleEndian>> = DebugFrame::new(data, LittleEndian);
        debug_frame.unwind_info_for_address(&BaseAddresses::default(), ctx, vaddr, DebugFrame::cie_from_offset)
    }
}

/// The rule of a row, when it is of the forms compilers emit for ordinary
/// functions: the CFA at %rsp or %rbp plus an offset, the return address
/// and %rbp saved at offsets from it.
fn frame_rule(row: &UnwindTableRow<usize>) -> CfiRow {
    let CfaRule::RegisterAndOffset { register, offset } = row.cfa() else {
        return CfiRow::Unsupported;
    };
    let cfa_base = match *register {
        X86_64::RSP => CfaBase::Sp,
        X86_64::RBP => CfaBase::Bp,
        _ => return CfiRow::Unsupported,
    };
    let return_address = match row.register(X86_64::RA) {
        RegisterRule::Offset(at) => Some(at),
        RegisterRule::Undefined => None,
        _ => return CfiRow::Unsupported,
    };
    let saved_bp = match row.register(X86_64::RBP) {
        RegisterRule::Offset(at) => Some(at),
        RegisterRule::Undefined | RegisterRule::SameValue => None,
        _ => return CfiRow::Unsupported,
    };
    CfiRow::Rule(FrameRule {
        cfa_base,
        cfa_offset: *offset,
        return_address,
        saved_bp,
    })
}
