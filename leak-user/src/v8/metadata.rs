//! V8's object layouts for one node binary: its `v8dbg_*` postmortem
//! metadata (in `.symtab` too: Node ≥ 24.11 hides them from `.dynsym`),
//! with fallbacks keyed by V8 version where the metadata lacks a field or
//! renamed it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use leak_common::V8FrameLayout;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::version::Version;

/// How many instance types after JS_FUNCTION_TYPE are JSFunctions too (the
/// constructors of builtin classes, then of classes, the last): 15 on V8
/// 10-11 (class constructors 0x821 on V8 11.3); V8 12 added one (Float16Array's),
/// measured on 12.4 (class constructors 0x822, in the maps of class instances).
fn js_function_subtypes(version: Version) -> u64 {
    if version.major < 12 {
        15
    } else {
        16
    }
}

/// The integer symbols of a binary that describe V8.
pub(super) struct Symbols {
    values: HashMap<String, i64>,
    /// `Bytecodes::kBytecodeSizes`, for baseline frames.
    bytecode_sizes: Option<BytecodeSizes>,
}

/// `v8::internal::interpreter::Bytecodes::kBytecodeSizes[3][count]`: the
/// size of each bytecode without a prefix, at operand scales 1, 2 and 4.
const BYTECODE_SIZES_SYMBOL: &str = "_ZN2v88internal11interpreter9Bytecodes14kBytecodeSizesE";

/// The sizes of a V8's bytecodes, read from its own table: baseline code
/// maps a pc to a bytecode by walking the bytecodes in order.
#[derive(Clone, Debug)]
pub struct BytecodeSizes {
    sizes: Vec<u8>,
}

impl BytecodeSizes {
    /// The size of the bytecode at the start of `code`, its prefix
    /// included. None: not a bytecode.
    pub fn size_at(&self, code: &[u8]) -> Option<usize> {
        let count = self.sizes.len() / 3;
        let first = usize::from(*code.first()?);
        // Wide, ExtraWide, DebugBreakWide, DebugBreakExtraWide: the first
        // four bytecodes, prefixes that scale the operands of the next one.
        let (prefix, scale) = match first {
            0 | 2 => (1, 1),
            1 | 3 => (1, 2),
            _ => (0, 0),
        };
        let bytecode = usize::from(*code.get(prefix)?);
        (bytecode < count).then_some(())?;
        let size = usize::from(self.sizes[scale * count + bytecode]);
        (size > 0).then_some(prefix + size)
    }
}

impl Symbols {
    /// The bytes of the table at `symbol`, if it is one of 3 rows.
    fn bytecode_sizes(file: &object::File, symbol: &object::Symbol) -> Option<BytecodeSizes> {
        let section = file.section_by_index(symbol.section_index()?).ok()?;
        let at = usize::try_from(symbol.address().checked_sub(section.address())?).ok()?;
        let len = usize::try_from(symbol.size()).ok()?;
        let sizes = section.data().ok()?.get(at..at.checked_add(len)?)?.to_vec();
        (!sizes.is_empty() && sizes.len() % 3 == 0).then_some(BytecodeSizes { sizes })
    }
}

impl Symbols {
    pub(super) fn read(path: &Path) -> Result<Symbols> {
        let handle = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        // SAFETY: a read-only private mapping of an executable in use.
        let data = unsafe { memmap2::Mmap::map(&handle) }.with_context(|| format!("cannot map {}", path.display()))?;
        let file = object::File::parse(&*data).map_err(|e| anyhow!("{} is not an ELF file: {e}", path.display()))?;
        let mut values = HashMap::new();
        let mut bytecode_sizes = None;
        for symbol in file.symbols().chain(file.dynamic_symbols()) {
            let Ok(name) = symbol.name() else { continue };
            if name == BYTECODE_SIZES_SYMBOL && bytecode_sizes.is_none() {
                bytecode_sizes = Symbols::bytecode_sizes(&file, &symbol);
            }
            if !(name.starts_with("v8dbg_") || name.starts_with("_ZN2v88internal7Version")) || symbol.size() != 4 {
                continue;
            }
            let Some(section) = symbol.section_index().and_then(|i| file.section_by_index(i).ok()) else {
                continue;
            };
            // Zero-initialised values live in .bss, which has no file data.
            let value = if section.kind() == object::SectionKind::UninitializedData {
                0
            } else {
                let Ok(bytes) = section.data() else { continue };
                let at = (symbol.address() - section.address()) as usize;
                let Some(raw) = bytes.get(at..at + 4) else { continue };
                i64::from(i32::from_le_bytes(raw.try_into().expect("4 bytes")))
            };
            values.entry(name.to_string()).or_insert(value);
        }
        Ok(Symbols { values, bytecode_sizes })
    }

