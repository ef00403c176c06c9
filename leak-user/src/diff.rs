//! `leakscope diff A.json B.json`: what grew between two reports.
//!
//! Sites are matched by what their stacks mean (kind, allocator, and each
//! frame's function, file, line and module), never by raw addresses, which
//! ASLR changes from run to run. Sites of one report with the same key (stacks
//! that differ only in addresses of unnamed code) are added up.
//!
//! JSON output, schema `leakscope/diff/v1`: `totals` (`a`, `b`: `bytes`,
//! `allocations`; `delta_bytes`, `delta_allocations`: b − a) and `sites[]`
//! (`status`: `new`, `grown`, `shrunk`, `gone` or `same`; `kind`, `allocator`,
//! `frames[]` innermost first with `function`, `file`, `line`, `module`; `a`,
//! `b`, `delta_bytes`, `delta_allocations`), listed in that order of status,
//! largest change first. When both reports have a JS heap census,
//! `js_heap_groups[]` compares its groups at the last census of each
//! (matched by `kind`, `name`, `shape`, `location`, `enclosing_function`):
//! `status`, those five, `a` and `b` (`objects`, `bytes`), `delta_objects`,
//! `delta_bytes`, in the same order.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    heap::Kind,
    report::{file_name, human_bytes, Report},
};

pub const SCHEMA: &str = "leakscope/diff/v1";

#[derive(Debug, Serialize)]
pub struct Diff {
    pub schema: &'static str,
    pub totals: TotalsDiff,
    pub sites: Vec<SiteDiff>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub js_heap_groups: Vec<GroupDiff>,
}

/// A JS heap census group in both reports (or one).
#[derive(Debug, Serialize)]
pub struct GroupDiff {
    pub status: Status,
    pub kind: String,
    pub name: String,
    pub shape: Vec<String>,
    pub location: Option<String>,
    pub enclosing_function: Option<String>,
    pub a: Objects,
    pub b: Objects,
    pub delta_objects: i128,
    pub delta_bytes: i128,
}

/// What a census group held at the last census.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Objects {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct TotalsDiff {
    pub a: Amount,
    pub b: Amount,
    pub delta_bytes: i128,
    pub delta_allocations: i128,
}

/// Outstanding memory of a site (or of a report) at the end of its hunt.
/// Wider than a report's u64 counts: sites with one key add up, and their
/// differences must not wrap (a growth would show as "shrunk").
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Amount {
    pub bytes: u128,
    pub allocations: u128,
}

#[derive(Debug, Serialize)]
pub struct SiteDiff {
    pub status: Status,
    pub kind: Kind,
    pub allocator: String,
    pub frames: Vec<FrameKey>,
    pub a: Amount,
    pub b: Amount,
    pub delta_bytes: i128,
    pub delta_allocations: i128,
}

/// Listed in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Only in B.
    New,
    Grown,
    Shrunk,
    /// Only in A.
    Gone,
    Same,
}

/// A frame without its address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FrameKey {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<String>,
}

type SiteKey = (Kind, String, Vec<FrameKey>);

pub fn diff(a_report: &Report, b_report: &Report) -> Diff {
    let (a, b) = (a_report, b_report);
    let mut matched: BTreeMap<SiteKey, (Option<Amount>, Option<Amount>)> = BTreeMap::new();
    for (report, in_b) in [(a, false), (b, true)] {
        for site in &report.sites {
            let frames = site
                .frames
                .iter()
                .map(|f| FrameKey {
                    function: f.function.clone(),
                    file: f.file.clone(),
                    line: f.line,
                    module: f.module.clone(),
                })
                .collect();
            let entry = matched.entry((site.kind, site.allocator.clone(), frames)).or_default();
            let amount = if in_b { &mut entry.1 } else { &mut entry.0 };
            let amount = amount.get_or_insert_with(Amount::default);
            amount.bytes += u128::from(site.outstanding_bytes);
            amount.allocations += u128::from(site.outstanding_allocations);
        }
    }
    let mut sites: Vec<SiteDiff> = matched
        .into_iter()
        .map(|((kind, allocator, frames), (a, b))| {
            let delta_bytes = delta(a.unwrap_or_default().bytes, b.unwrap_or_default().bytes);
            let status = status(a.is_some(), b.is_some(), delta_bytes);
            let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
            SiteDiff {
                status,
                kind,
                allocator,
                frames,
                a,
                b,
                delta_bytes,
                delta_allocations: delta(a.allocations, b.allocations),
            }
        })
        .collect();
    sites.sort_by(|x, y| {
        x.status
            .cmp(&y.status)
            .then(y.delta_bytes.unsigned_abs().cmp(&x.delta_bytes.unsigned_abs()))
    });
    let amount = |r: &Report| Amount {
        bytes: r.totals.outstanding_bytes.into(),
        allocations: r.totals.outstanding_allocations.into(),
    };
    let (a, b) = (amount(a), amount(b));
    Diff {
        schema: SCHEMA,
        totals: TotalsDiff {
            a,
            b,
            delta_bytes: delta(a.bytes, b.bytes),
            delta_allocations: delta(a.allocations, b.allocations),
        },
        sites,
        js_heap_groups: census_groups(a_report, b_report),
    }
}

