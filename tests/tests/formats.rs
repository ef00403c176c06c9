//! Every output format, read by its real consumer. allocators.c is hunted
//! once (`--format json`); `leakscope report` renders that file in each
//! format; `leakscope diff` compares it with a second hunt and with an edited
//! copy.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "allocators";

/// Functions of allocators.c with leaking sites, and what each holds.
const HELD: &[(&str, u64)] = &[
    ("leak_malloc", 7 * 1001),
    ("leak_calloc", 6 * 3 * 337),
    ("leak_large", 2 * 200_003),
];

struct Hunt {
    fixture: PathBuf,
    json: PathBuf,
    report: Value,
}

/// One hunt, saved as A.json, shared by the tests of this file.
fn hunt() -> &'static Hunt {
    static HUNT: OnceLock<Hunt> = OnceLock::new();
    HUNT.get_or_init(|| {
        let fixture = build_fixture(NAME, &[]);
        let (json, report) = hunt_to(&fixture, "A.json");
        Hunt { fixture, json, report }
    })
}

fn hunt_to(fixture: &Path, file: &str) -> (PathBuf, Value) {
    let (out, text) = run_launch_raw(fixture, &[], "json", &[]);
    assert!(out.status.success(), "{}", out.describe());
    let path = scratch_dir("formats").join(file);
    fs::write(&path, &text).expect("save the JSON report");
    (path, parse_report(&text, &out.describe()))
}

/// `leakscope report A.json --format FORMAT -o OUT`: OUT's bytes.
fn render(format: &str) -> Vec<u8> {
    let json = hunt().json.to_str().unwrap();
    let out = json.replace(".json", &format!(".{format}"));
    let run = run_leakscope(
        &["report", json, "--format", format, "--top", "1000", "-o", &out],
        ERROR_TIMEOUT,
        &format!("report-{format}"),
    );
    assert!(
        run.status.success(),
        "leakscope report --format {format}: {}",
        run.describe()
    );
    fs::read(&out).unwrap_or_else(|e| panic!("no {format} output at {out}: {e}"))
}

fn total_bytes(report: &Value) -> u64 {
    u64_field(&report["totals"], "outstanding_bytes")
}

#[test]
fn json_round_trips() {
    let again: Value = serde_json::from_slice(&render("json")).expect("JSON");
    assert_eq!(
        again,
        hunt().report,
        "leakscope report --format json changed the report"
    );
}

#[test]
fn text_lists_the_sites() {
    let text = String::from_utf8(render("text")).expect("UTF-8");
    for (function, _) in HELD {
        assert!(text.contains(function), "text report lacks {function}:\n{text}");
    }
}

#[test]
fn folded_lines_add_up_to_the_totals() {
    let text = String::from_utf8(render("folded")).expect("UTF-8");
    let mut sum = 0;
    for line in text.lines() {
        // frames (names may hold spaces, never `;`-empty), one space, an integer
        let (stack, bytes) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no count in {line:?}"));
        let frames: Vec<&str> = stack.split(';').collect();
        assert!(
            frames.len() >= 2 && frames.iter().all(|f| !f.is_empty()) && frames[0].starts_with('['),
            "not `[kind];frame;... BYTES`: {line:?}"
        );
        sum += bytes
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("count of {line:?} is not an integer"));
    }
    assert_eq!(
        sum,
        total_bytes(&hunt().report),
        "folded bytes != totals.outstanding_bytes"
    );
    // fixture_main is fixture.h's inline function, a frame of its own.
    for (function, bytes) in HELD {
        let line = format!(";main;fixture_main;workload;{function} {bytes}");
        assert!(
            text.lines().any(|l| l.starts_with("[malloc];") && l.ends_with(&line)),
            "no line ending {line:?}:\n{text}"
        );
    }
}

#[test]
fn flamegraph_is_an_svg_of_the_stacks() {
    let svg = String::from_utf8(render("flamegraph")).expect("UTF-8");
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&svg, options).unwrap_or_else(|e| panic!("not XML ({e})"));
    assert!(doc.root_element().has_tag_name("svg"));
    // Each frame is a <g> whose <title> reads "name (N bytes, P%)".
    let titles: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text())
        .collect();
    for (function, bytes) in HELD {
        let prefix = format!("{function} ({} bytes", thousands(*bytes));
        assert!(
            titles.iter().any(|t| t.starts_with(&prefix)),
            "no frame {prefix:?} in {titles:?}"
        );
    }
    assert!(
        svg.contains(hunt().fixture.to_str().unwrap()),
        "the title names the target"
    );
}

/// 400006 -> "400,006", as inferno prints counts.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn pprof_reads_with_go_tool_pprof() {
    render("pprof");
    let file = hunt().json.with_extension("pprof");
    let (stdout, describe) = pprof_top(&file);
    assert!(stdout.contains("Type: inuse_space"), "{describe}");
    let total = format!("Total samples = {}B", total_bytes(&hunt().report));
    assert!(stdout.contains(&total), "expected {total:?}:\n{describe}");
    // "flat flat% sum% cum cum% name": each leaking function holds its bytes itself.
    for (function, bytes) in HELD {
        let found = stdout.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() == 6 && cols[5] == *function && cols[0] == format!("{bytes}B")
        });
        assert!(found, "no row `{bytes}B ... {function}`:\n{describe}");
    }
}