    pub(super) fn int(&self, name: &str) -> Option<i64> {
        self.values.get(name).copied()
    }

    /// `v8dbg_<prefix>__<anything>`: fields and types carry their C++ type in
    /// the name, and those types get renamed (`Object`, `Tagged_Object_`...).
    fn by_prefix(&self, prefix: &str) -> Option<i64> {
        let prefix = format!("v8dbg_{prefix}__");
        let mut found = self.values.iter().filter(|(name, _)| name.starts_with(&prefix));
        let (_, &value) = found.next()?;
        // Two different values under one prefix would be ambiguous.
        found.all(|(_, &v)| v == value).then_some(value)
    }

    fn field(&self, class: &str, field: &str) -> Option<u64> {
        self.by_prefix(&format!("class_{class}__{field}"))
            .and_then(|v| u64::try_from(v).ok())
    }

    fn instance_type(&self, class: &str) -> Option<u16> {
        self.by_prefix(&format!("type_{class}"))
            .and_then(|v| u16::try_from(v).ok())
    }
}

/// Instance types checked before an object's fields are read.
#[derive(Clone, Copy, Debug)]
pub struct InstanceTypes {
    /// JSFunction and its subclasses (class constructors, builtin constructors).
    pub js_function: (u16, u16),
    pub shared_function_info: u16,
    pub script: u16,
    pub scope_info: u16,
    pub bytecode_array: u16,
    /// The type of source position tables (ByteArray, later TrustedByteArray).
    pub position_table: u16,
    pub fixed_array: u16,
    /// Types below it are strings.
    pub first_nonstring: u16,
}

/// How V8 tells string representations apart by instance type bits.
#[derive(Clone, Copy, Debug)]
pub struct StringTags {
    pub representation_mask: u16,
    pub encoding_mask: u16,
    pub one_byte: u16,
    pub seq: u16,
    pub cons: u16,
    pub external: u16,
    pub sliced: u16,
    pub thin: u16,
}

/// Field offsets (untagged: from the object's start).
#[derive(Clone, Copy, Debug)]
pub struct Offsets {
    pub map: u64,
    pub instance_type: u64,
    pub function_shared: u64,
    pub sfi_name_or_scope_info: u64,
    /// Its bytecode or its baseline Code (and other things, for other functions).
    pub sfi_function_data: u64,
    pub sfi_script: u64,
    pub script_name: u64,
    pub script_source: u64,
    pub script_line_ends: u64,
    pub string_length: u64,
    pub seq_chars: u64,
    pub cons_first: u64,
    pub cons_second: u64,
    pub thin_actual: u64,
    pub sliced_parent: u64,
    pub sliced_offset: u64,
    /// External strings: the cached pointer to the characters.
    pub external_data: u64,
    pub fixed_array_length: u64,
    pub fixed_array_data: u64,
    /// Where a BytecodeArray's bytecodes start (the frame's offset slot counts from it).
    pub bytecode_data: u64,
    /// None where not known: interpreted frames then get no line.
    pub bytecode_position_table: Option<u64>,
}

/// The bits of a ScopeInfo's flags that place the function's name.
#[derive(Clone, Copy, Debug)]
pub struct ScopeInfoLayout {
    /// The flags are a SMI (before V8 13), else a raw 32-bit word.
    pub flags_are_smi: bool,
    /// Slot (after the map) of the context local count.
    pub context_local_count_slot: u64,
    /// Slot of the first context local name.
    pub first_local_slot: u64,
    /// Context locals from this many on are in a hash table, not inline.
    pub max_inlined_locals: u64,
    pub has_saved_class_variable_bit: u32,
    /// Two bits: NONE (0) means there is no function name slot.
    pub function_variable_shift: u32,
}

/// How a source position table encodes its code offset deltas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PositionCodes {
    /// Zig-zag: the delta for a statement, `-delta - 1` for an expression (V8 10-13).
    SignedStatement,
    /// Unsigned, the delta above this many flag bits (V8 14: measured on
    /// 14.6 against `--print-bytecode`; the lowest bit is set for statements).
    FlagBits(u32),
}

/// Everything leakscope knows of one V8 build.
#[derive(Clone, Debug)]
pub struct Layout {
    pub version: Version,
    pub frame: V8FrameLayout,
    pub types: InstanceTypes,
    pub strings: StringTags,
    pub offsets: Offsets,
    pub scope_info: ScopeInfoLayout,
    pub position_codes: PositionCodes,
    /// None where not known: optimized frames then get no line.
    pub code: Option<CodeLayout>,
    /// None where not found: baseline frames then get no line.
    pub bytecode_sizes: Option<BytecodeSizes>,
}

