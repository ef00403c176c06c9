//! Software page-fault perf events (`watch` tier 2): which code paths touch
//! new pages, at a cost proportional to memory growth rather than to the
//! allocation rate. Counts are kept per stack in a map that user space reads
//! on its own schedule; only a stack seen for the first time goes through the
//! ring buffer.

use aya_ebpf::{
    macros::{map, perf_event},
    maps::{HashMap, PerCpuHashMap},
    programs::PerfEventContext,
};
use leak_common::{counter, DropReason, EventOp, HeapEvent, Probe};

use crate::{
    shared::{count, count_drop, event_now, target_tid, user_ip, user_stack, UserRegs},
    stack_copy::emit_with_stack_copy,
};

/// Samples per user stack (content hash, as in `StackRecord`), per CPU so
/// that no atomics are needed; each sample stands for the perf event's sample
/// period in faults. Size set by user space.
#[map]
static FAULT_STACKS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(16 * 1024, 0);

/// Stacks whose faults are each sent with a copy of the user stack instead
/// of being counted (set by user space in growth mode): their walk goes
/// through code without frame pointers (malloc, -O2 code), so only the
/// unwound copy tells which callers touched the page.
#[map]
static FAULT_WINDOWED: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

#[perf_event]
pub fn page_fault(ctx: PerfEventContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    count(counter::entry_hits(Probe::PageFault));
    if is_instruction_fetch(&ctx) {
        return 0;
    }
    let stack = user_stack(&UserRegs::current());
    if stack == 0 {
        return 0;
    }
    // SAFETY: a read of a value user space writes only once.
    if unsafe { FAULT_WINDOWED.get(&stack) }.is_some() {
        emit_fault(tid, stack);
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
            // Once per stack: the copy that recovers the callers a
            // frame-pointer walk skips (a first touch inside malloc or memset).
            emit_fault(tid, stack);
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

/// A fault at `stack`, with a copy of the user stack.
#[inline(always)]
fn emit_fault(tid: u32, stack: u64) {
    emit_with_stack_copy(HeapEvent {
        stack,
        ..event_now(EventOp::FaultStack, Probe::PageFault, tid)
    });
}
