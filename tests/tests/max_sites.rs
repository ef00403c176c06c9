//! `--max-sites`: many_sites.c has 24 leaking malloc sites of known sizes
//! (leak_N keeps N blocks of N * 64 bytes) and a loop that frees all it
//! allocates. The loader's mmaps add sites of sizes this test does not
//! know: it checks the malloc sites exactly and the others for consistency.
//! With `--max-sites 10`, a hunt and `leakscope report` keep the ten sites
//! ranked first in full (in this short run, the largest) and sum the others
//! per kind in the report's tail, in every format; the totals still count
//! every site.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use leakscope_tests::*;
use serde_json::Value;

const KEPT: u64 = 10;
const SITES: u64 = 24;
/// many_sites.c's calls: each leak_N mallocs N times, churn() 100 times.
const MALLOCS: u64 = SITES * (SITES + 1) / 2 + CHURNS;
const CHURNS: u64 = 100;

/// What leak_N holds: bytes and blocks.
fn held(n: u64) -> (u64, u64) {
    (n * n * 64, n)
}

/// Bytes and blocks of sites leak_FROM..=leak_TO.
fn held_by(range: std::ops::RangeInclusive<u64>) -> (u64, u64) {
    range
        .map(held)
        .fold((0, 0), |(b, a), (bytes, allocations)| (b + bytes, a + allocations))
}

struct Hunts {
    fixture: PathBuf,
    full_json: PathBuf,
    full: Value,
    limited: Value,
}

/// One hunt with every site (saved for `report`), one with `--max-sites 10`.
fn hunts() -> &'static Hunts {
    static HUNTS: OnceLock<Hunts> = OnceLock::new();
    HUNTS.get_or_init(|| {
        let fixture = build_fixture("many_sites", &[]);
        let (out, text) = run_launch_raw(&fixture, &[], "json", &[]);
        assert!(out.status.success(), "{}", out.describe());
        let full_json = scratch_dir("max_sites").join("full.json");
        fs::write(&full_json, &text).expect("save the JSON report");
        let full = parse_report(&text, &out.describe());
        let limited = run_launch(&fixture, &[], &["--max-sites", &KEPT.to_string()]);
        assert!(limited.status.success(), "{}", limited.stderr);
        Hunts {
            fixture,
            full_json,
            full,
            limited: limited.report,
        }
    })
}

fn malloc_sites(report: &Value) -> impl Iterator<Item = &Value> {
    sites(report).iter().filter(|s| s["kind"] == "malloc")
}

/// N of the leak_N a site comes from.
fn leaker(site: &Value, fixture: &Path) -> u64 {
    let origin = origin_frame(site, fixture, OriginRule::Module).unwrap_or_else(|| panic!("no origin frame: {site}"));
    let function = origin["function"].as_str().unwrap_or_default();
    function
        .strip_prefix("leak_")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a malloc site outside leak_N: {site}"))
}

/// The leak_N of each malloc site, in report order, each checked to hold
/// exactly its bytes.
fn leakers(report: &Value, fixture: &Path) -> Vec<u64> {
    malloc_sites(report)
        .map(|site| {
            let n = leaker(site, fixture);
            let measured = (
                u64_field(site, "outstanding_bytes"),
                u64_field(site, "outstanding_allocations"),
            );
            assert_eq!(measured, held(n), "leak_{n}: {site}");
            n
        })
        .collect()
}

/// The tail entry of `kind`, if any.
fn tail_of<'a>(report: &'a Value, kind: &str) -> Option<&'a Value> {
    report["tail"].as_array()?.iter().find(|t| t["kind"] == kind)
}

