//! What each fixture leaves outstanding, derived from its source (see the
//! comments above each function in `tests/fixtures/*.c`).

use crate::Expect;

const PAGE: u64 = 4096;

/// `allocators.c`: one site per allocator; realloc corner cases.
/// Absent (checked as "no unexpected site"): realloc_seed, reallocarray_seed,
/// failed_realloc, realloc_zero_seed, realloc_zero, freed_malloc, freed_calloc.
pub fn allocators() -> Vec<Expect> {
    vec![
        Expect::heap("malloc", "leak_malloc", "malloc", 7 * 1001, &[7]),
        Expect::heap("calloc", "leak_calloc", "calloc", 6 * 3 * 337, &[6]),
        Expect::heap("realloc_grow", "leak_realloc_chain", "realloc", 2 * 5000, &[2]),
        Expect::heap("realloc_null", "leak_realloc_null", "realloc", 4 * 1234, &[4]),
        Expect::heap("reallocarray", "leak_reallocarray", "reallocarray", 5 * 7 * 111, &[5]),
        Expect::heap(
            "posix_memalign",
            "leak_posix_memalign",
            "posix_memalign",
            3 * 1500,
            &[3],
        ),
        Expect::heap("aligned_alloc", "leak_aligned_alloc", "aligned_alloc", 4 * 2304, &[4]),
        Expect::heap("memalign", "leak_memalign", "memalign", 2 * 1700, &[2]),
        Expect::heap("valloc", "leak_valloc", "valloc", 3 * 3000, &[3]),
        Expect::heap("pvalloc", "leak_pvalloc", "pvalloc", 2 * 8192, &[2]),
        Expect::heap("failed_realloc_seed", "failed_realloc", "malloc", 2 * 1777, &[2]),
        Expect::heap("large", "leak_large", "malloc", 2 * 200_003, &[2]),
    ]
}

/// Calls `allocators.c` makes per libc function (lower bounds for probe hits).
pub const ALLOCATOR_CALLS: &[(&str, u64)] = &[
    // leak_malloc 7, chain seeds 2, reallocarray seeds 5, failed_realloc 2,
    // realloc_to_zero 3, alloc_and_free 10, leak_large 2
    ("malloc", 31),
    ("calloc", 6 + 10),
    // chain 2 x 5, realloc(NULL) 4, failed 2, to zero 3
    ("realloc", 10 + 4 + 2 + 3),
    ("reallocarray", 5),
    ("free", 20),
    ("posix_memalign", 3),
    ("aligned_alloc", 4),
    ("memalign", 2),
    ("valloc", 3),
    ("pvalloc", 2),
];

/// `allocators.c` leak_large's two blocks are mmapped by malloc itself.
pub const ALLOCATORS_LARGE_BYTES: u64 = 2 * 200_003;

/// `mappings.c`. Absent: transient, mremap_seed.
pub fn mappings() -> Vec<Expect> {
    vec![
        Expect::mmap("anon", "leak_anon", "mmap", 3 * 65536, &[3], true, "rw-"),
        // One mapping with a hole: the contract fixes the bytes, not whether
        // the two remaining pieces count as one allocation or two.
        Expect::mmap(
            "partial_hole",
            "leak_partial_hole",
            "mmap",
            3 * PAGE,
            &[1, 2],
            true,
            "rw-",
        ),
        Expect::mmap("partial_trim", "leak_partial_trim", "mmap", 7 * PAGE, &[1], true, "rw-"),
        Expect::mmap("raw_mmap", "leak_raw_syscall", "mmap", 2 * 6 * PAGE, &[2], true, "rw-"),
        Expect::mmap("file_map", "leak_file_map", "mmap", 5 * PAGE, &[1], false, "r--"),
        Expect::mmap("mremap", "leak_mremap", "mremap", 2 * 9 * PAGE, &[2], true, "rw-"),
    ]
}

