//! Names JS frames from the slots the kernel side read: the function's
//! SharedFunctionInfo (its name and Script), and for interpreted frames the
//! bytecode offset, turned into a line and column through the bytecode's
//! source position table; for optimized frames (Maglev, TurboFan) the Code
//! the frame's pc is in, whose source position table gives the position and
//! inlining level, and whose DeoptimizationData the inlined functions (one
//! frame per level); for baseline (Sparkplug) frames the bytecode their pc
//! is at (the Code's bytecode offset table, walked along the bytecodes with
//! V8's own table of bytecode sizes), then as for interpreted frames.
//!
//! Old-space objects stay put between mark-compacts, so what was read of
//! them is cached by address until the next one. The kernel side stamps each
//! stack with the target's mark-compact epoch ([`leak_common::gc_epoch`]),
//! and the objects its slots point at are read later: a stack is named only
//! from what was read in its own epoch ([`JsNamer::name_stack`]), else its
//! JS frames say they moved ([`JsFrame::moved`]), never a wrong name.

use std::collections::HashMap;
use std::sync::Arc;

use leak_common::{gc_epoch, JsFrameSlots};

use super::memory::ProcessMemory;
use super::metadata::{CodeLayout, Layout, PositionCodes};

/// What a JS frame is: its function, script and, where known, the line and
/// column it is executing (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsFrame {
    /// The function's name, its inferred name for an anonymous function, else `(anonymous)`.
    pub function: String,
    pub script: Option<String>,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

impl JsFrame {
    /// What a JS frame is named when its objects may have moved since its
    /// stack was taken (by a mark-compact), before they were read.
    pub const MOVED: &str = "[v8 jit: moved by a GC]";

    /// A JS frame whose objects may have moved before they were read.
    pub fn moved() -> JsFrame {
        JsFrame {
            function: JsFrame::MOVED.to_string(),
            script: None,
            line: None,
            column: None,
        }
    }
}

/// Reads the target's current mark-compact epoch (None: it cannot be read).
pub type EpochReader = Box<dyn Fn() -> Option<u64> + Send>;

/// The longest name read; longer ones are not names.
const MAX_NAME: usize = 1024;
/// How deep a cons string is followed.
const MAX_STRING_DEPTH: u32 = 16;

struct ScriptInfo {
    name: Option<String>,
    /// Positions of the line terminators.
    line_ends: Vec<u32>,
}

struct SharedInfo {
    name: String,
    script: Option<Arc<ScriptInfo>>,
    /// Its function data: its bytecode, or its baseline Code.
    function_data: u64,
}

/// Names the JS frames of one process.
pub struct JsNamer {
    pid: u32,
    /// Opened on first use: in launch mode the target execs node only
    /// after the namer is made, and the memory file follows one program.
    memory: Option<ProcessMemory>,
    /// (device, inode) of the executable whose layout this is.
    executable: Option<(u64, u64)>,
    layout: Layout,
    shared: HashMap<u64, Option<Arc<SharedInfo>>>,
    scripts: HashMap<u64, Option<Arc<ScriptInfo>>>,
    /// Source position tables by BytecodeArray: (bytecode offset, source position).
    positions: HashMap<u64, Option<Arc<PositionTable>>>,
    /// Baseline and optimized code by its first instruction.
    code: std::collections::BTreeMap<u64, Arc<CompiledCode>>,
    /// The map of InstructionStream (or, on V8 10, Code) objects, once one was found.
    code_map: Option<u64>,
    /// Return addresses found in no baseline or optimized code (builtins).
    not_compiled: std::collections::HashSet<u64>,
    /// V8's large-object code pages: start and size. Large objects never
    /// move, so they are kept across mark-compacts.
    large_code_pages: std::collections::BTreeMap<u64, u64>,
    /// The target's mark-compact epoch now; None: stacks are named from
    /// what is read whatever their epoch (the caches are then dropped at
    /// each mark-compact's end event only).
    current_epoch: Option<EpochReader>,
    /// The epoch every cached object was read (and checked) in.
    cached_epoch: u64,
}

/// (code offset, raw source position) pairs, in code order; offset -1 is
/// the function entry (bytecode tables have it: the entry's stack check).
type PositionTable = Vec<(i64, u64)>;

/// What a baseline or optimized Code object tells of the frames it runs.
struct CompiledCode {
    code: u64,
    start: u64,
    end: u64,
    tier: Tier,
}

enum Tier {
    Optimized {
        positions: PositionTable,
        /// Of each inlining id: the SharedFunctionInfo inlined, and the raw
        /// position it was inlined at (in the level above).
        inlined: Vec<(u64, u64)>,
    },
    Baseline {
        bytecode_array: u64,
        /// (end of a pc range, the bytecode offset it runs; -1: the prologue), in pc order.
        bytecodes: Vec<(u64, i64)>,
    },
}

/// How far before a return address the start of its Code is looked for:
/// a regular code page (bigger code is in large-object space, not named).
const MAX_CODE_SCAN: u64 = 256 << 10;
/// How far into a large-object code page its object is looked for.
const LARGE_CODE_HEADER_SCAN: u64 = 16 << 10;
/// Instructions start at least this aligned (64 on x64 from V8 10 on, measured).
const CODE_ALIGNMENT: u64 = 32;
/// The deepest inlining followed.
const MAX_INLINING_DEPTH: usize = 64;

fn is_heap_object(word: u64) -> bool {
    word & 3 == 1
}

/// A 64-bit SMI: the value in the upper half, zeros below.
fn smi(word: u64) -> Option<i64> {
    (word & 0xffff_ffff == 0).then_some((word as i64) >> 32)
}

