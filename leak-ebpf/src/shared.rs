//! Maps and helpers used by every probe family.

use aya_ebpf::{
    bindings::pt_regs,
    cty::c_void,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_loop,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs, generated,
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    EbpfContext,
};
use leak_common::{
    counter, DropReason, EventOp, HeapEvent, JsFrameSlots, Probe, SiteEvent, StackRecord, V8FrameLayout,
    FLAG_STACK_COPY, MAX_STACK_FRAMES,
};

use crate::{stack_copy, unwind};

/// The process being traced; written by user space before load.
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;

/// Allocation-state changes, in the order they happened, for user space.
/// Size is set by user space at load (`--ring-buffer-mib`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Content hashes of the stacks already sent to user space (mixed with the
/// mark-compact epoch for stacks through JS). When one is evicted, its
/// stack is simply sent again. Size set by user space (`--max-stacks`).
#[map]
static DELIVERED_STACKS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(64 * 1024, 0);

/// Where V8 keeps a JS frame's slots, for Node targets whose V8 is known;
/// written by user space before load (`enabled` 0: no JS slots are read).
#[unsafe(no_mangle)]
static V8_FRAME_LAYOUT: V8FrameLayout = V8FrameLayout {
    enabled: 0,
    fp_context: 0,
    fp_function: 0,
    fp_bytecode_array: 0,
    fp_bytecode_offset: 0,
    map: 0,
    instance_type: 0,
    first_js_function_type: 0,
    last_js_function_type: 0,
    function_shared: 0,
};

/// Where a stack is assembled before it is hashed (too big for the BPF stack).
#[map]
static STACK_SCRATCH: PerCpuArray<StackRecord> = PerCpuArray::with_max_entries(1, 0);

/// Probe hit counts and drop counts; layout in `leak_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

/// Offsets of `bp`, `ip` and `sp` in x86-64 `struct pt_regs`.
const PT_REGS_BP: usize = 4 * 8;
const PT_REGS_IP: usize = 16 * 8;
const PT_REGS_SP: usize = 19 * 8;

/// A user register of the current thread, as saved when it entered the
/// kernel (a uprobe's trap, a syscall, or a page fault taken in user or
/// kernel mode).
#[inline(always)]
fn user_register(offset: usize) -> u64 {
    // SAFETY: the helpers return the current task and its saved user registers.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        bpf_probe_read_kernel(regs.add(offset) as *const u64).unwrap_or(0)
    }
}

/// The user stack pointer of the current thread.
#[inline(always)]
pub fn user_sp() -> u64 {
    user_register(PT_REGS_SP)
}

/// The user frame pointer (%rbp) of the current thread.
#[inline(always)]
pub fn user_bp() -> u64 {
    user_register(PT_REGS_BP)
}

/// The user instruction pointer of the current thread.
#[inline(always)]
pub fn user_ip() -> u64 {
    user_register(PT_REGS_IP)
}

/// The user registers a stack walk starts from.
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

impl UserRegs {
    /// The current thread's, wherever the program runs (tracepoints, perf events).
    #[inline(always)]
    pub fn current() -> UserRegs {
        UserRegs {
            ip: user_ip(),
            sp: user_sp(),
            bp: user_bp(),
        }
    }

