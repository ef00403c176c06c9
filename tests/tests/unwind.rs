//! Whole stacks through code without frame pointers. unwind.c, built with
//! -O2 -fomit-frame-pointer, leaks through a chain of seven functions (two
//! inlined, one with 512 bytes of locals) into glibc's malloc, memset and
//! mmap, none of which keeps a frame pointer: every frame from the allocation to `main` must come out,
//! at the line of its call, with the exact bytes and pages of each site.

use std::path::{Path, PathBuf};

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "unwind";
const REQUESTS: u64 = 12;
const BLOCK_BYTES: u64 = 256 * 1024 - 64;
/// What glibc maps for one block (its pages), of which malloc touches the
/// first (the chunk header) and memset the others.
const BLOCK_MAPPING_BYTES: u64 = 256 * 1024;
const MAPPING_PAGES: u64 = 8;
const PAGE: u64 = 4096;

/// From `store_chunk` to `main`: (function, the `SITE:` marker of the line
/// of its call, inlined into the next frame).
const CALLERS: &[(&str, &str, bool)] = &[
    ("decode_chunk", "decode_chunk", true),
    ("parse_body", "parse_body", false),
    ("handle_request", "handle_request", true),
    ("serve_all", "serve_all", false),
    ("main", "main", false),
];

fn fixture() -> PathBuf {
    build_fixture(NAME, &["-O2", "-fomit-frame-pointer"])
}

/// The chain of a site from its first frame in `function` (at the line of
/// `marker`) to `main`, through `store_chunk` (at `store_marker`).
fn chain(
    function: &'static str,
    marker: &'static str,
    store_marker: &'static str,
) -> Vec<(&'static str, &'static str, bool)> {
    let mut chain = vec![(function, marker, false), ("store_chunk", store_marker, false)];
    chain.extend_from_slice(CALLERS);
    chain
}

/// The one site of `kind` (`pages_touched`, or an allocator: `malloc`,
/// `mmap`) whose first fixture frame is `chain[0]`, checked
/// frame by frame against `chain` (names, lines, inlining, module), with the
/// frames before it in the C library (`in_libc`: at least one).
fn site_with_chain<'a>(
    report: &'a Value,
    module: &Path,
    kind: &str,
    chain: &[(&str, &str, bool)],
    in_libc: bool,
) -> &'a Value {
    let module = module.to_str().unwrap();
    let first_fixture_frame = |site: &Value| {
        site["frames"]
            .as_array()
            .and_then(|frames| frames.iter().position(|f| f["module"] == module))
    };
    let matching: Vec<&Value> = sites(report)
        .iter()
        .filter(|s| s[if kind == "pages_touched" { "kind" } else { "allocator" }] == kind)
        .filter(|s| {
            first_fixture_frame(s).is_some_and(|at| {
                let frame = &s["frames"][at];
                frame["function"] == chain[0].0 && frame["line"] == line_of(NAME, chain[0].1)
            })
        })
        .collect();
    assert_eq!(matching.len(), 1, "one {kind} site at {:?}: {matching:#?}", chain[0]);
    let site = matching[0];
    let frames = site["frames"].as_array().unwrap();
    let at = first_fixture_frame(site).unwrap();
    assert_eq!(at > 0, in_libc, "frames before {:?}: {site:#}", chain[0]);
    for frame in &frames[..at] {
        let library = frame["module"].as_str().unwrap_or("");
        assert!(library.contains("/libc.so"), "a C library frame: {frame:#}\n{site:#}");
    }
    assert!(frames.len() >= at + chain.len(), "stack too short: {site:#}");
    for (i, (&(function, marker, inlined), frame)) in chain.iter().zip(&frames[at..]).enumerate() {
        let context = format!("frame {} of {site:#}", at + i);
        assert_eq!(frame["function"], function, "{context}");
        assert_eq!(frame["line"], line_of(NAME, marker), "{context}");
        assert_eq!(frame["module"], module, "{context}");
        assert_eq!(frame["inlined"].as_bool().unwrap_or(false), inlined, "{context}");
    }
    site
}

fn held(site: &Value) -> (u64, u64) {
    (
        u64_field(site, "outstanding_bytes"),
        u64_field(site, "outstanding_allocations"),
    )
}