impl JsNamer {
    /// A namer for process `pid`, whose node executable is `executable` as
    /// seen from here (None: V8 is in a library).
    pub fn new(pid: u32, executable: Option<&std::path::Path>, layout: Layout) -> JsNamer {
        use std::os::unix::fs::MetadataExt as _;
        JsNamer {
            pid,
            memory: None,
            executable: executable
                .and_then(|path| std::fs::metadata(path).ok())
                .map(|m| (m.dev(), m.ino())),
            layout,
            shared: HashMap::new(),
            scripts: HashMap::new(),
            positions: HashMap::new(),
            code: std::collections::BTreeMap::new(),
            code_map: None,
            not_compiled: std::collections::HashSet::new(),
            large_code_pages: std::collections::BTreeMap::new(),
            current_epoch: None,
            cached_epoch: 0,
        }
    }

    /// V8 made a large-object code page at `start` (`size` bytes).
    pub fn large_code_page(&mut self, start: u64, size: u64) {
        self.large_code_pages.insert(start, size);
    }

    /// V8 freed the page at `start` (of any space).
    pub fn page_freed(&mut self, start: u64) {
        self.large_code_pages.remove(&start);
    }

    /// Names stacks only from objects read in their own mark-compact
    /// epoch, as `current` reads it.
    pub fn validate_with(&mut self, current: EpochReader) {
        self.current_epoch = Some(current);
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The target exec'd: whether it still runs the node this layout is
    /// of (the first exec of a launched command), with its new memory.
    pub fn still_valid_after_exec(&mut self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        self.mark_compacted();
        self.memory = None;
        let now = std::fs::metadata(format!("/proc/{}/exe", self.pid)).map(|m| (m.dev(), m.ino()));
        self.executable.is_some() && now.ok() == self.executable
    }

    /// A mark-compact may have moved every object: forget them all.
    pub fn mark_compacted(&mut self) {
        self.shared.clear();
        self.scripts.clear();
        self.positions.clear();
        self.code.clear();
        self.code_map = None;
        self.not_compiled.clear();
    }

    /// The JS frames of a stack taken in mark-compact epoch `epoch`, frame
    /// k at `pcs[k]` with the slots `slots[k]` (as [`JsNamer::name`]). None
    /// when what the slots point at may have moved before it was read: a
    /// mark-compact was running when the stack was taken, or one began
    /// while it was read (the caller then says the frames moved). A stack
    /// of an epoch already past is read in the current one, each frame
    /// only if it is still what was taken (see [`JsNamer::still_in_place`]),
    /// else said to have moved.
    pub fn name_stack(&mut self, epoch: u64, slots: &[JsFrameSlots], pcs: &[u64]) -> Option<Vec<Vec<JsFrame>>> {
        if slots.iter().all(|s| s.shared == 0) {
            return Some(vec![Vec::new(); slots.len()]);
        }
        let mut read_in = epoch;
        if let Some(current) = &self.current_epoch {
            if gc_epoch::is_compacting(epoch) {
                return None;
            }
            if epoch < self.cached_epoch {
                read_in = current().filter(|&now| !gc_epoch::is_compacting(now))?;
            }
            // Epochs only grow: what was read in an older one is not kept.
            if read_in > self.cached_epoch {
                self.mark_compacted();
                self.cached_epoch = read_in;
            }
        }
        self.open_memory();
        let reads_before = self.mem().map_or(0, ProcessMemory::reads);
        let frames = slots
            .iter()
            .zip(pcs)
            .map(|(slots, &pc)| {
                if read_in != epoch && slots.shared != 0 && !self.still_in_place(slots) {
                    vec![JsFrame::moved()]
                } else {
                    self.name(slots, pc)
                }
            })
            .collect();
        let read_now = self.mem().map_or(0, ProcessMemory::reads) != reads_before;
        if let Some(current) = self.current_epoch.as_ref().filter(|_| read_now) {
            // Read after the objects: if the epoch is still the one read
            // in, no object moved while they were read.
            let now = current();
            if now != Some(read_in) {
                self.mark_compacted();
                self.cached_epoch = now.unwrap_or(read_in);
                return None;
            }
        }
        Some(frames)
    }

    /// Whether an interpreted frame's function and bytecode, as the kernel
    /// side took them in an earlier epoch, are still where they were: the
    /// SharedFunctionInfo there has that BytecodeArray as its function
    /// data. Had either moved, another function's objects would have to be
    /// at both old places, linked alike. Other frames are not checked this
    /// way (not still in place).
    fn still_in_place(&self, slots: &JsFrameSlots) -> bool {
        let types = self.layout.types;
        slots.bytecode_offset != 0
            && self.instance_type(slots.shared) == Some(types.shared_function_info)
            && self.instance_type(slots.bytecode_array) == Some(types.bytecode_array)
            && self.field(slots.shared, self.layout.offsets.sfi_function_data) == Some(slots.bytecode_array)
    }

    /// The JS frames `slots` describe, the frame's function running at
    /// return address `pc`: innermost first, one per inlining level; empty
    /// when they are not a JS frame (or no longer readable as one).
    fn name(&mut self, slots: &JsFrameSlots, pc: u64) -> Vec<JsFrame> {
        if slots.shared == 0 {
            return Vec::new();
        }
        self.open_memory();
        // The kernel side keeps the offset slot of interpreted frames only
        // (a SMI counted from the tagged array pointer: never zero).
        if slots.bytecode_offset == 0 {
            if let Some(levels) = self.compiled_levels(slots.shared, pc) {
                return levels;
            }
        }
        let position = self.interpreted_position(slots);
        self.function_at(slots.shared, position).into_iter().collect()
    }

    /// The JS frames of a frame found by unwinding a copy of the stack, not
    /// by the kernel side's walk: the slots below its frame pointer `fp`
    /// (0: not known), read from the copy by `stack_word`, are checked as
    /// the kernel side checks them (a heap-object context and a JSFunction
    /// by its map), the function read from the target's memory. Read later
    /// than the kernel side would, a function a scavenge moved since is not
    /// one any more: the frame is then left unnamed.
    pub fn name_copied_frame(&mut self, stack_word: impl Fn(u64) -> Option<u64>, fp: u64, pc: u64) -> Vec<JsFrame> {
        let frame = self.layout.frame;
        if fp == 0 {
            return Vec::new();
        }
        let slot = |offset: i64| stack_word(fp.wrapping_add_signed(offset)).unwrap_or(0);
        let (context, function) = (slot(frame.fp_context), slot(frame.fp_function));
        if frame.enabled == 0 || !is_heap_object(context) {
            return Vec::new();
        }
        self.open_memory();
        let is_function = self
            .instance_type(function)
            .is_some_and(|t| (frame.first_js_function_type..=frame.last_js_function_type).contains(&u64::from(t)));
        let Some(shared) = is_function
            .then(|| self.field(function, frame.function_shared))
            .flatten()
        else {
            return Vec::new();
        };
        // As the kernel side: only interpreted frames keep a bytecode offset (a SMI).
        let bytecode_offset = slot(frame.fp_bytecode_offset);
        let interpreted = bytecode_offset & 0xffff_ffff == 0;
        let slots = JsFrameSlots {
            shared,
            bytecode_array: if interpreted { slot(frame.fp_bytecode_array) } else { 0 },
            bytecode_offset: if interpreted { bytecode_offset } else { 0 },
        };
        self.name(&slots, pc)
    }

    fn mem(&self) -> Option<&ProcessMemory> {
        self.memory.as_ref()
    }

    /// The instance type of the object `tagged` points at.
    fn instance_type(&self, tagged: u64) -> Option<u16> {
        if !is_heap_object(tagged) {
            return None;
        }
        let map = self.mem()?.u64(tagged - 1 + self.layout.offsets.map)?;
        if !is_heap_object(map) {
            return None;
        }
        self.mem()?.u16(map - 1 + self.layout.offsets.instance_type)
    }

    /// The tagged field at `offset` of the object `tagged` points at (None
    /// when `tagged` is no heap object: a field read from a moved object
    /// may be anything).
    fn field(&self, tagged: u64, offset: u64) -> Option<u64> {
        is_heap_object(tagged).then_some(())?;
        self.mem()?.u64(tagged.wrapping_sub(1).wrapping_add(offset))
    }

    fn shared_info(&mut self, tagged: u64) -> Option<Arc<SharedInfo>> {
        if let Some(cached) = self.shared.get(&tagged) {
            return cached.clone();
        }
        let info = self.read_shared_info(tagged).map(Arc::new);
        self.shared.insert(tagged, info.clone());
        info
    }

    fn read_shared_info(&mut self, tagged: u64) -> Option<SharedInfo> {
        if self.instance_type(tagged)? != self.layout.types.shared_function_info {
            return None;
        }
        let offsets = self.layout.offsets;
        let name_or_scope = self.field(tagged, offsets.sfi_name_or_scope_info)?;
        let (name, inferred) = if self.instance_type(name_or_scope) == Some(self.layout.types.scope_info) {
            self.scope_info_names(name_or_scope)?
        } else if smi(name_or_scope).is_some() {
            // kNoSharedNameSentinel: an anonymous function.
            (String::new(), None)
        } else {
            (self.string(name_or_scope, MAX_NAME)?, None)
        };
        let name = match (name.is_empty(), inferred.filter(|n| !n.is_empty())) {
            (false, _) => name,
            (true, Some(inferred)) => inferred,
            (true, None) => "(anonymous)".to_string(),
        };
        let script = self.field(tagged, offsets.sfi_script).and_then(|s| self.script(s));
        let function_data = self.field(tagged, offsets.sfi_function_data)?;
        Some(SharedInfo {
            name,
            script,
            function_data,
        })
    }

    /// A function scope's name and inferred name, from the slots that
    /// follow its context locals; None when the layout cannot be followed.
    fn scope_info_names(&self, scope_info: u64) -> Option<(String, Option<String>)> {
        let layout = self.layout.scope_info;
        let slot = |index: u64| self.field(scope_info, 8 + 8 * index);
        let flags = if layout.flags_are_smi {
            smi(slot(0)?)? as u64
        } else {
            slot(0)? & 0xffff_ffff
        };
        let locals = u64::try_from(smi(slot(layout.context_local_count_slot)?)?).ok()?;
        if locals >= layout.max_inlined_locals {
            return None;
        }
        // Each context local has a name and an info slot.
        let mut index = layout.first_local_slot + 2 * locals;
        if flags >> layout.has_saved_class_variable_bit & 1 != 0 {
            index += 1;
        }
        let mut name = String::new();
        if flags >> layout.function_variable_shift & 3 != 0 {
            let word = slot(index)?;
            // The name, or Smi zero for none.
            if smi(word) != Some(0) {
                name = self.string(word, MAX_NAME)?;
            }
            index += 2;
        }
        let has_inferred = flags >> (layout.function_variable_shift + 2) & 1 != 0;
        let inferred = if has_inferred {
            slot(index).and_then(|word| self.string(word, MAX_NAME))
        } else {
            None
        };
        Some((name, inferred))
    }

    fn script(&mut self, tagged: u64) -> Option<Arc<ScriptInfo>> {
        if let Some(cached) = self.scripts.get(&tagged) {
            return cached.clone();
        }
        let info = self.read_script(tagged).map(Arc::new);
        self.scripts.insert(tagged, info.clone());
        info
    }

    fn read_script(&self, tagged: u64) -> Option<ScriptInfo> {
        if self.instance_type(tagged)? != self.layout.types.script {
            return None;
        }
        let offsets = self.layout.offsets;
        let name = self
            .field(tagged, offsets.script_name)
            .and_then(|n| self.string(n, MAX_NAME));
        let line_ends = self
            .field(tagged, offsets.script_line_ends)
            .and_then(|l| self.line_ends(l))
            .or_else(|| {
                // Not computed yet (V8 does on the first stack trace): from the source.
                let source = self.field(tagged, offsets.script_source)?;
                let text = self.string(source, super::memory::MAX_READ)?;
                Some(line_ends_of(&text))
            })
            .unwrap_or_default();
        Some(ScriptInfo { name, line_ends })
    }

    /// A FixedArray of SMIs.
    fn line_ends(&self, tagged: u64) -> Option<Vec<u32>> {
        if self.instance_type(tagged)? != self.layout.types.fixed_array {
            return None;
        }
        let offsets = self.layout.offsets;
        let len = usize::try_from(smi(self.field(tagged, offsets.fixed_array_length)?)?).ok()?;
        let bytes = self
            .mem()?
            .bytes(tagged - 1 + offsets.fixed_array_data, len.checked_mul(8)?)?;
        bytes
            .chunks_exact(8)
            .map(|w| smi(u64::from_le_bytes(w.try_into().expect("8 bytes"))).and_then(|v| u32::try_from(v).ok()))
            .collect()
    }

    /// The source position an interpreted frame is at: its bytecode offset
    /// slot is a SMI, its bytecode array slot a BytecodeArray.
    fn interpreted_position(&mut self, slots: &JsFrameSlots) -> Option<u32> {
        let raw_offset = smi(slots.bytecode_offset)?;
        let table = self.position_table(slots.bytecode_array)?;
        // The slot counts from the tagged array pointer, not from the bytecodes.
        let offset = raw_offset - (self.layout.offsets.bytecode_data as i64 - 1);
        script_offset(position_at(&table, offset)?)
    }

    fn position_table(&mut self, bytecode_array: u64) -> Option<Arc<PositionTable>> {
        if let Some(cached) = self.positions.get(&bytecode_array) {
            return cached.clone();
        }
        let table = self.read_position_table(bytecode_array).map(Arc::new);
        self.positions.insert(bytecode_array, table.clone());
        table
    }

    fn read_position_table(&self, bytecode_array: u64) -> Option<PositionTable> {
        let field = self.layout.offsets.bytecode_position_table?;
        if self.instance_type(bytecode_array)? != self.layout.types.bytecode_array {
            return None;
        }
        let table = self.field(bytecode_array, field)?;
        if self.instance_type(table)? != self.layout.types.position_table {
            return None;
        }
        self.decode_table(table)
    }

    /// The source position table `table` (already checked to be one).
    fn decode_table(&self, table: u64) -> Option<PositionTable> {
        decode_position_table(&self.byte_array(table)?, self.layout.position_codes)
    }

    /// The bytes of a ByteArray (its type checked by the caller).
    fn byte_array(&self, tagged: u64) -> Option<Vec<u8>> {
        let offsets = self.layout.offsets;
        let len = usize::try_from(smi(self.field(tagged, offsets.fixed_array_length)?)?).ok()?;
        // A ByteArray's bytes follow its length, like a FixedArray's slots.
        self.mem()?.bytes(tagged - 1 + offsets.fixed_array_data, len)
    }

    /// Slot `index` of the FixedArray-like `array`, if it has that many.
    fn array_slot(&self, array: u64, index: u64) -> Option<u64> {
        let offsets = self.layout.offsets;
        let len = u64::try_from(smi(self.field(array, offsets.fixed_array_length)?)?).ok()?;
        (index < len).then_some(())?;
        self.field(array, offsets.fixed_array_data + 8 * index)
    }

    /// A string's characters (at most `max` of them), or None when `tagged`
    /// is not a string leakscope can read.
    fn string(&self, tagged: u64, max: usize) -> Option<String> {
        let mut out = String::new();
        self.append_string(tagged, max, MAX_STRING_DEPTH, &mut out)?;
        Some(out)
    }

    fn append_string(&self, tagged: u64, max: usize, depth: u32, out: &mut String) -> Option<()> {
        let instance_type = self.instance_type(tagged)?;
        let tags = self.layout.strings;
        if instance_type >= self.layout.types.first_nonstring || depth == 0 {
            return None;
        }
        let offsets = self.layout.offsets;
        let len = usize::try_from(self.mem()?.u32(tagged - 1 + offsets.string_length)?).ok()?;
        if out.len() + len > max {
            return None;
        }
        let one_byte = instance_type & tags.encoding_mask == tags.one_byte;
        let chars = |at: u64, out: &mut String| -> Option<()> {
            if one_byte {
                out.extend(self.mem()?.bytes(at, len)?.into_iter().map(char::from));
            } else {
                let units: Vec<u16> = self
                    .mem()?
                    .bytes(at, len.checked_mul(2)?)?
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                out.push_str(&String::from_utf16_lossy(&units));
            }
            Some(())
        };
        match instance_type & tags.representation_mask {
            r if r == tags.seq => chars(tagged - 1 + offsets.seq_chars, out),
            r if r == tags.external => {
                let data = self.field(tagged, offsets.external_data)?;
                (data != 0).then_some(())?;
                chars(data, out)
            }
            r if r == tags.cons => {
                let first = self.field(tagged, offsets.cons_first)?;
                let second = self.field(tagged, offsets.cons_second)?;
                self.append_string(first, max, depth - 1, out)?;
                self.append_string(second, max, depth - 1, out)
            }
            r if r == tags.thin => self.append_string(self.field(tagged, offsets.thin_actual)?, max, depth - 1, out),
            r if r == tags.sliced => {
                let parent = self.field(tagged, offsets.sliced_parent)?;
                let start = usize::try_from(smi(self.field(tagged, offsets.sliced_offset)?)?).ok()?;
                let mut whole = String::new();
                self.append_string(parent, super::memory::MAX_READ, depth - 1, &mut whole)?;
                out.extend(whole.chars().skip(start).take(len));
                Some(())
            }
            _ => None,
        }
    }
}

/// Baseline and optimized frames: the Code their return address is in.
impl JsNamer {
    /// The frames of baseline or optimized code running `shared` at return
    /// address `pc`, innermost first; None when `pc` is in no such Code
    /// leakscope can read (the caller then names the function alone).
    fn compiled_levels(&mut self, shared: u64, pc: u64) -> Option<Vec<JsFrame>> {
        let code = self.compiled_code(pc)?;
        let (positions, inlined) = match &code.tier {
            Tier::Optimized { positions, inlined } => (positions, inlined),
            Tier::Baseline {
                bytecode_array,
                bytecodes,
            } => {
                // As V8 does: the first pc range that ends at or after pc.
                // A return into the prologue (a call from the function's
                // entry: its stack and interrupt checks) is at bytecode -1,
                // the function entry.
                let offset = pc - code.start;
                // The Code at pc must be the frame's function's: its function
                // data is that Code, or the bytecode the Code was compiled from.
                let data = self.shared_info(shared)?.function_data;
                if data != code.code && data != *bytecode_array {
                    return None;
                }
                let &(_, bytecode) = bytecodes.iter().find(|(end, _)| *end >= offset)?;
                let table = self.position_table(*bytecode_array)?;
                let raw = position_at(&table, bytecode)?;
                return Some(vec![self.function_at(shared, script_offset(raw))?]);
            }
        };
        // A return address follows its call: V8 looks the call up one byte before.
        let offset = i64::try_from(pc.checked_sub(code.start + 1)?).ok()?;
        let mut raw = position_at(positions, offset)?;
        let mut levels = Vec::new();
        while let Some(id) = inlining_id(raw) {
            let &(function, at) = inlined.get(id)?;
            levels.push((function, raw));
            raw = at;
            if levels.len() > MAX_INLINING_DEPTH {
                return None;
            }
        }
        levels.push((shared, raw));
        levels
            .into_iter()
            .map(|(function, raw)| self.function_at(function, script_offset(raw)))
            .collect()
    }