/// Checks a report limited to KEPT sites against the full one; returns how
/// many malloc sites it kept.
fn assert_limited(limited: &Value, full: &Value, fixture: &Path) -> u64 {
    assert_eq!(sites(limited).len() as u64, KEPT, "sites kept");
    // The malloc sites kept are the largest: leak_24 down.
    let kept = leakers(limited, fixture);
    let k = kept.len() as u64;
    assert!(k >= 1, "no malloc site among the {KEPT} kept: {limited}");
    assert_eq!(kept, (SITES - k + 1..=SITES).rev().collect::<Vec<_>>());
    let left = SITES - k;
    let (bytes, allocations) = held_by(1..=left);
    let t = tail_of(limited, "malloc").expect("a malloc tail");
    assert_eq!(u64_field(t, "sites"), left);
    assert_eq!(
        (
            u64_field(t, "outstanding_bytes"),
            u64_field(t, "outstanding_allocations")
        ),
        (bytes, allocations)
    );
    assert_eq!(
        (u64_field(t, "allocated_bytes"), u64_field(t, "allocated_allocations")),
        (bytes, allocations),
        "the tail's sites freed nothing"
    );
    // Every other kind: what is kept and what is summed is all there was.
    for kind in ["mmap", "v8-heap", "pages-touched"] {
        let kept: Vec<&Value> = sites(limited).iter().filter(|s| s["kind"] == kind).collect();
        let all: Vec<&Value> = sites(full).iter().filter(|s| s["kind"] == kind).collect();
        let summed =
            tail_of(limited, kind).map_or((0, 0), |t| (u64_field(t, "sites"), u64_field(t, "outstanding_bytes")));
        let bytes = |sites: &[&Value]| sites.iter().map(|s| u64_field(s, "outstanding_bytes")).sum::<u64>();
        assert_eq!(
            (kept.len() as u64 + summed.0, bytes(&kept) + summed.1),
            (all.len() as u64, bytes(&all)),
            "{kind}: kept and summed against the full hunt"
        );
    }
    let totals = |r: &Value| {
        let t = &r["totals"];
        (
            u64_field(t, "outstanding_bytes"),
            u64_field(t, "outstanding_allocations"),
            t["by_kind"]["malloc"].as_u64(),
        )
    };
    assert_eq!(totals(limited), totals(full), "the totals count the tail");
    assert_eq!(totals(full).2, Some(held_by(1..=SITES).0));
    k
}

#[test]
fn full_hunt_has_every_site_exactly() {
    let h = hunts();
    let mut found = leakers(&h.full, &h.fixture);
    found.sort_unstable();
    assert_eq!(found, (1..=SITES).collect::<Vec<_>>(), "churn() holds nothing");
    let hits = |name| probe(&h.full, name).map(|p| u64_field(p, "hits"));
    assert_eq!(
        (hits("malloc"), hits("free")),
        (Some(MALLOCS), Some(CHURNS)),
        "every call of the fixture traced, churn()'s too"
    );
    assert!(h.full.get("tail").is_none(), "no tail without --max-sites");
}

#[test]
fn hunt_keeps_the_largest_sites_and_sums_the_rest() {
    let h = hunts();
    // No growth in a run this short: the ranking is by bytes held.
    assert_limited(&h.limited, &h.full, &h.fixture);
    for site in malloc_sites(&h.limited) {
        assert!(
            site["frames"].as_array().is_some_and(|f| f.len() >= 3),
            "kept sites are symbolized in full: {site}"
        );
    }
}

/// `leakscope report full.json --max-sites 10 --format FORMAT`.
fn rerender(format: &str) -> Vec<u8> {
    let json = hunts().full_json.to_str().unwrap();
    let out = json.replace("full.json", &format!("limited.{format}"));
    let run = run_leakscope(
        &[
            "report",
            json,
            "--max-sites",
            &KEPT.to_string(),
            "--format",
            format,
            "-o",
            &out,
        ],
        ERROR_TIMEOUT,
        &format!("max-sites-{format}"),
    );
    assert!(run.status.success(), "{}", run.describe());
    fs::read(&out).unwrap_or_else(|e| panic!("no {format} output at {out}: {e}"))
}