/// V8 versions whose layouts were checked against known JS chains and the
/// perf map (tests/tests/node.rs).
const KNOWN: &[(u32, u32)] = &[(10, 2), (11, 3), (12, 4), (13, 6), (14, 6)];

impl Layout {
    /// The layout of the V8 inside `node` (a path readable from here).
    pub fn read(node: &Path) -> Result<Layout> {
        let symbols = Symbols::read(node)?;
        let version = Version::read(&symbols)?;
        Layout::from_symbols(&symbols, version)
    }

    pub(super) fn from_symbols(s: &Symbols, version: Version) -> Result<Layout> {
        if !KNOWN.contains(&(version.major, version.minor)) {
            bail!("V8 {version} is not one whose layout leakscope knows");
        }
        let need_field = |class: &str, field: &str| {
            s.field(class, field)
                .with_context(|| format!("V8 {version}: no metadata for {class}::{field}"))
        };
        let need_type = |class: &str| {
            s.instance_type(class)
                .with_context(|| format!("V8 {version}: no instance type for {class}"))
        };
        let need_int = |name: &str| {
            s.int(&format!("v8dbg_{name}"))
                .with_context(|| format!("V8 {version}: no metadata {name}"))
        };
        // Tags and SMIs as leakscope decodes them: full 64-bit pointers.
        if need_int("HeapObjectTag")? != 1 || need_int("SmiTag")? != 0 || need_int("TaggedSize")? != 8 {
            bail!("V8 {version}: pointer compression or another tagging scheme; not supported");
        }
        let fp = |name: &str| need_int(&format!("off_fp_{name}"));
        let js_function = need_type("JSFunction")?;
        let frame = V8FrameLayout {
            enabled: 1,
            fp_context: fp("context")?,
            fp_function: fp("function")?,
            fp_bytecode_array: fp("bytecode_array")?,
            fp_bytecode_offset: fp("bytecode_offset")?,
            map: s.field("HeapObject", "map").unwrap_or(0),
            instance_type: need_field("Map", "instance_type")?,
            // JS_FUNCTION_TYPE is the first of the JSFunction range; the
            // constructors of builtin classes follow it, then those of
            // classes (0x821 on V8 11.3, seen in the maps of class instances).
            first_js_function_type: u64::from(js_function),
            last_js_function_type: u64::from(js_function) + js_function_subtypes(version),
            function_shared: need_field("JSFunction", "shared")?,
        };
        for offset in [
            frame.fp_context,
            frame.fp_function,
            frame.fp_bytecode_array,
            frame.fp_bytecode_offset,
        ] {
            if !(-(V8FrameLayout::SLOTS_BELOW_FP as i64) * 8..0).contains(&offset) || offset % 8 != 0 {
                bail!("V8 {version}: frame slot at fp{offset:+} is outside the window read per frame");
            }
        }
        let before_12 = version.major < 12;
        let types = InstanceTypes {
            js_function: (js_function, js_function + js_function_subtypes(version) as u16),
            shared_function_info: need_type("SharedFunctionInfo")?,
            script: need_type("Script")?,
            scope_info: need_type("ScopeInfo")?,
            bytecode_array: need_type("BytecodeArray")?,
            position_table: if before_12 {
                need_type("ByteArray")?
            } else {
                need_type("TrustedByteArray")?
            },
            fixed_array: need_type("FixedArray")?,
            first_nonstring: need_int("FirstNonstringType")? as u16,
        };
        let tag = |name: &str| need_int(name).map(|v| v as u16);
        let strings = StringTags {
            representation_mask: tag("StringRepresentationMask")?,
            encoding_mask: tag("StringEncodingMask")?,
            one_byte: tag("OneByteStringTag")?,
            seq: tag("SeqStringTag")?,
            cons: tag("ConsStringTag")?,
            external: tag("ExternalStringTag")?,
            sliced: tag("SlicedStringTag")?,
            thin: tag("ThinStringTag")?,
        };
        let external_resource = need_field("ExternalString", "resource")?;
        let offsets = Offsets {
            map: frame.map,
            instance_type: frame.instance_type,
            function_shared: frame.function_shared,
            sfi_name_or_scope_info: need_field("SharedFunctionInfo", "name_or_scope_info")?,
            // Not in V8 12-14's metadata (measured on 12.4, 13.6 and 14.6:
            // the baseline Code or its bytecode, right after the map, as before).
            sfi_function_data: s.field("SharedFunctionInfo", "function_data").unwrap_or(8),
            sfi_script: s
                .field("SharedFunctionInfo", "script_or_debug_info")
                .or_else(|| s.field("SharedFunctionInfo", "script"))
                .with_context(|| format!("V8 {version}: no metadata for SharedFunctionInfo::script"))?,
            script_name: need_field("Script", "name")?,
            script_source: need_field("Script", "source")?,
            script_line_ends: need_field("Script", "line_ends")?,
            string_length: need_field("String", "length")?,
            seq_chars: need_field("SeqOneByteString", "chars")?,
            cons_first: need_field("ConsString", "first")?,
            cons_second: need_field("ConsString", "second")?,
            thin_actual: need_field("ThinString", "actual")?,
            // SlicedString: parent then offset, right after the String header.
            sliced_parent: s.field("SlicedString", "parent").unwrap_or(0x10),
            sliced_offset: s.field("SlicedString", "offset").unwrap_or(0x18),
            // The resource pointer, then the cached pointer to its data.
            external_data: external_resource + 8,
            fixed_array_length: need_field("FixedArrayBase", "length")?,
            fixed_array_data: need_field("FixedArray", "data")?,
            bytecode_data: need_field("BytecodeArray", "data")?,
            // Not in the metadata. V8 10-11: map, length, constant pool,
            // handler table, then the table; V8 12-14 (measured on 12.4, 13.6,
            // 14.6): map, length, wrapper, then the table.
            bytecode_position_table: Some(if before_12 { 0x20 } else { 0x18 }),
        };
        // The flag bits are those of V8 11 on every known line (measured
        // on 12.4, 13.6 and 14.6: only the scope type's values moved).
        let scope_info = ScopeInfoLayout {
            flags_are_smi: version.major < 13,
            context_local_count_slot: s.int("v8dbg_scopeinfo_idx_ncontextlocals").unwrap_or(2) as u64,
            first_local_slot: s.int("v8dbg_scopeinfo_idx_first_vars").unwrap_or(3) as u64,
            max_inlined_locals: 75,
            has_saved_class_variable_bit: 10,
            function_variable_shift: 12,
        };
        let position_codes = if version.major >= 14 {
            PositionCodes::FlagBits(2)
        } else {
            PositionCodes::SignedStatement
        };
        let code = CodeLayout::from_symbols(s, version, &types);
        Ok(Layout {
            version,
            frame,
            types,
            strings,
            offsets,
            scope_info,
            position_codes,
            code,
            bytecode_sizes: s.bytecode_sizes.clone(),
        })
    }
}