    fn compiled_code(&mut self, pc: u64) -> Option<Arc<CompiledCode>> {
        if let Some((_, code)) = self.code.range(..=pc).next_back().filter(|(_, c)| pc <= c.end) {
            return Some(code.clone());
        }
        if self.not_compiled.contains(&pc) {
            return None;
        }
        let found = self.layout.code.and_then(|layout| {
            let (code, start, end) = self
                .find_code(pc, layout)
                .or_else(|| self.find_large_code(pc, layout))?;
            self.read_code(code, start, end, layout)
        });
        match found {
            Some(code) => {
                let code = Arc::new(code);
                self.code.insert(code.start, code.clone());
                Some(code)
            }
            None => {
                self.not_compiled.insert(pc);
                None
            }
        }
    }

    /// The Code whose instructions hold `pc`, as (Code, instruction start,
    /// end): the nearest object before `pc`, at an aligned instruction
    /// start, whose map is that of the objects holding instructions and
    /// whose Code says it spans `pc`.
    fn find_code(&mut self, pc: u64, layout: CodeLayout) -> Option<(u64, u64, u64)> {
        const CHUNK: u64 = 4096;
        let header = layout.instructions_header;
        let lowest = pc.saturating_sub(MAX_CODE_SCAN).max(header);
        let mut high = pc & !(CODE_ALIGNMENT - 1);
        while high >= lowest {
            let low = (high.saturating_sub(CHUNK).max(lowest) + CODE_ALIGNMENT - 1) & !(CODE_ALIGNMENT - 1);
            let words = self.mem()?.bytes(low - header, usize::try_from(high - low + 8).ok()?)?;
            for start in (low..=high).rev().step_by(CODE_ALIGNMENT as usize) {
                let at = usize::try_from(start - low).ok()?;
                let word = u64::from_le_bytes(words[at..at + 8].try_into().expect("8 bytes"));
                if !self.is_code_holder_map(word, layout) {
                    continue;
                }
                if let Some((code, end)) = self.code_spanning(start - header + 1, start, pc, layout) {
                    self.code_map = Some(word);
                    return Some((code, start, end));
                }
            }
            high = low.checked_sub(CODE_ALIGNMENT)?;
        }
        None
    }

