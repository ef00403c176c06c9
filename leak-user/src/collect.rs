//! Turns ring-buffer records into the outstanding-memory model.

use std::collections::{HashMap, HashSet};

use std::hash::{DefaultHasher, Hash, Hasher};

use leak_common::{
    CopiedStackEvent, EventOp, HeapEvent, JsFrameSlots, Probe, SiteEvent, StackRecord, FLAG_ALLOCATOR_INTERNAL,
    FLAG_ANONYMOUS, FLAG_STACK_COPY, MAX_STACK_FRAMES, STACK_WINDOW_WORDS,
};

use crate::{
    heap::{charged_size, Heap, Kind, SiteKey, PAGE_SIZE},
    node::NodeStats,
    report::PROT_UNKNOWN,
    symbolize::{ProcessModules, Registers, Splice, StackMemory, Unwinder},
    unwind_rules::UnwindRules,
    v8::{JsFrame, JsNamer},
};

/// PROT_EXEC: a file mapped executable is a library or JIT image to symbolize.
const PROT_EXEC: u8 = 4;

/// A stack completed from a walk by unwinding.
struct Completed {
    hash: u64,
    /// Of each of its frames, the walk's index of it (None: not the walk's).
    walk_index: Vec<Option<usize>>,
}

pub struct Collector {
    pub heap: Heap,
    pub modules: ProcessModules,
    /// User stacks by content hash: as delivered by the kernel side, and as
    /// completed by unwinding the stack memory of an event (`unwound_stack`).
    stacks: HashMap<u64, Vec<u64>>,
    /// The JS frames of the stacks that pass through JS, by content hash,
    /// indexed like the stack's frames; named as they arrive, while the
    /// objects their slots point at are still where they were.
    js_frames: HashMap<u64, Vec<Vec<JsFrame>>>,
    /// Names JS frames in a Node target whose V8 is known.
    js_namer: Option<JsNamer>,
    /// Of a walked stack: the stacks completed from it by unwinding.
    completed_from: HashMap<u64, Vec<Completed>>,
    /// Stacks whose records named a frame differently: their frames are
    /// not named again.
    named_apart: HashSet<u64>,
    pub events: u64,
    /// How many times the target exec'd: site ids are re-issued each time.
    pub execs: u64,
    /// GCs and JS allocation samples of a Node.js target.
    pub node: NodeStats,
    /// CLOCK_MONOTONIC at the start of the hunt, the clock of event times.
    pub started_ns: u64,
    /// When the runtime began tearing down (seconds into the hunt): the model
    /// keeps the state of that moment.
    pub torn_down_at: Option<f64>,
    /// Mean sampling interval in sampled mode.
    sample_bytes: Option<u64>,
    /// Records that were too short or had an unknown operation.
    pub malformed: u64,
    modules_changed: bool,
    unwinder: Unwinder,
    /// The frames of the last unwind (kept to spare an allocation per event).
    unwound: Vec<u64>,
    /// The program break as last seen (`watch`); brk events move it.
    program_break: Option<u64>,
    /// Per page-fault stack as walked (`watch`, growth mode), the stack
    /// unwound from the copy that came with the first fault counted for it.
    fault_unwound: HashMap<u64, u64>,
    /// Set when the per-call allocator probes were detached (growth mode from
    /// then on): their later events are ignored, so that heap sites keep
    /// the state of that moment rather than lose frees as probes go one by one.
    per_call_until_ns: Option<u64>,
    /// Growth mode: each page-fault sample stands for this many faults.
    growth_fault_period: Option<u64>,
    /// Page-fault samples per stack already folded into the model (growth mode).
    fault_samples_seen: HashMap<u64, u64>,
    /// Fault stacks whose walk is not the whole stack, for the kernel side to
    /// send with a stack copy from now on (growth mode).
    stacks_to_window: Vec<u64>,
    /// The kernel side's unwind rules, when it unwinds per-call events by
    /// them: written from the unwinds of the copies it sends.
    unwind_rules: Option<UnwindRules>,
    /// Unwinding by rules: per stack (content hash), the site's stack, keyed
    /// by its frames and JS frames, so that the kernel side's whole walk of
    /// a stack and the first one unwound from a copy are one site.
    by_content: HashMap<u64, u64>,
}