/// `threads.c`. Absent: handoff (allocated by one thread, freed by another).
pub fn threads() -> Vec<Expect> {
    vec![Expect::heap(
        "thread_leak",
        "thread_leak",
        "malloc",
        4 * 25 * 733,
        &[100],
    )]
}

/// `churn.c`. Absent: churn.
pub fn churn() -> Vec<Expect> {
    vec![Expect::heap("control", "leak_control", "malloc", 3 * 4321, &[3])]
}

/// malloc/free calls churn.c makes: 200,000 churn mallocs + 3 control;
/// 200,000 - 16 frees of real blocks in churn_once (its first 16 are
/// free(NULL), which a probe placed after free's NULL test need not see)
/// + 16 in churn_drain.
pub const CHURN_MALLOCS: u64 = 200_003;
pub const CHURN_FREES: u64 = 200_000;

/// `faults.c`, per FAULT: threads, fork (child_leak absent), exec
/// (before_exec absent), steady.
pub fn faults(fault: &str) -> Vec<Expect> {
    match fault {
        "threads" => vec![Expect::heap(
            "thread_block",
            "thread_block",
            "malloc",
            300 * 1000,
            &[300],
        )],
        "fork" => vec![Expect::heap("parent_leak", "parent_leak", "malloc", 10 * 1111, &[10])],
        "exec" => vec![Expect::heap("after_exec", "after_exec", "malloc", 9 * 999, &[9])],
        _ => vec![Expect::heap("steady_leak", "steady_leak", "malloc", 12 * 1212, &[12])],
    }
}

/// `ticker.c`.
pub fn ticker() -> Vec<Expect> {
    vec![Expect::heap("tick", "tick", "malloc", 40 * 2000, &[40])]
}

/// `exitcode.c`.
pub fn exitcode() -> Vec<Expect> {
    vec![Expect::heap("exit_leak", "leak_before_exit", "malloc", 3333, &[1])]
}

/// `replacements.c`, under glibc or a preloaded/linked jemalloc, tcmalloc or
/// mimalloc. Absent: realloc_seed, failed_realloc, freed_*.
pub fn replacements() -> Vec<Expect> {
    vec![
        Expect::heap("malloc", "leak_malloc", "malloc", 7 * 1001, &[7]),
        Expect::heap("calloc", "leak_calloc", "calloc", 6 * 3 * 337, &[6]),
        Expect::heap("realloc_grow", "leak_realloc_chain", "realloc", 2 * 5000, &[2]),
        Expect::heap(
            "posix_memalign",
            "leak_posix_memalign",
            "posix_memalign",
            3 * 1500,
            &[3],
        ),
        Expect::heap("aligned_alloc", "leak_aligned_alloc", "aligned_alloc", 4 * 2304, &[4]),
        Expect::heap("memalign", "leak_memalign", "memalign", 2 * 1700, &[2]),
        Expect::heap("valloc", "leak_valloc", "valloc", 3 * 3000, &[3]),
        Expect::heap("failed_realloc_seed", "failed_realloc", "malloc", 2 * 1777, &[2]),
        // Zero-size blocks are real chunks: counted, with no bytes.
        Expect::heap("malloc_zero", "leak_zero_size", "malloc", 0, &[1000]),
        Expect::heap("calloc_zero", "leak_zero_size", "calloc", 0, &[500]),
        Expect::heap("large", "leak_large", "malloc", 2 * 300_003, &[2]),
        Expect::heap("one_letter", "f", "malloc", 111, &[1]),
    ]
}

/// Calls `replacements.c` makes per function (lower bounds for probe hits).
pub const REPLACEMENT_CALLS: &[(&str, u64)] = &[
    // leak_malloc 7, chain seeds 2, failed_realloc 2, zero 1000, freed 20, large 2, f 1
    ("malloc", 7 + 2 + 2 + 1000 + 20 + 2 + 1),
    ("calloc", 6 + 500 + 10),
    ("realloc", 2 * 5 + 2),
    ("free", 40),
    ("posix_memalign", 3),
    ("aligned_alloc", 4 + 10),
    ("memalign", 2),
    ("valloc", 3),
];
