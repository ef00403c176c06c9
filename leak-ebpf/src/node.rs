//! uprobes on Node.js and V8 internals: Buffer/ArrayBuffer memory, JS heap
//! pages, garbage collections and samples of JS heap allocation.
//!
//! The allocators among them go through the same entry/return machinery as
//! libc's (`libc_alloc::enter` and its return probe), so the calloc/malloc or
//! mmap they make underneath count once, under their own kind.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, uprobe, uretprobe},
    maps::Array,
    programs::{ProbeContext, RetProbeContext},
};
use leak_common::{counter, EventOp, HeapEvent, Probe};

use crate::{
    libc_alloc::{enter, release_block},
    shared::{attached_probe, count, emit, event_now, target_tid, user_stack},
};

/// Offset of the AllocationSpace id in v8::internal::Space (field notes).
const SPACE_ID_OFFSET: u64 = 0x10;

/// The last value Heap::SizeOfObjects returned: live bytes, read when the
/// GC epilogue runs.
#[map]
static LIVE_BYTES: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn space_id(space: u64) -> u64 {
    // SAFETY: reads user memory through the checked helper.
    unsafe { bpf_probe_read_user((space + SPACE_ID_OFFSET) as *const u32) }.map_or(u64::MAX, u64::from)
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

/// Heap::GarbageCollectionEpilogue(this, collector): the GC's live bytes are
/// the last SizeOfObjects() value.
#[uprobe]
pub fn v8_gc_end(ctx: ProbeContext) -> u32 {
    let live = LIVE_BYTES.get(0).copied().unwrap_or(0);
    emit_runtime_event(
        EventOp::GcEnd,
        Probe::V8GcEnd,
        live,
        ctx.arg::<u64>(1).unwrap_or(0) as u8,
    );
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
    let stack = user_stack(&ctx);
    emit(&HeapEvent {
        size,
        stack,
        ..event_now(EventOp::AllocationSample, probe, tid)
    });
    0
}