impl Collector {
    pub fn new(pid: u32, sample_bytes: Option<u64>) -> Collector {
        Collector {
            heap: Heap::new(sample_bytes),
            modules: ProcessModules::new(pid),
            stacks: HashMap::new(),
            js_frames: HashMap::new(),
            js_namer: None,
            completed_from: HashMap::new(),
            named_apart: HashSet::new(),
            events: 0,
            execs: 0,
            node: NodeStats::default(),
            started_ns: 0,
            torn_down_at: None,
            sample_bytes,
            malformed: 0,
            modules_changed: true,
            unwinder: Unwinder::default(),
            unwound: Vec::new(),
            program_break: None,
            fault_unwound: HashMap::new(),
            growth_fault_period: None,
            fault_samples_seen: HashMap::new(),
            stacks_to_window: Vec::new(),
            per_call_until_ns: None,
            unwind_rules: None,
            by_content: HashMap::new(),
        }
    }

    /// Applies one ring-buffer record.
    pub fn apply(&mut self, record: &[u8]) {
        if record.first() == Some(&(EventOp::Stack as u8)) {
            match read_stack_record(record) {
                Some(stack) => {
                    let len = (stack.frames_len as usize).min(MAX_STACK_FRAMES);
                    self.stacks.insert(stack.hash, stack.frames[..len].to_vec());
                    if let Some(namer) = &mut self.js_namer {
                        // Frame k's JS slots are of the function its return address is in.
                        let slots = &stack.js[..len];
                        let named = namer.name_stack(stack.gc_epoch, slots, &stack.frames[..len]);
                        self.merge_js_frames(stack.hash, slots, named);
                    }
                }
                None => self.malformed += 1,
            }
            return;
        }
        let Some(event) = read_record::<HeapEvent>(record) else {
            self.malformed += 1;
            return;
        };
        let (Some(op), Some(probe)) = (EventOp::from_u8(event.op), Probe::from_u8(event.probe)) else {
            self.malformed += 1;
            return;
        };
        self.events += 1;
        if self.torn_down_at.is_some() && op != EventOp::Exec {
            return;
        }
        // Owned blocks are libc's, whichever hook says whose they are.
        let per_call = (matches!(op, EventOp::Alloc | EventOp::Realloc | EventOp::Free) && !probe.is_node())
            || op == EventOp::Owned;
        if per_call && self.per_call_until_ns.is_some_and(|until| event.ts_ns >= until) {
            return;
        }
        let e = &event;
        match op {
            EventOp::Free => {
                if probe == Probe::V8FreePage {
                    if let Some(namer) = &mut self.js_namer {
                        namer.page_freed(e.addr);
                    }
                }
                self.heap.free(e.addr, e.entry_ns)
            }
            EventOp::Owned => self.heap.own(e.addr, e.old_addr),
            EventOp::Unmap => self.heap.unmap(e.addr, e.size, e.entry_ns),
            EventOp::Stack => unreachable!("stack records are handled above"),
            EventOp::Teardown => self.torn_down_at = Some(self.seconds_since_start(e.ts_ns)),
            EventOp::GcStart => self.node.gc_start(self.seconds_since_start(e.ts_ns)),
            EventOp::GcEnd => {
                // Besides the epochs stacks carry: a V8 without the hook
                // that starts them still drops its cached objects.
                if e.detail == crate::node::MARK_COMPACTOR {
                    if let Some(namer) = &mut self.js_namer {
                        namer.mark_compacted();
                    }
                }
                self.node.gc_end(self.seconds_since_start(e.ts_ns), e.detail, e.size)
            }
            EventOp::AllocationSample => {
                // Read the stack now: the report needs it after detaching.
                self.node.sample(probe, e.stack, e.size);
            }
            EventOp::Exec => {
                // A new program: its addresses mean other code.
                self.heap = Heap::new(self.sample_bytes);
                self.unwinder = Unwinder::default();
                if let Some(rules) = &mut self.unwind_rules {
                    rules.forget_all();
                }
                self.node = NodeStats::default();
                // Another program: its V8, if any, is not the one named.
                if !self.js_namer.as_mut().is_some_and(JsNamer::still_valid_after_exec) {
                    self.js_namer = None;
                }
                self.js_frames.clear();
                self.completed_from.clear();
                self.named_apart.clear();
                self.torn_down_at = None;
                self.program_break = None;
                self.fault_unwound.clear();
                self.execs += 1;
                self.modules_changed = true;
            }
            EventOp::FaultStack => {
                let Some(fault) = read_record::<CopiedStackEvent>(record) else {
                    self.malformed += 1;
                    return;
                };
                // Frame 0 is the faulting instruction itself.
                let stack = self.copied_stack(e.stack, &fault);
                match self.growth_fault_period {
                    // A fault of a windowed stack: one sample, at its callers.
                    Some(period) if self.fault_unwound.contains_key(&e.stack) => self.touch(stack, period, e.ts_ns),
                    // The first of its stack (also counted by the kernel).
                    Some(_) if stack != e.stack => {
                        self.fault_unwound.insert(e.stack, stack);
                        self.stacks_to_window.push(e.stack);
                    }
                    _ => {
                        self.fault_unwound.insert(e.stack, stack);
                    }
                }
            }
            EventOp::Alloc | EventOp::Realloc => {
                let stack = if e.flags & FLAG_STACK_COPY != 0 {
                    let Some(copied) = read_record::<CopiedStackEvent>(record) else {
                        self.malformed += 1;
                        return;
                    };
                    self.resumed_stack(e.stack, &copied)
                } else {
                    let Some(site_event) = read_record::<SiteEvent>(record) else {
                        self.malformed += 1;
                        return;
                    };
                    let mut window = [0u8; STACK_WINDOW_WORDS * 8];
                    for (bytes, word) in window.chunks_exact_mut(8).zip(site_event.stack_window) {
                        bytes.copy_from_slice(&word.to_le_bytes());
                    }
                    let registers = Registers {
                        sp: site_event.sp,
                        bp: None,
                    };
                    // Heap stacks are taken at the return probe: frame 0 is a return address.
                    let memory = StackMemory::new(site_event.sp, &window);
                    self.unwound_stack(e.stack, true, registers, &memory)
                };
                let stack = if self.unwind_rules.is_some() {
                    self.by_content(stack)
                } else {
                    stack
                };
                let mut key = SiteKey::heap(probe, stack);
                if key.kind == Kind::V8Heap {
                    key.detail = e.detail; // the V8 space
                    if e.detail == crate::v8::pages::CODE_LARGE_SPACE {
                        if let Some(namer) = &mut self.js_namer {
                            namer.large_code_page(e.addr, e.size);
                        }
                    }
                }
                let site = self.heap.intern(key);
                let size = charged_size(probe, e.size);
                if op == EventOp::Realloc {
                    self.heap.free(e.old_addr, e.entry_ns);
                }
                self.heap.alloc(e.addr, size, e.ts_ns, site);
            }
            EventOp::Map | EventOp::Remap | EventOp::Brk => {
                let Some(created) = read_record::<CopiedStackEvent>(record) else {
                    self.malformed += 1;
                    return;
                };
                if e.flags & FLAG_ANONYMOUS == 0 && e.detail & PROT_EXEC != 0 {
                    self.modules_changed = true;
                }
                let internal = e.flags & FLAG_ALLOCATOR_INTERNAL != 0;
                let site = self.mapping_site(&created, probe, internal);
                match op {
                    EventOp::Map => self.heap.map(e.addr, e.size, e.ts_ns, site, internal),
                    EventOp::Brk => self.move_break(e.addr, e.ts_ns, site),
                    _ => self.heap.remap(
                        e.old_addr, e.old_size, e.addr, e.size, e.entry_ns, e.ts_ns, site, internal,
                    ),
                }
            }
        }
    }

