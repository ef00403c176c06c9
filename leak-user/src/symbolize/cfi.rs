//! Recovering the caller that a frame-pointer walk skips, from `.eh_frame`.

use std::fs::File;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EndianSlice, LittleEndian, RegisterRule, UnwindContext, UnwindSection,
    UnwindTableRow, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment, ReadCache};

use super::maps::ProcessModules;

/// The parts of an ELF file needed to find the CFA rule at an address.
pub(super) struct Cfi {
    /// (file offset, file size, virtual address) of each PT_LOAD segment.
    loads: Vec<(u64, u64, u64)>,
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
            loads: elf
                .segments()
                .map(|seg| {
                    let (offset, size) = seg.file_range();
                    (offset, size, seg.address())
                })
                .collect(),
            eh_frame,
            eh_frame_addr,
            eh_frame_hdr: section(".eh_frame_hdr"),
        })
    }

    fn vaddr(&self, file_offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|&&(offset, size, _)| (offset..offset + size).contains(&file_offset))
            .map(|&(offset, _, vaddr)| file_offset - offset + vaddr)
    }

    /// Where the return address is relative to the stack pointer at `vaddr`,
    /// when the CFA there is rsp-based; None when it is rbp-based or unknown.
    fn return_address_sp_offset(&self, vaddr: u64) -> Option<i64> {
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
            RegisterRule::Offset(ra) => offset.checked_add(ra),
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

/// Recover the return address a frame-pointer walk skips when frame 0 is inside
/// a function that keeps no frame pointer (libc's syscall wrappers: mmap,
/// munmap, mremap, syscall). `ip` is the exact instruction pointer of frame 0,
/// `sp` the user stack pointer at that moment and `window` the words read from
/// the stack at `sp` onwards.
///
/// Returns the word holding the return address when the CFA at `ip` is
/// rsp-based and that word is inside the window. None when the function set up
/// a frame pointer (the walk is already complete), when the word lies beyond
/// the window, or when the module or its unwind entry is unknown.
pub fn skipped_caller(modules: &ProcessModules, ip: u64, sp: u64, window: &[u64]) -> Option<u64> {
    let mapping = modules.find(ip)?;
    let module = mapping.file.as_ref()?;
    let cfi = module.cfi.get_or_init(|| Cfi::load(&module.file)).as_ref()?;
    let ra_offset = cfi.return_address_sp_offset(cfi.vaddr(mapping.file_offset(ip))?)?;
    let slot = sp.checked_add_signed(ra_offset)?;
    // window[0] is the word at sp.
    let delta = slot.checked_sub(sp)?;
    if delta % 8 != 0 {
        return None;
    }
    window.get(usize::try_from(delta / 8).ok()?).copied()
}
