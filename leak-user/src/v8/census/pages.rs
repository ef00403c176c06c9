//! Finds V8's old-space and large-object pages in the target: its
//! anonymous read-write mappings, at each page-aligned address a header
//! whose size, area and owner agree with a V8 page of one heap.

use std::collections::HashMap;

use super::layout::CensusLayout;
use crate::v8::memory::ProcessMemory;

/// One page to walk: objects lie in `area_start..area_end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub start: u64,
    pub area_start: u64,
    pub area_end: u64,
    pub large: bool,
    /// In a trusted space: V8-internal objects only.
    pub trusted: bool,
}

/// The pages of the target's heap (the one most pages belong to), in address order.
pub fn find(maps: &str, memory: &ProcessMemory, layout: &CensusLayout) -> Vec<Page> {
    let h = layout.page;
    let mut found: Vec<(u64, Page)> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Anonymous: no path after offset, device and inode.
        if perms != "rw-p" || fields.nth(3).is_some() {
            continue;
        }
        let Some((start, end)) = range
            .split_once('-')
            .and_then(|(a, b)| Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?)))
        else {
            continue;
        };
        let mut at = start.next_multiple_of(h.alignment);
        // Mappings are whole 4 KiB pages: a header fits wherever one starts.
        while at < end {
            if let Some(page) = read_header(memory, layout, at) {
                found.push(page);
            }
            at += h.alignment;
        }
    }
    // Another isolate's or a stale copy's headers must not mix in.
    let mut heaps: HashMap<u64, usize> = HashMap::new();
    for (heap, _) in &found {
        *heaps.entry(*heap).or_default() += 1;
    }
    let Some((&heap, _)) = heaps.iter().max_by_key(|(_, n)| **n) else {
        return Vec::new();
    };
    found.into_iter().filter(|(h, _)| *h == heap).map(|(_, p)| p).collect()
}

/// (heap, page) when `at` holds the header of an old-space or large-object page.
fn read_header(memory: &ProcessMemory, layout: &CensusLayout, at: u64) -> Option<(u64, Page)> {
    let h = layout.page;
    let fields = match h.metadata {
        Some(pointer) => memory.u64(at + pointer)?,
        None => at,
    };
    let word = |offset: u64| memory.u64(fields.checked_add(offset)?);
    if h.chunk_address.is_some_and(|offset| word(offset) != Some(at)) {
        return None;
    }
    let size = word(h.size)?;
    let area_start = word(h.area_start)?;
    let area_end = word(h.area_end)?;
    // Any word may be read here: a size that is not one must not overflow.
    let end = at.checked_add(size)?;
    if size == 0 || size % 4096 != 0 || !(at < area_start && area_start < area_end && area_end <= end) {
        return None;
    }
    let heap = word(h.heap)?;
    let owner = word(h.owner)?;
    let space = memory.bytes(owner.checked_add(h.owner_space_id)?, 1)?[0];
    let large = h.large_spaces.contains(&space);
    // Large-object pages have any size; old-space pages exactly one.
    if !large && (!h.paged_spaces.contains(&space) || size != h.alignment) {
        return None;
    }
    Some((
        heap,
        Page {
            start: at,
            area_start,
            area_end,
            large,
            trusted: h.trusted_spaces.contains(&space),
        },
    ))
}

/// The target's memory and its V8 heap pages, found now.
pub fn open_heap(pid: u32, layout: &CensusLayout) -> anyhow::Result<(ProcessMemory, Vec<Page>)> {
    let memory = ProcessMemory::open(pid)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| crate::target::proc_read_error(pid, "maps", e))?;
    let found = find(&maps, &memory, layout);
    if found.is_empty() {
        anyhow::bail!("no V8 heap pages found in process {pid}");
    }
    Ok((memory, found))
}