    /// The Code of a large-object code page (V8's page hooks saw it made)
    /// holding `pc`: its one object starts near the page's start (after
    /// the page header and a guard page), too far before `pc` for
    /// [`JsNamer::find_code`] once the code is over its scan.
    fn find_large_code(&mut self, pc: u64, layout: CodeLayout) -> Option<(u64, u64, u64)> {
        const PAGE: u64 = 4096;
        let (&page, _) = self
            .large_code_pages
            .range(..=pc)
            .next_back()
            .filter(|(&start, &size)| pc < start + size)?;
        let header = layout.instructions_header;
        for at in (page..page + LARGE_CODE_HEADER_SCAN).step_by(PAGE as usize) {
            // A guard page does not read.
            let Some(words) = self.mem().and_then(|m| m.bytes(at, PAGE as usize)) else {
                continue;
            };
            let first = (at + header).next_multiple_of(CODE_ALIGNMENT);
            for start in (first..at + PAGE + header - 8).step_by(CODE_ALIGNMENT as usize) {
                let Ok(offset) = usize::try_from(start - header - at) else {
                    continue;
                };
                let word = u64::from_le_bytes(words[offset..offset + 8].try_into().expect("8 bytes"));
                if !self.is_code_holder_map(word, layout) {
                    continue;
                }
                if let Some((code, end)) = self.code_spanning(start - header + 1, start, pc, layout) {
                    return Some((code, start, end));
                }
            }
        }
        None
    }