type GroupKey = (String, String, Vec<String>, Option<String>, Option<String>);

/// The census groups of both reports, matched; empty unless both have a census.
fn census_groups(a: &Report, b: &Report) -> Vec<GroupDiff> {
    let (Some(a), Some(b)) = (taken_census(a), taken_census(b)) else {
        return Vec::new();
    };
    let mut matched: BTreeMap<GroupKey, (Option<Objects>, Option<Objects>)> = BTreeMap::new();
    for (census, in_b) in [(a, false), (b, true)] {
        for g in &census.groups {
            let key = (
                g.kind.clone(),
                g.name.clone(),
                g.shape.clone(),
                g.location.clone(),
                g.enclosing_function.clone(),
            );
            let entry = matched.entry(key).or_default();
            let side = if in_b { &mut entry.1 } else { &mut entry.0 };
            *side = Some(Objects {
                objects: g.count_last,
                bytes: g.bytes_last,
            });
        }
    }
    let mut groups: Vec<GroupDiff> = matched
        .into_iter()
        .map(|((kind, name, shape, location, enclosing_function), (a, b))| {
            let (a_or_0, b_or_0) = (a.unwrap_or_default(), b.unwrap_or_default());
            let delta_bytes = i128::from(b_or_0.bytes) - i128::from(a_or_0.bytes);
            GroupDiff {
                status: status(a.is_some(), b.is_some(), delta_bytes),
                kind,
                name,
                shape,
                location,
                enclosing_function,
                a: a_or_0,
                b: b_or_0,
                delta_objects: i128::from(b_or_0.objects) - i128::from(a_or_0.objects),
                delta_bytes,
            }
        })
        .collect();
    groups.sort_by(|x, y| {
        x.status
            .cmp(&y.status)
            .then(y.delta_bytes.unsigned_abs().cmp(&x.delta_bytes.unsigned_abs()))
    });
    groups
}

fn taken_census(r: &Report) -> Option<&crate::report::HeapCensus> {
    r.node
        .as_ref()
        .and_then(|n| n.heap_census.as_ref())
        .filter(|c| !c.censuses.is_empty())
}

/// New, gone, or how the bytes changed.
fn status(in_a: bool, in_b: bool, delta_bytes: i128) -> Status {
    match (in_a, in_b) {
        (false, _) => Status::New,
        (_, false) => Status::Gone,
        _ if delta_bytes > 0 => Status::Grown,
        _ if delta_bytes < 0 => Status::Shrunk,
        _ => Status::Same,
    }
}

/// b − a. Amounts are sums of at most a few million u64 counts, far below
/// i128's range.
fn delta(a: u128, b: u128) -> i128 {
    b as i128 - a as i128
}

pub fn render_json(diff: &Diff) -> String {
    let mut out = serde_json::to_string_pretty(diff).expect("a diff always serializes");
    out.push('\n');
    out
}

