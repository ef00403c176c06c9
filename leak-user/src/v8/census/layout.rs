//! What the census needs to know of one V8 build beyond frame naming: the
//! page header, the Map fields that give an object's size, constructor and
//! shape, and the instance types whose size is variable. From the
//! `v8dbg_*` metadata where it has them; the rest (page header, ScopeInfo
//! flags, collection tables) is keyed by V8 version ([`Fallbacks`]), each
//! line's values measured on a live node and checked against its heap
//! snapshots (tests/tests/heap_census.rs).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context as _, Result};

use super::super::metadata::{Layout, Symbols};
use super::super::version::Version;

/// The V8 lines [`Fallbacks::of`] knows, for the message that refuses others.
pub const KNOWN_LINES: &str = "V8 10.2 (Node 18), 11.3 (Node 20), 12.4 (Node 22), 13.6 (Node 24) and 14.6 (Node 26)";

/// V8's memory chunk ("page") header: normal pages are 256 KiB and aligned
/// to it; a large-object page holds one object at its area start.
#[derive(Clone, Copy, Debug)]
pub struct PageHeader {
    pub alignment: u64,
    /// V8 13 on: the chunk holds its flags and, at this offset, a pointer
    /// to its metadata (allocated apart), which holds the fields below.
    /// Before, the fields are in the chunk itself.
    pub metadata: Option<u64>,
    /// V8 12 on: where the fields hold the chunk's own address (checked).
    pub chunk_address: Option<u64>,
    pub size: u64,
    pub heap: u64,
    pub area_start: u64,
    pub area_end: u64,
    pub owner: u64,
    /// In the owner (a Space): its AllocationSpace id.
    pub owner_space_id: u64,
    /// The AllocationSpace ids walked: old space (and trusted space, where
    /// V8 12 on keeps bytecode and other internal objects that V8 11 kept in
    /// old space), then their large-object spaces.
    pub paged_spaces: &'static [u8],
    pub large_spaces: &'static [u8],
    /// Of those, the trusted spaces: V8-internal objects only, which hold
    /// no JS object (retaining paths do not search them).
    pub trusted_spaces: &'static [u8],
}

/// ScopeInfo flag bits (`ScopeFlags`) and scope type values.
#[derive(Clone, Copy, Debug)]
pub struct ScopeFlags {
    pub scope_type_mask: u64,
    pub function_scope: u64,
    pub module_scope: u64,
    /// Scope types with position info: bit N for type N.
    pub positioned_scopes: u32,
    /// V8 13 on: the start and end positions are header slots (this one
    /// and the next), not in the variable part.
    pub header_position_slot: Option<u64>,
    pub has_outer_scope_info_bit: u32,
    pub has_context_extension_slot_bit: u32,
    pub has_locals_block_list_bit: u32,
}

/// What the metadata does not say, per V8 line: measured on a live node of
/// that line (page headers with /proc/PID/mem, ScopeInfo and
/// SharedFunctionInfo slots against its heap snapshots).
#[derive(Clone, Copy, Debug)]
struct Fallbacks {
    page: PageHeader,
    scope_flags: ScopeFlags,
    /// SharedFunctionInfo::function_data (trusted_function_data in V8 13
    /// on), which holds the UncompiledData of a function not compiled yet.
    sfi_function_data: u64,
    /// FREE_SPACE_TYPE where the metadata does not name it (V8 13 on).
    free_space: Option<u16>,
    /// What a FreeSpace's length counts: bytes, or words (V8 13 on).
    free_space_unit: u64,
    /// FeedbackVector: the bytes before its slots, where measured (its
    /// length is the int32 after the map).
    feedback_vector_header: Option<u64>,
}

const NORMAL_PAGE: u64 = 256 << 10;