    /// A uprobe's own: its context is the user registers, read directly
    /// (the helpers `current` needs cost ~50 ns a register, BENCHMARKS §6b).
    #[inline(always)]
    pub fn of_probe(regs: *const pt_regs) -> UserRegs {
        // SAFETY: a uprobe's context points at the trapped user registers.
        unsafe {
            UserRegs {
                ip: (*regs).rip,
                sp: (*regs).rsp,
                bp: (*regs).rbp,
            }
        }
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
pub fn user_stack(regs: &UserRegs) -> u64 {
    delivered_stack(regs, false).hash
}

/// A stack as `delivered_stack` sent it.
struct Delivered {
    hash: u64,
    /// Where an unwind by rules stopped at an address without a rule: the
    /// stack pointer and %rbp of the stack's last frame.
    resume: Option<(u64, u64)>,
}

/// `user_stack`, walked by the unwind rules (`by_rules`, at a return probe:
/// frame 0 is a return address) or by the frame-pointer chain.
#[inline(always)]
fn delivered_stack(regs: &UserRegs, by_rules: bool) -> Delivered {
    let lost = Delivered { hash: 0, resume: None };
    let Some(record) = STACK_SCRATCH.get_ptr_mut(0) else {
        return lost;
    };
    // SAFETY: the per-CPU scratch slot is ours until this program returns.
    let record = unsafe { &mut *record };
    let Walked {
        frames,
        has_js,
        hash,
        resume,
    } = walk_frames(record, regs, by_rules);
    if frames == 0 {
        count_drop(DropReason::StackLost);
        return lost;
    }
    let hash = (hash ^ frames as u64).wrapping_mul(FNV_PRIME).max(1);
    record.op = EventOp::Stack as u8;
    record.frames_len = frames as u32;
    record.hash = hash;
    record.gc_epoch = if has_js { crate::node::current_gc_epoch() } else { 0 };
    // A stack through JS is sent again in each mark-compact epoch (its
    // objects may have moved, and its slots may be another function's
    // now): the epoch is part of what says it was sent.
    let delivered = hash ^ record.gc_epoch.wrapping_mul(FNV_PRIME);
    // SAFETY: map values are plain data.
    if unsafe { DELIVERED_STACKS.get(delivered) }.is_some() {
        return Delivered { hash, resume };
    }
    // A stack without JS frames goes without its (all-zero) JS slots.
    let bytes = core::ptr::from_ref(record).cast::<[u8; size_of::<StackRecord>()]>();
    // SAFETY: the record is plain data of exactly that size.
    let bytes = unsafe { &*bytes };
    let sent = if has_js {
        EVENTS.output::<[u8]>(&bytes[..], wakeup_flags())
    } else {
        EVENTS.output::<[u8]>(&bytes[..StackRecord::WITHOUT_JS], wakeup_flags())
    };
    if sent.is_err() {
        count_drop(DropReason::StackLost);
        return lost;
    }
    let _ = DELIVERED_STACKS.insert(delivered, 1, 0);
    Delivered { hash, resume }
}

/// A field of `V8_FRAME_LAYOUT`, which the loader patches: read volatile so
/// the compiler cannot fold the initial value, one field at a time so the
/// struct is not copied to the stack (the walk's callback and its caller
/// share the 512-byte stack limit).
macro_rules! layout_field {
    ($field:ident) => {
        // SAFETY: a read of a field of a static.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(V8_FRAME_LAYOUT.$field)) }
    };
}

/// How far above the stack pointer a frame pointer may be: beyond the
/// default 8 MiB main-thread stack, with room for a raised limit.
pub const MAX_STACK_BYTES: u64 = 64 << 20;

/// What `walk_frames` wrote.
struct Walked {
    frames: usize,
    /// Whether any frame is a JS frame.
    has_js: bool,
    /// FNV-1a over the frames and their JS slots, taken on the way: a second
    /// loop over the record would double the verifier's work (and its time
    /// at load).
    hash: u64,
    /// See `Delivered::resume`.
    resume: Option<(u64, u64)>,
}

/// Walks the frame-pointer chain of the user stack into `record`, as the
/// kernel's own user stack walk does (frame 0 the instruction pointer, frame
/// k the return address saved in frame k-1), and reads the V8 slots of each
/// frame on the way. Stops where a frame cannot be read, or where the chain
/// stops going up the stack. `by_rules`: each frame steps by its unwind
/// rule instead (`unwind`), by the frame-pointer chain only where it says.
#[inline(always)]
fn walk_frames(record: &mut StackRecord, regs: &UserRegs, by_rules: bool) -> Walked {
    let ip = regs.ip;
    if ip == 0 {
        return Walked {
            frames: 0,
            has_js: false,
            hash: 0,
            resume: None,
        };
    }
    record.frames[0] = ip;
    record.js[0] = JsFrameSlots::default();
    // Frame 0 has no JS slots: its own hash round has them zero.
    let hash = ((FNV_OFFSET ^ ip).wrapping_mul(FNV_PRIME)).wrapping_mul(FNV_PRIME);
    let fp = regs.bp;
    let sp = regs.sp;
    let mut walk = Walk {
        record: core::ptr::from_mut(record),
        pc: ip,
        sp,
        fp,
        by_rules,
        unknown: false,
        cut: false,
        len: 1,
        has_js: false,
        hash,
    };
    // Code built without frame pointers keeps data in %rbp (a loop count, a
    // heap pointer): a frame pointer is above the stack pointer, in its
    // stack. Anything else would be read only to fault, at a cost per event.
    let frames_to_walk = if by_rules || (fp > sp && fp - sp <= MAX_STACK_BYTES) {
        (MAX_STACK_FRAMES - 1) as u32
    } else {
        0
    };
    // One callback verified once, rather than the loop's body unrolled and
    // explored per frame: the verifier's time at load was most of a hunt's
    // CPU on Node (BENCHMARKS §4b).
    // SAFETY: `walk_frame` has bpf_loop's callback signature and `walk`
    // outlives the call.
    unsafe {
        bpf_loop(
            frames_to_walk,
            walk_frame as *mut c_void,
            core::ptr::from_mut(&mut walk).cast(),
            0,
        );
    }
    if walk.cut {
        count_drop(DropReason::StacksCut);
    }
    Walked {
        frames: walk.len,
        has_js: walk.has_js,
        hash: walk.hash,
        resume: walk.unknown.then_some((walk.sp, walk.fp)),
    }
}

/// The frame walk's state between `bpf_loop` rounds.
struct Walk {
    record: *mut StackRecord,
    /// The last frame's address, stack pointer (by rules only) and %rbp.
    pc: u64,
    sp: u64,
    fp: u64,
    by_rules: bool,
    /// The walk by rules stopped at an address without one.
    unknown: bool,
    /// ... at an address whose rule was asked for and has not come.
    cut: bool,
    len: usize,
    has_js: bool,
    hash: u64,
}

/// Round `index` of the walk: reads frame `index + 1`; 1 stops the loop.
extern "C" fn walk_frame(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `walk_frames` passes its `Walk` as the loop's context.
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    let k = index as usize + 1;
    if k >= MAX_STACK_FRAMES {
        return 1;
    }
    let fp = walk.fp;
    // `next`: the caller's %rbp, its frame pointer if it keeps one, which
    // is then above `floor`.
    let mut by_rule = None;
    if walk.by_rules {
        match unwind::step(walk.pc, walk.sp, fp) {
            unwind::Step::Caller { ret, sp, bp } => by_rule = Some((bp, ret, sp)),
            unwind::Step::End => return 1,
            // The event goes with a copy of the stack from here.
            unwind::Step::Unknown if copy_has_room() => {
                walk.unknown = true;
                return 1;
            }
            // No rule and no copy: on by the frame-pointer chain, as far
            // as the frame-pointer walk would have gone.
            unwind::Step::Unknown | unwind::Step::Asked => {
                walk.cut = true;
                walk.by_rules = false;
                if fp <= walk.sp || fp - walk.sp > MAX_STACK_BYTES {
                    return 1;
                }
            }
        }
    }
    let (next, ret, sp, floor) = match by_rule {
        Some((next, ret, sp)) => (next, ret, sp, sp - 1),
        None => {
            // SAFETY: reads user memory through the checked helper.
            let Ok([next, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
                return 1;
            };
            (next, ret, 0, fp)
        }
    };
    if ret == 0 {
        return 1;
    }
    // SAFETY: the per-CPU scratch record `walk_frames` was given.
    let record = unsafe { &mut *walk.record };
    record.frames[k] = ret;
    let slot = |offset: i64| ((offset + 8 * V8FrameLayout::SLOTS_BELOW_FP as i64) / 8) as usize;
    let slots = [
        slot(layout_field!(fp_context)),
        slot(layout_field!(fp_function)),
        slot(layout_field!(fp_bytecode_array)),
        slot(layout_field!(fp_bytecode_offset)),
    ];
    let js = if layout_field!(enabled) != 0 && next > floor && next - floor <= MAX_STACK_BYTES {
        js_slots(next, &slots)
    } else {
        JsFrameSlots::default()
    };
    walk.has_js |= js.shared != 0;
    let hash = (walk.hash ^ ret).wrapping_mul(FNV_PRIME);
    walk.hash = (hash ^ js.shared ^ js.bytecode_offset.rotate_left(17)).wrapping_mul(FNV_PRIME);
    record.js[k] = js;
    walk.len = k + 1;
    if !walk.by_rules && next <= fp {
        return 1;
    }
    (walk.pc, walk.sp, walk.fp) = (ret, sp, next);
    0
}

/// The V8 slots below frame pointer `fp`, if they are a JS frame's: its
/// context is a heap object (not a frame-type marker) and its function
/// slot holds an object whose map says JSFunction.
#[inline(always)]
fn js_slots(fp: u64, slots: &[usize; 4]) -> JsFrameSlots {
    const WORDS: usize = V8FrameLayout::SLOTS_BELOW_FP;
    let none = JsFrameSlots::default();
    let base = fp - 8 * WORDS as u64;
    // SAFETY: reads user memory through the checked helper.
    let Ok(window) = (unsafe { bpf_probe_read_user(base as *const [u64; WORDS]) }) else {
        return none;
    };
    let word = |i: usize| window.get(i).copied().unwrap_or(0);
    let (context, function) = (word(slots[0]), word(slots[1]));
    if context & 1 == 0 || function & 1 == 0 {
        return none;
    }
    let object = function - 1;
    let map_offset = layout_field!(map);
    // SAFETY: as above.
    let Ok(map) = (unsafe { bpf_probe_read_user((object + map_offset) as *const u64) }) else {
        return none;
    };
    if map & 1 == 0 {
        return none;
    }
    let type_offset = layout_field!(instance_type);
    // SAFETY: as above.
    let Ok(instance_type) = (unsafe { bpf_probe_read_user((map - 1 + type_offset) as *const u16) }) else {
        return none;
    };
    let instance_type = u64::from(instance_type);
    if instance_type < layout_field!(first_js_function_type) || instance_type > layout_field!(last_js_function_type) {
        return none;
    }
    let shared_offset = layout_field!(function_shared);
    // SAFETY: as above.
    let Ok(shared) = (unsafe { bpf_probe_read_user((object + shared_offset) as *const u64) }) else {
        return none;
    };
    // Only interpreted frames keep a bytecode offset (a SMI: low half zero)
    // there; others (baseline: the feedback vector) would only split stacks.
    let bytecode_offset = word(slots[3]);
    let interpreted = bytecode_offset & 0xffff_ffff == 0;
    JsFrameSlots {
        shared,
        bytecode_array: if interpreted { word(slots[2]) } else { 0 },
        bytecode_offset: if interpreted { bytecode_offset } else { 0 },
    }
}

/// Whether a stack copy that asks for unwind rules may go: while copies
/// fill at most a quarter of the ring buffer, so that a burst of new
/// stacks does not crowd out events.
#[inline(always)]
fn copy_has_room() -> bool {
    EVENTS.query(BPF_RB_AVAIL_DATA) <= EVENTS.query(BPF_RB_RING_SIZE) / 4
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
/// above the user stack pointer (see `STACK_WINDOW_WORDS`). Called at
/// return probes: frame 0 is a return address, as the unwind rules need.
#[inline(always)]
pub fn emit_site_event(regs: &UserRegs, mut heap: HeapEvent) {
    // Before the event's own record: user space must know the stack first.
    let Delivered { hash, resume } = delivered_stack(regs, unwind::by_rules());
    heap.stack = hash;
    let sp = regs.sp;
    if let Some((last_sp, last_bp)) = resume {
        // The reader is woken to write the rules soon.
        heap.flags |= FLAG_STACK_COPY;
        if stack_copy::emit_copy_from(&heap, last_sp, last_bp, BPF_RB_FORCE_WAKEUP) {
            return;
        }
        heap.flags &= !FLAG_STACK_COPY;
        count_drop(DropReason::StacksCut);
    }
    let Some(mut entry) = EVENTS.reserve::<SiteEvent>(0) else {
        count_drop(DropReason::RingBufFull);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned ring buffer
    // record; the window is a plain byte range inside it.
    unsafe {
        (*record).heap = heap;
        (*record).sp = sp;
        // Straight into the record (zeroed where it cannot be read): a copy
        // through the BPF stack would take 128 of its 512 bytes.
        let window = &mut (*record).stack_window;
        generated::bpf_probe_read_user(
            window.as_mut_ptr().cast(),
            size_of_val(window) as u32,
            sp as *const c_void,
        );
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