    /// Folds the JS frames one record of stack `hash` names (None: its
    /// objects may have moved before they were read) into what earlier
    /// records of it named. The kernel side sends a stack through JS again
    /// in each mark-compact epoch it is taken in, as the same slots may
    /// then be another function's: a frame named differently by two
    /// records is said to have moved, for good. One not read in its own
    /// epoch says so until a later record names it.
    fn merge_js_frames(&mut self, hash: u64, slots: &[JsFrameSlots], named: Option<Vec<Vec<JsFrame>>>) {
        let named = named.unwrap_or_else(|| {
            slots
                .iter()
                .map(|s| {
                    if s.shared == 0 {
                        Vec::new()
                    } else {
                        vec![JsFrame::moved()]
                    }
                })
                .collect()
        });
        let Some(known) = self.js_frames.get_mut(&hash) else {
            if named.iter().any(|frames| !frames.is_empty()) {
                self.js_frames.insert(hash, named);
            }
            return;
        };
        let named_apart = self.named_apart.contains(&hash);
        let (mut changed, mut apart) = (false, false);
        for (known, now) in known.iter_mut().zip(named) {
            if *known == now || is_moved(&now) {
                continue;
            }
            if is_moved(known) && !named_apart {
                *known = now;
            } else {
                *known = vec![JsFrame::moved()];
                apart = true;
            }
            changed = true;
        }
        if apart {
            self.named_apart.insert(hash);
        }
        if changed {
            self.copy_js_frames_to_completed(hash);
        }
    }

