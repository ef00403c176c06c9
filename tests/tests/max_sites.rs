//! `--max-sites`: many_sites.c has 24 leaking sites of known sizes (leak_N
//! keeps N blocks of N * 64 bytes). With `--max-sites 5`, a hunt and
//! `leakscope report` keep the five sites ranked first in full and sum the
//! other 19 in the report's tail, in every format; the totals still count
//! every site.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use leakscope_tests::*;
use serde_json::Value;

const KEPT: u64 = 5;
const SITES: u64 = 24;

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

/// One hunt with every site (saved for `report`), one with `--max-sites 5`.
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

/// N of the leak_N a site comes from.
fn leaker(site: &Value, fixture: &Path) -> u64 {
    let origin = origin_frame(site, fixture, OriginRule::Module).unwrap_or_else(|| panic!("no origin frame: {site}"));
    let function = origin["function"].as_str().unwrap_or_default();
    function
        .strip_prefix("leak_")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a site outside leak_N: {site}"))
}

/// The leak_N of each site, in report order, each checked to hold exactly its bytes.
fn leakers(report: &Value, fixture: &Path) -> Vec<u64> {
    sites(report)
        .iter()
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

fn assert_tail_and_totals(report: &Value) {
    let (bytes, allocations) = held_by(1..=SITES - KEPT);
    let tail = report["tail"].as_array().expect("a tail");
    assert_eq!(tail.len(), 1, "one kind of memory, one tail entry: {tail:?}");
    let t = &tail[0];
    assert_eq!(t["kind"], "malloc");
    assert_eq!(u64_field(t, "sites"), SITES - KEPT);
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
    let all = held_by(1..=SITES);
    let totals = &report["totals"];
    assert_eq!(
        (
            u64_field(totals, "outstanding_bytes"),
            u64_field(totals, "outstanding_allocations")
        ),
        all,
        "the totals count the tail"
    );
}

#[test]
fn full_hunt_has_every_site_exactly() {
    let h = hunts();
    let mut found = leakers(&h.full, &h.fixture);
    found.sort_unstable();
    assert_eq!(found, (1..=SITES).collect::<Vec<_>>(), "churn() holds nothing");
    assert!(h.full.get("tail").is_none(), "no tail without --max-sites");
}

#[test]
fn hunt_keeps_the_largest_sites_and_sums_the_rest() {
    let h = hunts();
    // No growth in a run this short: the ranking is by bytes held.
    assert_eq!(leakers(&h.limited, &h.fixture), [24, 23, 22, 21, 20]);
    for site in sites(&h.limited) {
        assert!(
            site["frames"].as_array().is_some_and(|f| f.len() >= 3),
            "kept sites are symbolized in full: {site}"
        );
    }
    assert_tail_and_totals(&h.limited);
}

/// `leakscope report full.json --max-sites 5 --format FORMAT`.
fn rerender(format: &str) -> Vec<u8> {
    let json = hunts().full_json.to_str().unwrap();
    let out = json.replace("full.json", &format!("limited.{format}"));
    let run = run_leakscope(
        &["report", json, "--max-sites", "5", "--format", format, "-o", &out],
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
    assert_eq!(leakers(&limited, &h.fixture), [24, 23, 22, 21, 20]);
    assert_tail_and_totals(&limited);
    // Limiting again to more sites changes nothing: the tail is not re-expanded.
    let json = h.full_json.with_file_name("limited.json");
    let again = run_leakscope(
        &[
            "report",
            json.to_str().unwrap(),
            "--max-sites",
            "10",
            "--format",
            "json",
        ],
        ERROR_TIMEOUT,
        "max-sites-again",
    );
    assert!(again.status.success(), "{}", again.describe());
    assert_eq!(parse_report(&again.stdout, &again.describe()), limited);
}

#[test]
fn text_and_folded_show_the_tail() {
    let (bytes, allocations) = held_by(1..=SITES - KEPT);
    let text = String::from_utf8(rerender("text")).expect("UTF-8");
    let line = format!(
        "19 more sites summarised (--max-sites) hold malloc {:.1} KiB in {allocations} allocations",
        bytes as f64 / 1024.0
    );
    assert!(text.contains(&line), "no {line:?} in:\n{text}");
    let folded = String::from_utf8(rerender("folded")).expect("UTF-8");
    let lines: Vec<&str> = folded.lines().collect();
    assert_eq!(lines.len() as u64, KEPT + 1, "{folded}");
    assert_eq!(lines[KEPT as usize], format!("[malloc];[19 more sites] {bytes}"));
    let sum: u64 = lines
        .iter()
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .expect("a count")
        })
        .sum();
    assert_eq!(sum, held_by(1..=SITES).0, "the stacks add up to the totals");
}

#[test]
fn pprof_counts_the_tail() {
    rerender("pprof");
    let file = hunts().full_json.with_file_name("limited.pprof");
    let output = Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-sample_index=inuse_space",
            "-unit=B",
            "-nodefraction=0",
        ])
        .arg(&file)
        .env("GOCACHE", file.with_extension("gocache"))
        .output()
        .expect("run go tool pprof (cargo xtask setup installs go)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let describe = format!("{stdout}\n--- stderr ---\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "go tool pprof failed:\n{describe}");
    let total = format!("Total samples = {}B", held_by(1..=SITES).0);
    assert!(stdout.contains(&total), "expected {total:?}:\n{describe}");
    let tail = held_by(1..=SITES - KEPT).0;
    let found = stdout.lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() == 8 && cols[0] == format!("{tail}B") && cols[5..] == ["[19", "more", "sites]"][..]
    });
    assert!(found, "no row `{tail}B ... [19 more sites]`:\n{describe}");
}