/// Where optimized code keeps its source positions and inlined functions:
/// the Code object, the InstructionStream holding its instructions (V8 ≥
/// 11; V8 10 keeps them in the Code itself) and its DeoptimizationData.
#[derive(Clone, Copy, Debug)]
pub struct CodeLayout {
    pub code_type: u16,
    /// None: the instructions follow the Code's own header.
    pub instruction_stream_type: Option<u16>,
    /// From the object holding the instructions to the first of them.
    pub instructions_header: u64,
    /// InstructionStream → its Code.
    pub stream_code: u64,
    /// Code fields (the first absent where the instructions are inline).
    pub instruction_start: Option<u64>,
    pub instruction_size: u64,
    pub flags: u64,
    pub kind_mask: u32,
    pub kind_shift: u32,
    /// CodeKind::BASELINE; MAGLEV and TURBOFAN follow it.
    pub kind_baseline: u32,
    /// DeoptimizationData for optimized code, the BytecodeArray for baseline code.
    pub deoptimization_data: u64,
    /// Source positions for optimized code, bytecode offsets for baseline code.
    pub position_table: u64,
    pub deoptimization_data_type: u16,
    /// DeoptimizationData slots: the inlined function count, the literal
    /// array whose first entries are the inlined functions, the inlining positions.
    pub inlined_function_count_index: u64,
    pub literal_array_index: u64,
    pub inlining_positions_index: u64,
    pub literal_array_type: u16,
    pub inlining_positions_type: u16,
    /// What baseline code points at instead of its BytecodeArray under
    /// `--interpreted-frames-native-stack`.
    pub interpreter_data_type: Option<u16>,
}

