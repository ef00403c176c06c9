//! uprobes on Node.js and V8 internals: Buffer/ArrayBuffer memory, JS heap
//! pages, garbage collections, samples of JS heap allocation, and the
//! native objects on whose behalf zlib allocates.
//!
//! The allocators among them go through the same entry/return machinery as
//! libc's (`libc_alloc::enter` and its return probe), so the calloc/malloc or
//! mmap they make underneath count once, under their own kind.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap},
    programs::{ProbeContext, RetProbeContext},
};
use leak_common::{counter, gc_epoch, DropReason, EventOp, HeapEvent, Probe, V8PageLayout};

use crate::{
    libc_alloc::{enter, release_block},
    shared::{attached_probe, count, count_drop, emit, event_now, target_tid, user_stack, UserRegs},
};

/// Offset of the AllocationSpace id in v8::internal::Space (V8 10.2-14.6).
const SPACE_ID_OFFSET: u64 = 0x10;

/// How this target's V8 lays out its pages; written by user space before load.
#[unsafe(no_mangle)]
static V8_PAGE_LAYOUT: V8PageLayout = V8PageLayout {
    enabled: 0,
    chunk_size: 0,
    space_ids: [V8PageLayout::UNKNOWN_SPACE; V8PageLayout::SPACES],
};

/// The last value Heap::SizeOfObjects returned: live bytes, read when the
/// GC epilogue runs.
#[map]
static LIVE_BYTES: Array<u64> = Array::with_max_entries(1, 0);

/// The collector of the GC that is ending, from its safepoint epilogue.
#[map]
static GC_COLLECTOR: Array<u64> = Array::with_max_entries(1, 0);

/// The target's mark-compact epoch (`leak_common::gc_epoch`), stamped into
/// each stack record. One slot for every isolate of the process: a
/// worker's mark-compact counts for all of them.
#[map]
static GC_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// The current mark-compact epoch.
#[inline(always)]
pub fn current_gc_epoch() -> u64 {
    GC_EPOCH.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn advance_gc_epoch(next: fn(u64) -> u64) {
    if let Some(epoch) = GC_EPOCH.get_ptr_mut(0) {
        // SAFETY: a plain u64 slot, written from the target's GC hooks.
        unsafe { *epoch = next(*epoch) };
    }
}

#[inline(always)]
fn page_layout() -> V8PageLayout {
    // SAFETY: a plain global; the volatile read keeps the loader's value from being folded away.
    unsafe { core::ptr::read_volatile(&V8_PAGE_LAYOUT) }
}

/// leakscope's id of the space `space` points at (a v8::internal::Space).
#[inline(always)]
fn space_id(space: u64) -> u64 {
    // SAFETY: reads user memory through the checked helper.
    let Ok(id) = (unsafe { bpf_probe_read_user((space + SPACE_ID_OFFSET) as *const u32) }) else {
        return u64::from(V8PageLayout::UNKNOWN_SPACE);
    };
    let ids = page_layout().space_ids;
    u64::from(ids.get(id as usize).copied().unwrap_or(V8PageLayout::UNKNOWN_SPACE))
}

/// The size of the chunk AllocatePage or AllocateLargePage returned; 0
/// when this V8's layout is not known.
#[inline(always)]
pub fn page_size(page: u64) -> u64 {
    let layout = page_layout();
    if layout.enabled == 0 {
        return 0;
    }
    // SAFETY: reads user memory through the checked helper.
    unsafe { bpf_probe_read_user((page + layout.chunk_size) as *const u64) }.unwrap_or(0)
}

/// NodeArrayBufferAllocator::Allocate(this, size) and AllocateUninitialized.
#[uprobe]
pub fn arraybuffer_allocate_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, ctx.arg::<u64>(1).unwrap_or(0), 0, 0);
    0
}

/// NodeArrayBufferAllocator::Free(this, data, length). Its first instruction
/// is `lock`-prefixed, where uprobes never fire: placed after it, `%rsi`
/// still holds the pointer.
#[uprobe]
pub fn arraybuffer_free(ctx: ProbeContext) -> u32 {
    release_block(Probe::ArrayBufferFree, ctx.arg::<u64>(1).unwrap_or(0));
    0
}

/// MemoryAllocator::AllocatePage(this, mode, space, executable).
#[uprobe]
pub fn v8_allocate_page_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, 0, 0, space_id(ctx.arg::<u64>(2).unwrap_or(0)));
    0
}

/// MemoryAllocator::AllocateLargePage(this, space, object_size, executable).
#[uprobe]
pub fn v8_allocate_large_page_enter(ctx: ProbeContext) -> u32 {
    enter(
        &ctx,
        ctx.arg::<u64>(2).unwrap_or(0),
        0,
        space_id(ctx.arg::<u64>(1).unwrap_or(0)),
    );
    0
}

/// MemoryAllocator::Free(this, mode, chunk).
#[uprobe]
pub fn v8_free_page(ctx: ProbeContext) -> u32 {
    release_block(Probe::V8FreePage, ctx.arg::<u64>(2).unwrap_or(0));
    0
}

#[inline(always)]
fn emit_runtime_event(op: EventOp, probe: Probe, size: u64, detail: u8) {
    let Some(tid) = target_tid() else { return };
    count(counter::entry_hits(probe));
    emit(&HeapEvent {
        size,
        detail,
        ..event_now(op, probe, tid)
    });
}

/// node::FreeEnvironment(env): from here on Node frees the JS heap and every
/// Buffer, which says nothing about leaks: user space stops applying events.
#[uprobe]
pub fn node_teardown(_ctx: ProbeContext) -> u32 {
    emit_runtime_event(EventOp::Teardown, Probe::NodeTeardown, 0, 0);
    0
}