/// V8 11 and 12 (12.4: function scopes' flags read on a live node).
const V8_11_SCOPE_FLAGS: ScopeFlags = ScopeFlags {
    scope_type_mask: 0xf,
    // CLASS, EVAL, FUNCTION, MODULE, SCRIPT: 0-4.
    function_scope: 2,
    module_scope: 3,
    positioned_scopes: 0b1_1111,
    header_position_slot: None,
    has_outer_scope_info_bit: 22,
    has_context_extension_slot_bit: 26,
    has_locals_block_list_bit: 28,
};

/// V8 13 and 14 (read on 13.6 from handleRequest's ScopeInfo in the test
/// fixture: flags 0x4171e4, its positions at slots 3-4, its local's name at 5).
const V8_13_SCOPE_FLAGS: ScopeFlags = ScopeFlags {
    // SCRIPT, REPL_MODE, CLASS, EVAL, FUNCTION, MODULE: 0-5.
    function_scope: 4,
    module_scope: 5,
    header_position_slot: Some(3),
    ..V8_11_SCOPE_FLAGS
};

/// V8 11.3: the header at the chunk's start.
const V8_11: Fallbacks = Fallbacks {
    page: PageHeader {
        alignment: NORMAL_PAGE,
        metadata: None,
        chunk_address: None,
        size: 0,
        heap: 0x10,
        area_start: 0x18,
        area_end: 0x20,
        owner: 0x40,
        owner_space_id: 0x10,
        paged_spaces: &[2],
        large_spaces: &[6],
        trusted_spaces: &[],
    },
    scope_flags: V8_11_SCOPE_FLAGS,
    sfi_function_data: 0x8,
    free_space: None,
    free_space_unit: 1,
    feedback_vector_header: None,
};

/// V8 12.4: flags, then the chunk's own address, before the V8 11 header.
const V8_12_PAGE: PageHeader = PageHeader {
    chunk_address: Some(0x8),
    size: 0x10,
    heap: 0x18,
    area_start: 0x20,
    area_end: 0x28,
    owner: 0x48,
    // Old and trusted; large and trusted large.
    paged_spaces: &[2, 5],
    large_spaces: &[7, 10],
    trusted_spaces: &[5, 10],
    ..V8_11.page
};

/// V8 13.6: the chunk is flags and a pointer to its metadata, which holds
/// a vtable, the chunk's address, its size, … (measured on 13.6.233.17).
const V8_13_PAGE: PageHeader = PageHeader {
    metadata: Some(0x8),
    // The area's end before the heap, its start (the chunk + 0x10) after.
    area_end: 0x38,
    heap: 0x40,
    area_start: 0x48,
    owner: 0x50,
    // AllocationSpace gained SHARED_TRUSTED_SPACE before the large spaces.
    large_spaces: &[8, 12],
    trusted_spaces: &[5, 12],
    ..V8_12_PAGE
};

