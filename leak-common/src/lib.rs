//! Types shared by the eBPF programs (`leak-ebpf`) and user space (`leak-user`).
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel side writes these
//! records into the ring buffer and maps, user space reads them back byte for byte.
#![no_std]

/// The probed entry point that produced an event. Doubles as the uprobe attach
/// cookie, so one BPF program can serve several functions with the same signature.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Probe {
    Malloc = 0,
    Calloc = 1,
    Realloc = 2,
    Reallocarray = 3,
    PosixMemalign = 4,
    AlignedAlloc = 5,
    Memalign = 6,
    Valloc = 7,
    Pvalloc = 8,
    Free = 9,
    Mmap = 10,
    Munmap = 11,
    Mremap = 12,
    /// node::NodeArrayBufferAllocator::Allocate(size): Buffer/ArrayBuffer memory.
    ArrayBufferAllocate = 13,
    ArrayBufferAllocateUninitialized = 14,
    ArrayBufferFree = 15,
    /// v8::internal::MemoryAllocator::AllocatePage / AllocateLargePage / Free: JS heap pages.
    V8AllocatePage = 16,
    V8AllocateLargePage = 17,
    V8FreePage = 18,
    /// v8::internal::Heap::CollectGarbage: a GC starts.
    V8GcStart = 19,
    /// v8::internal::Heap::GarbageCollectionEpilogue: a GC ends.
    V8GcEnd = 20,
    /// v8::internal::Heap::SizeOfObjects (return): live bytes.
    V8SizeOfObjects = 21,
    /// JS heap allocation samples: large objects, young-generation refills,
    /// Map and array growth.
    V8LargeObject = 22,
    V8YoungRefill = 23,
    V8MapGrow = 24,
    V8ArrayGrow = 25,
    /// node::FreeEnvironment: Node starts tearing down (and freeing) everything.
    NodeTeardown = 26,
    /// v8::internal::Heap::GarbageCollectionEpilogueInSafepoint: which
    /// collector ran (V8 14 no longer passes it to the epilogue in a register).
    V8GcCollector = 27,
    /// The brk syscall: the program break moved (watch, and hunts of static
    /// binaries; with libc's malloc probed it is malloc's business).
    Brk = 28,
    /// A software page-fault perf event: a page was touched for the first time (watch only).
    PageFault = 29,
    /// Node's zlib allocation callback (`CompressionStream::AllocForZlib`,
    /// `CompressionStreamMemoryOwner::AllocForZlib` from Node 24): its
    /// `data` points into the native stream object that owns the block.
    NodeZlibAlloc = 30,
    /// v8::internal::Heap::MarkCompact: a mark-compact starts (old-space
    /// objects may move from here until the GC's epilogue).
    V8MarkCompact = 31,
}

impl Probe {
    pub const COUNT: usize = 32;
    pub const ALL: [Probe; Probe::COUNT] = [
        Probe::Malloc,
        Probe::Calloc,
        Probe::Realloc,
        Probe::Reallocarray,
        Probe::PosixMemalign,
        Probe::AlignedAlloc,
        Probe::Memalign,
        Probe::Valloc,
        Probe::Pvalloc,
        Probe::Free,
        Probe::Mmap,
        Probe::Munmap,
        Probe::Mremap,
        Probe::ArrayBufferAllocate,
        Probe::ArrayBufferAllocateUninitialized,
        Probe::ArrayBufferFree,
        Probe::V8AllocatePage,
        Probe::V8AllocateLargePage,
        Probe::V8FreePage,
        Probe::V8GcStart,
        Probe::V8GcEnd,
        Probe::V8SizeOfObjects,
        Probe::V8LargeObject,
        Probe::V8YoungRefill,
        Probe::V8MapGrow,
        Probe::V8ArrayGrow,
        Probe::NodeTeardown,
        Probe::V8GcCollector,
        Probe::Brk,
        Probe::PageFault,
        Probe::NodeZlibAlloc,
        Probe::V8MarkCompact,
    ];

    pub fn from_u8(value: u8) -> Option<Probe> {
        Probe::ALL.get(value as usize).copied()
    }

    /// Node.js and V8 hooks, as opposed to libc and syscalls.
    pub fn is_node(self) -> bool {
        (Probe::ArrayBufferAllocate as u8..=Probe::V8GcCollector as u8).contains(&(self as u8))
            || self == Probe::NodeZlibAlloc
            || self == Probe::V8MarkCompact
    }

