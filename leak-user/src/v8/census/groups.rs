//! Sorts objects into the groups a census counts: plain objects by
//! constructor and shape, closures by function, contexts by their
//! function, and the other JS kinds by type. Group keys depend only on an
//! object's map, its function or its scope, so each is worked out once per
//! census and cached by address.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::layout::CensusLayout;
use super::walk::{smi, Object, Walker};
use crate::v8::JsNamer;

/// What a group is. Its fields identify it across censuses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    /// object, closure, array, string, map, set, context, typed_array, native, other.
    pub kind: String,
    pub name: String,
    /// Property names, for plain objects.
    pub shape: Vec<String>,
    /// `file:line:col` of a closure's function.
    pub location: Option<String>,
    pub enclosing_function: Option<String>,
}

/// The property names a shape lists; more are summarised.
const MAX_SHAPE: usize = 24;
/// How many back pointers lead from a map transition to the root map.
const MAX_BACK_POINTERS: usize = 64;

pub struct Classifier {
    namer: JsNamer,
    by_map: HashMap<u64, GroupKey>,
    by_function: HashMap<(u64, u64), GroupKey>,
    by_scope: HashMap<u64, GroupKey>,
}

impl Classifier {
    pub fn new(namer: JsNamer) -> Classifier {
        Classifier {
            namer,
            by_map: HashMap::new(),
            by_function: HashMap::new(),
            by_scope: HashMap::new(),
        }
    }

    pub fn namer(&mut self) -> &mut JsNamer {
        &mut self.namer
    }

    pub fn key(&mut self, walker: &mut Walker, object: &Object) -> GroupKey {
        let l = walker.layout;
        let t = object.info.instance_type;
        if l.is_function(t) {
            let shared = object.word(l.frames.offsets.function_shared).unwrap_or(0);
            let context = object.word(l.function_context).unwrap_or(0);
            let scope = walker
                .memory
                .u64(context.wrapping_sub(1) + l.frames.offsets.fixed_array_data)
                .unwrap_or(0);
            if let Some(key) = self.by_function.get(&(shared, scope)) {
                return key.clone();
            }
            let key = self.closure_key(walker, shared, scope);
            self.by_function.insert((shared, scope), key.clone());
            return key;
        }
        if l.is_context(t) {
            let scope = object.word(l.frames.offsets.fixed_array_data).unwrap_or(0);
            if let Some(key) = self.by_scope.get(&scope) {
                return key.clone();
            }
            let key = GroupKey {
                kind: "context".to_string(),
                name: self
                    .enclosing_function(walker, scope)
                    .map(|f| format!("(context of {f})"))
                    .unwrap_or_else(|| format!("({})", l.type_name(t))),
                shape: Vec::new(),
                location: None,
                enclosing_function: None,
            };
            self.by_scope.insert(scope, key.clone());
            return key;
        }
        if let Some(key) = self.by_map.get(&object.map) {
            return key.clone();
        }
        let key = self.map_key(walker, object.map, t);
        self.by_map.insert(object.map, key.clone());
        key
    }

    fn map_key(&mut self, walker: &mut Walker, map: u64, t: u16) -> GroupKey {
        let l = walker.layout;
        let ty = &l.types;
        let (kind, name) = match t {
            _ if l.is_string(t) => ("string", l.type_name(t)),
            _ if t == ty.js_array => ("array", "Array".to_string()),
            _ if t == ty.js_map => ("map", "Map".to_string()),
            _ if t == ty.js_set => ("set", "Set".to_string()),
            _ if [ty.js_typed_array, ty.js_data_view, ty.js_array_buffer].contains(&t) => (
                "typed_array",
                self.constructor_name(walker, map).unwrap_or_else(|| l.type_name(t)),
            ),
            _ if t == ty.api_object || t == ty.special_api_object => (
                "native",
                self.constructor_name(walker, map).unwrap_or_else(|| l.type_name(t)),
            ),
            _ if t >= ty.first_js_receiver => (
                "object",
                self.constructor_name(walker, map).unwrap_or_else(|| l.type_name(t)),
            ),
            _ => ("other", l.type_name(t)),
        };
        let shape = if kind == "object" || kind == "native" {
            self.shape(walker, map)
        } else {
            Vec::new()
        };
        GroupKey {
            kind: kind.to_string(),
            name,
            shape,
            location: None,
            enclosing_function: None,
        }
    }

