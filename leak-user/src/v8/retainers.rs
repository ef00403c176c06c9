//! Retaining paths: what holds a group's instances, as a heap snapshot
//! would show it (`(context).resultCache → Map.(table) → … → CachedResult`).
//! Starting from a few instances, each pass over the heap finds the
//! objects pointing at the current frontier (weak references, tagged
//! differently, never match), until a named variable (a context slot) or
//! the global object holds the chain.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};

use super::census::groups::{Classifier, ScopeSlots};
use super::census::walk::{MapInfo, Walker};
use super::census::{pages, CensusLayout, GroupKey};
use super::JsNamer;

/// Passes over the heap per census: the longest chain followed.
const MAX_DEPTH: usize = 10;

/// Who points at an object: the holder and the offset of the slot.
#[derive(Clone, Copy, Debug)]
struct Edge {
    holder: u64,
    map: u64,
    info: MapInfo,
    offset: u64,
}

/// The retaining paths of each group's `samples` (tagged addresses from a
/// census taken just before), most common first.
pub fn paths(
    pid: u32,
    layout: &CensusLayout,
    namer: JsNamer,
    targets: &[(GroupKey, Vec<u64>)],
) -> Result<HashMap<GroupKey, Vec<String>>> {
    let (memory, found) = pages::open_heap(pid, layout)?;
    let mut walker = Walker::new(&memory, layout);
    walker.read_large_objects_whole = true;
    let mut classifier = Classifier::new(namer);
    let mut parents: HashMap<u64, Edge> = HashMap::new();
    let mut frontier: HashSet<u64> = targets.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    for _ in 0..MAX_DEPTH {
        if frontier.is_empty() {
            break;
        }
        let (low, high) = (
            *frontier.iter().min().expect("not empty"),
            *frontier.iter().max().expect("not empty"),
        );
        let mut found_now: Vec<(u64, Edge)> = Vec::new();
        for page in found.iter().filter(|p| !p.trusted) {
            let walked = walker.walk(page, |walker, object| {
                let t = object.info.instance_type;
                if walker.layout.is_raw_data(t) || t == walker.layout.types.map {
                    return;
                }
                for (i, chunk) in object.bytes.chunks_exact(8).enumerate().skip(1) {
                    let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                    if word < low || word > high || word == object.tagged || !frontier.contains(&word) {
                        continue;
                    }
                    found_now.push((
                        word,
                        Edge {
                            holder: object.tagged,
                            map: object.map,
                            info: object.info,
                            offset: 8 * i as u64,
                        },
                    ));
                }
            });
            if walked.is_none() {
                bail!(
                    "the page at {:#x} could not be read (freed, or the process is exiting)",
                    page.area_start
                );
            }
        }
        let mut next = HashSet::new();
        for (child, edge) in found_now {
            if parents.contains_key(&child) {
                continue;
            }
            parents.insert(child, edge);
            if !is_root(&mut walker, &edge) && !parents.contains_key(&edge.holder) {
                next.insert(edge.holder);
            }
        }
        frontier = next;
    }
    let mut out = HashMap::new();
    for (key, samples) in targets {
        let mut counted: HashMap<String, usize> = HashMap::new();
        for &sample in samples {
            let chain = chain_of(&parents, sample);
            if chain.is_empty() {
                continue;
            }
            let path = render(&mut walker, &mut classifier, &chain, &key.name);
            *counted.entry(path).or_default() += 1;
        }
        let mut ranked: Vec<(String, usize)> = counted.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out.insert(key.clone(), ranked.into_iter().take(2).map(|(p, _)| p).collect());
    }
    Ok(out)
}

/// The edges from the outermost holder found down to `sample`.
fn chain_of(parents: &HashMap<u64, Edge>, sample: u64) -> Vec<Edge> {
    let mut chain = Vec::new();
    let mut at = sample;
    let mut seen = HashSet::new();
    while let Some(edge) = parents.get(&at) {
        if !seen.insert(edge.holder) {
            break;
        }
        chain.push(*edge);
        at = edge.holder;
    }
    chain.reverse();
    chain
}

/// A holder that ends a path: a named variable of a context, or the global object.
fn is_root(walker: &mut Walker, edge: &Edge) -> bool {
    let l = walker.layout;
    let name = l.type_name(edge.info.instance_type);
    name == "JSGlobalObject"
        || name == "JSGlobalProxy"
        || (l.is_context(edge.info.instance_type) && context_slot_name_index(walker, edge).is_some())
}

/// The context local a context slot holds: (its ScopeInfo, the index of its name).
fn context_slot_name_index(walker: &mut Walker, edge: &Edge) -> Option<u64> {
    let l = walker.layout;
    let slot = edge.offset.checked_sub(l.frames.offsets.fixed_array_data)? / 8;
    let scope = walker.memory.u64(edge.holder - 1 + l.frames.offsets.fixed_array_data)?;
    let slots = ScopeSlots::read(walker, scope)?;
    let first = l.context_min_slots + u64::from(slots.has_context_extension);
    let index = slot.checked_sub(first)?;
    slots.context_local_names.get(index as usize).copied()
}