    /// The libc symbol (or syscall) name.
    pub fn name(self) -> &'static str {
        match self {
            Probe::Malloc => "malloc",
            Probe::Calloc => "calloc",
            Probe::Realloc => "realloc",
            Probe::Reallocarray => "reallocarray",
            Probe::PosixMemalign => "posix_memalign",
            Probe::AlignedAlloc => "aligned_alloc",
            Probe::Memalign => "memalign",
            Probe::Valloc => "valloc",
            Probe::Pvalloc => "pvalloc",
            Probe::Free => "free",
            Probe::Mmap => "mmap",
            Probe::Munmap => "munmap",
            Probe::Mremap => "mremap",
            Probe::ArrayBufferAllocate => "NodeArrayBufferAllocator::Allocate",
            Probe::ArrayBufferAllocateUninitialized => "NodeArrayBufferAllocator::AllocateUninitialized",
            Probe::ArrayBufferFree => "NodeArrayBufferAllocator::Free",
            Probe::V8AllocatePage => "MemoryAllocator::AllocatePage",
            Probe::V8AllocateLargePage => "MemoryAllocator::AllocateLargePage",
            Probe::V8FreePage => "MemoryAllocator::Free",
            Probe::V8GcStart => "Heap::CollectGarbage",
            Probe::V8GcEnd => "Heap::GarbageCollectionEpilogue",
            Probe::V8SizeOfObjects => "Heap::SizeOfObjects",
            Probe::V8LargeObject => "HeapAllocator::AllocateRawLargeInternal",
            Probe::V8YoungRefill => "Runtime_AllocateInYoungGeneration",
            Probe::V8MapGrow => "Runtime_MapGrow",
            Probe::V8ArrayGrow => "Runtime_GrowArrayElements",
            Probe::NodeTeardown => "node::FreeEnvironment",
            Probe::V8GcCollector => "Heap::GarbageCollectionEpilogueInSafepoint",
            Probe::Brk => "brk",
            Probe::PageFault => "page-faults",
            Probe::NodeZlibAlloc => "CompressionStream::AllocForZlib",
            Probe::V8MarkCompact => "Heap::MarkCompact",
        }
    }
}

/// What an event does to the set of outstanding memory.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOp {
    /// A heap block `[addr, addr+size)` was returned to the caller.
    Alloc = 1,
    /// The heap block at `addr` was handed back.
    Free = 2,
    /// realloc-style success: `old_addr` (if non-zero) released, `addr` allocated.
    Realloc = 3,
    /// A mapping `[addr, addr+size)` was created (a `CopiedStackEvent`).
    Map = 4,
    /// `[addr, addr+size)` was unmapped (possibly part of a mapping).
    Unmap = 5,
    /// mremap: `[old_addr, old_addr+old_size)` became `[addr, addr+size)`
    /// (a `CopiedStackEvent`).
    Remap = 6,
    /// The process exec'd: all its memory is gone.
    Exec = 7,
    /// A V8 garbage collection started.
    GcStart = 8,
    /// A V8 garbage collection ended: `size` = live bytes, `detail` = collector.
    GcEnd = 9,
    /// A sampled JS heap allocation (`probe` says which kind), `size` bytes if known.
    AllocationSample = 10,
    /// The runtime began freeing everything on its way out (Node's teardown).
    Teardown = 11,
    /// A user stack seen for the first time: a `StackRecord`.
    Stack = 12,
    /// brk succeeded: `addr` is the new program break (a `CopiedStackEvent`).
    Brk = 13,
    /// A page fault at stack `stack`, sent with a copy of the user stack
    /// (`CopiedStackEvent`) from which user space recovers its callers.
    FaultStack = 14,
    /// The heap block containing `addr`, just allocated, was allocated on
    /// behalf of the live block containing `old_addr` (its owner: the
    /// native object whose buffers it holds).
    Owned = 15,
}