    /// Whether `word` is the map of InstructionStreams (V8 10: of Codes).
    fn is_code_holder_map(&self, word: u64, layout: CodeLayout) -> bool {
        match self.code_map {
            Some(map) => word == map,
            None => {
                let holder = layout.instruction_stream_type.unwrap_or(layout.code_type);
                is_heap_object(word)
                    && self
                        .mem()
                        .and_then(|m| m.u16(word - 1 + self.layout.offsets.instance_type))
                        == Some(holder)
            }
        }
    }

    /// The Code of `holder` (an InstructionStream, or the Code itself on V8
    /// 10) and the end of its instructions, if they start at `start` and span `pc`.
    fn code_spanning(&self, holder: u64, start: u64, pc: u64, layout: CodeLayout) -> Option<(u64, u64)> {
        let code = match layout.instruction_start {
            Some(field) => {
                let code = self.field(holder, layout.stream_code)?;
                (self.field(code, field)? == start).then_some(code)?
            }
            None => holder,
        };
        if self.instance_type(code)? != layout.code_type {
            return None;
        }
        let end = start + u64::from(self.mem()?.u32(code - 1 + layout.instruction_size)?);
        (pc <= end).then_some((code, end))
    }

    /// What baseline or optimized Code `code` tells of its frames (None for
    /// other kinds of code: builtins, stubs).
    fn read_code(&self, code: u64, start: u64, end: u64, layout: CodeLayout) -> Option<CompiledCode> {
        let flags = self.mem()?.u32(code - 1 + layout.flags)?;
        let kind = (flags >> layout.kind_shift) & layout.kind_mask;
        // Both tables are byte arrays of the same type as bytecode's.
        let table = self.field(code, layout.position_table)?;
        if self.instance_type(table)? != self.layout.types.position_table {
            return None;
        }
        let tier = if kind == layout.kind_baseline {
            let mut bytecode_array = self.field(code, layout.deoptimization_data)?;
            // With --interpreted-frames-native-stack: InterpreterData, the
            // bytecode array its first field after the map.
            if Some(self.instance_type(bytecode_array)?) == layout.interpreter_data_type {
                bytecode_array = self.field(bytecode_array, 8)?;
            }
            let bytecodes = self.baseline_bytecodes(table, bytecode_array)?;
            Tier::Baseline {
                bytecode_array,
                bytecodes,
            }
        } else if kind == layout.kind_baseline + 1 || kind == layout.kind_baseline + 2 {
            // MAGLEV and TURBOFAN follow BASELINE in CodeKind.
            Tier::Optimized {
                positions: self.decode_table(table)?,
                // Unreadable: positions with an inlining id then give no frames.
                inlined: self.inlined_functions(code, layout).unwrap_or_default(),
            }
        } else {
            return None;
        };
        Some(CompiledCode { code, start, end, tier })
    }

