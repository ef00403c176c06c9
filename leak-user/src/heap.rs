//! The model of outstanding memory, built from allocator events.
//!
//! Heap blocks are keyed by address. Mappings are page ranges, because munmap
//! and mremap can release part of a mapping. Every release carries the time
//! its call began and only removes memory recorded before that time: another
//! thread may have been handed the same address between the release and the
//! moment its event was written (realloc frees the old block internally
//! before its return probe fires; munmap's event is written at syscall exit).

use std::collections::{BTreeMap, HashMap};

use leak_common::Probe;

use crate::symbolize::MAX_SKIPPED;

pub const PAGE_SIZE: u64 = 4096;

/// What kind of memory a site holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Malloc,
    Mmap,
}

/// The identity of an allocation site: one call stack through one allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub kind: Kind,
    pub probe: Probe,
    /// Id in the kernel stack map; negative when the stack was lost.
    pub stack_id: i64,
    /// Return addresses a frame-pointer walk skipped (zero-padded), inserted
    /// after frame 0 when the stack is shown.
    pub skipped_callers: [u64; MAX_SKIPPED],
    /// For mappings: anonymous or file-backed.
    pub anonymous: bool,
    /// For mappings: PROT_* bits.
    pub prot: u8,
}

impl SiteKey {
    pub fn heap(probe: Probe, stack_id: i64) -> SiteKey {
        SiteKey {
            kind: Kind::Malloc,
            probe,
            stack_id,
            skipped_callers: [0; MAX_SKIPPED],
            anonymous: false,
            prot: 0,
        }
    }
}

/// Index into `Heap::sites`.
pub type SiteId = u32;

#[derive(Clone, Copy, Debug)]
struct Block {
    size: u64,
    ts_ns: u64,
    site: SiteId,
}

/// A live page range; pieces of one partially unmapped mapping share `origin`.
#[derive(Clone, Copy, Debug)]
struct Range {
    end: u64,
    ts_ns: u64,
    site: SiteId,
    origin: u64,
    /// Made inside a probed allocator call: counted at the malloc level.
    allocator_internal: bool,
}

/// Outstanding memory of one site.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteTotals {
    pub bytes: u64,
    pub allocations: u64,
    pub oldest_ts_ns: u64,
}

#[derive(Default)]
pub struct Heap {
    sites: Vec<SiteKey>,
    site_ids: HashMap<SiteKey, SiteId>,
    blocks: HashMap<u64, Block>,
    ranges: BTreeMap<u64, Range>,
    next_origin: u64,
    /// Bytes and allocations each site made during the hunt, freed or not.
    allocated: Vec<(u64, u64)>,
}

/// Size charged for an allocation: what the caller asked for, except pvalloc,
/// which by definition allocates whole pages.
pub fn charged_size(probe: Probe, requested: u64) -> u64 {
    match probe {
        Probe::Pvalloc => page_round_up(requested),
        _ => requested,
    }
}

pub fn page_round_up(len: u64) -> u64 {
    len.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE)
}

impl Heap {
    pub fn site(&self, id: SiteId) -> &SiteKey {
        &self.sites[id as usize]
    }

    pub fn intern(&mut self, key: SiteKey) -> SiteId {
        if let Some(&id) = self.site_ids.get(&key) {
            return id;
        }
        let id = self.sites.len() as SiteId;
        self.sites.push(key);
        self.allocated.push((0, 0));
        self.site_ids.insert(key, id);
        id
    }

    /// A heap block was returned to the caller. A block already recorded at
    /// that address must have been freed unseen (e.g. its event was dropped);
    /// the new one replaces it.
    pub fn alloc(&mut self, addr: u64, size: u64, ts_ns: u64, site: SiteId) {
        self.count_allocation(site, size);
        self.blocks.insert(addr, Block { size, ts_ns, site });
    }

    /// The block at `addr` was freed by a call that began at `entry_ns`.
    pub fn free(&mut self, addr: u64, entry_ns: u64) {
        if self.blocks.get(&addr).is_some_and(|b| b.ts_ns < entry_ns) {
            self.blocks.remove(&addr);
        }
    }

    /// A realloc-style call that began at `entry_ns` succeeded.
    pub fn realloc(&mut self, old: u64, new: u64, size: u64, entry_ns: u64, ts_ns: u64, site: SiteId) {
        if old != 0 {
            self.free(old, entry_ns);
        }
        self.alloc(new, size, ts_ns, site);
    }

    /// A mapping was created. It replaces whatever it overlaps (MAP_FIXED).
    pub fn map(&mut self, start: u64, len: u64, ts_ns: u64, site: SiteId, allocator_internal: bool) {
        let end = start.saturating_add(page_round_up(len));
        self.unmap_range(start, end, u64::MAX);
        self.next_origin += 1;
        let origin = self.next_origin;
        self.count_allocation(site, end - start);
        self.ranges.insert(
            start,
            Range {
                end,
                ts_ns,
                site,
                origin,
                allocator_internal,
            },
        );
    }