impl EventOp {
    pub fn from_u8(value: u8) -> Option<EventOp> {
        Some(match value {
            1 => EventOp::Alloc,
            2 => EventOp::Free,
            3 => EventOp::Realloc,
            4 => EventOp::Map,
            5 => EventOp::Unmap,
            6 => EventOp::Remap,
            7 => EventOp::Exec,
            8 => EventOp::GcStart,
            9 => EventOp::GcEnd,
            10 => EventOp::AllocationSample,
            11 => EventOp::Teardown,
            12 => EventOp::Stack,
            13 => EventOp::Brk,
            14 => EventOp::FaultStack,
            15 => EventOp::Owned,
            _ => return None,
        })
    }
}

/// `HeapEvent::flags`: the mapping is anonymous (not file-backed).
pub const FLAG_ANONYMOUS: u8 = 1;
/// `HeapEvent::flags`: made inside a probed allocator call (malloc's own arenas
/// and large-block mappings); that memory is already counted at the malloc level.
pub const FLAG_ALLOCATOR_INTERNAL: u8 = 2;
/// `HeapEvent::flags`: an allocation sent as a `CopiedStackEvent`: the kernel
/// side's unwind stopped at a code address it has no `UnwindRule` for (its
/// stack's last frame), and the copy is of the stack from there.
pub const FLAG_STACK_COPY: u8 = 4;

/// One allocation-state change, as written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapEvent {
    pub op: u8,
    pub probe: u8,
    pub flags: u8,
    /// Mappings: PROT_* bits (READ=1, WRITE=2, EXEC=4). V8 pages: the
    /// AllocationSpace id. GC end: the collector (0 scavenger, 1 mark-compact,
    /// 2 minor mark-compact).
    pub detail: u8,
    pub tid: u32,
    /// When the call completed (allocations) or began (frees), in CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// When the call began. A release only removes blocks recorded before this,
    /// so a block re-used by another thread in the meantime is not lost.
    pub entry_ns: u64,
    pub addr: u64,
    pub size: u64,
    pub old_addr: u64,
    pub old_size: u64,
    /// Content hash of the user stack (its `StackRecord` came before), or 0
    /// when no stack could be taken.
    pub stack: u64,
}

/// Frames kept per stack (the kernel's PERF_MAX_STACK_DEPTH).
pub const MAX_STACK_FRAMES: usize = 127;

/// A user stack, delivered once per content hash (again only after the
/// kernel side forgot it): innermost frame first. The kernel side walks the
/// frame-pointer chain itself (frame 0 is the instruction pointer, frame k
/// the return address saved in frame k-1), so that it can read, for each
/// frame, the V8 slots that name a JS function before the stack is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackRecord {
    pub op: u8,
    pub _pad: [u8; 3],
    pub frames_len: u32,
    pub hash: u64,
    /// The target's mark-compact epoch when the stack was taken
    /// ([`gc_epoch`]; 0 for a stack without JS frames): user space reads
    /// the objects the JS slots point at later, and trusts what it read
    /// only within the same epoch. A stack through JS is sent again in
    /// each epoch it is taken in.
    pub gc_epoch: u64,
    pub frames: [u64; MAX_STACK_FRAMES],
    /// `js[k]`: what frame k's frame pointer shows of a JS frame; all zero
    /// for other frames, for frame 0 (whose frame may not be set up yet),
    /// and when the target is not a known V8.
    pub js: [JsFrameSlots; MAX_STACK_FRAMES],
}

impl StackRecord {
    /// Bytes of a record sent without its JS slots (a stack with no JS
    /// frame): everything before `js`.
    pub const WITHOUT_JS: usize = 24 + 8 * MAX_STACK_FRAMES;
}

const _: () = assert!(core::mem::offset_of!(StackRecord, js) == StackRecord::WITHOUT_JS);

/// The mark-compact epoch of a V8 target: even between mark-compacts (the
/// number begun, times two), odd while one runs, when objects move. A
/// mark-compact makes it odd at its start (`Heap::MarkCompact`) and even
/// again at the GC's epilogue.
pub mod gc_epoch {
    /// Whether objects may be moving at `epoch`.
    pub const fn is_compacting(epoch: u64) -> bool {
        epoch & 1 == 1
    }

    /// The epoch once a mark-compact starts at `epoch`.
    pub const fn compaction_started(epoch: u64) -> u64 {
        epoch | 1
    }

    /// The epoch once a GC ends at `epoch` (after a mark-compact, the next even one).
    pub const fn gc_ended(epoch: u64) -> u64 {
        epoch + (epoch & 1)
    }
}