    /// The constructor's name: the root map of a transition tree holds the
    /// constructor, the others a back pointer to their parent map.
    pub fn constructor_name(&mut self, walker: &mut Walker, map: u64) -> Option<String> {
        let l = walker.layout;
        let mut at = walker.memory.u64(map - 1 + l.map_constructor)?;
        for _ in 0..MAX_BACK_POINTERS {
            if walker.instance_type(at)? != l.types.map {
                break;
            }
            at = walker.memory.u64(at - 1 + l.map_constructor)?;
        }
        if !l.is_function(walker.instance_type(at)?) {
            return None;
        }
        let shared = walker.memory.u64(at - 1 + l.frames.offsets.function_shared)?;
        Some(self.namer.function_at(shared, None)?.function)
    }

    /// The names of a map's own properties, in order; `(dictionary)` for a
    /// map whose properties are in a hash table.
    fn shape(&mut self, walker: &mut Walker, map: u64) -> Vec<String> {
        let l = walker.layout;
        let Some(bits) = walker.memory.u32(map - 1 + l.map_bit_field3) else {
            return Vec::new();
        };
        if bits >> l.dictionary_map_bit & 1 != 0 {
            return vec!["(dictionary)".to_string()];
        }
        let own = ((bits & l.own_descriptors_mask) >> l.own_descriptors_shift) as u64;
        // A map being written may not point at its descriptors yet.
        let Some(descriptors) = walker.memory.u64(map - 1 + l.map_descriptors).filter(|d| d & 3 == 1) else {
            return Vec::new();
        };
        let mut names = Vec::new();
        for i in 0..own.min(MAX_SHAPE as u64) {
            let key = walker
                .memory
                .u64(descriptors - 1 + l.descriptor_header + i * l.descriptor_entry_words * 8);
            names.push(
                key.and_then(|k| self.namer.string_at(k))
                    .unwrap_or_else(|| "(symbol)".to_string()),
            );
        }
        if own > MAX_SHAPE as u64 {
            names.push(format!("… {} more", own - MAX_SHAPE as u64));
        }
        names
    }

    fn closure_key(&mut self, walker: &mut Walker, shared: u64, context_scope: u64) -> GroupKey {
        let start = start_position(walker, shared);
        let function = self.namer.function_at(shared, start);
        let location = function.as_ref().and_then(|f| {
            Some(format!(
                "{}:{}:{}",
                f.script.as_deref().unwrap_or("(no script)"),
                f.line?,
                f.column?
            ))
        });
        GroupKey {
            kind: "closure".to_string(),
            name: function
                .map(|f| f.function)
                .unwrap_or_else(|| "(unnamed function)".to_string()),
            shape: Vec::new(),
            location,
            enclosing_function: self.enclosing_function(walker, context_scope),
        }
    }

    /// The innermost function around the scope `scope_info` (itself, if it
    /// is a function scope).
    fn enclosing_function(&mut self, walker: &mut Walker, mut scope_info: u64) -> Option<String> {
        for _ in 0..MAX_BACK_POINTERS {
            let slots = ScopeSlots::read(walker, scope_info)?;
            if slots.is_function {
                return self.namer.scope_function_name(scope_info);
            }
            scope_info = slots.outer?;
        }
        None
    }
}

/// A function's start position (the `(` of its parameters, as in V8's heap
/// snapshots): from its ScopeInfo once compiled, else from its UncompiledData.
pub fn start_position(walker: &mut Walker, shared: u64) -> Option<u32> {
    let l = walker.layout;
    if walker.instance_type(shared)? != l.frames.types.shared_function_info {
        return None;
    }
    let name_or_scope = walker
        .memory
        .u64(shared - 1 + l.frames.offsets.sfi_name_or_scope_info)?;
    if let Some(position) = ScopeSlots::read(walker, name_or_scope).and_then(|s| s.start) {
        return Some(position);
    }
    let data = walker.memory.u64(shared - 1 + l.sfi_function_data)?;
    let t = walker.instance_type(data)?;
    if !(l.types.uncompiled_data.0..=l.types.uncompiled_data.1).contains(&t) {
        return None;
    }
    let start = walker.memory.u32(data - 1 + l.uncompiled_start)?;
    i32::try_from(start).ok().and_then(|s| u32::try_from(s).ok())
}

