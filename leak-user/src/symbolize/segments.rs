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
            // The headers are the target's: any sum may overflow.
            .find(|&&(offset, size, _)| file_offset.checked_sub(offset).is_some_and(|into| into < size))
            .and_then(|&(offset, _, vaddr)| vaddr.checked_add(file_offset - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::LoadSegments;

    #[test]
    fn hostile_headers_overflow_nothing() {
        // A segment that ends past u64::MAX, one whose address would wrap.
        let loads = LoadSegments(vec![(u64::MAX - 1, 10, 0x1000), (0, 100, u64::MAX - 2)]);
        assert_eq!(loads.vaddr(u64::MAX), Some(0x1001));
        assert_eq!(loads.vaddr(2), Some(u64::MAX));
        assert_eq!(loads.vaddr(3), None);
        assert_eq!(loads.vaddr(100), None);
    }
}