    /// The walk `walk_hash`'s JS frames, as now known, into the stacks completed from it.
    fn copy_js_frames_to_completed(&mut self, walk_hash: u64) {
        let Some(walk_js) = self.js_frames.get(&walk_hash).cloned() else {
            return;
        };
        for completed in self.completed_from.get(&walk_hash).into_iter().flatten() {
            let Some(js) = self.js_frames.get_mut(&completed.hash) else {
                continue;
            };
            for (frames, at) in js.iter_mut().zip(&completed.walk_index) {
                if let Some(named) = at.and_then(|at| walk_js.get(at)) {
                    frames.clone_from(named);
                }
            }
        }
    }

    /// The site of a mapping (or brk), its stack unwound from the copy.
    fn mapping_site(&mut self, created: &CopiedStackEvent, probe: Probe, internal: bool) -> u32 {
        let event = &created.heap;
        let mut key = SiteKey {
            kind: Kind::Mmap,
            anonymous: event.flags & FLAG_ANONYMOUS != 0,
            detail: event.detail,
            ..SiteKey::heap(probe, event.stack)
        };
        // mremap keeps the protection and backing of the mapping it moves.
        if probe == Probe::Mremap {
            let source = self.heap.mapping_site(event.old_addr).map(|site| *self.heap.site(site));
            (key.anonymous, key.detail) = source.map_or((true, PROT_UNKNOWN), |s| (s.anonymous, s.detail));
        }
        // Allocator-internal mappings are not shown as sites: no stack needed.
        key.stack = if internal {
            0
        } else {
            self.copied_stack(event.stack, created)
        };
        self.heap.intern(key)
    }

