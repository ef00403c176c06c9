//! Walks a page object by object: V8's pages are iterable after sweeping
//! (free space is a FreeSpace or filler object), so each object's map
//! gives its type and size and the next object follows it. Every object is
//! checked (its map's map is the meta map, its size fits the page); where a
//! check fails, or a type's size is not known here, the walk resumes at the
//! next word that points at a valid map and counts the bytes in between as
//! unparsed.

use std::collections::{HashMap, HashSet};

use super::groups::ScopeInfoIndex;
use super::layout::CensusLayout;
use super::pages::Page;
use crate::v8::memory::{ProcessMemory, MAX_READ};

/// What a map says of its instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub instance_type: u16,
    /// Bytes; 0 for variable-sized types.
    pub instance_size: u64,
}

/// One object on a page: its tagged address, map and size, and as much of
/// its bytes as were read (all of them on normal pages, the first
/// [`LARGE_HEAD`] of a large object).
pub struct Object<'a> {
    pub tagged: u64,
    pub map: u64,
    pub info: MapInfo,
    pub size: u64,
    pub bytes: &'a [u8],
}

impl Object<'_> {
    /// The word at `offset`, if it was read.
    pub fn word(&self, offset: u64) -> Option<u64> {
        let at = usize::try_from(offset).ok()?;
        Some(u64::from_le_bytes(self.bytes.get(at..at + 8)?.try_into().ok()?))
    }
}

/// Bytes read of a large object by the walk: its header and first slots.
pub const LARGE_HEAD: usize = 4096;

/// Reads maps (validated, cached: a census runs between mark-compacts, which
/// alone move them) and walks pages.
pub struct Walker<'a> {
    pub memory: &'a ProcessMemory,
    pub layout: &'a CensusLayout,
    maps: HashMap<u64, Option<MapInfo>>,
    meta_maps: HashSet<u64>,
    pub bytes_read: u64,
}

/// What a walk saw besides objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    pub objects: u64,
    pub bytes: u64,
    /// Bytes of FreeSpace and fillers: memory the allocator has not handed
    /// out, neither an object nor counted in `bytes`.
    pub free_bytes: u64,
    /// Bytes skipped: not parsable as objects (being written by the target,
    /// or of a type whose size the census does not compute).
    pub unparsed_bytes: u64,
}

fn word_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// A 64-bit SMI's value (in the upper half).
pub fn smi(word: u64) -> Option<i64> {
    (word & 0xffff_ffff == 0).then_some((word as i64) >> 32)
}