/// The V8 frame slots of one frame, read where the frame pointer points.
/// The JSFunction itself is not kept: a fresh closure moves at the next
/// scavenge, so its SharedFunctionInfo is read at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct JsFrameSlots {
    /// The frame's JSFunction's SharedFunctionInfo (a tagged pointer), read
    /// only after the function was checked to be a JSFunction by its map.
    pub shared: u64,
    /// The raw bytecode-array and bytecode-offset slots (interpreted frames).
    pub bytecode_array: u64,
    pub bytecode_offset: u64,
}

/// Where the kernel side finds V8's frame slots and the fields it reads
/// (from the target's `v8dbg_*` metadata); written by user space at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8FrameLayout {
    /// 0: read no JS slots (not Node, or a V8 whose layout is not known).
    pub enabled: u64,
    /// Frame slots, relative to the frame pointer: within
    /// `-8 * SLOTS_BELOW_FP .. 0`.
    pub fp_context: i64,
    pub fp_function: i64,
    pub fp_bytecode_array: i64,
    pub fp_bytecode_offset: i64,
    /// HeapObject::map and Map::instance_type (u16) offsets.
    pub map: u64,
    pub instance_type: u64,
    /// The instance types of JSFunctions, inclusive.
    pub first_js_function_type: u64,
    pub last_js_function_type: u64,
    /// JSFunction::shared.
    pub function_shared: u64,
}

impl V8FrameLayout {
    /// Words read below each frame pointer.
    pub const SLOTS_BELOW_FP: usize = 6;
}

/// How the kernel side reads V8's page hooks (per V8 line: the chunk
/// layout and the AllocationSpace enum changed in V8 12 and 13); written
/// by user space at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8PageLayout {
    /// 0: page sizes are not known (not Node, or an unknown V8): recorded as 0.
    pub enabled: u64,
    /// Offset of the chunk's size in what AllocatePage returns (the chunk
    /// itself before V8 13, its metadata from V8 13 on).
    pub chunk_size: u64,
    /// V8's AllocationSpace id → leakscope's space id (V8 11's numbering,
    /// extended; leak-user names them); ids beyond: [`V8PageLayout::UNKNOWN_SPACE`].
    pub space_ids: [u8; V8PageLayout::SPACES],
}

impl V8PageLayout {
    /// AllocationSpace ids mapped (V8 13 has 13).
    pub const SPACES: usize = 16;
    pub const UNKNOWN_SPACE: u8 = 0xff;
}

/// Words of user stack copied from the stack pointer up. Enough to cover the
/// frames of functions without a frame pointer between the probe and the
/// first frame-pointer frame (libc's mremap wrapper keeps 0x58 bytes, operator
/// new 8), so user space can recover the return addresses a frame-pointer walk
/// skips.
pub const STACK_WINDOW_WORDS: usize = 16;

/// An event that creates memory at a site (allocations, mappings), with the
/// user stack pointer and the words above it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SiteEvent {
    pub heap: HeapEvent,
    pub sp: u64,
    pub stack_window: [u64; STACK_WINDOW_WORDS],
}

/// Pages of user stack copied with the events whose rate allows it (page
/// faults, mappings, brk), from the page of the stack pointer up: 8-12 KiB
/// above it. Two pages (4-8 KiB) cut the dynamic loader's start-up stacks
/// (mmap in `_dl_map_segments` to `_start`) short or not depending on where
/// in its page the stack pointer fell, so one stack made two sites.
pub const STACK_COPY_PAGES: usize = 3;
pub const STACK_COPY_PAGE_BYTES: usize = 4096;

/// The user registers and stack memory that user space unwinds with the
/// unwind tables (CFI) of each module, through code without frame pointers.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackCopy {
    pub sp: u64,
    pub bp: u64,
    /// The address of `bytes[0]`: `sp` rounded down to its page.
    pub base: u64,
    /// Bit i: page i of `bytes` was read. The copy stops at the first page
    /// that cannot be (above the top of the stack); the rest is zero.
    pub pages_read: u64,
    pub bytes: [u8; STACK_COPY_PAGES * STACK_COPY_PAGE_BYTES],
}