/// A table of the sites that changed, most grown first.
pub fn render_text(diff: &Diff) -> String {
    let mut out = String::new();
    let t = &diff.totals;
    let _ = writeln!(
        out,
        "outstanding: {} -> {}: {} ({:+} allocations)",
        amount_text(t.a),
        amount_text(t.b),
        signed_bytes(t.delta_bytes),
        t.delta_allocations
    );
    let count = |status| diff.sites.iter().filter(|s| s.status == status).count();
    let _ = writeln!(
        out,
        "call stacks: {} new, {} grown, {} shrunk, {} gone, {} unchanged\n",
        count(Status::New),
        count(Status::Grown),
        count(Status::Shrunk),
        count(Status::Gone),
        count(Status::Same)
    );
    let _ = writeln!(
        out,
        "{:<7} {:>11}  {:>22}  {:>22}  call stack (innermost first)",
        "status", "delta", "A", "B"
    );
    for site in diff.sites.iter().filter(|s| s.status != Status::Same) {
        let status = format!("{:?}", site.status).to_lowercase();
        let _ = writeln!(
            out,
            "{status:<7} {:>11}  {:>22}  {:>22}  {}",
            signed_bytes(site.delta_bytes),
            amount_text(site.a),
            amount_text(site.b),
            stack_text(site)
        );
    }
    if !diff.js_heap_groups.is_empty() {
        let _ = writeln!(out, "\nJS heap groups at the last census (objects, bytes):");
        for g in diff.js_heap_groups.iter().filter(|g| g.status != Status::Same) {
            let status = format!("{:?}", g.status).to_lowercase();
            let label = match &g.location {
                Some(location) => format!("{} {} ({location})", g.kind, g.name),
                None if g.shape.is_empty() => format!("{} {}", g.kind, g.name),
                None => format!("{} {} {{{}}}", g.kind, g.name, g.shape.join(", ")),
            };
            let _ = writeln!(
                out,
                "{status:<7} {:>+8} {:>11}  {} -> {}  {label}",
                g.delta_objects,
                signed_bytes(g.delta_bytes),
                g.a.objects,
                g.b.objects
            );
        }
    }
    out
}

fn amount_text(a: Amount) -> String {
    format!("{} ({} allocs)", human_bytes(a.bytes), a.allocations)
}

fn signed_bytes(delta: i128) -> String {
    let sign = if delta < 0 { "-" } else { "+" };
    format!("{sign}{}", human_bytes(delta.unsigned_abs()))
}

