//! Retaining paths: what holds a group's instances, as a heap snapshot
//! would show it (`(context).resultCache → Map.(table) → … → CachedResult`).
//! Starting from a few instances, each pass over the heap finds the
//! objects pointing at the current frontier (weak references, tagged
//! differently, never match), until a named variable (a context slot) or
//! the global object holds the chain. Between full GCs the heap also holds
//! dead objects that still point at live ones (an array's backing store
//! from before it grew, say): a few holders are kept per object, and a
//! path is the shortest chain of them that reaches a root (a sample that
//! no chain found leads to a root from has none).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

use super::census::groups::{Classifier, ScopeSlots};
use super::census::walk::{MapInfo, Walker};
use super::census::{self, pages, CensusLayout, GroupKey};
use super::JsNamer;

/// Passes over the heap per census: the longest chain followed.
const MAX_DEPTH: usize = 10;
/// Holders kept per object: the live one among dead ones (a Map's entry
/// is also in each table the Map outgrew, an array's in each old store).
const MAX_HOLDERS: usize = 16;
/// Objects whose holders one pass looks for: with MAX_HOLDERS, bounds the
/// search's memory (a few MiB).
const MAX_FRONTIER: usize = 8192;
/// Bits of the frontier's prefilter (128 KiB).
const FRONTIER_BITS: usize = 1 << 20;
/// Bytes of a large object read at a time (the walk reads its head): a
/// table of millions of entries is scanned whole without a buffer its size.
const LARGE_CHUNK: u64 = 256 << 10;

/// Who points at an object: the holder and the offset of the slot.
#[derive(Clone, Copy, Debug)]
struct Edge {
    holder: u64,
    map: u64,
    info: MapInfo,
    offset: u64,
    /// The holder ends a path (see [`is_root`]).
    root: bool,
}