    /// `walk_hash` completed from the stack copy of `event`, whose frame 0
    /// is an exact instruction pointer (a fault's, a syscall's).
    fn copied_stack(&mut self, walk_hash: u64, event: &CopiedStackEvent) -> u64 {
        let copy = &event.copy;
        let registers = Registers {
            sp: copy.sp,
            bp: Some(copy.bp),
        };
        self.unwound_stack(walk_hash, false, registers, &StackMemory::of_copy(copy))
    }

    /// The stack `walk_hash` (the kernel side's frame-pointer walk) completed
    /// by unwinding `memory` from `registers` (`frame0_returns`: frame 0 is a
    /// return address): the walk's own hash when unwinding changes nothing,
    /// else the completed stack's, which is kept with its JS frames.
    fn unwound_stack(
        &mut self,
        walk_hash: u64,
        frame0_returns: bool,
        registers: Registers,
        memory: &StackMemory,
    ) -> u64 {
        self.refresh_modules_if_changed();
        let Some(walk) = self.stacks.get(&walk_hash) else {
            return walk_hash;
        };
        let Some(&frame0) = walk.first() else {
            return walk_hash;
        };
        let unwound = &mut self.unwound;
        let complete = self
            .unwinder
            .unwind(&self.modules, frame0, frame0_returns, registers, memory, unwound);
        let splice = Splice::of(unwound, complete, walk);
        if splice.is_walk(unwound, walk) {
            return walk_hash;
        }
        let frames = splice.frames(unwound, walk);
        let walk_indices = splice.walk_indices(unwound, walk);
        self.keep_unwound(walk_hash, frames, &walk_indices, 0, memory)
    }

    /// The stack `walk_hash` (the kernel side's unwind by rules, which
    /// stopped at its last frame, an address it had no rule for) completed
    /// by unwinding the copy of the stack from that frame on. The rules of
    /// the steps taken are written for the kernel side.
    fn resumed_stack(&mut self, walk_hash: u64, event: &CopiedStackEvent) -> u64 {
        self.refresh_modules_if_changed();
        let Some(walk) = self.stacks.get(&walk_hash) else {
            return walk_hash;
        };
        let Some((&last, before)) = walk.split_last() else {
            return walk_hash;
        };
        let before = before.len();
        let copy = &event.copy;
        let registers = Registers {
            sp: copy.sp,
            bp: Some(copy.bp),
        };
        let memory = StackMemory::of_copy(copy);
        // Per-call stacks are taken at return probes: the last frame is a return address.
        self.unwinder
            .unwind(&self.modules, last, true, registers, &memory, &mut self.unwound);
        if let Some(rules) = &mut self.unwind_rules {
            rules.write(self.unwinder.rules());
        }
        let frames: Vec<u64> = walk[..before].iter().chain(&self.unwound).copied().collect();
        let walk_indices: Vec<Option<usize>> = (0..frames.len()).map(|i| (i < before).then_some(i)).collect();
        self.keep_unwound(walk_hash, frames, &walk_indices, before, &memory)
    }

    /// Keeps `frames`, the stack `walk_hash` completed by unwinding `memory`
    /// (`walk_indices`: per frame, its index in the walk, if it is one of
    /// the walk's; the unwind's frames start at index `unwound_from`), by
    /// their content hash, which it returns: unwinds that stop at different
    /// frames (the copy starts at sp's page) but join the walk into the
    /// same stack are one site.
    fn keep_unwound(
        &mut self,
        walk_hash: u64,
        frames: Vec<u64>,
        walk_indices: &[Option<usize>],
        unwound_from: usize,
        memory: &StackMemory,
    ) -> u64 {
        let mut hasher = DefaultHasher::new();
        frames.iter().for_each(|frame| frame.hash(&mut hasher));
        let hash = hasher.finish().max(1);
        if self.stacks.contains_key(&hash) {
            return hash;
        }
        if let Some(namer) = &mut self.js_namer {
            let walk_js = self.js_frames.get(&walk_hash);
            let frame_pointers = self.unwinder.frame_pointers();
            let aligned: Vec<Vec<JsFrame>> = walk_indices
                .iter()
                .enumerate()
                .map(|(i, at)| match at {
                    Some(at) => walk_js.and_then(|js| js.get(*at)).cloned().unwrap_or_default(),
                    // A frame the walk did not reach: its slots are in the copy.
                    None => {
                        let fp = i
                            .checked_sub(unwound_from)
                            .and_then(|i| frame_pointers.get(i))
                            .copied()
                            .unwrap_or(0);
                        namer.name_copied_frame(|addr| memory.word(addr), fp, frames[i])
                    }
                })
                .collect();
            if aligned.iter().any(|js| !js.is_empty()) {
                self.js_frames.insert(hash, aligned);
                self.completed_from.entry(walk_hash).or_default().push(Completed {
                    hash,
                    walk_index: walk_indices.to_vec(),
                });
            }
        }
        self.stacks.insert(hash, frames);
        hash
    }