/// Heap::CollectGarbage(space, reason, flags).
#[uprobe]
pub fn v8_gc_start(_ctx: ProbeContext) -> u32 {
    emit_runtime_event(EventOp::GcStart, Probe::V8GcStart, 0, 0);
    0
}

/// Heap::SizeOfObjects() returning: remember the live bytes.
#[uretprobe]
pub fn v8_size_of_objects(ctx: RetProbeContext) -> u32 {
    if target_tid().is_some() {
        count(counter::return_hits(Probe::V8SizeOfObjects));
        if let Some(live) = LIVE_BYTES.get_ptr_mut(0) {
            // SAFETY: a plain u64 slot; a racing GC thread at worst writes the same kind of value.
            unsafe { *live = ctx.ret::<u64>() };
        }
    }
    0
}

/// Heap::GarbageCollectionEpilogueInSafepoint(this, collector), which runs
/// before the epilogue: remember the collector.
#[uprobe]
pub fn v8_gc_collector(ctx: ProbeContext) -> u32 {
    if target_tid().is_some() {
        count(counter::entry_hits(Probe::V8GcCollector));
        if let Some(collector) = GC_COLLECTOR.get_ptr_mut(0) {
            // SAFETY: a plain u64 slot, as LIVE_BYTES.
            unsafe { *collector = ctx.arg::<u64>(1).unwrap_or(0) };
        }
    }
    0
}

/// Heap::MarkCompact(this): old-space objects may move until the epilogue.
#[uprobe]
pub fn v8_mark_compact(_ctx: ProbeContext) -> u32 {
    if target_tid().is_some() {
        count(counter::entry_hits(Probe::V8MarkCompact));
        advance_gc_epoch(gc_epoch::compaction_started);
    }
    0
}

/// Heap::GarbageCollectionEpilogue(this, collector): the GC's live bytes are
/// the last SizeOfObjects() value. Its collector argument is not read: V8 14
/// (a local function there) does not pass it in %rsi.
#[uprobe]
pub fn v8_gc_end(_ctx: ProbeContext) -> u32 {
    if target_tid().is_some() {
        advance_gc_epoch(gc_epoch::gc_ended);
    }
    let live = LIVE_BYTES.get(0).copied().unwrap_or(0);
    let collector = GC_COLLECTOR.get(0).copied().unwrap_or(0);
    emit_runtime_event(EventOp::GcEnd, Probe::V8GcEnd, live, collector as u8);
    0
}

/// Samples of JS heap allocation with their JS stack: large objects
/// (HeapAllocator::AllocateRawLargeInternal(this, size, ...)), young
/// generation refills, Map and array growth (runtime functions).
#[uprobe]
pub fn v8_allocation_sample(ctx: ProbeContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    let probe = attached_probe(&ctx);
    count(counter::entry_hits(probe));
    let size = if probe == Probe::V8LargeObject {
        ctx.arg::<u32>(1).unwrap_or(0) as u64
    } else {
        0
    };
    // V8 functions start with `push %rbp`: the kernel keeps the caller in the walk.
    let stack = user_stack(&UserRegs::of_probe(ctx.regs));
    emit(&HeapEvent {
        size,
        stack,
        ..event_now(EventOp::AllocationSample, probe, tid)
    });
    0
}

/// An allocation callback in progress that allocates on behalf of `owner`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OwnedCall {
    owner: u64,
    /// Stack pointer at function entry (points at the return address).
    entry_sp: u64,
}

/// Per thread: the owned allocation in progress. Kept apart from the
/// allocators' pending calls, so that the malloc inside is still the
/// outermost allocator call, recorded at its own stack.
#[map]
static OWNED_CALLS: HashMap<u32, OwnedCall> = HashMap::with_max_entries(4096, 0);

/// zlib's allocation callback AllocForZlib(data, items, size): node passes
/// `data`, a pointer into the native stream object whose zlib state this
/// is. zlib allocates lazily, on the thread pool, where no JS frame says
/// whose stream it is: the owner does.
#[uprobe]
pub fn owned_alloc_enter(ctx: ProbeContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    count(counter::entry_hits(attached_probe(&ctx)));
    let call = OwnedCall {
        owner: ctx.arg::<u64>(0).unwrap_or(0),
        // SAFETY: uprobe contexts carry the user registers.
        entry_sp: unsafe { (*ctx.regs).rsp },
    };
    if OWNED_CALLS.insert(tid, call, 0).is_err() {
        count_drop(DropReason::PendingFull);
    }
    0
}

/// The callback returning a pointer into the block it allocated (after
/// node's size header): user space links that block to its owner's.
#[uretprobe]
pub fn owned_alloc_return(ctx: RetProbeContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    let probe = attached_probe(&ctx);
    count(counter::return_hits(probe));
    // SAFETY: map values are plain data.
    let Some(call) = (unsafe { OWNED_CALLS.get(tid) }).copied() else {
        return 0;
    };
    let _ = OWNED_CALLS.remove(tid);
    // SAFETY: return probe contexts carry the user registers.
    let sp = unsafe { (*ctx.regs).rsp };
    let addr: u64 = ctx.ret();
    // `ret` popped the return address: a return of another call (its
    // entry missed) is not this one.
    if call.entry_sp.wrapping_add(8) != sp || addr == 0 || call.owner == 0 {
        return 0;
    }
    emit(&HeapEvent {
        addr,
        old_addr: call.owner,
        ..event_now(EventOp::Owned, probe, tid)
    });
    0
}
