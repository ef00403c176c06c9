//! Copies of the user stack for the events whose rate allows them (page
//! faults, mappings, brk, and allocations whose unwind reached code the
//! kernel side has no unwind rule for yet): user space unwinds them with
//! each module's CFI, through code built without frame pointers, which the
//! kernel-side frame-pointer walk cannot follow.

use aya_ebpf::helpers::bpf_probe_read_user_buf;
use leak_common::{CopiedStackEvent, DropReason, HeapEvent, STACK_COPY_PAGES, STACK_COPY_PAGE_BYTES};

use crate::shared::{count_drop, user_bp, user_sp, wakeup_flags, EVENTS};

/// Writes `heap` (its stack already taken) with a copy of the current
/// thread's user stack.
#[inline(always)]
pub fn emit_with_stack_copy(heap: HeapEvent) {
    if !emit_copy_from(&heap, user_sp(), user_bp(), wakeup_flags()) {
        count_drop(DropReason::RingBufFull);
    }
}

/// Writes `heap` with a copy of the user stack from stack pointer `sp` up
/// (`bp`: the %rbp there), read straight into the ring buffer (far more
/// than the BPF stack holds). False when the ring buffer had no room.
#[inline(always)]
pub fn emit_copy_from(heap: &HeapEvent, sp: u64, bp: u64, submit_flags: u64) -> bool {
    let Some(mut entry) = EVENTS.reserve::<CopiedStackEvent>(0) else {
        return false;
    };
    let record = entry.as_mut_ptr();
    // Whole pages: a read fails as a whole, and only at a page that is not
    // mapped, above the top of the stack.
    let base = sp & !(STACK_COPY_PAGE_BYTES as u64 - 1);
    // SAFETY: `record` points at a reserved, exclusively owned ring buffer
    // record; each page is a plain byte range inside its `bytes`.
    unsafe {
        (*record).heap = *heap;
        (*record).copy.sp = sp;
        (*record).copy.bp = bp;
        (*record).copy.base = base;
        let bytes = (*record).copy.bytes.as_mut_ptr();
        let mut pages_read = 0;
        for page in 0..STACK_COPY_PAGES {
            let into = core::slice::from_raw_parts_mut(bytes.add(page * STACK_COPY_PAGE_BYTES), STACK_COPY_PAGE_BYTES);
            let from = (base + (page * STACK_COPY_PAGE_BYTES) as u64) as *const u8;
            // On failure the kernel zeroes the page.
            if bpf_probe_read_user_buf(from, into).is_err() {
                break;
            }
            pages_read |= 1 << page;
        }
        (*record).copy.pages_read = pages_read;
    }
    entry.submit(submit_flags);
    true
}