    /// `[start, start+len)` was unmapped by a call that began at `entry_ns`.
    pub fn unmap(&mut self, start: u64, len: u64, entry_ns: u64) {
        let end = start.saturating_add(page_round_up(len));
        self.unmap_range(start, end, entry_ns);
    }

    /// mremap moved or resized `[old, old+old_len)` to `[new, new+new_len)`.
    /// The result is recorded at the mremap call site; one made inside an
    /// allocator call (realloc of a large block) stays allocator-internal.
    #[allow(clippy::too_many_arguments)]
    pub fn remap(
        &mut self,
        old: u64,
        old_len: u64,
        new: u64,
        new_len: u64,
        entry_ns: u64,
        ts_ns: u64,
        site: SiteId,
        allocator_internal: bool,
    ) {
        self.unmap(old, old_len, entry_ns);
        self.map(new, new_len, ts_ns, site, allocator_internal);
    }

    fn unmap_range(&mut self, start: u64, end: u64, entry_ns: u64) {
        if start >= end {
            return;
        }
        // Ranges never overlap, so only the last one starting before `start`
        // can reach into the hole from the left.
        let first = self.ranges.range(..start).next_back().map(|(&s, _)| s).unwrap_or(start);
        let hit: Vec<u64> = self
            .ranges
            .range(first..end)
            .filter(|(&s, r)| r.end > start && s < end && r.ts_ns < entry_ns)
            .map(|(&s, _)| s)
            .collect();
        for s in hit {
            let range = self.ranges.remove(&s).expect("range listed above");
            if s < start {
                self.ranges.insert(s, Range { end: start, ..range });
            }
            if range.end > end {
                self.ranges.insert(end, range);
            }
        }
    }

    fn count_allocation(&mut self, site: SiteId, bytes: u64) {
        let (total, count) = &mut self.allocated[site as usize];
        *total += bytes;
        *count += 1;
    }

    /// Bytes and allocations `site` made during the hunt, freed or not.
    pub fn allocated(&self, site: SiteId) -> (u64, u64) {
        self.allocated[site as usize]
    }

    /// The site of the mapping containing `addr`, if it is tracked.
    pub fn mapping_site(&self, addr: u64) -> Option<SiteId> {
        let (_, range) = self.ranges.range(..=addr).next_back()?;
        (addr < range.end).then_some(range.site)
    }

