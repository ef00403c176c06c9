//! uprobes on the libc allocation family.
//!
//! Each allocator gets an entry probe that remembers its arguments and a return
//! probe that records the result. The stack is taken at the return probe: there
//! the caller is frame 0 of the frame-pointer walk, whereas at entry the walk
//! skips it (libc's allocators do not set up a frame pointer).
//!
//! Only the outermost allocator call of a thread is recorded: libc calls its
//! own public entry points internally (realloc(NULL, n) calls malloc,
//! reallocarray tail-calls realloc), and those must not count twice.

use aya_ebpf::{
    helpers::{bpf_get_attach_cookie, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use leak_common::{counter, DropReason, EventOp, HeapEvent, Probe};

use crate::shared::{count, count_drop, emit, emit_site_event, now_ns, target_tid};

/// Arguments of an allocator call between its entry and return probes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    probe: u8,
    size: u64,
    old_addr: u64,
    /// posix_memalign's `void **memptr`.
    out_ptr: u64,
    /// Stack pointer at function entry (points at the return address).
    entry_sp: u64,
    entry_ns: u64,
}

/// The outermost allocator call in progress, per thread.
#[map]
pub static PENDING_CALLS: HashMap<u32, PendingCall> = HashMap::with_max_entries(64 * 1024, 0);

/// A pending call older than this is taken to have lost its return probe
/// (the thread longjmp'd out or died) and no longer hides new calls.
const STALE_PENDING_NS: u64 = 5_000_000_000;

#[inline(always)]
fn probe_of<C: EbpfContext>(ctx: &C) -> Probe {
    // SAFETY: helper without preconditions; the cookie is set at attach.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    Probe::from_u8(cookie as u8).unwrap_or(Probe::Malloc)
}

/// Whether the current thread is inside another probed allocator call.
/// A call made from inside another one sits deeper in the stack (lower or,
/// for a tail call, equal stack pointer).
#[inline(always)]
pub fn inside_allocator(tid: u32, sp: u64, now: u64) -> bool {
    // SAFETY: map values are plain data.
    match unsafe { PENDING_CALLS.get(tid) } {
        Some(outer) => sp <= outer.entry_sp && now.wrapping_sub(outer.entry_ns) < STALE_PENDING_NS,
        None => false,
    }
}

#[inline(always)]
fn enter(ctx: &ProbeContext, size: u64, old_addr: u64, out_ptr: u64) {
    let Some(tid) = target_tid() else { return };
    let probe = probe_of(ctx);
    count(counter::entry_hits(probe));
    // SAFETY: uprobe contexts carry the user registers.
    let entry_sp = unsafe { (*ctx.regs).rsp };
    let entry_ns = now_ns();
    if inside_allocator(tid, entry_sp, entry_ns) {
        return;
    }
    let call = PendingCall {
        probe: probe as u8,
        size,
        old_addr,
        out_ptr,
        entry_sp,
        entry_ns,
    };
    if PENDING_CALLS.insert(tid, call, 0).is_err() {
        count_drop(DropReason::PendingFull);
    }
}

/// malloc(size), valloc(size), pvalloc(size).
#[uprobe]
pub fn size_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, ctx.arg::<u64>(0).unwrap_or(0), 0, 0);
    0
}

/// calloc(nmemb, size). An overflowing product makes calloc fail, so any
/// value will do there.
#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let nmemb = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    enter(&ctx, nmemb.wrapping_mul(size), 0, 0);
    0
}

/// realloc(ptr, size).
#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    let old = ctx.arg::<u64>(0).unwrap_or(0);
    enter(&ctx, ctx.arg::<u64>(1).unwrap_or(0), old, 0);
    0
}

/// reallocarray(ptr, nmemb, size).
#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let old = ctx.arg::<u64>(0).unwrap_or(0);
    let nmemb = ctx.arg::<u64>(1).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    enter(&ctx, nmemb.wrapping_mul(size), old, 0);
    0
}

/// posix_memalign(memptr, alignment, size).
#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    let out_ptr = ctx.arg::<u64>(0).unwrap_or(0);
    enter(&ctx, ctx.arg::<u64>(2).unwrap_or(0), 0, out_ptr);
    0
}

/// memalign(alignment, size), aligned_alloc(alignment, size).
#[uprobe]
pub fn align_size_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, ctx.arg::<u64>(1).unwrap_or(0), 0, 0);
    0
}

/// Shared return probe of every allocator above.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    count(counter::return_hits(probe_of(&ctx)));
    // SAFETY: map values are plain data.
    let Some(call) = (unsafe { PENDING_CALLS.get(tid) }).copied() else {
        return 0;
    };
    // SAFETY: return probe contexts carry the user registers.
    let sp = unsafe { (*ctx.regs).rsp };
    // `ret` popped the return address: the outer call returns at entry_sp + 8.
    // Nested calls return deeper and were not recorded.
    if call.entry_sp.wrapping_add(8) != sp {
        return 0;
    }
    let _ = PENDING_CALLS.remove(tid);

    let ret: u64 = ctx.ret();
    let addr = if call.probe == Probe::PosixMemalign as u8 {
        if ret != 0 {
            return 0; // an error number; *memptr is untouched
        }
        // SAFETY: reads user memory through the checked helper.
        unsafe { bpf_probe_read_user(call.out_ptr as *const u64) }.unwrap_or(0)
    } else {
        ret
    };
    let resizes = call.probe == Probe::Realloc as u8 || call.probe == Probe::Reallocarray as u8;
    let mut event = HeapEvent {
        op: EventOp::Alloc as u8,
        probe: call.probe,
        tid,
        ts_ns: now_ns(),
        entry_ns: call.entry_ns,
        addr,
        size: call.size,
        old_addr: call.old_addr,
        stack_id: -1,
        ..HeapEvent::default()
    };
    if addr == 0 {
        // Failed calls keep the old block, except glibc's realloc(p, 0), which
        // frees p and returns NULL.
        if !(resizes && call.size == 0 && call.old_addr != 0) {
            return 0;
        }
        event.op = EventOp::Free as u8;
        event.addr = call.old_addr;
        event.old_addr = 0;
    } else {
        if resizes {
            event.op = EventOp::Realloc as u8;
        }
        // The stack is complete from the caller on, unless the caller keeps
        // no frame pointer (operator new): user space recovers those frames
        // from the stack window.
        emit_site_event(&ctx, event, sp);
        return 0;
    }
    emit(&event);
    0
}

/// free(ptr). Unpaired, so it can sit past the entry instruction (see
/// `leak-user`'s placement): only `%rdi` must still hold the pointer.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    count(counter::entry_hits(Probe::Free));
    let addr = ctx.arg::<u64>(0).unwrap_or(0);
    if addr == 0 {
        return 0;
    }
    let now = now_ns();
    emit(&HeapEvent {
        op: EventOp::Free as u8,
        probe: Probe::Free as u8,
        tid,
        ts_ns: now,
        entry_ns: now,
        addr,
        stack_id: -1,
        ..HeapEvent::default()
    });
    0
}