/// `malloc via calloc: leak_calloc (app.c:31) <- workload <- main`, up to 4 frames.
fn stack_text(site: &SiteDiff) -> String {
    let frames: Vec<String> = site
        .frames
        .iter()
        .take(4)
        .map(|f| match (&f.function, &f.file, f.line) {
            (Some(function), Some(file), Some(line)) => format!("{function} ({}:{line})", file_name(file)),
            (Some(function), _, _) => function.clone(),
            (None, _, _) => f.module.as_deref().map_or("[unknown]", file_name).to_string(),
        })
        .collect();
    let stack = if frames.is_empty() {
        "[stack lost]".to_string()
    } else {
        frames.join(" <- ")
    };
    format!("{} via {}: {stack}", site.kind.name(), site.allocator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    /// B: another run of the sample (every address moved), where
    /// cache_insert grew by one 1001-byte block, parse_config freed all, and
    /// a new calloc site appeared.
    fn later_run() -> Report {
        let mut b = sample_report();
        for site in &mut b.sites {
            for frame in &mut site.frames {
                let frame = std::sync::Arc::make_mut(frame);
                frame.address = format!("{}0", frame.address);
            }
        }
        b.sites[0].outstanding_bytes += 1001;
        b.sites[0].outstanding_allocations += 1;
        b.sites.remove(2);
        let mut new = b.sites[0].clone();
        new.allocator = "calloc".into();
        new.outstanding_bytes = 300;
        new.outstanding_allocations = 3;
        b.sites.push(new);
        b.totals.outstanding_bytes += 1001 - 1000 + 300;
        b.totals.outstanding_allocations = b.totals.outstanding_allocations + 1 + 3 - 4;
        b
    }

    #[test]
    fn matches_stacks_across_address_changes() {
        let d = diff(&sample_report(), &later_run());
        let summary: Vec<(Status, &str, i128)> = d
            .sites
            .iter()
            .map(|s| {
                let name = s.frames.first().and_then(|f| f.function.as_deref()).unwrap_or("-");
                (s.status, name, s.delta_bytes)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Status::New, "cache_insert", 300),
                (Status::Grown, "cache_insert", 1001),
                (Status::Gone, "parse_config", -1000),
                (Status::Same, "-", 0),
                (Status::Same, "std::array<int; 2>::fill", 0),
            ]
        );
        let grown = &d.sites[1];
        assert_eq!(
            grown.a,
            Amount {
                bytes: 40960,
                allocations: 10
            }
        );
        assert_eq!(
            grown.b,
            Amount {
                bytes: 41961,
                allocations: 11
            }
        );
        assert_eq!(grown.delta_allocations, 1);
        assert_eq!((d.totals.delta_bytes, d.totals.delta_allocations), (301, 0));

        let json: serde_json::Value = serde_json::from_str(&render_json(&d)).unwrap();
        assert_eq!(json["schema"], SCHEMA);
        assert_eq!(json["sites"][1]["status"], "grown");
        assert_eq!(json["sites"][1]["kind"], "malloc");
        assert_eq!(json["sites"][1]["frames"][0]["line"], 31);
        assert_eq!(json["totals"]["b"]["bytes"], 50965);

        let text = render_text(&d);
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("1 new, 1 grown, 0 shrunk, 1 gone, 2 unchanged"),
            "{text}"
        );
        assert!(
            words.contains(
                "grown +1001 B 40.0 KiB (10 allocs) 41.0 KiB (11 allocs) malloc via malloc: \
                 cache_insert (app.c:31) <- handle_request (app.c:55) <- main (app.c:90)"
            ),
            "{text}"
        );
        assert!(!text.contains("std::array"), "unchanged sites are not listed:\n{text}");
    }

    /// Near u64::MAX a difference wider than i64 used to wrap: a growth
    /// showed as "shrunk", and two sites of one key overflowed their sum.
    #[test]
    fn growth_near_u64_max_neither_wraps_nor_overflows() {
        let a = sample_report();
        let mut b = sample_report();
        b.sites[0].outstanding_bytes = u64::MAX;
        b.totals.outstanding_bytes = u64::MAX;
        let d = diff(&a, &b);
        let grown = d.sites.iter().find(|s| s.a.bytes == 40960).unwrap();
        assert_eq!(grown.status, Status::Grown);
        assert_eq!(grown.delta_bytes, i128::from(u64::MAX) - 40960);
        assert_eq!(d.totals.delta_bytes, i128::from(u64::MAX) - 50664);
        let text = render_text(&d);
        assert!(
            text.lines().any(|l| l.starts_with("grown") && l.contains("+16.0 EiB")),
            "{text}"
        );
        // The same stack twice in B: the sum is past u64.
        let mut twice = b.clone();
        twice.sites.push(b.sites[0].clone());
        let d = diff(&a, &twice);
        let grown = d.sites.iter().find(|s| s.a.bytes == 40960).unwrap();
        assert_eq!(grown.b.bytes, 2 * u128::from(u64::MAX));
        assert_eq!(grown.status, Status::Grown);
        let json: serde_json::Value = serde_json::from_str(&render_json(&d)).unwrap();
        assert!(json["sites"][0]["delta_bytes"].as_f64().unwrap() > 3.6e19);
    }

    /// A report whose census's last counts are `groups`: (kind, name, objects, bytes).
    fn with_census(groups: &[(&str, &str, u64, u64)]) -> Report {
        let mut r = sample_report();
        let groups = groups
            .iter()
            .map(|&(kind, name, count, bytes)| crate::report::CensusGroup {
                kind: kind.into(),
                name: name.into(),
                shape: Vec::new(),
                location: None,
                enclosing_function: None,
                count_first: 0,
                count_last: count,
                bytes_first: 0,
                bytes_last: bytes,
                entries_first: None,
                entries_last: None,
                external_bytes_last: None,
                growth_bytes_per_s: None,
                verdict: crate::report::Verdict::Stable,
                retained_by: Vec::new(),
            })
            .collect();
        r.node = Some(crate::report::NodeReport {
            heap_census: Some(crate::report::HeapCensus {
                censuses: vec![crate::report::CensusPoint::default()],
                groups,
                ..Default::default()
            }),
            ..Default::default()
        });
        r
    }

    #[test]
    fn census_groups_are_matched_by_what_they_are() {
        let a = with_census(&[
            ("object", "CachedResult", 100, 4800),
            ("closure", "old", 3, 192),
            ("map", "Map", 1, 56),
        ]);
        let b = with_census(&[
            ("object", "CachedResult", 900, 43200),
            ("closure", "onData", 900, 57600),
            ("map", "Map", 1, 56),
        ]);
        let d = diff(&a, &b);
        let summary: Vec<(Status, &str, i128, i128)> = d
            .js_heap_groups
            .iter()
            .map(|g| (g.status, g.name.as_str(), g.delta_objects, g.delta_bytes))
            .collect();
        assert_eq!(
            summary,
            [
                (Status::New, "onData", 900, 57600),
                (Status::Grown, "CachedResult", 800, 38400),
                (Status::Gone, "old", -3, -192),
                (Status::Same, "Map", 0, 0),
            ]
        );
        // Without a census on both sides there is nothing to compare.
        assert!(diff(&sample_report(), &b).js_heap_groups.is_empty());
        let text = render_text(&d);
        assert!(
            text.contains("new         +900   +56.2 KiB  0 -> 900  closure onData"),
            "{text}"
        );
    }
}
