//! Names JS frames from the slots the kernel side read: the function's
//! SharedFunctionInfo (its name and Script), and for interpreted frames the
//! bytecode offset, turned into a line and column through the bytecode's
//! source position table.
//!
//! Old-space objects stay put between mark-compacts, so what was read of
//! them is cached by address until the next one ([`JsNamer::mark_compacted`]).

use std::collections::HashMap;
use std::sync::Arc;

use leak_common::JsFrameSlots;

use super::memory::ProcessMemory;
use super::metadata::{Layout, PositionCodes};

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
}

/// (bytecode offset, raw source position) pairs, in bytecode order.
type PositionTable = Vec<(u32, u32)>;

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
        }
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
    }

    /// The JS frame `slots` describe, or None when they are not one (or no
    /// longer readable as one).
    pub fn name(&mut self, slots: &JsFrameSlots) -> Option<JsFrame> {
        if slots.shared == 0 {
            return None;
        }
        self.open_memory();
        let position = self.interpreted_position(slots);
        self.function_at(slots.shared, position)
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

    /// The tagged field at `offset` of the object `tagged` points at.
    fn field(&self, tagged: u64, offset: u64) -> Option<u64> {
        self.mem()?.u64(tagged - 1 + offset)
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
        Some(SharedInfo { name, script })
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
        let offset = u32::try_from(offset).ok()?;
        let raw = table
            .iter()
            .take_while(|(code_offset, _)| *code_offset <= offset)
            .last()
            .map(|&(_, position)| position)?;
        script_offset(raw)
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
        let offsets = self.layout.offsets;
        let len = usize::try_from(smi(self.field(table, offsets.fixed_array_length)?)?).ok()?;
        // A ByteArray's bytes follow its length, like a FixedArray's slots.
        let bytes = self.mem()?.bytes(table - 1 + offsets.fixed_array_data, len)?;
        decode_position_table(&bytes, self.layout.position_codes)
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
/// source position delta. Offsets start at -1, the function entry (whose
/// entry, if any, is dropped). Returns (code offset, raw source position),
/// in order.
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
        if code_offset >= 0 {
            table.push((u32::try_from(code_offset).ok()?, u32::try_from(position).ok()?));
        }
    }
    Some(table)
}

/// The script offset of a raw SourcePosition: bit 0 says "external" (not
/// a script offset), bits 1..31 hold the offset plus one, the bits above
/// an inlining id (0 in bytecode).
fn script_offset(raw: u32) -> Option<u32> {
    if raw & 1 != 0 {
        return None;
    }
    ((raw >> 1) & 0x3fff_ffff).checked_sub(1)
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
            Some(vec![(0, 10), (3, 15), (5, 14)])
        );
        // Multi-byte: 301 = 0b1_0010_1101 → zig-zag 602.
        assert_eq!(decode_position_table(&[0xda, 0x04, 0x00], signed), Some(vec![(300, 0)]));
        assert_eq!(decode_position_table(&[0x80], signed), Some(vec![]));
    }

    #[test]
    fn decodes_v8_14_source_positions() {
        // storeUpload of js_frames.js as Node 26.12.1 holds it (the bytes
        // read from its process): entries at -1, 0, 5, 10 and 16, as
        // --print-bytecode lists them, at positions 1036, 1047, 1056, 1056, 1078.
        let bytes = [2, 180, 32, 7, 44, 22, 36, 22, 0, 27, 88];
        assert_eq!(
            decode_position_table(&bytes, PositionCodes::FlagBits(2)),
            Some(vec![(0, 2096), (5, 2114), (10, 2114), (16, 2158)])
        );
    }

    #[test]
    fn raw_positions_hold_script_offsets_plus_one() {
        assert_eq!(script_offset(2 * (1263 + 1)), Some(1263));
        assert_eq!(script_offset(1), None);
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
