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

mod blocks;

use blocks::{Block, Blocks};

pub const PAGE_SIZE: u64 = 4096;

/// What kind of memory a site holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Malloc,
    Mmap,
    /// Node.js Buffer/ArrayBuffer backing stores.
    #[serde(rename = "arraybuffer")]
    ArrayBuffer,
    /// V8 JS heap pages.
    #[serde(rename = "v8_heap")]
    V8Heap,
    /// Growth mode: pages first touched (page faults) by a call stack. Not
    /// outstanding memory: faults say nothing of what is released since.
    PagesTouched,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Malloc, Kind::Mmap, Kind::ArrayBuffer, Kind::V8Heap];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Malloc => "malloc",
            Kind::Mmap => "mmap",
            Kind::ArrayBuffer => "arraybuffer",
            Kind::V8Heap => "v8_heap",
            Kind::PagesTouched => "pages_touched",
        }
    }

    /// The kind of memory a probed allocation function hands out.
    pub fn of(probe: Probe) -> Kind {
        match probe {
            Probe::Mmap | Probe::Mremap => Kind::Mmap,
            Probe::ArrayBufferAllocate | Probe::ArrayBufferAllocateUninitialized => Kind::ArrayBuffer,
            Probe::V8AllocatePage | Probe::V8AllocateLargePage => Kind::V8Heap,
            Probe::PageFault => Kind::PagesTouched,
            _ => Kind::Malloc,
        }
    }
}

/// The identity of an allocation site: one call stack through one allocator,
/// and for blocks made on behalf of another block, the site of that owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub kind: Kind,
    pub probe: Probe,
    /// Content hash of the call stack, as completed by unwinding
    /// (`Collector::stack` has its frames); 0 when the stack was lost.
    pub stack: u64,
    /// For mappings: anonymous or file-backed.
    pub anonymous: bool,
    /// Mappings: PROT_* bits. V8 pages: the AllocationSpace id.
    pub detail: u8,
    /// The site of the live block these blocks were allocated on behalf of
    /// (see [`Heap::own`]).
    pub owner: Option<SiteId>,
}

impl SiteKey {
    pub fn heap(probe: Probe, stack: u64) -> SiteKey {
        SiteKey {
            kind: Kind::of(probe),
            probe,
            stack,
            anonymous: false,
            detail: 0,
            owner: None,
        }
    }
}

/// Index into `Heap::sites`.
pub type SiteId = u32;

/// A block's size that does not fit a u32: the size is in `Heap::huge_sizes`.
const HUGE: u32 = u32::MAX;

/// How far past a block's start a pointer into it is looked for
/// ([`Heap::own`]): a base-class part of a native object, a header before
/// the memory handed out.
const MAX_INTERIOR_OFFSET: u64 = 4096;
/// Heap blocks start at multiples of this (malloc's alignment is 16).
const BLOCK_ALIGN: u64 = 8;

/// A live page range; pieces of one partially unmapped mapping share `origin`.
#[derive(Clone, Copy, Debug)]
struct Range {
    end: u64,
    ts_ns: u64,
    site: SiteId,
    origin: u64,
    /// Made inside a probed allocator call: counted at the malloc level.
    allocator_internal: bool,
    /// Mapped PROT_NONE: reserved address space, which holds nothing.
    reserved: bool,
}

/// Outstanding memory of one site.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteTotals {
    pub bytes: u64,
    pub allocations: u64,
    pub oldest_ts_ns: u64,
}

pub struct Heap {
    sites: Vec<SiteKey>,
    site_ids: HashMap<SiteKey, SiteId>,
    blocks: Blocks,
    /// Sizes of blocks of 4 GiB or more, by address.
    huge_sizes: HashMap<u64, u64>,
    /// The mean sampling interval in sampled mode: blocks weigh
    /// [`sample_weight`] of their size. None: every call is traced.
    sample_mean: Option<u64>,
    ranges: BTreeMap<u64, Range>,
    next_origin: u64,
    /// Bytes and allocations each site made during the hunt, freed or not.
    allocated: Vec<(f64, f64)>,
    /// Pages first touched per site (growth mode), with the first touch's time.
    touched: HashMap<SiteId, (u64, u64)>,
}

/// Size charged for an allocation: what the caller asked for, except pvalloc,
/// which by definition allocates whole pages.
pub fn charged_size(probe: Probe, requested: u64) -> u64 {
    match probe {
        Probe::Pvalloc => page_round_up(requested),
        _ => requested,
    }
}

