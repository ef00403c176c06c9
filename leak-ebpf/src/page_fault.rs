//! Software page-fault perf events (`watch` tier 2): which code paths touch
//! new pages, at a cost proportional to memory growth rather than to the
//! allocation rate. Counts are kept per stack in a map that user space reads
//! on its own schedule; only a stack seen for the first time goes through the
//! ring buffer.

use aya_ebpf::{
    helpers::bpf_probe_read_user_buf,
    macros::{map, perf_event},
    maps::{HashMap, PerCpuHashMap},
    programs::PerfEventContext,
};
use leak_common::{counter, DropReason, EventOp, FaultSiteEvent, HeapEvent, Probe, FAULT_STACK_WINDOW_WORDS};

use crate::shared::{count, count_drop, event_now, target_tid, user_ip, user_sp, user_stack, wakeup_flags, EVENTS};

/// Samples per user stack (content hash, as in `StackRecord`), per CPU so
/// that no atomics are needed; each sample stands for the perf event's sample
/// period in faults. Size set by user space.
#[map]
static FAULT_STACKS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(16 * 1024, 0);

/// Stacks whose faults are each sent with their stack window instead of
/// being counted (set by user space in growth mode): their walk stops in
/// code without frame pointers (inside malloc), so only the window tells
/// which caller touched the page.
#[map]
static FAULT_WINDOWED: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

#[perf_event]
pub fn page_fault(ctx: PerfEventContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    count(counter::entry_hits(Probe::PageFault));
    if is_instruction_fetch(&ctx) {
        return 0;
    }
    let stack = user_stack(&ctx);
    if stack == 0 {
        return 0;
    }
    // SAFETY: a read of a value user space writes only once.
    if unsafe { FAULT_WINDOWED.get(&stack) }.is_some() {
        emit_fault_stack(event_now(EventOp::FaultStack, Probe::PageFault, tid), stack, user_sp());
        return 0;
    }
    match FAULT_STACKS.get_ptr_mut(&stack) {
        // SAFETY: this CPU's slot; the program is not preempted.
        Some(samples) => unsafe { *samples += 1 },
        None => {
            if FAULT_STACKS.insert(&stack, &1, 0).is_err() {
                count_drop(DropReason::FaultStacksFull);
                return 0;
            }
            // Once per stack: the window that recovers the callers a
            // frame-pointer walk skips (a first touch inside malloc or memset).
            let first = event_now(EventOp::FaultStack, Probe::PageFault, tid);
            emit_fault_stack(first, stack, user_sp());
        }
    }
    0
}

/// Whether the fault fetched the instruction at the user instruction pointer
/// (the faulting address is within the longest x86 instruction from it): a
/// page of code mapped from its file, not memory the target grows, and the
/// stack walk is the bulk of the program's cost.
#[inline(always)]
fn is_instruction_fetch(ctx: &PerfEventContext) -> bool {
    const MAX_INSTRUCTION_BYTES: u64 = 15;
    // SAFETY: the context the kernel passed; `addr` is the faulting address.
    let addr = unsafe { (*ctx.ctx).addr };
    addr.wrapping_sub(user_ip()) < MAX_INSTRUCTION_BYTES
}

/// Writes the first fault of a stack with `FAULT_STACK_WINDOW_WORDS` of the
/// user stack at `sp`, read straight into the ring buffer (more than the
/// BPF stack holds).
#[inline(always)]
fn emit_fault_stack(heap: HeapEvent, stack: u64, sp: u64) {
    let Some(mut entry) = EVENTS.reserve::<FaultSiteEvent>(0) else {
        count_drop(DropReason::RingBufFull);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned ring buffer
    // record; the window is plain words, viewed as bytes for the copy.
    unsafe {
        (*record).heap = HeapEvent { stack, ..heap };
        (*record).sp = sp;
        let window = core::slice::from_raw_parts_mut(
            (*record).stack_window.as_mut_ptr().cast::<u8>(),
            FAULT_STACK_WINDOW_WORDS * 8,
        );
        // On failure the kernel zeroes the window: no callers are recovered.
        let _ = bpf_probe_read_user_buf(sp as *const u8, window);
    }
    entry.submit(wakeup_flags());
}
