//! Syscall tracepoints for mmap, munmap, mremap and brk: they see mappings
//! made through libc and through raw syscalls alike. brk is attached by
//! `watch`, and by a hunt of a program without libc (static): elsewhere in a
//! hunt the program break is the probed malloc's internal business.
//!
//! Arguments are saved at sys_enter and the result recorded at sys_exit, so
//! failed calls (MAP_FAILED, EINVAL) never reach user space. A syscall cannot
//! nest within a thread, so the pending state is keyed by thread id alone.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use leak_common::{counter, DropReason, EventOp, HeapEvent, Probe, FLAG_ALLOCATOR_INTERNAL, FLAG_ANONYMOUS};

use crate::{
    libc_alloc::inside_allocator,
    shared::{count, count_drop, emit, now_ns, target_tid, user_sp, user_stack, UserRegs},
    stack_copy::emit_with_stack_copy,
};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingSyscall {
    probe: u8,
    flags: u8,
    prot: u8,
    addr: u64,
    len: u64,
    new_len: u64,
    entry_ns: u64,
}

#[map]
static PENDING_SYSCALLS: HashMap<u32, PendingSyscall> = HashMap::with_max_entries(64 * 1024, 0);

// Offsets in the syscalls:sys_enter_* / sys_exit_* records (see their
// `format` files): arguments are 8-byte slots from offset 16, `ret` is at 16.
const ARG0: usize = 16;
const RET: usize = 16;
const MAP_ANONYMOUS: u64 = 0x20;
/// The heap above the program break is readable and writable.
const PROT_READ_WRITE: u8 = 3;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: reads within the tracepoint record.
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
fn save(probe: Probe, call: PendingSyscall) {
    let Some(tid) = target_tid() else { return };
    count(counter::entry_hits(probe));
    let mut call = call;
    call.probe = probe as u8;
    call.entry_ns = now_ns();
    if inside_allocator(tid, user_sp(), call.entry_ns) {
        call.flags |= FLAG_ALLOCATOR_INTERNAL;
    }
    if PENDING_SYSCALLS.insert(tid, call, 0).is_err() {
        count_drop(DropReason::PendingFull);
    }
}

/// The saved call and the syscall result, or `None` when it failed.
#[inline(always)]
fn finish(probe: Probe, ctx: &TracePointContext) -> Option<(u32, PendingSyscall, u64)> {
    let tid = target_tid()?;
    count(counter::return_hits(probe));
    // SAFETY: map values are plain data.
    let call = unsafe { PENDING_SYSCALLS.get(tid) }.copied()?;
    let _ = PENDING_SYSCALLS.remove(tid);
    // SAFETY: reads within the tracepoint record.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.ok()?;
    if call.probe != probe as u8 || (-4095..0).contains(&ret) {
        return None;
    }
    Some((tid, call, ret as u64))
}

/// The event for a completed call; the stack is filled in by `emit_mapping`.
#[inline(always)]
fn event(op: EventOp, tid: u32, call: &PendingSyscall) -> HeapEvent {
    HeapEvent {
        op: op as u8,
        probe: call.probe,
        flags: call.flags,
        detail: call.prot,
        tid,
        ts_ns: now_ns(),
        entry_ns: call.entry_ns,
        stack: 0,
        ..HeapEvent::default()
    }
}

/// Writes an event that creates memory with its stack (sent first: user
/// space must know it before the event) and a copy of the user stack.
#[inline(always)]
fn emit_created(heap: HeapEvent) {
    let stack = user_stack(&UserRegs::current());
    emit_with_stack_copy(HeapEvent { stack, ..heap });
}

/// An exec replaces the whole address space: user space starts afresh.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    if let Some(tid) = target_tid() {
        let now = now_ns();
        emit(&HeapEvent {
            op: EventOp::Exec as u8,
            tid,
            ts_ns: now,
            entry_ns: now,
            stack: 0,
            ..HeapEvent::default()
        });
    }
    0
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    let flags = arg(&ctx, 3);
    let call = PendingSyscall {
        probe: 0,
        flags: if flags & MAP_ANONYMOUS != 0 { FLAG_ANONYMOUS } else { 0 },
        prot: arg(&ctx, 2) as u8,
        addr: 0,
        len: arg(&ctx, 1),
        new_len: 0,
        entry_ns: 0,
    };
    save(Probe::Mmap, call);
    0
}

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    if let Some((tid, call, addr)) = finish(Probe::Mmap, &ctx) {
        let heap = HeapEvent {
            addr,
            size: call.len,
            ..event(EventOp::Map, tid, &call)
        };
        emit_created(heap);
    }
    0
}

#[tracepoint]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    let call = PendingSyscall {
        probe: 0,
        flags: 0,
        prot: 0,
        addr: arg(&ctx, 0),
        len: arg(&ctx, 1),
        new_len: 0,
        entry_ns: 0,
    };
    save(Probe::Munmap, call);
    0
}

#[tracepoint]
pub fn sys_exit_munmap(ctx: TracePointContext) -> u32 {
    if let Some((tid, call, _)) = finish(Probe::Munmap, &ctx) {
        emit(&HeapEvent {
            addr: call.addr,
            size: call.len,
            ..event(EventOp::Unmap, tid, &call)
        });
    }
    0
}

#[tracepoint]
pub fn sys_enter_mremap(ctx: TracePointContext) -> u32 {
    let call = PendingSyscall {
        probe: 0,
        flags: FLAG_ANONYMOUS,
        prot: 0,
        addr: arg(&ctx, 0),
        len: arg(&ctx, 1),
        new_len: arg(&ctx, 2),
        entry_ns: 0,
    };
    save(Probe::Mremap, call);
    0
}

#[tracepoint]
pub fn sys_exit_mremap(ctx: TracePointContext) -> u32 {
    if let Some((tid, call, addr)) = finish(Probe::Mremap, &ctx) {
        let heap = HeapEvent {
            addr,
            size: call.new_len,
            old_addr: call.addr,
            old_size: call.len,
            ..event(EventOp::Remap, tid, &call)
        };
        emit_created(heap);
    }
    0
}

/// brk(addr) returns the new program break (the old one when it fails, which
/// user space sees as no change). User space knows the break before it, so
/// one event per call is enough: no pending state.
#[tracepoint]
pub fn sys_exit_brk(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_tid() else { return 0 };
    count(counter::entry_hits(Probe::Brk));
    // SAFETY: reads within the tracepoint record.
    let Ok(new_break) = (unsafe { ctx.read_at::<u64>(RET) }) else {
        return 0;
    };
    let now = now_ns();
    let heap = HeapEvent {
        op: EventOp::Brk as u8,
        probe: Probe::Brk as u8,
        flags: FLAG_ANONYMOUS,
        detail: PROT_READ_WRITE,
        tid,
        ts_ns: now,
        entry_ns: now,
        addr: new_break,
        ..HeapEvent::default()
    };
    emit_created(heap);
    0
}