    /// Bytes mapped inside allocator calls (malloc's arenas and large blocks).
    pub fn allocator_internal_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .filter(|(_, r)| r.allocator_internal)
            .map(|(&s, r)| r.end - s)
            .sum()
    }

    /// Outstanding memory per site, counting only memory recorded before
    /// `cutoff_ns` (the `--min-age` filter). Sites holding nothing are left out.
    pub fn totals(&self, cutoff_ns: u64) -> HashMap<SiteId, SiteTotals> {
        let mut totals: HashMap<SiteId, SiteTotals> = HashMap::new();
        let mut add = |site: SiteId, bytes: u64, allocations: u64, ts_ns: u64| {
            let t = totals.entry(site).or_insert(SiteTotals {
                oldest_ts_ns: u64::MAX,
                ..Default::default()
            });
            t.bytes += bytes;
            t.allocations += allocations;
            t.oldest_ts_ns = t.oldest_ts_ns.min(ts_ns);
        };
        for b in self.blocks.values().filter(|b| b.ts_ns < cutoff_ns) {
            add(b.site, b.size, 1, b.ts_ns);
        }
        // A mapping split by partial unmaps is still one allocation.
        let mut origins_seen = std::collections::HashSet::new();
        for (&s, r) in self
            .ranges
            .iter()
            .filter(|(_, r)| !r.allocator_internal && r.ts_ns < cutoff_ns)
        {
            let first_piece = origins_seen.insert(r.origin);
            add(r.site, r.end - s, u64::from(first_piece), r.ts_ns);
        }
        totals.retain(|_, t| t.bytes > 0);
        totals
    }

    /// Number of outstanding heap blocks and mapping pieces (for live summaries).
    pub fn tracked_entries(&self) -> usize {
        self.blocks.len() + self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_site(h: &mut Heap, stack: i64) -> SiteId {
        h.intern(SiteKey::heap(Probe::Malloc, stack))
    }

    fn map_site(h: &mut Heap, stack: i64) -> SiteId {
        h.intern(SiteKey {
            kind: Kind::Mmap,
            probe: Probe::Mmap,
            anonymous: true,
            prot: 3,
            ..SiteKey::heap(Probe::Mmap, stack)
        })
    }

    fn of(h: &Heap, site: SiteId) -> (u64, u64) {
        h.totals(u64::MAX)
            .get(&site)
            .map(|t| (t.bytes, t.allocations))
            .unwrap_or((0, 0))
    }

    #[test]
    fn free_removes_only_blocks_allocated_before_the_call() {
        let mut h = Heap::default();
        let a = heap_site(&mut h, 1);
        h.alloc(0x1000, 100, 10, a);
        h.free(0x1000, 5); // a free that began before this block existed
        assert_eq!(of(&h, a), (100, 1));
        h.free(0x1000, 20);
        assert_eq!(of(&h, a), (0, 0));
        h.free(0x9999, 30); // unknown block: allocated before the hunt
        assert!(h.totals(u64::MAX).is_empty());
    }

    #[test]
    fn realloc_moves_the_block_to_the_realloc_site() {
        let mut h = Heap::default();
        let (m, r) = (heap_site(&mut h, 1), h.intern(SiteKey::heap(Probe::Realloc, 2)));
        h.alloc(0x1000, 100, 10, m);
        h.realloc(0x1000, 0x2000, 500, 20, 21, r);
        assert_eq!(of(&h, m), (0, 0));
        assert_eq!(of(&h, r), (500, 1));
        assert_eq!((h.allocated(m), h.allocated(r)), ((100, 1), (500, 1)));
        // The old address was re-used by another thread before the realloc's
        // event arrived: that newer block survives.
        h.alloc(0x3000, 7, 30, m);
        h.realloc(0x3000, 0x4000, 8, 25, 31, r);
        assert_eq!(of(&h, m), (7, 1));
    }

    #[test]
    fn partial_unmap_keeps_the_rest_as_one_allocation() {
        let mut h = Heap::default();
        let s = map_site(&mut h, 1);
        h.map(0x10000, 4 * PAGE_SIZE, 10, s, false);
        h.unmap(0x10000 + PAGE_SIZE, PAGE_SIZE, 20);
        assert_eq!(of(&h, s), (3 * PAGE_SIZE, 1));
        h.unmap(0x10000, 100, 21); // rounds up to the page
        assert_eq!(of(&h, s), (2 * PAGE_SIZE, 1));
        h.unmap(0x0, 0x100000, 22);
        assert_eq!(of(&h, s), (0, 0));
    }

    #[test]
    fn unmap_spanning_several_mappings_and_stale_release() {
        let mut h = Heap::default();
        let s = map_site(&mut h, 1);
        h.map(0x10000, PAGE_SIZE, 10, s, false);
        h.map(0x11000, PAGE_SIZE, 11, s, false);
        h.map(0x12000, PAGE_SIZE, 30, s, false);
        // This munmap began before the third mapping was made: it cannot have freed it.
        h.unmap(0x10000, 3 * PAGE_SIZE, 20);
        assert_eq!(of(&h, s), (PAGE_SIZE, 1));
    }

    #[test]
    fn fixed_mapping_replaces_what_it_overlaps() {
        let mut h = Heap::default();
        let (a, b) = (map_site(&mut h, 1), map_site(&mut h, 2));
        h.map(0x10000, 4 * PAGE_SIZE, 10, a, false);
        h.map(0x11000, PAGE_SIZE, 20, b, false);
        assert_eq!(of(&h, a), (3 * PAGE_SIZE, 1));
        assert_eq!(of(&h, b), (PAGE_SIZE, 1));
    }

    #[test]
    fn remap_moves_the_range_to_the_mremap_site() {
        let mut h = Heap::default();
        let (m, r) = (map_site(&mut h, 1), map_site(&mut h, 2));
        h.map(0x10000, PAGE_SIZE, 10, m, false);
        h.remap(0x10000, PAGE_SIZE, 0x50000, 4 * PAGE_SIZE, 20, 21, r, false);
        assert_eq!(of(&h, m), (0, 0));
        assert_eq!(of(&h, r), (4 * PAGE_SIZE, 1));
    }

    #[test]
    fn allocator_internal_mappings_are_not_sites() {
        let mut h = Heap::default();
        let s = map_site(&mut h, 1);
        h.map(0x10000, 64 << 20, 10, s, true);
        assert!(h.totals(u64::MAX).is_empty());
        assert_eq!(h.allocator_internal_bytes(), 64 << 20);
        h.unmap(0x10000, 64 << 20, 20);
        assert_eq!(h.allocator_internal_bytes(), 0);
    }

    #[test]
    fn min_age_cutoff_and_oldest_timestamp() {
        let mut h = Heap::default();
        let a = heap_site(&mut h, 1);
        h.alloc(1, 10, 100, a);
        h.alloc(2, 20, 200, a);
        let t = &h.totals(150)[&a];
        assert_eq!((t.bytes, t.allocations, t.oldest_ts_ns), (10, 1, 100));
        assert_eq!(h.totals(u64::MAX)[&a].oldest_ts_ns, 100);
    }

    #[test]
    fn charged_sizes() {
        assert_eq!(charged_size(Probe::Malloc, 5000), 5000);
        assert_eq!(charged_size(Probe::Pvalloc, 5000), 8192);
        assert_eq!(charged_size(Probe::Pvalloc, 0), 0);
        assert_eq!(page_round_up(1), 4096);
        assert_eq!(page_round_up(8192), 8192);
    }
}