/// An event with a copy of the user stack (`StackCopy`): mappings, brk, and
/// page faults (`EventOp::FaultStack`: the first one counted for a stack,
/// then every one of a stack user space asked to see whole,
/// `FAULT_WINDOWED`, whose frame-pointer walk does not tell its callers apart).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CopiedStackEvent {
    pub heap: HeapEvent,
    pub copy: StackCopy,
}

/// How the kernel side steps from a frame to its caller at one code address,
/// as user space read it from the module's CFI (`UNWIND_RULES`, keyed by the
/// address looked up: a return address − 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRule {
    /// One of the `UnwindRule` kinds below.
    pub kind: u32,
    /// `CFA_SP`, `CFA_BP`: the caller's stack pointer (CFA) is the register plus this.
    pub cfa_offset: i32,
    /// Where the return address is, from the CFA.
    pub return_address: i32,
    /// Where the caller's %rbp was saved, from the CFA; 0: not saved (unchanged).
    pub saved_bp: i32,
    /// `ASKED`: when (CLOCK_MONOTONIC ns >> 20, about ms), and how many
    /// stack copies asked since.
    pub asked_at: u32,
    pub copies: u32,
}

impl UnwindRule {
    pub const CFA_SP: u32 = 1;
    pub const CFA_BP: u32 = 2;
    /// Code without CFI (JIT code): the frame-pointer chain.
    pub const FRAME_POINTER: u32 = 3;
    /// The outermost frame (`_start`, a thread's start): the stack is whole.
    pub const OUTERMOST: u32 = 4;
    /// The stack ends here: CFI this unwinder does not evaluate, or not code.
    pub const STOP: u32 = 5;
    /// Written by the kernel side: a stack copy asked user space for the
    /// rule, which has not come yet.
    pub const ASKED: u32 = 6;
}

/// Entries of the table of exponential quantiles used to draw sampling gaps.
pub const EXP_QUANTILES_LEN: u32 = 1024;

/// Reasons a record was lost; each has a slot in the `COUNTERS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The ring buffer was full: the event is gone.
    RingBufFull = 0,
    /// No user stack could be taken, or the ring buffer had no room to send a new one.
    StackLost = 1,
    /// No room to remember an entry probe until its return probe.
    PendingFull = 2,
    /// Sampled mode: no room to remember a sampled block; its free will be missed.
    SampledBlocksFull = 3,
    /// Page-fault attribution: no room for another stack; its faults are not counted.
    FaultStacksFull = 4,
    /// The kernel side's unwind reached an address it had no unwind rule for
    /// yet, already asked for by another event's stack copy, or the ring
    /// buffer was too full for the copy that asks: the stack ends there (the
    /// event itself is kept).
    StacksCut = 5,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::RingBufFull,
        DropReason::StackLost,
        DropReason::PendingFull,
        DropReason::SampledBlocksFull,
        DropReason::FaultStacksFull,
        DropReason::StacksCut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::RingBufFull => "ring_buffer_full",
            DropReason::StackLost => "stack_lost",
            DropReason::PendingFull => "pending_calls_full",
            DropReason::SampledBlocksFull => "sampled_blocks_full",
            DropReason::FaultStacksFull => "fault_stacks_full",
            DropReason::StacksCut => "stacks_cut",
        }
    }
}

/// Layout of the per-CPU `COUNTERS` array: entry hits per probe, return hits
/// per probe, then drop counters.
pub mod counter {
    use super::{DropReason, Probe};

    pub const fn entry_hits(probe: Probe) -> u32 {
        probe as u32
    }
    pub const fn return_hits(probe: Probe) -> u32 {
        Probe::COUNT as u32 + probe as u32
    }
    pub const fn drops(reason: DropReason) -> u32 {
        2 * Probe::COUNT as u32 + reason as u32
    }
    pub const SLOTS: u32 = 2 * Probe::COUNT as u32 + DropReason::ALL.len() as u32;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with no padding holes that matter.
    unsafe impl aya::Pod for super::HeapEvent {}
    unsafe impl aya::Pod for super::SiteEvent {}
    unsafe impl aya::Pod for super::CopiedStackEvent {}
    unsafe impl aya::Pod for super::StackRecord {}
    unsafe impl aya::Pod for super::V8FrameLayout {}
    unsafe impl aya::Pod for super::V8PageLayout {}
    unsafe impl aya::Pod for super::UnwindRule {}
}