    /// The pc ranges of baseline code and the bytecodes they run: its
    /// bytecode offset table holds the length of each bytecode's code (VLQ),
    /// the prologue's first, then one per bytecode in bytecode order.
    fn baseline_bytecodes(&self, table: u64, bytecode_array: u64) -> Option<Vec<(u64, i64)>> {
        let sizes = self.layout.bytecode_sizes.as_ref()?;
        if self.instance_type(bytecode_array)? != self.layout.types.bytecode_array {
            return None;
        }
        let offsets = self.layout.offsets;
        let len = usize::try_from(smi(self.field(bytecode_array, offsets.fixed_array_length)?)?).ok()?;
        let code = self.mem()?.bytes(bytecode_array - 1 + offsets.bytecode_data, len)?;
        let lengths = decode_unsigned_vlqs(&self.byte_array(table)?)?;
        let (mut end, mut bytecode, mut next) = (0u64, -1i64, 0usize);
        let mut ranges = Vec::with_capacity(lengths.len());
        for (i, length) in lengths.into_iter().enumerate() {
            if i > 0 {
                bytecode = i64::try_from(next).ok()?;
                next += sizes.size_at(code.get(next..)?)?;
            }
            end += length;
            ranges.push((end, bytecode));
        }
        Some(ranges)
    }

    /// Of each inlining id of `code`: the inlined SharedFunctionInfo and the
    /// raw position it was inlined at.
    fn inlined_functions(&self, code: u64, layout: CodeLayout) -> Option<Vec<(u64, u64)>> {
        let data = self.field(code, layout.deoptimization_data)?;
        if self.instance_type(data)? != layout.deoptimization_data_type {
            return None;
        }
        let count = u64::try_from(smi(self.array_slot(data, layout.inlined_function_count_index)?)?).ok()?;
        let literals = self.array_slot(data, layout.literal_array_index)?;
        if self.instance_type(literals)? != layout.literal_array_type {
            return None;
        }
        let positions = self.array_slot(data, layout.inlining_positions_index)?;
        if self.instance_type(positions)? != layout.inlining_positions_type {
            return None;
        }
        // InliningPosition: the raw SourcePosition (8 bytes), the literal
        // index of the inlined function (4 bytes), padding.
        self.byte_array(positions)?
            .chunks_exact(16)
            .map(|entry| {
                let position = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
                let function = u64::from(u32::from_le_bytes(entry[8..12].try_into().expect("4 bytes")));
                (function < count).then_some(())?;
                // A weak reference has bit 1 set.
                let shared = self.array_slot(literals, function)? & !2;
                Some((shared, position))
            })
            .collect()
    }
}

/// Names of heap objects other than frames, for the heap census.
impl JsNamer {
    fn open_memory(&mut self) {
        if self.memory.is_none() {
            self.memory = ProcessMemory::open(self.pid)
                .map_err(|e| log::debug!("JS frames are not named: {e:#}"))
                .ok();
        }
    }