/// How many allocations of `size` bytes one recorded allocation stands for.
/// Sampled every `mean` bytes on average (Poisson), it was recorded with
/// probability 1 − e^(−size/mean): weighing it by the inverse makes the sums
/// unbiased (Horvitz–Thompson). Exact mode: 1.
pub fn sample_weight(size: u64, mean: Option<u64>) -> f32 {
    match mean {
        None => 1.0,
        Some(mean) => (1.0 / -(-(size.max(1) as f64) / mean as f64).exp_m1()) as f32,
    }
}

pub fn page_round_up(len: u64) -> u64 {
    len.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE)
}

impl Default for Heap {
    fn default() -> Heap {
        Heap::new(None)
    }
}

impl Heap {
    pub fn new(sample_mean: Option<u64>) -> Heap {
        Heap {
            sites: Vec::new(),
            site_ids: HashMap::new(),
            blocks: Blocks::default(),
            huge_sizes: HashMap::new(),
            sample_mean,
            ranges: BTreeMap::new(),
            next_origin: 0,
            allocated: Vec::new(),
            touched: HashMap::new(),
        }
    }

    /// Every outstanding block, with its size and weight.
    fn blocks(&self) -> impl Iterator<Item = (u64, &Block, f64)> + '_ {
        self.blocks.iter().map(|b| {
            let size = self.block_size(b);
            (size, b, f64::from(self.weight(b.site, size)))
        })
    }

    /// What one recorded block of `site` stands for. V8 pages are never
    /// sampled (the kernel side records every one): they weigh 1.
    fn weight(&self, site: SiteId, size: u64) -> f32 {
        match self.sites[site as usize].kind {
            Kind::V8Heap => 1.0,
            _ => sample_weight(size, self.sample_mean),
        }
    }

    pub fn site(&self, id: SiteId) -> &SiteKey {
        &self.sites[id as usize]
    }

    pub fn intern(&mut self, key: SiteKey) -> SiteId {
        if let Some(&id) = self.site_ids.get(&key) {
            return id;
        }
        let id = self.sites.len() as SiteId;
        self.sites.push(key);
        self.allocated.push((0.0, 0.0));
        self.site_ids.insert(key, id);
        id
    }

    /// A heap block was returned to the caller. A block already recorded at
    /// that address must have been freed unseen (e.g. its event was dropped);
    /// the new one replaces it.
    pub fn alloc(&mut self, addr: u64, size: u64, ts_ns: u64, site: SiteId) {
        self.count_allocation(site, size, self.weight(site, size));
        let stored = u32::try_from(size).ok().filter(|&s| s != HUGE).unwrap_or(HUGE);
        if stored == HUGE {
            self.huge_sizes.insert(addr, size);
        }
        let replaced = self.blocks.insert(Block {
            addr,
            ts_ns,
            size: stored,
            site,
        });
        if replaced.is_some_and(|old| old.size == HUGE) && stored != HUGE {
            self.huge_sizes.remove(&addr);
        }
    }

    /// The block containing `addr` was allocated on behalf of the live block
    /// containing `owner` (node's zlib state, for its stream object): it moves
    /// to the twin of its site owned by the owner's site, where a report can
    /// put it with its owner. A block already owned stays, as does one whose
    /// owner is not a live block (freed, or allocated before the hunt).
    pub fn own(&mut self, addr: u64, owner: u64) {
        let (Some(owned), Some(owner)) = (self.block_containing(addr), self.block_containing(owner)) else {
            return;
        };
        let key = self.sites[owned.site as usize];
        if owned.addr == owner.addr || key.owner.is_some() {
            return;
        }
        let site = self.intern(SiteKey {
            owner: Some(owner.site),
            ..key
        });
        let size = self.block_size(&owned);
        let weight = self.weight(owned.site, size);
        self.count_allocation(owned.site, size, -weight);
        self.count_allocation(site, size, weight);
        self.blocks.insert(Block { site, ..owned });
    }

    /// The outstanding block that holds `addr`: the nearest one starting at
    /// most `MAX_INTERIOR_OFFSET` below it (blocks do not overlap).
    fn block_containing(&self, addr: u64) -> Option<Block> {
        let aligned = addr - addr % BLOCK_ALIGN;
        (0..=MAX_INTERIOR_OFFSET / BLOCK_ALIGN)
            .map_while(|step| aligned.checked_sub(step * BLOCK_ALIGN))
            .find_map(|start| self.blocks.get(start))
            .filter(|block| addr < block.addr + self.block_size(block).max(1))
    }

    fn block_size(&self, block: &Block) -> u64 {
        match block.size {
            HUGE => self.huge_sizes[&block.addr],
            size => u64::from(size),
        }
    }

    /// The block at `addr` was freed by a call that began at `entry_ns`.
    pub fn free(&mut self, addr: u64, entry_ns: u64) {
        let freed = self.blocks.remove_if(addr, |b| b.ts_ns < entry_ns);
        if freed.is_some_and(|b| b.size == HUGE) {
            self.huge_sizes.remove(&addr);
        }
    }

    /// A mapping was created. It replaces whatever it overlaps (MAP_FIXED).
    pub fn map(&mut self, start: u64, len: u64, ts_ns: u64, site: SiteId, allocator_internal: bool) {
        let end = start.saturating_add(page_round_up(len));
        self.unmap_range(start, end, u64::MAX);
        self.next_origin += 1;
        let origin = self.next_origin;
        self.count_allocation(site, end - start, 1.0);
        let key = self.site(site);
        // mprotect is not traced: a reservation stays one until unmapped.
        let reserved = key.kind == Kind::Mmap && key.detail == 0;
        self.ranges.insert(
            start,
            Range {
                end,
                ts_ns,
                site,
                origin,
                allocator_internal,
                reserved,
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

    /// `site` touched `bytes` of new pages (sampled page faults) by `ts_ns`.
    /// They are never released: faults do not say when pages are freed.
    pub fn touch(&mut self, site: SiteId, bytes: u64, ts_ns: u64) {
        let (allocated_bytes, pages) = &mut self.allocated[site as usize];
        *allocated_bytes += bytes as f64;
        *pages += (bytes / PAGE_SIZE) as f64;
        let (total, first_ts_ns) = self.touched.entry(site).or_insert((0, ts_ns));
        *total += bytes;
        *first_ts_ns = (*first_ts_ns).min(ts_ns);
    }

    fn count_allocation(&mut self, site: SiteId, bytes: u64, weight: f32) {
        let (total, count) = &mut self.allocated[site as usize];
        *total += bytes as f64 * f64::from(weight);
        *count += f64::from(weight);
    }

    /// Bytes and allocations `site` made during the hunt, freed or not.
    pub fn allocated(&self, site: SiteId) -> (u64, u64) {
        let (bytes, count) = self.allocated[site as usize];
        (bytes.round() as u64, count.round() as u64)
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

    /// Address space mapped PROT_NONE (glibc's arena heaps, V8's cage and
    /// code range): reserved, holding nothing. Not part of any site.
    pub fn reserved_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .filter(|(_, r)| r.reserved)
            .map(|(&s, r)| r.end - s)
            .sum()
    }

    /// Outstanding memory per site, counting only memory recorded before
    /// `cutoff_ns` (the `--min-age` filter). Sites holding nothing are left out.
    pub fn totals(&self, cutoff_ns: u64) -> HashMap<SiteId, SiteTotals> {
        // Weighted sums (sampled mode): whole numbers when every call is traced.
        let mut sums: HashMap<SiteId, (f64, f64, u64)> = HashMap::new();
        let mut add = |site: SiteId, bytes: f64, allocations: f64, ts_ns: u64| {
            let (b, a, oldest) = sums.entry(site).or_insert((0.0, 0.0, u64::MAX));
            *b += bytes;
            *a += allocations;
            *oldest = (*oldest).min(ts_ns);
        };
        for (size, b, weight) in self.blocks().filter(|(_, b, _)| b.ts_ns < cutoff_ns) {
            add(b.site, size as f64 * weight, weight, b.ts_ns);
        }
        // A mapping split by partial unmaps is still one allocation.
        let mut origins_seen = std::collections::HashSet::new();
        for (&s, r) in self
            .ranges
            .iter()
            .filter(|(_, r)| !r.allocator_internal && !r.reserved && r.ts_ns < cutoff_ns)
        {
            let first_piece = origins_seen.insert(r.origin);
            add(r.site, (r.end - s) as f64, f64::from(u8::from(first_piece)), r.ts_ns);
        }
        // Pages count as the "allocations" of a touched site.
        for (&site, &(bytes, first_ts_ns)) in self.touched.iter().filter(|(_, t)| t.1 < cutoff_ns) {
            add(site, bytes as f64, (bytes / PAGE_SIZE) as f64, first_ts_ns);
        }
        let mut totals: HashMap<SiteId, SiteTotals> = sums
            .into_iter()
            .map(|(site, (bytes, allocations, oldest_ts_ns))| {
                let totals = SiteTotals {
                    bytes: bytes.round() as u64,
                    allocations: allocations.round() as u64,
                    oldest_ts_ns,
                };
                (site, totals)
            })
            .collect();
        // malloc(0) returns a real chunk: a site of zero-size blocks holds something.
        totals.retain(|_, t| t.bytes > 0 || t.allocations > 0);
        totals
    }

    /// Ages in seconds at `now_ns` of each site's surviving allocations.
    pub fn ages_s(&self, now_ns: u64) -> HashMap<SiteId, Vec<f64>> {
        let live_ranges = || self.ranges.values().filter(|r| !r.allocator_internal && !r.reserved);
        // Counted first, so that each list is allocated once at its size: a
        // site of a million blocks would otherwise peak at 1.5 times its list.
        let mut counts: HashMap<SiteId, usize> = HashMap::new();
        for site in self
            .blocks()
            .map(|(_, b, _)| b.site)
            .chain(live_ranges().map(|r| r.site))
        {
            *counts.entry(site).or_default() += 1;
        }
        let mut ages: HashMap<SiteId, Vec<f64>> = counts
            .into_iter()
            .map(|(site, count)| (site, Vec::with_capacity(count)))
            .collect();
        let age = |ts_ns: u64| now_ns.saturating_sub(ts_ns) as f64 / 1e9;
        let stamps = self.blocks().map(|(_, b, _)| (b.site, b.ts_ns));
        for (site, ts_ns) in stamps.chain(live_ranges().map(|r| (r.site, r.ts_ns))) {
            ages.get_mut(&site).expect("counted above").push(age(ts_ns));
        }
        ages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_site(h: &mut Heap, stack: u64) -> SiteId {
        h.intern(SiteKey::heap(Probe::Malloc, stack))
    }

    fn map_site(h: &mut Heap, stack: u64) -> SiteId {
        h.intern(SiteKey {
            kind: Kind::Mmap,
            probe: Probe::Mmap,
            anonymous: true,
            detail: 3,
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
    fn realloc_as_free_then_alloc_spares_reused_addresses() {
        let mut h = Heap::default();
        let (m, r) = (heap_site(&mut h, 1), h.intern(SiteKey::heap(Probe::Realloc, 2)));
        h.alloc(0x1000, 100, 10, m);
        h.free(0x1000, 20);
        h.alloc(0x2000, 500, 21, r);
        assert_eq!(of(&h, m), (0, 0));
        assert_eq!(of(&h, r), (500, 1));
        assert_eq!((h.allocated(m), h.allocated(r)), ((100, 1), (500, 1)));
        // The old address was re-used by another thread before the realloc's
        // event arrived: that newer block survives.
        h.alloc(0x3000, 7, 30, m);
        h.free(0x3000, 25);
        h.alloc(0x4000, 8, 31, r);
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
    fn prot_none_reservations_are_not_sites() {
        let mut h = Heap::default();
        let reservation = h.intern(SiteKey {
            kind: Kind::Mmap,
            anonymous: true,
            detail: 0,
            ..SiteKey::heap(Probe::Mmap, 1)
        });
        let used = map_site(&mut h, 2);
        h.map(0x1000_0000, 64 << 20, 10, reservation, false);
        h.map(0x10000, PAGE_SIZE, 10, used, false);
        assert_eq!(h.totals(u64::MAX).keys().collect::<Vec<_>>(), [&used]);
        assert_eq!(h.reserved_bytes(), 64 << 20);
        assert!(!h.ages_s(20).contains_key(&reservation));
        h.unmap(0x1000_0000, 32 << 20, 20);
        assert_eq!(h.reserved_bytes(), 32 << 20);
    }

    #[test]
    fn sampled_mode_counts_v8_pages_exactly() {
        let mut h = Heap::new(Some(512 << 10));
        let page = h.intern(SiteKey::heap(Probe::V8AllocatePage, 1));
        let block = heap_site(&mut h, 2);
        for i in 0..10 {
            h.alloc(0x1000_0000 + i * (256 << 10), 256 << 10, 10, page);
        }
        h.alloc(0x10, 256 << 10, 10, block);
        assert_eq!(of(&h, page), (10 * (256 << 10), 10));
        assert_eq!(h.allocated(page), (10 * (256 << 10), 10));
        // A sampled malloc block of the same size stands for more than itself.
        assert!(of(&h, block).0 > 256 << 10);
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
    fn sampled_blocks_count_with_their_weight() {
        let mut h = Heap::new(Some(1000));
        let a = heap_site(&mut h, 1);
        h.alloc(1, 1000, 10, a);
        h.alloc(2, 1000, 10, a);
        let weight = f64::from(sample_weight(1000, Some(1000)));
        assert_eq!(
            of(&h, a),
            ((2000.0 * weight).round() as u64, (2.0 * weight).round() as u64)
        );
        assert_eq!(h.allocated(a), of(&h, a));
    }

    #[test]
    fn blocks_allocated_on_behalf_of_a_live_block_join_its_owned_twin_site() {
        let mut h = Heap::default();
        let (objects, buffers) = (heap_site(&mut h, 1), heap_site(&mut h, 2));
        h.alloc(0x1000, 0x200, 10, objects);
        h.alloc(0x5000, 0x100, 11, buffers);
        h.alloc(0x6000, 0x100, 12, buffers);
        // Handed out past a 16-byte header, owned through a pointer into the
        // object (a base class inside it).
        h.own(0x5010, 0x1080);
        // An owner that is no live block (allocated before the hunt).
        h.own(0x6010, 0x9000);
        let owned = h.intern(SiteKey {
            owner: Some(objects),
            ..SiteKey::heap(Probe::Malloc, 2)
        });
        assert_ne!(owned, buffers);
        assert_eq!((of(&h, owned), of(&h, buffers)), ((0x100, 1), (0x100, 1)));
        assert_eq!((h.allocated(owned), h.allocated(buffers)), ((0x100, 1), (0x100, 1)));
        // Owned once: a second owner does not move it again.
        h.alloc(0x2000, 0x40, 13, objects);
        h.own(0x5010, 0x2000);
        assert_eq!(of(&h, owned), (0x100, 1));
        // Just past the object's end is not in it.
        h.own(0x6010, 0x1200);
        assert_eq!(of(&h, buffers), (0x100, 1));
        h.free(0x5000, 20);
        assert_eq!(of(&h, owned), (0, 0));
    }

    #[test]
    fn huge_blocks_keep_their_size() {
        let mut h = Heap::default();
        let a = heap_site(&mut h, 1);
        h.alloc(0x1000, 5 << 32, 10, a);
        h.alloc(0x2000, u64::from(u32::MAX), 10, a);
        assert_eq!(of(&h, a), ((5 << 32) + u64::from(u32::MAX), 2));
        h.free(0x1000, 20);
        assert_eq!(of(&h, a), (u64::from(u32::MAX), 1));
        assert!(h.huge_sizes.len() == 1);
        // A small block at a huge one's address replaces it.
        h.alloc(0x2000, 16, 30, a);
        assert_eq!((of(&h, a), h.huge_sizes.len()), ((16, 1), 0));
    }

    #[test]
    fn touched_pages_accumulate_and_are_never_released() {
        let mut h = Heap::default();
        let s = h.intern(SiteKey::heap(Probe::PageFault, 1));
        assert_eq!(h.site(s).kind, Kind::PagesTouched);
        h.touch(s, 3 * PAGE_SIZE, 20);
        h.touch(s, PAGE_SIZE, 10);
        h.unmap(0, u64::MAX / 2, 30);
        let t = &h.totals(u64::MAX)[&s];
        assert_eq!((t.bytes, t.allocations, t.oldest_ts_ns), (4 * PAGE_SIZE, 4, 10));
        assert_eq!(h.allocated(s), (4 * PAGE_SIZE, 4));
        assert!(
            h.totals(10).is_empty(),
            "--min-age keeps sites first touched before the cutoff"
        );
    }

    #[test]
    fn charged_sizes() {
        assert_eq!(charged_size(Probe::Malloc, 5000), 5000);
        assert_eq!(charged_size(Probe::Pvalloc, 5000), 8192);
        assert_eq!(charged_size(Probe::Pvalloc, 0), 0);
        assert_eq!(page_round_up(1), 4096);
        assert_eq!(page_round_up(8192), 8192);
        assert_eq!(sample_weight(100, None), 1.0);
        // Small blocks stand for ~mean/size of their kind; huge ones are always sampled.
        assert!((sample_weight(64, Some(512 << 10)) - (512 << 10) as f32 / 64.0).abs() < 1.0);
        assert!((sample_weight(64 << 20, Some(512 << 10)) - 1.0).abs() < 1e-6);
        let p = 1.0 - (-1.0f64).exp();
        assert!((f64::from(sample_weight(1000, Some(1000))) - 1.0 / p).abs() < 1e-4);
    }
}