/// What a ScopeInfo's variable part holds.
pub struct ScopeSlots {
    pub is_function: bool,
    pub start: Option<u32>,
    pub outer: Option<u64>,
    pub has_context_extension: bool,
    /// Tagged names of the context locals, when inline.
    pub context_local_names: Vec<u64>,
}

/// Where a ScopeInfo's slots are, from its flags and counts (slot 0 is
/// the one after the map). Shared by [`ScopeSlots::read`] and the walk,
/// which sizes ScopeInfos with it.
pub struct ScopeInfoIndex {
    pub flags: u64,
    pub locals: u64,
    pub inline: bool,
    pub position: Option<u64>,
    pub outer: Option<u64>,
    /// Slots in all, the map not counted.
    pub slots: u64,
}

impl ScopeInfoIndex {
    pub fn read(l: &CensusLayout, slot: impl Fn(u64) -> Option<u64>) -> Option<ScopeInfoIndex> {
        let names = l.frames.scope_info;
        let flags_layout = l.scope_flags;
        let flags = if names.flags_are_smi {
            smi(slot(0)?)? as u64
        } else {
            slot(0)? & 0xffff_ffff
        };
        let locals = u64::try_from(smi(slot(names.context_local_count_slot)?)?).ok()?;
        let inline = locals < names.max_inlined_locals;
        // Names (inline, or one hash table), then one info slot per local.
        let mut index = names.first_local_slot + if inline { locals } else { 1 } + locals;
        if flags >> names.has_saved_class_variable_bit & 1 != 0 {
            index += 1;
        }
        if flags >> names.function_variable_shift & 3 != 0 {
            index += 2;
        }
        if flags >> (names.function_variable_shift + 2) & 1 != 0 {
            index += 1;
        }
        let scope_type = flags & flags_layout.scope_type_mask;
        let position = match flags_layout.header_position_slot {
            Some(slot) => Some(slot),
            None => (scope_type < 32 && flags_layout.positioned_scopes >> scope_type & 1 != 0).then(|| {
                index += 2;
                index - 2
            }),
        };
        let outer = (flags >> flags_layout.has_outer_scope_info_bit & 1 != 0).then(|| {
            index += 1;
            index - 1
        });
        if flags >> flags_layout.has_locals_block_list_bit & 1 != 0 {
            index += 1;
        }
        // Module scopes: module info, a variable count, three slots per variable.
        if scope_type == flags_layout.module_scope {
            let variables = u64::try_from(smi(slot(index + 1)?)?).ok()?;
            index += 2 + 3 * variables;
        }
        Some(ScopeInfoIndex {
            flags,
            locals,
            inline,
            position,
            outer,
            slots: index,
        })
    }
}

impl ScopeSlots {
    pub fn read(walker: &mut Walker, scope_info: u64) -> Option<ScopeSlots> {
        let l = walker.layout;
        if walker.instance_type(scope_info)? != l.types.scope_info {
            return None;
        }
        let names = l.frames.scope_info;
        let flags_layout = l.scope_flags;
        let slot = |index: u64| walker.memory.u64(scope_info - 1 + 8 + 8 * index);
        let at = ScopeInfoIndex::read(l, slot)?;
        let (flags, locals) = (at.flags, at.locals);
        let context_local_names = if at.inline {
            let bytes = walker
                .memory
                .bytes(scope_info - 1 + 8 + 8 * names.first_local_slot, (8 * locals) as usize)?;
            bytes
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                .collect()
        } else {
            Vec::new()
        };
        let start = match at.position {
            Some(index) => u32::try_from(smi(slot(index)?)?).ok(),
            None => None,
        };
        let outer = at.outer.and_then(slot).filter(|w| w & 3 == 1);
        Some(ScopeSlots {
            is_function: flags & flags_layout.scope_type_mask == flags_layout.function_scope,
            start,
            outer,
            has_context_extension: flags >> flags_layout.has_context_extension_slot_bit & 1 != 0,
            context_local_names,
        })
    }
}