    /// The stack `hash` keyed by its content, its frames and the names of
    /// its JS frames (unwinding by rules, see `by_content`).
    fn by_content(&mut self, hash: u64) -> u64 {
        if let Some(&keyed) = self.by_content.get(&hash) {
            return keyed;
        }
        let Some(frames) = self.stacks.get(&hash) else {
            return hash;
        };
        let js = self.js_frames.get(&hash);
        let mut hasher = DefaultHasher::new();
        frames.hash(&mut hasher);
        for frame in js.into_iter().flatten().flatten() {
            (&frame.function, &frame.script, frame.line, frame.column).hash(&mut hasher);
        }
        let keyed = hasher.finish().max(1);
        let (frames, js) = (frames.clone(), js.cloned());
        if let std::collections::hash_map::Entry::Vacant(entry) = self.stacks.entry(keyed) {
            entry.insert(frames);
            if let Some(js) = js {
                self.js_frames.insert(keyed, js);
            }
        }
        self.by_content.insert(hash, keyed);
        keyed
    }

    /// Unwinds per-call stacks in the kernel side by `rules` from now on
    /// (the programs were loaded to).
    pub fn set_unwind_rules(&mut self, rules: UnwindRules) {
        self.unwind_rules = Some(rules);
    }

    /// The per-call allocator probes are being detached at `ts_ns`.
    pub fn end_per_call_tracing(&mut self, ts_ns: u64) {
        self.per_call_until_ns = Some(ts_ns);
    }

    /// Growth mode from now on: page faults are sampled every `fault_period`.
    pub fn start_growth(&mut self, fault_period: u64) {
        self.growth_fault_period = Some(fault_period);
    }

