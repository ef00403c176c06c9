//! Poisson byte sampling (`--sample-bytes N`), as in jemalloc and tcmalloc:
//! each thread counts down the bytes until its next sample, a gap drawn from
//! an exponential distribution of mean N. An allocation of s bytes is then
//! sampled with probability 1 − e^(−s/N), which user space inverts to weigh
//! it. Unsampled calls never reach the ring buffer, and frees only do when
//! they release a sampled block.

use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use leak_common::{DropReason, EXP_QUANTILES_LEN};

use crate::shared::count_drop;

/// Mean bytes between samples; 0 traces every call. Written by user space.
#[unsafe(no_mangle)]
static SAMPLE_BYTES: u64 = 0;

/// Quantiles of the exponential distribution of mean SAMPLE_BYTES, filled by
/// user space (BPF has no floating point): a uniform index draws a gap.
#[map]
static EXP_QUANTILES: Array<u64> = Array::with_max_entries(EXP_QUANTILES_LEN, 0);

/// Bytes until the thread's next sample. LRU: threads come and go.
#[map]
static COUNTDOWN: LruHashMap<u32, i64> = LruHashMap::with_max_entries(64 * 1024, 0);

/// Sampled blocks still live.
#[map]
static SAMPLED_BLOCKS: HashMap<u64, u8> = HashMap::with_max_entries(256 * 1024, 0);

#[inline(always)]
pub fn enabled() -> bool {
    // SAFETY: a read of a constant the loader patched.
    unsafe { core::ptr::read_volatile(&SAMPLE_BYTES) != 0 }
}

#[inline(always)]
fn draw_gap() -> i64 {
    // SAFETY: helper without preconditions.
    let index = unsafe { bpf_get_prandom_u32() } % EXP_QUANTILES_LEN;
    EXP_QUANTILES.get(index).map_or(1, |&gap| gap as i64)
}

/// Whether an allocation of `size` bytes by thread `tid` is sampled.
#[inline(always)]
pub fn take(tid: u32, size: u64) -> bool {
    if !enabled() {
        return true;
    }
    // After a sample, the distance to the next one is again exponential
    // (memoryless), so a fresh gap is exact. A known thread's countdown is
    // updated in place: an unsampled call costs one map lookup.
    match COUNTDOWN.get_ptr_mut(tid) {
        Some(countdown) => {
            // SAFETY: the value belongs to this thread.
            unsafe {
                *countdown -= size as i64;
                let sampled = *countdown <= 0;
                if sampled {
                    *countdown = draw_gap();
                }
                sampled
            }
        }
        // A new thread starts a fresh gap.
        None => {
            let remaining = draw_gap() - size as i64;
            let sampled = remaining <= 0;
            let _ = COUNTDOWN.insert(tid, if sampled { draw_gap() } else { remaining }, 0);
            sampled
        }
    }
}

/// Notes a sampled block, so that its free is reported.
#[inline(always)]
pub fn remember(addr: u64) {
    if enabled() && SAMPLED_BLOCKS.insert(addr, 1, 0).is_err() {
        count_drop(DropReason::SampledBlocksFull);
    }
}

/// Whether releasing `addr` must be reported: always when every call is
/// traced, else only for a sampled block (which is forgotten).
#[inline(always)]
pub fn release(addr: u64) -> bool {
    !enabled() || SAMPLED_BLOCKS.remove(addr).is_ok()
}