/// `Holder.edge → … → Group`: JS holders by their group name and the
/// property or variable that holds the next object; V8-internal holders
/// (hash tables, arrays of elements) shown as `…`.
fn render(walker: &mut Walker, classifier: &mut Classifier, chain: &[Edge], target: &str) -> String {
    let l = walker.layout;
    let mut parts: Vec<String> = Vec::new();
    // The property store or element array the last hop already named.
    let mut named_by_last = false;
    for (i, edge) in chain.iter().enumerate() {
        let t = edge.info.instance_type;
        let next = chain.get(i + 1);
        let store_named = std::mem::replace(&mut named_by_last, false);
        let part = if l.is_context(t) {
            let name = context_slot_name_index(walker, edge).and_then(|n| classifier.namer().string_at(n));
            format!(
                "(context).{}",
                name.unwrap_or_else(|| format!("[{}]", edge.offset / 8 - 2))
            )
        } else if l.is_function(t) {
            let key = function_name(walker, classifier, edge);
            let field = if edge.offset == l.function_context {
                "(context)"
            } else {
                "(internal)"
            };
            format!("{key}.{field}")
        } else if t >= l.types.first_js_receiver {
            let holder = classifier_name(walker, classifier, edge);
            let named = property_name(walker, classifier, edge, next);
            named_by_last =
                named.is_some() && (edge.offset == l.js_object_properties || edge.offset == l.js_object_elements);
            let field = named.unwrap_or_else(|| match edge.offset {
                o if o == l.collection_table && (t == l.types.js_map || t == l.types.js_set) => "(table)".to_string(),
                o if o == l.js_object_elements => "(elements)".to_string(),
                o if o == l.js_object_properties => "(properties)".to_string(),
                o => format!("(slot {})", o / 8),
            });
            format!("{holder}.{field}")
        } else if store_named {
            continue;
        } else {
            "…".to_string()
        };
        if !(part == "…" && parts.last().is_some_and(|p| p == "…")) {
            parts.push(part);
        }
    }
    parts.push(target.to_string());
    parts.join(" → ")
}

fn function_name(walker: &mut Walker, classifier: &mut Classifier, edge: &Edge) -> String {
    let l = walker.layout;
    walker
        .memory
        .u64(edge.holder - 1 + l.frames.offsets.function_shared)
        .and_then(|shared| classifier.namer().function_at(shared, None))
        .map(|f| f.function)
        .unwrap_or_else(|| "(function)".to_string())
}

fn classifier_name(walker: &mut Walker, classifier: &mut Classifier, edge: &Edge) -> String {
    let l = walker.layout;
    let t = edge.info.instance_type;
    if t == l.types.js_map {
        return "Map".to_string();
    }
    if t == l.types.js_set {
        return "Set".to_string();
    }
    if t == l.types.js_array {
        return "Array".to_string();
    }
    classifier
        .constructor_name(walker, edge.map)
        .unwrap_or_else(|| l.type_name(t))
}

/// The name of the property whose slot the edge (or, for out-of-object and
/// dictionary properties, the next edge, in the property store) is.
fn property_name(walker: &mut Walker, classifier: &mut Classifier, edge: &Edge, next: Option<&Edge>) -> Option<String> {
    let l = walker.layout;
    let bits = walker.memory.u32(edge.map - 1 + l.map_bit_field3)?;
    let data = l.frames.offsets.fixed_array_data;
    if edge.offset == l.js_object_properties {
        let next = next?;
        let slot = next.offset.checked_sub(data)? / 8;
        if bits >> l.dictionary_map_bit & 1 != 0 {
            // A NameDictionary entry: key, value, details.
            let key = walker.memory.u64(next.holder - 1 + next.offset - 8)?;
            return classifier.namer().string_at(key);
        }
        let words = u64::from(walker.memory.bytes(edge.map - 1 + l.map_instance_size_words, 1)?[0]);
        let start = u64::from(walker.memory.bytes(edge.map - 1 + l.map_inobject_start_words, 1)?[0]);
        return descriptor_named(walker, classifier, edge.map, bits, words.checked_sub(start)? + slot);
    }
    if edge.offset == l.js_object_elements && edge.info.instance_type == l.types.js_array {
        let next = next?;
        return Some(format!("[{}]", next.offset.checked_sub(data)? / 8));
    }
    let start = u64::from(walker.memory.bytes(edge.map - 1 + l.map_inobject_start_words, 1)?[0]);
    let field = (edge.offset / 8).checked_sub(start)?;
    descriptor_named(walker, classifier, edge.map, bits, field)
}

/// The key of the field descriptor whose field index is `field`.
fn descriptor_named(
    walker: &mut Walker,
    classifier: &mut Classifier,
    map: u64,
    bits: u32,
    field: u64,
) -> Option<String> {
    let l = walker.layout;
    if bits >> l.dictionary_map_bit & 1 != 0 {
        return None;
    }
    let own = ((bits & l.own_descriptors_mask) >> l.own_descriptors_shift) as u64;
    let descriptors = walker.memory.u64(map - 1 + l.map_descriptors)?;
    for i in 0..own {
        let entry = descriptors - 1 + l.descriptor_header + i * l.descriptor_entry_words * 8;
        let details = walker.memory.u64(entry + 8)?;
        let details = (details >> 32) & 0xffff_ffff;
        let is_field = details & l.property_location_mask == 0;
        if is_field && (details & l.property_index_mask) >> l.property_index_shift == field {
            let key = walker.memory.u64(entry)?;
            return classifier.namer().string_at(key);
        }
    }
    None
}