impl<'a> Walker<'a> {
    pub fn new(memory: &'a ProcessMemory, layout: &'a CensusLayout) -> Walker<'a> {
        Walker {
            memory,
            layout,
            maps: HashMap::new(),
            meta_maps: HashSet::new(),
            bytes_read: 0,
        }
    }

    /// The map at tagged `map`, when it is one: its own map is a meta map
    /// (a map that is its own map).
    pub fn map_info(&mut self, map: u64) -> Option<MapInfo> {
        if map & 3 != 1 {
            return None;
        }
        if let Some(known) = self.maps.get(&map) {
            return *known;
        }
        let info = self.read_map(map);
        self.maps.insert(map, info);
        info
    }

    fn read_map(&mut self, map: u64) -> Option<MapInfo> {
        let l = self.layout;
        let offsets = l.frames.offsets;
        // A meta map is its own map. V8 11 has one; V8 12 on, one per
        // native context too, for the maps of that context's JS objects.
        let map_of_map = self.memory.u64(map - 1 + offsets.map)?;
        if !self.meta_maps.contains(&map_of_map) {
            if map_of_map & 3 != 1 || self.memory.u64(map_of_map - 1 + offsets.map)? != map_of_map {
                return None;
            }
            self.meta_maps.insert(map_of_map);
        }
        let instance_type = self.memory.u16(map - 1 + offsets.instance_type)?;
        let words = self.memory.bytes(map - 1 + l.map_instance_size_words, 1)?[0];
        Some(MapInfo {
            instance_type,
            instance_size: u64::from(words) * 8,
        })
    }

    pub fn is_map(&mut self, tagged: u64) -> bool {
        self.map_info(tagged).is_some()
    }

    /// The instance type of the object at `tagged`, read from the target.
    pub fn instance_type(&mut self, tagged: u64) -> Option<u16> {
        if tagged & 3 != 1 {
            return None;
        }
        let map = self.memory.u64(tagged - 1)?;
        Some(self.map_info(map)?.instance_type)
    }

    /// The size of a variable-sized object from its first words, or None
    /// for a type whose size the census does not compute.
    fn variable_size(&self, instance_type: u16, head: &[u8]) -> Option<u64> {
        let l = self.layout;
        let t = &l.types;
        let length_smi = || smi(word_at(head, 8)?).and_then(|v| u64::try_from(v).ok());
        let round = |n: u64| n.next_multiple_of(8);
        if l.is_string(instance_type) {
            let strings = l.frames.strings;
            if instance_type & strings.representation_mask != strings.seq {
                return None;
            }
            let at = l.frames.offsets.string_length as usize;
            let len = u64::from(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
            let unit = if instance_type & strings.encoding_mask == strings.one_byte {
                1
            } else {
                2
            };
            return Some(round(l.frames.offsets.seq_chars + unit * len));
        }
        let header = l.frames.offsets.fixed_array_data;
        if l.is_fixed_array_like(instance_type) || instance_type == t.fixed_double_array {
            return Some(header + 8 * length_smi()?);
        }
        if let Some(&(_, array_header)) = t.capacity_arrays.iter().find(|(ty, _)| *ty == Some(instance_type)) {
            return Some(array_header + 8 * length_smi()?);
        }
        let int32_at = |at: usize| {
            head.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        };
        match instance_type {
            x if x == t.byte_array || Some(x) == t.trusted_byte_array => Some(round(header + length_smi()?)),
            // map, bit field (sign, then 30 bits of length), then 64-bit digits.
            x if x == t.big_int => Some(16 + 8 * u64::from(int32_at(8)? >> 1 & 0x3fff_ffff)),
            // map, data length, children length (int32s), the data, then tagged children.
            x if Some(x) == t.preparse_data => Some(round(16 + u64::from(int32_at(8)?)) + 8 * u64::from(int32_at(12)?)),
            // map, slot count, closure slot count (int32s), then the slot
            // kinds, six of 5 bits per int32.
            x if x == t.scope_info => {
                let slots = ScopeInfoIndex::read(l, |i| word_at(head, 8 + 8 * i as usize))?.slots;
                Some(8 + 8 * slots)
            }
            x if x == t.feedback_metadata => Some(round(16 + 4 * u64::from(int32_at(8)?).div_ceil(6))),
            x if x == t.bytecode_array => Some(round(l.frames.offsets.bytecode_data + length_smi()?)),
            x if x == t.free_space => Some(l.free_space_unit * length_smi()?),
            x if t.feedback_vector.is_some_and(|(ty, _)| ty == x) => {
                let (_, header) = t.feedback_vector.expect("matched");
                Some(header + 8 * u64::from(int32_at(8)?))
            }
            // map, capacity, length, then the slots.
            x if x == t.weak_array_list => Some(24 + 8 * length_smi()?),
            // The length is the low 10 bits of length-and-hash.
            x if x == t.property_array => Some(header + 8 * (length_smi()? & 0x3ff)),
            x if x == t.descriptor_array || x == t.descriptor_array + 1 => {
                let at = l.descriptor_count as usize;
                let n = i16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?);
                Some(l.descriptor_header + l.descriptor_entry_words * 8 * u64::try_from(n).ok()?)
            }
            _ => None,
        }
    }

    /// Reads `page` and calls `visit` for each object on it; None when the
    /// page cannot be read (freed since it was found, or the process exits).
    pub fn walk(&mut self, page: &Page, mut visit: impl FnMut(&mut Self, &Object)) -> Option<WalkStats> {
        let mut stats = WalkStats::default();
        let area = page.area_end - page.area_start;
        let want = if page.large { area.min(LARGE_HEAD as u64) } else { area };
        let buf = self.memory.bytes(page.area_start, want.min(MAX_READ as u64) as usize)?;
        self.bytes_read += buf.len() as u64;
        let end = area as usize;
        let mut at = 0usize;
        while at + 8 <= end.min(buf.len()) {
            let map = word_at(&buf, at).expect("in bounds");
            let object = self.map_info(map).and_then(|info| {
                let size = match info.instance_size {
                    0 => self.variable_size(info.instance_type, &buf[at..])?,
                    fixed => fixed,
                };
                (size >= 8 && size % 8 == 0 && at as u64 + size <= area).then_some((info, size))
            });
            let Some((info, size)) = object else {
                let resumed = self.resync(&buf, at + 8);
                stats.unparsed_bytes += (resumed - at) as u64;
                at = resumed;
                continue;
            };
            if self.layout.is_free_space(info.instance_type) {
                stats.free_bytes += size;
                at += size as usize;
                continue;
            }
            let stop = (at + size as usize).min(buf.len());
            visit(
                self,
                &Object {
                    tagged: page.area_start + at as u64 + 1,
                    map,
                    info,
                    size,
                    bytes: &buf[at..stop],
                },
            );
            stats.objects += 1;
            stats.bytes += size;
            at += size as usize;
            if page.large {
                break;
            }
        }
        Some(stats)
    }

    /// The offset of the next word from `from` that points at a map.
    fn resync(&mut self, buf: &[u8], from: usize) -> usize {
        let mut at = from;
        while let Some(word) = word_at(buf, at) {
            if self.is_map(word) {
                return at;
            }
            at += 8;
        }
        buf.len()
    }
}
