//! A module's PT_LOAD segments: how file offsets (what a mapping gives) map
//! to ELF virtual addresses (what unwind tables and debug files use).

use object::ObjectSegment as _;

/// (file offset, file size, virtual address) of each PT_LOAD segment.
#[derive(Debug, Default)]
pub(super) struct LoadSegments(Vec<(u64, u64, u64)>);

impl LoadSegments {
    pub(super) fn of<'data>(elf: &impl object::Object<'data>) -> Self {
        Self(
            elf.segments()
                .map(|seg| {
                    let (offset, size) = seg.file_range();
                    (offset, size, seg.address())
                })
                .collect(),
        )
    }

    /// The ELF virtual address of a file offset of the module.
    pub(super) fn vaddr(&self, file_offset: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|&&(offset, size, _)| (offset..offset + size).contains(&file_offset))
            .map(|&(offset, _, vaddr)| file_offset - offset + vaddr)
    }
}