    /// The characters of the string at `tagged` (None: not a string, or too long for a name).
    pub fn string_at(&mut self, tagged: u64) -> Option<String> {
        self.open_memory();
        self.string(tagged, MAX_NAME)
    }

    /// The function of SharedFunctionInfo `shared`, with the line and
    /// column of source `position` in its script.
    pub fn function_at(&mut self, shared: u64, position: Option<u32>) -> Option<JsFrame> {
        self.open_memory();
        let info = self.shared_info(shared)?;
        let (line, column) = match (position, &info.script) {
            (Some(position), Some(script)) => {
                let (line, column) = line_and_column(&script.line_ends, position);
                (Some(line), Some(column))
            }
            _ => (None, None),
        };
        Some(JsFrame {
            function: info.name.clone(),
            script: info.script.as_ref().and_then(|s| s.name.clone()),
            line,
            column,
        })
    }

    /// The name of the function whose scope ScopeInfo `scope_info` describes.
    pub fn scope_function_name(&mut self, scope_info: u64) -> Option<String> {
        self.open_memory();
        if self.instance_type(scope_info)? != self.layout.types.scope_info {
            return None;
        }
        let (name, inferred) = self.scope_info_names(scope_info)?;
        Some(if name.is_empty() { inferred? } else { name })
    }
}

/// V8's source position table: pairs of VLQ numbers, the code offset
/// delta (how it is encoded: [`PositionCodes`]) and the zig-zag raw
/// source position delta. Offsets start at -1, the function entry.
/// Returns (code offset, raw source position), in order.
fn decode_position_table(bytes: &[u8], codes: PositionCodes) -> Option<PositionTable> {
    let mut at = 0;
    let mut next = || -> Option<u64> {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = *bytes.get(at)?;
            at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
            if shift > 63 {
                return None;
            }
        }
        Some(value)
    };
    let zigzag = |value: u64| ((value >> 1) as i64) ^ -((value & 1) as i64);
    let (mut code_offset, mut position) = (-1i64, 0i64);
    let mut table = Vec::new();
    while let Some(code) = next() {
        let position_delta = zigzag(next()?);
        code_offset += match codes {
            PositionCodes::SignedStatement => {
                let delta = zigzag(code);
                if delta >= 0 {
                    delta
                } else {
                    -delta - 1
                }
            }
            PositionCodes::FlagBits(bits) => i64::try_from(code >> bits).ok()?,
        };
        position += position_delta;
        table.push((code_offset, u64::try_from(position).ok()?));
    }
    Some(table)
}

/// A sequence of unsigned VLQ numbers (7 bits a byte, low bits first).
fn decode_unsigned_vlqs(bytes: &[u8]) -> Option<Vec<u64>> {
    let mut values = Vec::new();
    let (mut value, mut shift) = (0u64, 0);
    for &byte in bytes {
        value |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            values.push(value);
            (value, shift) = (0, 0);
        } else if shift > 63 {
            return None;
        }
    }
    (shift == 0).then_some(values)
}

/// The script offset of a raw SourcePosition: bit 0 says "external" (not
/// a script offset), bits 1..31 hold the offset plus one, the 16 bits above
/// the inlining id plus one (0 in bytecode and in code not inlined).
fn script_offset(raw: u64) -> Option<u32> {
    if raw & 1 != 0 {
        return None;
    }
    (((raw >> 1) & 0x3fff_ffff) as u32).checked_sub(1)
}

/// The inlining id of a raw SourcePosition: None where not inlined.
fn inlining_id(raw: u64) -> Option<usize> {
    (((raw >> 31) & 0xffff) as usize).checked_sub(1)
}

/// The raw position in effect at code offset `offset`: the last entry at or before it.
fn position_at(table: &[(i64, u64)], offset: i64) -> Option<u64> {
    table
        .iter()
        .take_while(|(code_offset, _)| *code_offset <= offset)
        .last()
        .map(|&(_, position)| position)
}

/// Where each line ends (the position of its terminator), as V8 computes them.
fn line_ends_of(source: &str) -> Vec<u32> {
    let mut ends: Vec<u32> = source
        .chars()
        .enumerate()
        .filter(|(_, c)| *c == '\n')
        .map(|(i, _)| i as u32)
        .collect();
    ends.push(source.chars().count() as u32);
    ends
}

