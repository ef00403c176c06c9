//! Maps and helpers used by every probe family.

use aya_ebpf::{
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::map,
    maps::{PerCpuArray, RingBuf, StackTrace},
    programs::tracing::StackIdContext,
    EbpfContext,
};
use leak_common::{counter, DropReason, HeapEvent, Probe, SiteEvent, STACK_WINDOW_WORDS};

/// The process being traced; written by user space before load.
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;

/// Allocation-state changes, in the order they happened, for user space.
/// Size is set by user space at load (`--ring-buffer-mib`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// User call stacks of allocation sites.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(32 * 1024, 0);

/// Probe hit counts and drop counts; layout in `leak_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

const BPF_F_USER_STACK: u64 = 1 << 8;

/// Which probed function fired: the cookie set at attach, so one program can
/// serve several functions with the same signature.
#[inline(always)]
pub fn attached_probe<C: EbpfContext>(ctx: &C) -> Probe {
    // SAFETY: helper without preconditions.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    Probe::from_u8(cookie as u8).unwrap_or(Probe::Malloc)
}

/// The current thread id, or `None` when the current process is not the target.
#[inline(always)]
pub fn target_tid() -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a read of a constant the loader patched; volatile so the compiler
    // cannot fold the initial value.
    let target = unsafe { core::ptr::read_volatile(&TARGET_TGID) };
    if (pid_tgid >> 32) as u32 == target {
        Some(pid_tgid as u32)
    } else {
        None
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    count(counter::drops(reason));
}

/// The user stack of the current thread, or -1 (counted as a drop).
#[inline(always)]
pub fn user_stack_id<C: StackIdContext>(ctx: &C) -> i64 {
    match ctx.get_stackid(&STACKS, BPF_F_USER_STACK) {
        Ok(id) => id,
        Err(_) => {
            count_drop(DropReason::StackLost);
            -1
        }
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// Ring buffer submit flags. Waking the reader for every record doubled the
/// cost of a traced malloc+free pair; the reader drains on a short timer and
/// is only woken when the buffer is half full.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > EVENTS.query(BPF_RB_RING_SIZE) / 2 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Writes an event that creates memory, with its stack and the stack window
/// above the user stack pointer `sp` (see `STACK_WINDOW_WORDS`).
#[inline(always)]
pub fn emit_site_event<C: StackIdContext>(ctx: &C, heap: HeapEvent, sp: u64) {
    let Some(mut entry) = EVENTS.reserve::<SiteEvent>(0) else {
        count_drop(DropReason::RingBufFull);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned ring buffer record.
    unsafe {
        (*record).heap = HeapEvent {
            stack_id: user_stack_id(ctx),
            ..heap
        };
        (*record).sp = sp;
        (*record).stack_window =
            bpf_probe_read_user(sp as *const [u64; STACK_WINDOW_WORDS]).unwrap_or([0; STACK_WINDOW_WORDS]);
    }
    entry.submit(wakeup_flags());
}

/// Writes `event` to the ring buffer, counting a drop when it is full.
#[inline(always)]
pub fn emit(event: &HeapEvent) {
    if EVENTS.output::<HeapEvent>(event, wakeup_flags()).is_err() {
        count_drop(DropReason::RingBufFull);
    }
}