    /// Fault stacks for the kernel side to send whole from now on.
    pub fn take_stacks_to_window(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.stacks_to_window)
    }

    /// Folds the kernel's page-fault counts per stack (growth mode) into the
    /// model as pages touched at `ts_ns`. A stack whose first fault has not
    /// been read yet waits: its callers come with that fault.
    pub fn fold_fault_samples(&mut self, samples: &[(u64, u64)], ts_ns: u64) {
        let Some(period) = self.growth_fault_period else { return };
        for &(stack, count) in samples {
            let Some(&unwound) = self.fault_unwound.get(&stack) else {
                continue;
            };
            let seen = self.fault_samples_seen.entry(stack).or_default();
            let new = count.saturating_sub(*seen);
            *seen = count;
            self.touch(unwound, new * period, ts_ns);
        }
    }

    /// `faults` page faults at `stack` (as unwound).
    fn touch(&mut self, stack: u64, faults: u64, ts_ns: u64) {
        if faults == 0 || self.torn_down_at.is_some() {
            return;
        }
        let site = self.heap.intern(SiteKey::heap(Probe::PageFault, stack));
        self.heap.touch(site, faults * PAGE_SIZE, ts_ns);
    }

    /// Names JS frames from now on with `namer`.
    pub fn set_js_namer(&mut self, namer: JsNamer) {
        self.js_namer = Some(namer);
    }

    /// The JS frames of a stack, aligned with its frames; empty when it has none.
    pub fn js_frames(&self, hash: u64) -> Vec<&[JsFrame]> {
        self.js_frames
            .get(&hash)
            .map(|js| js.iter().map(Vec::as_slice).collect())
            .unwrap_or_default()
    }

    /// A page-fault stack as walked, by the stack unwound for it.
    fn fault_unwound(&self, hash: u64) -> u64 {
        self.fault_unwound.get(&hash).copied().unwrap_or(hash)
    }

    /// A page-fault stack (as walked), completed by unwinding.
    pub fn fault_stack(&self, hash: u64) -> &[u64] {
        self.stack(self.fault_unwound(hash)).unwrap_or_default()
    }

    /// Where the program break is before any brk event is seen, from
    /// /proc: growth above it is recorded as a mapping.
    pub fn read_program_break(&mut self, pid: u32) {
        self.program_break = crate::target::program_break(pid).or(self.program_break);
    }

    /// The JS frames of a page-fault stack, aligned with `fault_stack`.
    pub fn fault_js_frames(&self, hash: u64) -> Vec<&[JsFrame]> {
        self.js_frames(self.fault_unwound(hash))
    }

    /// The break moved to `new_break`: growth is new memory of `site`, a
    /// shrink releases the top of the heap. The first event of a process
    /// whose break was not known only sets it.
    fn move_break(&mut self, new_break: u64, ts_ns: u64, site: u32) {
        let old_break = self.program_break.replace(new_break).unwrap_or(new_break);
        if new_break > old_break {
            self.heap.map(old_break, new_break - old_break, ts_ns, site, false);
        } else if new_break < old_break {
            self.heap.unmap(new_break, old_break - new_break, ts_ns);
        }
    }

    fn seconds_since_start(&self, ts_ns: u64) -> f64 {
        ts_ns.saturating_sub(self.started_ns) as f64 / 1e9
    }

    /// The frames of a stack by content hash, innermost first; None when it
    /// was lost (hash 0, or its record was dropped).
    pub fn stack(&self, hash: u64) -> Option<&[u64]> {
        self.stacks.get(&hash).map(Vec::as_slice)
    }

    /// Distinct stacks known.
    pub fn stack_count(&self) -> usize {
        self.stacks.len()
    }

    /// Re-reads the target's mappings after it mapped new code. A process
    /// that is gone keeps the modules seen so far.
    pub fn refresh_modules_if_changed(&mut self) {
        if std::mem::take(&mut self.modules_changed) {
            self.refresh_modules();
        }
    }

    pub fn refresh_modules(&mut self) {
        if let Err(e) = self.modules.refresh() {
            log::debug!("cannot re-read the target's mappings: {e}");
        }
        if let Some(rules) = &mut self.unwind_rules {
            rules.modules_changed(&self.modules);
        }
    }
}

/// A stack record, sent whole or without its JS slots (then all zero).
/// Whether a frame's JS frames say it moved.
fn is_moved(frames: &[JsFrame]) -> bool {
    frames.first().is_some_and(|f| f.function == JsFrame::MOVED)
}

fn read_stack_record(record: &[u8]) -> Option<StackRecord> {
    if record.len() < StackRecord::WITHOUT_JS {
        return None;
    }
    let mut whole = vec![0u8; size_of::<StackRecord>()];
    let len = record.len().min(whole.len());
    whole[..len].copy_from_slice(&record[..len]);
    read_record::<StackRecord>(&whole)
}

fn read_record<T: Copy>(record: &[u8]) -> Option<T> {
    (record.len() >= size_of::<T>()).then(|| {
        // SAFETY: length checked; the type is plain data; the read is unaligned-safe.
        unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) }
    })
}
