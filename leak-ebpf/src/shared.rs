//! Maps and helpers used by every probe family.

use aya_ebpf::{
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_stack, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    EbpfContext,
};
use leak_common::{
    counter, DropReason, EventOp, HeapEvent, Probe, SiteEvent, StackRecord, MAX_STACK_FRAMES, STACK_WINDOW_WORDS,
};

/// The process being traced; written by user space before load.
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;

/// Allocation-state changes, in the order they happened, for user space.
/// Size is set by user space at load (`--ring-buffer-mib`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Content hashes of the stacks already sent to user space. When one is
/// evicted, its stack is simply sent again. Size set by user space (`--max-stacks`).
#[map]
static DELIVERED_STACKS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(64 * 1024, 0);

/// Where a stack is assembled before it is hashed (too big for the BPF stack).
#[map]
static STACK_SCRATCH: PerCpuArray<StackRecord> = PerCpuArray::with_max_entries(1, 0);

/// Probe hit counts and drop counts; layout in `leak_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

const BPF_F_USER_STACK: u64 = 1 << 8;
/// Offset of `sp` in x86-64 `struct pt_regs`.
const PT_REGS_SP: usize = 19 * 8;

/// The user stack pointer of the current thread, as saved when it entered
/// the kernel (a syscall, or a page fault taken in user or kernel mode).
#[inline(always)]
pub fn user_sp() -> u64 {
    // SAFETY: the helpers return the current task and its saved user registers.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        bpf_probe_read_kernel(regs.add(PT_REGS_SP) as *const u64).unwrap_or(0)
    }
}

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

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

/// The user stack of the current thread, as a content hash (0 when none
/// could be taken, counted as a drop). A stack not delivered yet is written
/// to the ring buffer first, so user space knows it before any event that
/// names it. Content hashes do not collide the way the kernel's stack map
/// buckets do, and nothing is lost when the delivered set forgets a stack.
#[inline(always)]
pub fn user_stack<C: EbpfContext>(ctx: &C) -> u64 {
    let Some(record) = STACK_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU scratch slot is ours until this program returns.
    let record = unsafe { &mut *record };
    // SAFETY: the helper writes at most the given size into the buffer.
    let len = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            record.frames.as_mut_ptr().cast(),
            (MAX_STACK_FRAMES * 8) as u32,
            BPF_F_USER_STACK,
        )
    };
    if len <= 0 {
        count_drop(DropReason::StackLost);
        return 0;
    }
    let frames = (len as usize / 8).min(MAX_STACK_FRAMES);
    let mut hash = FNV_OFFSET ^ frames as u64;
    for frame in record.frames.iter().take(frames) {
        hash = (hash ^ frame).wrapping_mul(FNV_PRIME);
    }
    let hash = hash.max(1);
    // SAFETY: map values are plain data.
    if unsafe { DELIVERED_STACKS.get(hash) }.is_some() {
        return hash;
    }
    record.op = EventOp::Stack as u8;
    record.frames_len = frames as u32;
    record.hash = hash;
    if EVENTS.output::<StackRecord>(&*record, wakeup_flags()).is_err() {
        count_drop(DropReason::StackLost);
        return 0;
    }
    let _ = DELIVERED_STACKS.insert(hash, 1, 0);
    hash
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
pub fn emit_site_event<C: EbpfContext>(ctx: &C, heap: HeapEvent, sp: u64) {
    // Before the event's own record: user space must know the stack first.
    let stack = user_stack(ctx);
    let Some(mut entry) = EVENTS.reserve::<SiteEvent>(0) else {
        count_drop(DropReason::RingBufFull);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned ring buffer record.
    unsafe {
        (*record).heap = HeapEvent { stack, ..heap };
        (*record).sp = sp;
        (*record).stack_window =
            bpf_probe_read_user(sp as *const [u64; STACK_WINDOW_WORDS]).unwrap_or([0; STACK_WINDOW_WORDS]);
    }
    entry.submit(wakeup_flags());
}

/// An event of the current moment without a stack; callers fill in the rest.
#[inline(always)]
pub fn event_now(op: EventOp, probe: Probe, tid: u32) -> HeapEvent {
    let now = now_ns();
    HeapEvent {
        op: op as u8,
        probe: probe as u8,
        tid,
        ts_ns: now,
        entry_ns: now,
        ..HeapEvent::default()
    }
}

/// Writes `event` to the ring buffer, counting a drop when it is full.
#[inline(always)]
pub fn emit(event: &HeapEvent) {
    if EVENTS.output::<HeapEvent>(event, wakeup_flags()).is_err() {
        count_drop(DropReason::RingBufFull);
    }
}
