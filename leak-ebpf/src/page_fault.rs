//! Software page-fault perf events (`watch` tier 2): which code paths touch
//! new pages, at a cost proportional to memory growth rather than to the
//! allocation rate. Counts are kept per stack in a map that user space reads
//! on its own schedule; only a stack seen for the first time goes through the
//! ring buffer.

use aya_ebpf::{
    macros::{map, perf_event},
    maps::PerCpuHashMap,
    programs::PerfEventContext,
};
use leak_common::{counter, DropReason, EventOp, Probe};

use crate::shared::{count, count_drop, emit_site_event, event_now, target_tid, user_sp, user_stack};

/// Samples per user stack (content hash, as in `StackRecord`), per CPU so
/// that no atomics are needed; each sample stands for the perf event's sample
/// period in faults. Size set by user space.
#[map]
static FAULT_STACKS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(16 * 1024, 0);

#[perf_event]
pub fn page_fault(ctx: PerfEventContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    count(counter::entry_hits(Probe::PageFault));
    let stack = user_stack(&ctx);
    if stack == 0 {
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
            // frame-pointer walk skips (a first touch inside memset).
            let first = event_now(EventOp::FaultStack, Probe::PageFault, tid);
            emit_site_event(&ctx, first, user_sp());
        }
    }
    0
}