/// 1-based line and column of `position`.
fn line_and_column(line_ends: &[u32], position: u32) -> (u32, u32) {
    let line = line_ends.partition_point(|&end| end < position);
    let line_start = if line == 0 { 0 } else { line_ends[line - 1] + 1 };
    (line as u32 + 1, position.saturating_sub(line_start) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_source_positions() {
        let zigzag = |v: i64| ((v << 1) ^ (v >> 63)) as u8;
        // The function entry (-1, expression: stored as 0) at 8, then (0, 10)
        // statement, +3 at +5 (statement), +2 at -1 (expression).
        let bytes = [
            0,
            zigzag(8),
            zigzag(1),
            zigzag(2),
            zigzag(3),
            zigzag(5),
            zigzag(-3),
            zigzag(-1),
        ];
        let signed = PositionCodes::SignedStatement;
        assert_eq!(
            decode_position_table(&bytes, signed),
            Some(vec![(-1, 8), (0, 10), (3, 15), (5, 14)])
        );
        // Multi-byte: 301 = 0b1_0010_1101 → zig-zag 602.
        assert_eq!(decode_position_table(&[0xda, 0x04, 0x00], signed), Some(vec![(300, 0)]));
        assert_eq!(decode_position_table(&[0x80], signed), Some(vec![]));
    }

    #[test]
    fn decodes_v8_14_source_positions() {
        // storeUpload of js_frames.js as Node 26.12.1 holds it (the bytes
        // read from its process): entries at -1 (the function entry), 0, 5,
        // 10 and 16, as --print-bytecode lists them, at positions 1036, 1047,
        // 1056, 1056, 1078.
        let bytes = [2, 180, 32, 7, 44, 22, 36, 22, 0, 27, 88];
        assert_eq!(
            decode_position_table(&bytes, PositionCodes::FlagBits(2)),
            Some(vec![(-1, 2074), (0, 2096), (5, 2114), (10, 2114), (16, 2158)])
        );
        // A baseline frame returning into its prologue runs bytecode -1:
        // the function entry's position (1036), as V8 gives it.
        let table = decode_position_table(&bytes, PositionCodes::FlagBits(2)).expect("decodes");
        assert_eq!(position_at(&table, -1).and_then(script_offset), Some(1036));
    }

    #[test]
    fn raw_positions_hold_script_offsets_plus_one() {
        assert_eq!(script_offset(2 * (1263 + 1)), Some(1263));
        assert_eq!(script_offset(1), None);
        assert_eq!(inlining_id(2 * (1263 + 1)), None);
    }

    #[test]
    fn optimized_positions_carry_inlining_ids() {
        // Offset 61 of inlined function 2 (stored as id + 1 above bit 31).
        let raw = (3u64 << 31) | (2 * (61 + 1));
        assert_eq!((script_offset(raw), inlining_id(raw)), (Some(61), Some(2)));
        let table = [(0, 10), (8, raw), (20, 30)];
        assert_eq!(position_at(&table, 7), Some(10));
        assert_eq!(position_at(&table, 8), Some(raw));
        assert_eq!(position_at(&table, 100), Some(30));
    }

    #[test]
    fn decodes_baseline_pc_lengths() {
        // 5, 300 (0b10_0101100), 0.
        assert_eq!(decode_unsigned_vlqs(&[5, 0xac, 0x02, 0]), Some(vec![5, 300, 0]));
        // A number cut short.
        assert_eq!(decode_unsigned_vlqs(&[0x80]), None);
    }

    /// Stacks are named only from reads made in their own epoch: here of
    /// this process's memory (a word that is no SharedFunctionInfo: read,
    /// then left unnamed), the epoch as a test sets it.
    #[test]
    fn names_stacks_only_within_their_epoch() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let layout = super::super::Layout::read(std::path::Path::new("/usr/bin/node")).expect("node 20 is needed");
        let mut namer = JsNamer::new(std::process::id(), None, layout);
        let epoch = Arc::new(AtomicU64::new(4));
        let now = epoch.clone();
        namer.validate_with(Box::new(move || Some(now.load(Ordering::Relaxed))));
        let words = [0u64; 2];
        let stack_at = |word: &u64| {
            [
                JsFrameSlots::default(),
                JsFrameSlots {
                    shared: std::ptr::from_ref(word) as u64 + 1,
                    ..JsFrameSlots::default()
                },
            ]
        };
        let (first, second) = (stack_at(&words[0]), stack_at(&words[1]));
        let pcs = [0, 0];
        let unnamed = Some(vec![Vec::new(), Vec::new()]);
        // No JS frame: nothing to read, whatever the epoch.
        assert_eq!(namer.name_stack(5, &first[..1], &pcs[..1]), Some(vec![Vec::new()]));
        // Taken while a mark-compact ran.
        assert_eq!(namer.name_stack(5, &first, &pcs), None);
        assert_eq!(namer.name_stack(4, &first, &pcs), unnamed);
        // A mark-compact began after the stacks were taken: what was read
        // in their epoch still names them, new reads do not.
        epoch.store(6, Ordering::Relaxed);
        assert_eq!(namer.name_stack(4, &first, &pcs), unnamed);
        assert_eq!(namer.name_stack(4, &second, &pcs), None);
        // A stack of an older epoch than the last one read in is read in
        // the current one, its frames only if still in place (a frame not
        // interpreted is not checked: moved).
        assert_eq!(namer.name_stack(6, &second, &pcs), unnamed);
        assert_eq!(
            namer.name_stack(4, &first, &pcs),
            Some(vec![Vec::new(), vec![JsFrame::moved()]])
        );
        // Unless a mark-compact runs now.
        epoch.store(7, Ordering::Relaxed);
        assert_eq!(namer.name_stack(4, &first, &pcs), None);
    }

    #[test]
    fn lines_and_columns_are_one_based() {
        let ends = line_ends_of("ab\ncd\n\nx");
        assert_eq!(ends, [2, 5, 6, 8]);
        assert_eq!(line_and_column(&ends, 0), (1, 1));
        assert_eq!(line_and_column(&ends, 2), (1, 3));
        assert_eq!(line_and_column(&ends, 3), (2, 1));
        assert_eq!(line_and_column(&ends, 7), (4, 1));
    }
}
