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
    helpers::bpf_probe_read_user,
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use leak_common::{counter, DropReason, EventOp, HeapEvent, Probe};

use crate::{
    sampling,
    shared::{attached_probe, count, count_drop, emit, emit_site_event, event_now, now_ns, target_tid, UserRegs},
};

/// Arguments of an allocator call between its entry and return probes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    probe: u8,
    size: u64,
    old_addr: u64,
    /// posix_memalign's `void **memptr`; V8 pages: the space id.
    aux: u64,
    /// Stack pointer at function entry (points at the return address); 0
    /// once the call returned.
    entry_sp: u64,
    entry_ns: u64,
    /// Chosen by the sampler (always, when every call is traced).
    sampled: bool,
}

/// The outermost allocator call in progress, per thread. A thread's record
/// stays when its call returns (marked done) and its next call rewrites it in
/// place: an insert and a delete per call cost ~0.2 µs a malloc+free pair
/// (BENCHMARKS §6b). LRU: the records of threads that are gone make room.
#[map]
pub static PENDING_CALLS: LruHashMap<u32, PendingCall> = LruHashMap::with_max_entries(64 * 1024, 0);

/// A pending call older than this is taken to have lost its return probe
/// (the thread longjmp'd out or died) and no longer hides new calls.
const STALE_PENDING_NS: u64 = 5_000_000_000;

/// Whether the current thread is inside another probed allocator call.
/// A call made from inside another one sits deeper in the stack (lower or,
/// for a tail call, equal stack pointer).
#[inline(always)]
pub fn inside_allocator(tid: u32, sp: u64, now: u64) -> bool {
    // SAFETY: map values are plain data.
    unsafe { PENDING_CALLS.get(tid) }.is_some_and(|outer| outer.holds(sp, now))
}

impl PendingCall {
    /// Whether this call is still in progress around a call or syscall at
    /// stack pointer `sp` (never once it returned: its `entry_sp` is 0).
    #[inline(always)]
    fn holds(&self, sp: u64, now: u64) -> bool {
        sp <= self.entry_sp && now.wrapping_sub(self.entry_ns) < STALE_PENDING_NS
    }
}

#[inline(always)]
pub fn enter(ctx: &ProbeContext, size: u64, old_addr: u64, aux: u64) {
    let Some(tid) = target_tid() else { return };
    let probe = attached_probe(ctx);
    count(counter::entry_hits(probe));
    // SAFETY: uprobe contexts carry the user registers.
    let entry_sp = unsafe { (*ctx.regs).rsp };
    let entry_ns = now_ns();
    let record = PENDING_CALLS.get_ptr_mut(tid);
    // SAFETY: the thread's own record: only this thread's probes touch it.
    if record.is_some_and(|outer| unsafe { &*outer }.holds(entry_sp, entry_ns)) {
        return;
    }
    let call = PendingCall {
        probe: probe as u8,
        size,
        old_addr,
        aux,
        entry_sp,
        entry_ns,
        // Unsampled calls are still remembered: the return probe must know
        // that nested calls happened inside them.
        sampled: is_v8_page(probe) || sampling::take(tid, size),
    };
    match record {
        // SAFETY: as above.
        Some(record) => unsafe { record.write(call) },
        None => {
            if PENDING_CALLS.insert(tid, call, 0).is_err() {
                count_drop(DropReason::PendingFull);
            }
        }
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
    count(counter::return_hits(attached_probe(&ctx)));
    let Some(record) = PENDING_CALLS.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: the thread's own record (see `enter`).
    let call = unsafe { *record };
    let regs = UserRegs::of_probe(ctx.regs);
    // `ret` popped the return address: the outer call returns at entry_sp + 8.
    // Nested calls return deeper and were not recorded.
    if call.entry_sp.wrapping_add(8) != regs.sp {
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*record).entry_sp = 0 };

    let ret: u64 = ctx.ret();
    let addr = if call.probe == Probe::PosixMemalign as u8 {
        if ret != 0 {
            return 0; // an error number; *memptr is untouched
        }
        // SAFETY: reads user memory through the checked helper.
        unsafe { bpf_probe_read_user(call.aux as *const u64) }.unwrap_or(0)
    } else {
        ret
    };
    let resizes = call.probe == Probe::Realloc as u8 || call.probe == Probe::Reallocarray as u8;
    let v8_page = call.probe == Probe::V8AllocatePage as u8 || call.probe == Probe::V8AllocateLargePage as u8;
    let mut event = HeapEvent {
        op: EventOp::Alloc as u8,
        probe: call.probe,
        tid,
        ts_ns: now_ns(),
        entry_ns: call.entry_ns,
        addr,
        size: call.size,
        old_addr: call.old_addr,
        stack: 0,
        ..HeapEvent::default()
    };
    if v8_page && addr != 0 {
        // The chunk's size, where this V8 keeps it; the space id came from the entry.
        event.size = crate::node::page_size(addr);
        event.detail = call.aux as u8;
    }
    // Failed calls keep the old block, except glibc's realloc(p, 0), which
    // frees p and returns NULL; an unsampled resize still releases a sampled block.
    let releases_old = resizes && call.old_addr != 0 && (addr != 0 || call.size == 0);
    if addr == 0 || !call.sampled {
        if releases_old && sampling::release(call.old_addr) {
            emit(&HeapEvent {
                op: EventOp::Free as u8,
                addr: call.old_addr,
                old_addr: 0,
                ..event
            });
        }
        return 0;
    }
    if resizes {
        event.op = EventOp::Realloc as u8;
        if call.old_addr != 0 {
            sampling::release(call.old_addr);
        }
    }
    sampling::remember(addr);
    // The stack is complete from the caller on, unless the caller keeps no
    // frame pointer (operator new): user space recovers those frames from the
    // stack window.
    emit_site_event(&regs, event);
    0
}

/// free(ptr). Unpaired, so it can sit past the entry instruction (see
/// `leak-user`'s placement): only `%rdi` must still hold the pointer.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    release_block(Probe::Free, ctx.arg::<u64>(0).unwrap_or(0));
    0
}

/// A block handed back through `probe` (free, or node's and V8's own frees).
#[inline(always)]
pub fn release_block(probe: Probe, addr: u64) {
    let Some(tid) = target_tid() else { return };
    count(counter::entry_hits(probe));
    if addr == 0 || !sampling::release(addr) {
        return;
    }
    emit(&HeapEvent {
        addr,
        ..event_now(EventOp::Free, probe, tid)
    });
}

/// V8 heap pages are few and large: always recorded, never sampled.
#[inline(always)]
fn is_v8_page(probe: Probe) -> bool {
    matches!(probe, Probe::V8AllocatePage | Probe::V8AllocateLargePage)
}
