//! The outstanding heap blocks, found by address. A hunt may hold millions,
//! so what counts is the resident memory per block. A hash table of the
//! blocks themselves touches every page of its buckets, and just after it
//! doubles more than half of them are empty. Here the blocks live in one
//! dense Vec, whose spare capacity is never touched (a large allocation is
//! mapped, and glibc grows it with mremap, without a copy), and the hash
//! tables hold 4-byte indices into it.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::SiteId;

/// One outstanding heap block.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub addr: u64,
    pub ts_ns: u64,
    /// [`super::HUGE`]: the size is kept apart, see `Heap::huge_sizes`.
    pub size: u32,
    pub site: SiteId,
}

/// The index is split in this many shards, each growing on its own: one
/// table of a million entries would copy itself whole when it doubles.
const SHARDS: usize = 64;

fn shard_of(addr: u64) -> usize {
    // Fibonacci hashing spreads 16-byte-aligned and page-aligned addresses
    // alike, independently of the hash the tables use within a shard.
    ((addr >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS
}

pub struct Blocks {
    blocks: Vec<Block>,
    /// Per shard: positions in `blocks`.
    index: Vec<HashTable<u32>>,
    hasher: foldhash::fast::FixedState,
}

impl Default for Blocks {
    fn default() -> Blocks {
        Blocks {
            blocks: Vec::new(),
            index: (0..SHARDS).map(|_| HashTable::new()).collect(),
            hasher: foldhash::fast::FixedState::default(),
        }
    }
}

impl Blocks {
    pub fn iter(&self) -> impl Iterator<Item = &Block> + '_ {
        self.blocks.iter()
    }

    /// Records `block`, replacing the one at its address if any; returns that one.
    pub fn insert(&mut self, block: Block) -> Option<Block> {
        let Blocks { blocks, index, hasher } = self;
        let hash = hasher.hash_one(block.addr);
        let shard = &mut index[shard_of(block.addr)];
        if let Some(&i) = shard.find(hash, |&i| blocks[i as usize].addr == block.addr) {
            return Some(std::mem::replace(&mut blocks[i as usize], block));
        }
        let i = u32::try_from(blocks.len()).expect("fewer than 2^32 outstanding blocks");
        blocks.push(block);
        shard.insert_unique(hash, i, |&j| hasher.hash_one(blocks[j as usize].addr));
        None
    }

    /// The block at `addr`, if one starts there.
    pub fn get(&self, addr: u64) -> Option<Block> {
        let shard = &self.index[shard_of(addr)];
        let blocks = &self.blocks;
        shard
            .find(self.hasher.hash_one(addr), |&i| blocks[i as usize].addr == addr)
            .map(|&i| blocks[i as usize])
    }

    /// Removes the block at `addr` if `release` accepts it.
    pub fn remove_if(&mut self, addr: u64, release: impl FnOnce(&Block) -> bool) -> Option<Block> {
        let Blocks { blocks, index, hasher } = self;
        let entry = index[shard_of(addr)]
            .find_entry(hasher.hash_one(addr), |&i| blocks[i as usize].addr == addr)
            .ok()?;
        let i = *entry.get() as usize;
        if !release(&blocks[i]) {
            return None;
        }
        entry.remove();
        let removed = blocks.swap_remove(i);
        // The last block moved into the hole: point its index entry there.
        if let Some(moved) = blocks.get(i) {
            let last = blocks.len() as u32;
            let slot = index[shard_of(moved.addr)]
                .find_mut(hasher.hash_one(moved.addr), |&j| j == last)
                .expect("every block is indexed");
            *slot = i as u32;
        }
        Some(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(addr: u64, ts_ns: u64) -> Block {
        Block {
            addr,
            ts_ns,
            size: 16,
            site: 0,
        }
    }

    /// Every block is found at its address, and nothing else is.
    fn check(b: &mut Blocks, expected: &std::collections::BTreeMap<u64, u64>) {
        let mut seen: Vec<(u64, u64)> = b.iter().map(|b| (b.addr, b.ts_ns)).collect();
        seen.sort();
        assert_eq!(seen, expected.iter().map(|(&a, &t)| (a, t)).collect::<Vec<_>>());
        for (&addr, &ts_ns) in expected {
            // A release that declines leaves the block in place.
            let found = b.remove_if(addr, |found| {
                assert_eq!(found.ts_ns, ts_ns);
                false
            });
            assert!(found.is_none());
        }
    }

    #[test]
    fn removal_from_the_middle_keeps_every_other_block_findable() {
        let mut b = Blocks::default();
        let mut expected = std::collections::BTreeMap::new();
        for n in 0..5000u64 {
            let addr = 0x5555_0000_0000 + n * 48;
            assert!(b.insert(block(addr, n)).is_none());
            expected.insert(addr, n);
        }
        // Every third, in an order unlike the insertion order.
        for n in (0..5000u64).rev().filter(|n| n % 3 == 0) {
            let addr = 0x5555_0000_0000 + n * 48;
            assert_eq!(b.remove_if(addr, |_| true).map(|b| b.ts_ns), Some(n));
            assert!(b.remove_if(addr, |_| true).is_none());
            expected.remove(&addr);
        }
        check(&mut b, &expected);
        // Replacing keeps one block per address.
        let addr = 0x5555_0000_0000 + 48;
        assert_eq!(b.insert(block(addr, 7777)).map(|b| b.ts_ns), Some(1));
        expected.insert(addr, 7777);
        check(&mut b, &expected);
        for &addr in expected.clone().keys() {
            assert!(b.remove_if(addr, |_| true).is_some());
        }
        assert_eq!(b.iter().count(), 0);
    }
}