#[test]
fn markdown_parses_into_sections_tables_and_stacks() {
    use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

    let md = String::from_utf8(render("markdown")).expect("UTF-8");
    let (mut headings, mut code_blocks, mut tables) = (Vec::new(), Vec::new(), 0);
    let mut text: Option<String> = None;
    for event in Parser::new_ext(&md, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. } | Tag::CodeBlock(CodeBlockKind::Fenced(_))) => text = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(buf) = text.as_mut() {
                    buf.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => headings.push(text.take().unwrap_or_default()),
            Event::End(TagEnd::CodeBlock) => code_blocks.push(text.take().unwrap_or_default()),
            Event::End(TagEnd::Table) => tables += 1,
            _ => {}
        }
    }
    for section in [
        "Summary",
        "Timeline",
        "Memory by kind",
        "RSS versus tracked memory",
        "Drops",
        "Probes",
        "Reproduce",
    ] {
        assert!(
            headings.iter().any(|h| h == section),
            "no heading {section:?} in {headings:?}\n{md}"
        );
    }
    // timeline, kinds and probes at least
    assert!(tables >= 3, "{tables} tables parsed:\n{md}");
    for (function, _) in HELD {
        assert!(
            code_blocks.iter().any(|b| b.starts_with(function)),
            "no stack code block starting at {function}:\n{md}"
        );
    }
    assert!(
        code_blocks.iter().any(|b| b.contains("hunt --format json")),
        "no code block with the command line:\n{md}"
    );
}

/// The diff's site whose first frame in the fixture is in `function`.
fn diff_site<'a>(diff: &'a Value, function: &str) -> &'a Value {
    find_site(diff, &hunt().fixture, function).unwrap_or_else(|| panic!("no {function} site in the diff:\n{diff:#}"))
}

fn run_diff(a: &Path, b: &Path, format: &str) -> String {
    let run = run_leakscope(
        &["diff", a.to_str().unwrap(), b.to_str().unwrap(), "--format", format],
        ERROR_TIMEOUT,
        "diff",
    );
    assert!(run.status.success(), "leakscope diff: {}", run.describe());
    run.stdout
}

#[test]
fn diff_of_two_hunts_matches_every_site_despite_aslr() {
    let (b, _) = hunt_to(&hunt().fixture, "B.json");
    let diff: Value = serde_json::from_str(&run_diff(&hunt().json, &b, "json")).expect("diff JSON");
    assert_eq!(diff["schema"], "leakscope/diff/v1");
    for e in expected::allocators() {
        let site = diff_site(&diff, e.function);
        let same = serde_json::json!({"bytes": e.bytes, "allocations": e.allocations[0]});
        assert_eq!(
            (&site["status"], &site["a"], &site["b"], &site["delta_bytes"]),
            (&Value::from("same"), &same, &same, &Value::from(0)),
            "{}: {site:#}",
            e.function
        );
    }
}

#[test]
fn diff_reports_exact_growth_and_gone_sites() {
    // B: A where leak_malloc holds one more 1001-byte block, leak_calloc's
    // site is gone, and every address moved (another run, another layout).
    let mut b = hunt().report.clone();
    let fixture = &hunt().fixture;
    let index = |b: &Value, function: &str| {
        sites(b)
            .iter()
            .position(|s| origin_frame(s, fixture, OriginRule::Module).is_some_and(|f| f["function"] == function))
            .unwrap_or_else(|| panic!("no {function} site"))
    };
    let grown = index(&b, "leak_malloc");
    let site = &mut b["sites"][grown];
    site["outstanding_bytes"] = Value::from(7 * 1001 + 1001);
    site["outstanding_allocations"] = Value::from(8);
    let gone = index(&b, "leak_calloc");
    b["sites"].as_array_mut().unwrap().remove(gone);
    for site in b["sites"].as_array_mut().unwrap() {
        for frame in site["frames"].as_array_mut().unwrap() {
            frame["address"] = Value::from(format!("{}000", frame["address"].as_str().unwrap()));
        }
    }
    let totals = &mut b["totals"];
    totals["outstanding_bytes"] = Value::from(total_bytes(&hunt().report) + 1001 - 6 * 3 * 337);
    totals["outstanding_allocations"] = Value::from(u64_field(totals, "outstanding_allocations") + 1 - 6);
    let b_path = hunt().json.with_file_name("B-edited.json");
    fs::write(&b_path, serde_json::to_string_pretty(&b).unwrap()).unwrap();

    let diff: Value = serde_json::from_str(&run_diff(&hunt().json, &b_path, "json")).expect("diff JSON");
    let site = diff_site(&diff, "leak_malloc");
    assert_eq!(site["status"], "grown", "{site:#}");
    assert_eq!(site["delta_bytes"], 1001, "{site:#}");
    assert_eq!(site["delta_allocations"], 1, "{site:#}");
    assert_eq!(site["b"]["bytes"], 8 * 1001, "{site:#}");
    let site = diff_site(&diff, "leak_calloc");
    assert_eq!(
        (&site["status"], &site["delta_bytes"]),
        (&Value::from("gone"), &Value::from(-6066))
    );
    assert_eq!(diff["totals"]["delta_bytes"], 1001 - 6066);
    assert_eq!(
        diff["sites"][0]["status"], "grown",
        "grown sites come first (no new ones)"
    );
    // Sites with the same symbolic stack (the loader's mappings) are one entry.
    let changed: Vec<&Value> = diff["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["status"])
        .filter(|status| *status != "same")
        .collect();
    assert_eq!(changed, ["grown", "gone"], "every other site is matched unchanged");

    let text = run_diff(&hunt().json, &b_path, "text");
    let grown_row = text
        .lines()
        .find(|l| l.starts_with("grown"))
        .unwrap_or_else(|| panic!("no grown row:\n{text}"));
    assert!(
        grown_row.contains("+1001 B") && grown_row.contains("leak_malloc"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("gone") && l.contains("leak_calloc")),
        "{text}"
    );
}