impl CodeLayout {
    /// Offsets the metadata lacks were measured on each known line (Code
    /// objects of TurboFan functions read from the processes of Node 18.20.8,
    /// 20.20.2, 22.23.5, 24.22.3 and 26.12.1, against `%DebugPrint`).
    fn from_symbols(s: &Symbols, version: Version, types: &InstanceTypes) -> Option<CodeLayout> {
        let kind = |name: &str| {
            s.int(&format!("v8dbg_CodeKind{name}"))
                .and_then(|v| u32::try_from(v).ok())
        };
        let instruction_stream_type = s.instance_type("InstructionStream");
        let (instructions_header, instruction_start) = match instruction_stream_type {
            Some(_) => (
                s.field("InstructionStream", "instruction_start")?,
                Some(s.field("Code", "instruction_start").unwrap_or(0x28)),
            ),
            None => (s.field("Code", "instruction_start")?, None),
        };
        let before_12 = version.major < 12;
        let before_13 = version.major < 13;
        Some(CodeLayout {
            code_type: s.instance_type("Code")?,
            instruction_stream_type,
            instructions_header,
            stream_code: 8,
            instruction_start,
            instruction_size: s.field("Code", "instruction_size").unwrap_or(0x38),
            flags: s.field("Code", "flags").unwrap_or(0x30),
            kind_mask: kind("FieldMask")?,
            kind_shift: kind("FieldShift")?,
            kind_baseline: kind("Baseline")?,
            deoptimization_data: s
                .field("Code", "deoptimization_data")
                .unwrap_or(if before_12 { 0x10 } else { 8 }),
            position_table: s
                .field("Code", "source_position_table")
                .unwrap_or(if before_12 { 0x18 } else { 0x10 }),
            deoptimization_data_type: if before_12 {
                types.fixed_array
            } else if before_13 {
                s.instance_type("TrustedFixedArray")?
            } else {
                s.instance_type("ProtectedFixedArray")?
            },
            inlined_function_count_index: 1,
            literal_array_index: if before_13 { 2 } else { 3 },
            inlining_positions_index: if before_13 { 7 } else { 8 },
            literal_array_type: if before_13 {
                s.instance_type("WeakFixedArray")?
            } else {
                s.instance_type("TrustedWeakFixedArray")?
            },
            // A plain ByteArray up to V8 12 (trusted source position tables: from 12).
            inlining_positions_type: if before_13 {
                s.instance_type("ByteArray")?
            } else {
                s.instance_type("TrustedByteArray")?
            },
            interpreter_data_type: s.instance_type("InterpreterData"),
        })
    }
}

/// The raw metadata, for the heap census (`census::layout`), which needs
/// more of it than frame naming does.
impl Symbols {
    pub(super) fn load(path: &Path) -> Result<Symbols> {
        Symbols::read(path)
    }

    pub(super) fn class_field(&self, class: &str, field: &str) -> Option<u64> {
        self.field(class, field)
    }

    pub(super) fn type_of(&self, class: &str) -> Option<u16> {
        self.instance_type(class)
    }

    /// Every `v8dbg_type_<Class>__<TYPE>`, as (instance type, class name).
    pub(super) fn type_names(&self) -> Vec<(u16, String)> {
        self.values
            .iter()
            .filter_map(|(name, &value)| {
                let class = name.strip_prefix("v8dbg_type_")?.split("__").next()?;
                Some((u16::try_from(value).ok()?, class.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_system_nodes_v8() {
        let layout = Layout::read(Path::new("/usr/bin/node")).expect("node 20 is needed for this test");
        // Node 20.20.2 (field notes): V8 11.3.244.8.
        assert_eq!(layout.version, Version::new(11, 3, 244, 8));
        let f = &layout.frame;
        assert_eq!(
            (f.fp_function, f.fp_bytecode_array, f.fp_bytecode_offset),
            (-16, -32, -40)
        );
        assert_eq!((f.map, f.instance_type, f.function_shared), (0, 0xc, 0x18));
        assert_eq!(layout.types.shared_function_info, 0x106);
        assert_eq!(layout.types.js_function.0, 0x812);
        assert_eq!(layout.offsets.script_line_ends, 0x38);
        assert_eq!(layout.offsets.bytecode_data, 0x36);
        let code = layout.code.expect("Node 20's Code layout");
        // Measured (frames.rs): instructions 16 bytes into their stream, TurboFan kind 13.
        assert_eq!((code.instructions_header, code.kind_baseline), (16, 11));
        assert_eq!((code.deoptimization_data, code.position_table), (0x10, 0x18));
        let sizes = layout.bytecode_sizes.expect("Node 20's bytecode sizes");
        // Wide, then DebugBreak1 (one operand byte), scaled to two bytes.
        assert_eq!(sizes.size_at(&[0, 5]), Some(1 + 1 + 2));
        assert_eq!(sizes.size_at(&[5]), Some(2));
        assert_eq!(sizes.size_at(&[0xff]), None);
    }
}