impl Fallbacks {
    fn of(version: Version) -> Option<Fallbacks> {
        Some(match (version.major, version.minor) {
            // V8 10: AllocationSpace has new space last, old space 1 and
            // large-object space 4.
            (10, 2) => Fallbacks {
                page: PageHeader {
                    paged_spaces: &[1],
                    large_spaces: &[4],
                    ..V8_11.page
                },
                ..V8_11
            },
            (11, 3) => V8_11,
            (12, 4) => Fallbacks {
                page: V8_12_PAGE,
                ..V8_11
            },
            (13, 6) => Fallbacks {
                page: V8_13_PAGE,
                scope_flags: V8_13_SCOPE_FLAGS,
                // After FeedbackVector (0x10a) and one more, before Hole
                // (0x10d); its length counts words.
                free_space: Some(0x10c),
                free_space_unit: 8,
                // Map, length and invocation count (int32s), then 32 bytes
                // of header (sizes of 20, 12 and 16 slot vectors read).
                feedback_vector_header: Some(48),
                ..V8_11
            },
            (14, 6) => Fallbacks {
                // Between FeedbackVector (0x10f) and InterceptorInfo (0x113)
                // are three types the metadata does not name, as on 13.6
                // after FeedbackVector: one, FreeSpace, Hole.
                free_space: Some(0x111),
                ..Fallbacks::of(Version {
                    major: 13,
                    minor: 6,
                    ..version
                })?
            },
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct CensusLayout {
    pub frames: Layout,
    pub page: PageHeader,
    pub scope_flags: ScopeFlags,
    pub map_instance_size_words: u64,
    pub map_inobject_start_words: u64,
    pub map_bit_field3: u64,
    pub map_constructor: u64,
    pub map_descriptors: u64,
    pub own_descriptors_mask: u32,
    pub own_descriptors_shift: u32,
    pub dictionary_map_bit: u32,
    pub descriptor_header: u64,
    pub descriptor_count: u64,
    pub descriptor_entry_words: u64,
    pub property_index_mask: u64,
    pub property_index_shift: u32,
    pub property_location_mask: u64,
    pub js_object_properties: u64,
    pub js_object_elements: u64,
    pub function_context: u64,
    pub sfi_function_data: u64,
    pub sfi_outer_scope_info: u64,
    /// UncompiledData: the function's start position (int32).
    pub uncompiled_start: u64,
    pub collection_table: u64,
    pub buffer_byte_length: u64,
    pub view_byte_length: u64,
    pub context_min_slots: u64,
    pub types: CensusTypes,
    /// What a FreeSpace's length counts: 1 (bytes) or 8 (words).
    pub free_space_unit: u64,
    /// Class names by instance type, from the metadata.
    pub type_names: HashMap<u16, String>,
}

/// Instance types the census treats specially.
#[derive(Clone, Copy, Debug)]
pub struct CensusTypes {
    pub map: u16,
    pub free_space: u16,
    pub fixed_array: u16,
    pub byte_array: u16,
    pub bytecode_array: u16,
    pub fixed_double_array: u16,
    pub weak_fixed_array: u16,
    pub weak_array_list: u16,
    pub property_array: u16,
    pub descriptor_array: u16,
    pub embedder_data_array: u16,
    pub scope_info: u16,
    pub uncompiled_data: (u16, u16),
    pub contexts: (u16, u16),
    pub js_object: u16,
    pub api_object: u16,
    pub special_api_object: u16,
    pub js_array: u16,
    pub js_map: u16,
    pub js_set: u16,
    pub js_typed_array: u16,
    pub js_data_view: u16,
    pub js_array_buffer: u16,
    pub first_js_receiver: u16,
    /// V8 12 on: tagged arrays laid out like FixedArray outside its range
    /// (TrustedFixedArray, ProtectedFixedArray, ClosureFeedbackCellArray;
    /// V8 13: their weak variants).
    pub tagged_arrays: [Option<u16>; 5],
    /// V8 12 on: TrustedByteArray, laid out like ByteArray.
    pub trusted_byte_array: Option<u16>,
    /// V8 12 on: arrays whose first slot is their capacity, with this many
    /// header bytes before the slots (ArrayList, ScriptContextTable,
    /// RegExpMatchInfo, ObjectBoilerplateDescription).
    pub capacity_arrays: [(Option<u16>, u64); 4],
    pub big_int: u16,
    /// With the bytes before its slots.
    pub feedback_vector: Option<(u16, u64)>,
    pub preparse_data: Option<u16>,
    /// Not named in the metadata: the type after EmbedderDataArray's (0xf8
    /// on V8 11.3, 0x101 on 12.4, checked by the objects that follow it).
    pub feedback_metadata: u16,
}

impl CensusLayout {
    pub fn read(node: &Path, frames: Layout) -> Result<CensusLayout> {
        let version = frames.version;
        let Some(fallbacks) = Fallbacks::of(version) else {
            bail!("the heap census knows {KNOWN_LINES} only; this node has V8 {version}");
        };
        let s = Symbols::load(node)?;
        let field = |class: &str, name: &str| {
            s.class_field(class, name)
                .with_context(|| format!("V8 {version}: no metadata for {class}::{name}"))
        };
        let ty = |class: &str| {
            s.type_of(class)
                .with_context(|| format!("V8 {version}: no instance type for {class}"))
        };
        let int = |name: &str| {
            s.int(&format!("v8dbg_{name}"))
                .with_context(|| format!("V8 {version}: no metadata {name}"))
        };
        let fixed_array = ty("FixedArray")?;
        let weak_fixed_array = ty("WeakFixedArray")?;
        let uncompiled_first = ty("UncompiledDataWithPreparseData")?;
        let types = CensusTypes {
            map: ty("Map")?,
            free_space: s
                .type_of("FreeSpace")
                .or(fallbacks.free_space)
                .with_context(|| format!("V8 {version}: no instance type for FreeSpace"))?,
            fixed_array,
            byte_array: ty("ByteArray")?,
            bytecode_array: ty("BytecodeArray")?,
            fixed_double_array: ty("FixedDoubleArray")?,
            weak_fixed_array,
            weak_array_list: ty("WeakArrayList")?,
            property_array: ty("PropertyArray")?,
            descriptor_array: ty("DescriptorArray")?,
            embedder_data_array: ty("EmbedderDataArray")?,
            scope_info: ty("ScopeInfo")?,
            // With and without preparse data, each with and without a job.
            uncompiled_data: (uncompiled_first, uncompiled_first + 3),
            contexts: (int("FirstContextType")? as u16, int("LastContextType")? as u16),
            js_object: ty("JSObject")?,
            api_object: int("APIObjectType")? as u16,
            special_api_object: int("SpecialAPIObjectType")? as u16,
            js_array: ty("JSArray")?,
            js_map: ty("JSMap")?,
            js_set: ty("JSSet")?,
            js_typed_array: ty("JSTypedArray")?,
            js_data_view: ty("JSDataView")?,
            js_array_buffer: ty("JSArrayBuffer")?,
            first_js_receiver: ty("JSProxy")?,
            tagged_arrays: [
                "TrustedFixedArray",
                "ProtectedFixedArray",
                "ClosureFeedbackCellArray",
                "TrustedWeakFixedArray",
                "ProtectedWeakFixedArray",
            ]
            .map(|c| s.type_of(c)),
            trusted_byte_array: s.type_of("TrustedByteArray"),
            capacity_arrays: [
                ("ArrayList", 24),
                ("ScriptContextTable", 32),
                ("RegExpMatchInfo", 40),
                ("ObjectBoilerplateDescription", 32),
            ]
            .map(|(c, header)| (s.type_of(c), header)),
            // Not named in the metadata: the type after Symbol's (0x81 on
            // V8 13.6, read from BigInts of one digit).
            big_int: ty("Symbol")? + 1,
            feedback_vector: s.type_of("FeedbackVector").zip(fallbacks.feedback_vector_header),
            preparse_data: s.type_of("PreparseData"),
            feedback_metadata: ty("EmbedderDataArray")? + 1,
        };
        let mut type_names: HashMap<u16, String> = HashMap::new();
        for (value, class) in s.type_names() {
            type_names.entry(value).or_insert(class);
        }
        // Named by a fallback, not by the metadata.
        type_names
            .entry(types.free_space)
            .or_insert_with(|| "FreeSpace".to_string());
        type_names.entry(types.big_int).or_insert_with(|| "BigInt".to_string());
        // Subtypes of FixedArray without metadata names (hash tables, …).
        for t in fixed_array + 1..types.byte_array {
            type_names.entry(t).or_insert_with(|| "(array)".to_string());
        }
        let own_descriptors_mask = int("bit_field3_number_of_own_descriptors_mask")? as u32;
        Ok(CensusLayout {
            page: fallbacks.page,
            scope_flags: fallbacks.scope_flags,
            map_instance_size_words: field("Map", "instance_size_in_words")?,
            map_inobject_start_words: field("Map", "inobject_properties_start_or_constructor_function_index")?,
            map_bit_field3: field("Map", "bit_field3")?,
            map_constructor: field("Map", "constructor_or_back_pointer")?,
            map_descriptors: field("Map", "instance_descriptors")?,
            own_descriptors_mask,
            own_descriptors_shift: int("bit_field3_number_of_own_descriptors_shift")? as u32,
            dictionary_map_bit: int("bit_field3_is_dictionary_map_shift")? as u32,
            descriptor_header: field("DescriptorArray", "header_size")?,
            // number_of_all_descriptors (int16) right after the map.
            descriptor_count: 8,
            descriptor_entry_words: int("prop_desc_size")? as u64,
            property_index_mask: int("prop_index_mask")? as u64,
            property_index_shift: int("prop_index_shift")? as u32,
            property_location_mask: int("prop_location_mask")? as u64,
            js_object_properties: field("JSReceiver", "raw_properties_or_hash")?,
            js_object_elements: field("JSObject", "elements")?,
            function_context: field("JSFunction", "context")?,
            sfi_function_data: s
                .class_field("SharedFunctionInfo", "function_data")
                .unwrap_or(fallbacks.sfi_function_data),
            // outer_scope_info_or_feedback_metadata.
            sfi_outer_scope_info: field("SharedFunctionInfo", "feedback_metadata")?,
            uncompiled_start: s.class_field("UncompiledData", "start_position").unwrap_or(0x10),
            // JSCollection: map, properties, elements, table.
            collection_table: 0x18,
            buffer_byte_length: field("JSArrayBuffer", "byte_length")?,
            view_byte_length: field("JSArrayBufferView", "byte_length")?,
            context_min_slots: int("context_min_slots")? as u64,
            types,
            free_space_unit: fallbacks.free_space_unit,
            type_names,
            frames,
        })
    }

    pub fn type_name(&self, instance_type: u16) -> String {
        self.type_names
            .get(&instance_type)
            .cloned()
            .unwrap_or_else(|| format!("(type {instance_type:#x})"))
    }

    pub fn is_string(&self, instance_type: u16) -> bool {
        instance_type < self.frames.types.first_nonstring
    }

    pub fn is_function(&self, instance_type: u16) -> bool {
        (self.frames.types.js_function.0..=self.frames.types.js_function.1).contains(&instance_type)
    }

    pub fn is_context(&self, instance_type: u16) -> bool {
        (self.types.contexts.0..=self.types.contexts.1).contains(&instance_type)
    }

    /// FixedArray and the types laid out like it (length, then tagged slots).
    pub fn is_fixed_array_like(&self, instance_type: u16) -> bool {
        let t = &self.types;
        (t.fixed_array..t.byte_array).contains(&instance_type)
            || t.tagged_arrays.contains(&Some(instance_type))
            || self.is_context(instance_type)
            || instance_type == t.embedder_data_array
            // WeakFixedArray and TransitionArray, which follows it.
            || instance_type == t.weak_fixed_array
            || instance_type == t.weak_fixed_array + 1
    }

    /// Free memory: FreeSpace, and the one- and two-word fillers, whose
    /// type is the one before it (unnamed in the metadata; between
    /// FeedbackVector and FreeSpace on every line, 8 and 16 bytes each).
    pub fn is_free_space(&self, instance_type: u16) -> bool {
        let free_space = self.types.free_space;
        instance_type == free_space || instance_type == free_space - 1
    }

    /// Objects whose body holds no tagged pointers.
    pub fn is_raw_data(&self, instance_type: u16) -> bool {
        let t = &self.types;
        let strings = self.frames.strings;
        (self.is_string(instance_type) && instance_type & strings.representation_mask == strings.seq)
            || [t.byte_array, t.bytecode_array, t.fixed_double_array, t.free_space].contains(&instance_type)
            || instance_type == t.big_int
            || t.trusted_byte_array == Some(instance_type)
    }
}