/// The retaining paths of each group's `samples` (tagged addresses from a
/// census taken just before), most common first. Stops, with
/// [`census::CANCELLED`], at the first page after `cancelled` is set.
pub fn paths(
    pid: u32,
    layout: &CensusLayout,
    namer: JsNamer,
    targets: &[(GroupKey, Vec<u64>)],
    cancelled: &AtomicBool,
) -> Result<HashMap<GroupKey, Vec<String>>> {
    let (memory, found) = pages::open_heap(pid, layout)?;
    let mut walker = Walker::new(&memory, layout);
    let mut classifier = Classifier::new(namer);
    // Each object reached: the holders found for it.
    let mut holders: HashMap<u64, Vec<Edge>> = HashMap::new();
    let mut frontier: HashSet<u64> = targets.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    // The group each object was reached from: each group gets its share
    // of the frontier, so that popular objects of one do not crowd out
    // the paths of the others.
    let mut origin: HashMap<u64, usize> = HashMap::new();
    for (group, (_, samples)) in targets.iter().enumerate() {
        for &sample in samples {
            origin.entry(sample).or_insert(group);
        }
    }
    let share = MAX_FRONTIER / targets.len().max(1);
    for _ in 0..MAX_DEPTH {
        // Done when the frontier is empty or every group has a path.
        let rooted = |(_, samples): &(GroupKey, Vec<u64>)| samples.iter().any(|&s| !chain_of(&holders, s).is_empty());
        if frontier.is_empty() || targets.iter().all(rooted) {
            break;
        }
        let (low, high) = (
            *frontier.iter().min().expect("not empty"),
            *frontier.iter().max().expect("not empty"),
        );
        // Most words point at no frontier object: a bit per hash bucket
        // tells without a hash-set lookup.
        let mut maybe = vec![0u64; FRONTIER_BITS / 64];
        let bucket = |word: u64| (word >> 3) as usize % FRONTIER_BITS;
        for &object in &frontier {
            maybe[bucket(object) / 64] |= 1 << (bucket(object) % 64);
        }
        let mut found_now: HashMap<u64, Vec<Edge>> = HashMap::new();
        let mut unreadable = None;
        for page in found.iter().filter(|p| !p.trusted) {
            if cancelled.load(Ordering::Relaxed) {
                bail!(census::CANCELLED);
            }
            let walked = walker.walk(page, |walker, object| {
                let t = object.info.instance_type;
                if walker.layout.is_raw_data(t) || t == walker.layout.types.map {
                    return;
                }
                // The words at `offset..` of the object, the map excepted.
                let mut scan = |offset: u64, bytes: &[u8]| {
                    for (i, chunk) in bytes.chunks_exact(8).enumerate() {
                        let at = offset + 8 * i as u64;
                        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                        if at == 0
                            || word < low
                            || word > high
                            || maybe[bucket(word) / 64] >> (bucket(word) % 64) & 1 == 0
                            || word == object.tagged
                            || !frontier.contains(&word)
                        {
                            continue;
                        }
                        let edges = found_now.entry(word).or_default();
                        if edges.len() < MAX_HOLDERS && edges.iter().all(|e| e.holder != object.tagged) {
                            edges.push(Edge {
                                holder: object.tagged,
                                map: object.map,
                                info: object.info,
                                offset: at,
                                root: false,
                            });
                        }
                    }
                };
                scan(0, object.bytes);
                let mut offset = object.bytes.len() as u64;
                while offset < object.size {
                    let len = (object.size - offset).min(LARGE_CHUNK);
                    let Some(chunk) = walker.memory.bytes(object.tagged - 1 + offset, len as usize) else {
                        unreadable = Some(object.tagged - 1 + offset);
                        return;
                    };
                    walker.bytes_read += len;
                    scan(offset, &chunk);
                    offset += len;
                }
            });
            if let Some(at) = walked.is_none().then_some(page.area_start).or(unreadable) {
                bail!("the page at {at:#x} could not be read (freed, or the process is exiting)");
            }
        }
        let mut next = HashSet::new();
        let mut taken = vec![0; targets.len()];
        for (child, mut edges) in found_now {
            let group = origin.get(&child).copied().unwrap_or(0);
            for edge in &mut edges {
                edge.root = is_root(&mut walker, edge);
                let known = holders.contains_key(&edge.holder) || frontier.contains(&edge.holder);
                if !edge.root && !known && taken[group] < share && next.insert(edge.holder) {
                    taken[group] += 1;
                    origin.entry(edge.holder).or_insert(group);
                }
            }
            holders.insert(child, edges);
        }
        frontier = next;
    }
    let mut out = HashMap::new();
    for (key, samples) in targets {
        let mut counted: HashMap<String, usize> = HashMap::new();
        for &sample in samples {
            let chain = chain_of(&holders, sample);
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

/// The edges from a root down to `sample`, the shortest such chain, or
/// none when no chain found reaches a root (a dead object's, or longer
/// than the search went).
fn chain_of(holders: &HashMap<u64, Vec<Edge>>, sample: u64) -> Vec<Edge> {
    // Breadth first: each object reached, with the object it holds and the edge.
    let mut reached: HashMap<u64, Option<(u64, Edge)>> = HashMap::from([(sample, None)]);
    let mut queue = std::collections::VecDeque::from([sample]);
    while let Some(at) = queue.pop_front() {
        for edge in holders.get(&at).into_iter().flatten() {
            if reached.contains_key(&edge.holder) {
                continue;
            }
            reached.insert(edge.holder, Some((at, *edge)));
            if edge.root {
                let mut chain = Vec::new();
                let mut at = edge.holder;
                while let Some(Some((child, edge))) = reached.get(&at) {
                    chain.push(*edge);
                    at = *child;
                }
                return chain;
            }
            queue.push_back(edge.holder);
        }
    }
    Vec::new()
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
    let descriptors = walker.memory.u64(map - 1 + l.map_descriptors).filter(|d| d & 3 == 1)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(holder: u64, root: bool) -> Edge {
        Edge {
            holder,
            map: 0x11,
            info: MapInfo {
                instance_type: 0,
                instance_size: 0,
            },
            offset: 16,
            root,
        }
    }

    /// An object still pointed at by a dead store (found first, held by
    /// nothing) and by the live one, which a variable holds: the path goes
    /// through the live one.
    #[test]
    fn a_path_is_the_shortest_chain_to_a_root() {
        let (sample, dead, live, array, variable) = (0x101, 0x201, 0x301, 0x401, 0x501);
        let mut holders = HashMap::from([
            (sample, vec![edge(dead, false), edge(live, false)]),
            (live, vec![edge(array, false)]),
            (array, vec![edge(variable, true)]),
        ]);
        let chain: Vec<u64> = chain_of(&holders, sample).iter().map(|e| e.holder).collect();
        assert_eq!(chain, [variable, array, live]);
        // No chain to a root: no path.
        holders.remove(&array);
        assert!(chain_of(&holders, sample).is_empty());
    }
}