#[test]
fn report_limits_a_saved_report() {
    let h = hunts();
    let limited: Value = serde_json::from_slice(&rerender("json")).expect("JSON");
    assert_limited(&limited, &h.full, &h.fixture);
    // Every site of this short run has the same verdict and no slope: the
    // ranking is the report's order, by bytes.
    assert_eq!(sites(&limited), &sites(&h.full)[..KEPT as usize]);
    // Limiting again to more sites changes nothing: the tail is not re-expanded.
    let json = h.full_json.with_file_name("limited.json");
    let again = run_leakscope(
        &[
            "report",
            json.to_str().unwrap(),
            "--max-sites",
            &(2 * KEPT).to_string(),
            "--format",
            "json",
        ],
        ERROR_TIMEOUT,
        "max-sites-again",
    );
    assert!(again.status.success(), "{}", again.describe());
    assert_eq!(parse_report(&again.stdout, &again.describe()), limited);
}

/// The tail of `report full.json --max-sites 10`: (kind, sites, bytes, allocations).
fn rerendered_tail() -> Vec<(String, u64, u64, u64)> {
    let limited: Value = serde_json::from_slice(&rerender("json")).expect("JSON");
    let tail = limited["tail"].as_array().expect("a tail").clone();
    tail.iter()
        .map(|t| {
            (
                t["kind"].as_str().expect("a kind").to_string(),
                u64_field(t, "sites"),
                u64_field(t, "outstanding_bytes"),
                u64_field(t, "outstanding_allocations"),
            )
        })
        .collect()
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

#[test]
fn text_and_folded_show_the_tail() {
    let h = hunts();
    let tail = rerendered_tail();
    let left: u64 = tail.iter().map(|t| t.1).sum();
    let malloc = tail.iter().find(|t| t.0 == "malloc").expect("a malloc tail");
    let text = String::from_utf8(rerender("text")).expect("UTF-8");
    let line = format!(
        "{left} more sites summarised (--max-sites) hold malloc {} in {} allocations",
        kib(malloc.2),
        malloc.3
    );
    assert!(text.contains(&line), "no {line:?} in:\n{text}");
    let folded = String::from_utf8(rerender("folded")).expect("UTF-8");
    let lines: Vec<&str> = folded.lines().collect();
    assert_eq!(lines.len(), KEPT as usize + tail.len(), "{folded}");
    for (kind, sites, bytes, _) in &tail {
        let plural = if *sites == 1 { "" } else { "s" };
        let line = format!("[{kind}];[{sites} more site{plural}] {bytes}");
        assert!(lines.contains(&line.as_str()), "no {line:?} in:\n{folded}");
    }
    let sum: u64 = lines
        .iter()
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .expect("a count")
        })
        .sum();
    assert_eq!(
        sum,
        u64_field(&h.full["totals"], "outstanding_bytes"),
        "the stacks add up to the totals"
    );
}

#[test]
fn pprof_counts_the_tail() {
    let h = hunts();
    let tail = rerendered_tail();
    rerender("pprof");
    let file = h.full_json.with_file_name("limited.pprof");
    let (stdout, describe) = pprof_top(&file);
    let total = format!("Total samples = {}B", u64_field(&h.full["totals"], "outstanding_bytes"));
    assert!(stdout.contains(&total), "expected {total:?}:\n{describe}");
    // pprof -top lists functions: tails of as many sites are one function.
    for (_, sites, _, _) in &tail {
        let bytes: u64 = tail.iter().filter(|t| t.1 == *sites).map(|t| t.2).sum();
        let name = format!("[{sites} more site{}]", if *sites == 1 { "" } else { "s" });
        let found = stdout.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 6 && cols[0] == format!("{bytes}B") && cols[5..].join(" ") == name
        });
        assert!(found, "no row `{bytes}B ... {name}`:\n{describe}");
    }
}