/// Growth mode sees page faults and mappings only: each is unwound from the
/// stack copy it brings, through glibc's memset, malloc and mmap wrapper.
#[test]
fn growth_mode_stacks_are_whole_through_frameless_code() {
    let path = fixture();
    let run = run_launch(&path, &[], &["--mode", "growth"]);
    assert!(run.status.success(), "leakscope failed:\n{}", run.stderr);
    let report = &run.report;
    assert_eq!(report["mode"], "growth");

    // memset faults every page of each block but the header's.
    let fill = chain("keep_block", "keep_block_fill", "store_chunk");
    let site = site_with_chain(report, &path, "pages_touched", &fill, true);
    let pages = REQUESTS * (BLOCK_MAPPING_BYTES / PAGE - 1);
    assert_eq!(held(site), (pages * PAGE, pages), "{site:#}");

    // keep_mapping touches its own pages: frame 0 is the fixture's.
    let touch = chain("keep_mapping", "keep_mapping_touch", "store_chunk_mapping");
    let site = site_with_chain(report, &path, "pages_touched", &touch, false);
    let pages = REQUESTS * MAPPING_PAGES;
    assert_eq!(held(site), (pages * PAGE, pages), "{site:#}");

    // Mappings: exact bytes, one per request.
    assert_mappings_whole(report, &path);

    // malloc maps each block itself, from under four frameless frames of glibc.
    let blocks = chain("keep_block", "keep_block", "store_chunk");
    let site = site_with_chain(report, &path, "mmap", &blocks, true);
    assert_eq!(held(site), (REQUESTS * BLOCK_MAPPING_BYTES, REQUESTS), "{site:#}");
    let functions: Vec<&str> = site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert!(
        functions.contains(&"sysmalloc"),
        "through malloc's internals: {functions:?}"
    );
}

/// The mapping site: one mapping per request, its stack whole to `main`.
fn assert_mappings_whole(report: &Value, path: &Path) {
    let mapped = chain("keep_mapping", "keep_mapping", "store_chunk_mapping");
    let site = site_with_chain(report, path, "mmap", &mapped, true);
    assert_eq!(held(site), (REQUESTS * MAPPING_PAGES * PAGE, REQUESTS), "{site:#}");
}

/// Exact mode with `--stack-walk cfi`: mappings are unwound from their
/// stack copy; heap stacks by the kernel side, by the unwind rules leakscope read from the CFI of the
/// stack copy their first event brought. parse_body's 512 bytes of locals
/// are beyond the 16 words of stack the frame-pointer walk's events bring.
#[test]
fn exact_mode_stacks_are_whole_through_frameless_code() {
    let path = fixture();
    let run = run_launch(&path, &[], &["--mode", "exact", "--stack-walk", "cfi"]);
    assert!(run.status.success(), "leakscope failed:\n{}", run.stderr);
    let report = &run.report;

    assert_mappings_whole(report, &path);

    // Taken at malloc's return: frame 0 is in the caller. One site, whole,
    // for every block: the first event's stack (unwound from its copy) and
    // the others' (unwound by the rules) are one.
    let blocks = chain("keep_block", "keep_block", "store_chunk");
    let site = site_with_chain(report, &path, "malloc", &blocks, false);
    assert_eq!(held(site), (REQUESTS * BLOCK_BYTES, REQUESTS), "{site:#}");
    for drop in ["stack_lost", "stacks_cut"] {
        assert_eq!(u64_field(&report["drops"], drop), 0, "{:#}", report["drops"]);
    }
}

/// The frame-pointer walk alone (`--stack-walk frame-pointers`, the
/// default) ends the same stacks at parse_body, whose frame its 16 words do
/// not cover: what the test above would see without the unwind rules.
#[test]
fn exact_mode_frame_pointer_walk_ends_at_the_large_frame() {
    let path = fixture();
    let run = run_launch(&path, &[], &["--mode", "exact", "--stack-walk", "frame-pointers"]);
    assert!(run.status.success(), "leakscope failed:\n{}", run.stderr);
    let blocks: Vec<&Value> = sites(&run.report)
        .iter()
        .filter(|s| s["allocator"] == "malloc" && s["frames"][0]["function"] == "keep_block")
        .collect();
    assert_eq!(blocks.len(), 1, "{blocks:#?}");
    let functions: Vec<&str> = blocks[0]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert_eq!(functions.last(), Some(&"parse_body"), "{functions:?}");
    assert_eq!(held(blocks[0]), (REQUESTS * BLOCK_BYTES, REQUESTS), "{:#}", blocks[0]);
}
