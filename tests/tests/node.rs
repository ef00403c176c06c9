//! Node.js targets: the fixtures in tests/fixtures/node/ are small services
//! driven by an internal loop (see harness.js) with known leaks. Each prints
//! one final JSON line with its own counts (buffers kept, slabs pinned,
//! streams opened, heap used after forced GCs...), from which the
//! expectations below are computed.
//!
//! Launch mode unless noted: `leakscope hunt --format json -o F -- node
//! [flags] fixture.js SECONDS`. The fixtures end with process.exit(0), so what
//! they retained is still held when the report is made.
//!
//! Where the contract is vague the bounds are conservative, and each one says
//! why. Node is required: without it these tests fail, they do not skip.
//!
//! As for the C fixtures, check_report_common requires every drop counter,
//! stack_lost included, to be 0: a lost stack puts its bytes under a site with
//! no frames, which breaks the attribution these tests check (pool slabs,
//! retainBuffers).

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use leakscope_tests::*;
use serde_json::Value;

/// How long each launch-mode fixture runs its loop (seconds).
const SECONDS: &str = "8";
/// Every fixture run here gets `--expose-gc`: the harness then forces a full
/// GC every 500 ms, so live-after-full-GC series have ~16 points, and
/// garbage Buffers are freed during the run.
const EXPOSE_GC: &str = "--expose-gc";

const KINDS: &[&str] = &["malloc", "mmap", "arraybuffer", "v8_heap"];
const VERDICTS: &[&str] = &["leak", "growing", "plateau", "stable", "insufficient-data"];
const GROWS: &[&str] = &["leak", "growing"];
/// The spaces of Node 18-26's V8s, as the report names them.
const SPACES: &[&str] = &[
    "read_only",
    "new",
    "old",
    "code",
    "shared",
    "new_large",
    "large",
    "code_large",
    "shared_large",
    "map",
    "trusted",
    "shared_trusted",
    "trusted_large",
    "shared_trusted_large",
];
const SAMPLE_REASONS: &[&str] = &["large-object", "young-refill", "map-grow", "array-grow"];
const ARRAYBUFFER_ALLOCATORS: &[&str] = &[
    "NodeArrayBufferAllocator::Allocate",
    "NodeArrayBufferAllocator::AllocateUninitialized",
];
const V8_HEAP_ALLOCATORS: &[&str] = &["MemoryAllocator::AllocatePage", "MemoryAllocator::AllocateLargePage"];
/// Node hooks the contract names; each must be in `probes[]` of a Node hunt.
const NODE_HOOKS: &[&str] = &[
    "NodeArrayBufferAllocator::Allocate",
    "NodeArrayBufferAllocator::Free",
    "MemoryAllocator::AllocatePage",
    "Heap::CollectGarbage",
];
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------
// Node and the fixtures

/// `$LEAKSCOPE_NODE`, else `node` on PATH. Panics (never skips) without it.
fn node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LEAKSCOPE_NODE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("node");
        if fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return candidate;
        }
    }
    panic!(
        "node not found on PATH ({}) and LEAKSCOPE_NODE is not set: the Node.js tests need node (v20) installed",
        path.to_string_lossy()
    );
}

fn script(name: &str) -> PathBuf {
    let p = workspace_root().join("tests/fixtures/node").join(format!("{name}.js"));
    p.canonicalize()
        .unwrap_or_else(|e| panic!("fixture {} missing: {e}", p.display()))
}

/// The 1-based line of `name.js` that contains `needle` (once).
fn marked_line(name: &str, needle: &str) -> u64 {
    marked(name, needle).0
}

/// The 1-based line of `name.js` containing `needle` (once), and its text.
fn marked(name: &str, needle: &str) -> (u64, String) {
    let text = fs::read_to_string(script(name)).expect("read fixture");
    let lines: Vec<(u64, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, l)| (i as u64 + 1, l))
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} must appear once in {name}.js");
    (lines[0].0, lines[0].1.to_string())
}

/// The fixture's final line: the last stdout line that is a JSON object
/// whose "fixture" is `name`.
fn summary_line(stdout: &str, name: &str) -> Option<Value> {
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|v| v["fixture"].as_str() == Some(name))
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("fixture line has no unsigned {key:?}: {v}"))
}

fn float(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("fixture line has no number {key:?}: {v}"))
}

/// heap_used after the forced GC at the end minus after the one at the start.
fn heap_growth(summary: &Value) -> i64 {
    num(&summary["mem_end"], "heap_used") as i64 - num(&summary["mem_start"], "heap_used") as i64
}

// ---------------------------------------------------------------------------
// Runs

struct NodeRun {
    name: &'static str,
    node: PathBuf,
    report: Value,
    status: ExitStatus,
    stderr: String,
    /// The fixture's own final line.
    summary: Value,
}

impl NodeRun {
    fn context(&self) -> String {
        format!(
            "fixture line: {}\nleakscope exit: {}\n--- leakscope stderr ---\n{}\n--- report: totals ---\n{}\n--- report: node ---\n{}\n--- report: probes ---\n{}\n--- report: top sites ---\n{}",
            self.summary,
            describe_status(self.status),
            self.stderr,
            self.report["totals"],
            serde_json::to_string_pretty(&self.report["node"]).unwrap_or_default(),
            self.report["probes"],
            describe_top_sites(&self.report, 12),
        )
    }
}

/// `leakscope hunt --format json -o F --top 1000 -- node <flags> NAME.js SECONDS`.
fn launch(name: &'static str, node_flags: &[&str]) -> NodeRun {
    launch_on(node_bin(), name, node_flags, &[])
}

/// `launch` with another node binary and more `hunt_args`.
fn launch_on(node: PathBuf, name: &'static str, node_flags: &[&str], hunt_args: &[&str]) -> NodeRun {
    let script = script(name);
    let mut args: Vec<&str> = node_flags.to_vec();
    let script_str = script.to_str().expect("utf-8 path");
    args.push(script_str);
    args.push(SECONDS);
    let start = Instant::now();
    let run = run_launch(&node, &args, hunt_args);
    eprintln!("node {name}: launch run took {:?}", start.elapsed());
    let summary = summary_line(&run.stdout, name).unwrap_or_else(|| {
        panic!(
            "fixture {name} printed no final line (the node command failed?)\nleakscope exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            describe_status(run.status),
            run.stdout,
            run.stderr
        )
    });
    NodeRun {
        name,
        node,
        report: run.report,
        status: run.status,
        stderr: run.stderr,
        summary,
    }
}

fn describe_top_sites(report: &Value, n: usize) -> String {
    let Some(all) = report["sites"].as_array() else {
        return "(no sites array)".into();
    };
    let mut out = Vec::new();
    for kind in KINDS {
        for s in all.iter().filter(|s| s["kind"].as_str() == Some(kind)).take(n / 2) {
            let frames: Vec<String> = s["frames"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .take(10)
                        .map(|f| {
                            format!(
                                "{}@{}:{}",
                                f["function"].as_str().unwrap_or("?"),
                                f["module"].as_str().and_then(|m| m.rsplit('/').next()).unwrap_or("?"),
                                f["line"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(format!(
                "  {} {} bytes={} allocs={} verdict={} frames=[{}]",
                s["kind"],
                s["allocator"],
                s["outstanding_bytes"],
                s["outstanding_allocations"],
                s["verdict"],
                frames.join(" <- ")
            ));
        }
    }
    let frameless: Vec<String> = all
        .iter()
        .filter(|s| s["frames"].as_array().is_none_or(Vec::is_empty))
        .map(|s| {
            format!(
                "{} {} bytes in {}",
                s["kind"], s["outstanding_bytes"], s["outstanding_allocations"]
            )
        })
        .collect();
    out.push(format!(
        "  sites without frames (stacks lost: {}): {}",
        report["drops"]["stack_lost"],
        frameless.join(", ")
    ));
    out.join("\n")
}

// ---------------------------------------------------------------------------
// Reading the Node parts of a report

fn category<'a>(report: &'a Value, kind: &str) -> &'a Value {
    &report["node"]["categories"][kind]
}

fn verdict<'a>(report: &'a Value, kind: &str) -> Option<&'a str> {
    category(report, kind)["verdict"].as_str()
}

fn sites_of<'a>(report: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    report["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |s| s["kind"].as_str() == Some(kind))
}

fn site_bytes(s: &Value) -> u64 {
    s["outstanding_bytes"].as_u64().unwrap_or(0)
}

fn frame_functions(site: &Value) -> Vec<&str> {
    site["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["function"].as_str().unwrap_or(""))
        .collect()
}

fn live_after_gc(report: &Value) -> Vec<f64> {
    report["node"]["live_after_full_gc"]["bytes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect()
}

// ---------------------------------------------------------------------------
// Checks shared by every Node run

/// The report's schema and the contract's Node additions, for any Node run.
fn check_node_report(v: &mut Verdict, report: &Value, node: &Path, mode: Mode) {
    check_report_common(v, report, node, mode);

    // totals.by_kind has the four kinds.
    for kind in KINDS {
        v.check(report["totals"]["by_kind"][kind].is_u64(), || {
            format!(
                "totals.by_kind.{kind} {} (expected bytes, u64)",
                report["totals"]["by_kind"][kind]
            )
        });
    }

    // Sites: kinds and allocators.
    for s in report["sites"].as_array().into_iter().flatten() {
        let kind = s["kind"].as_str().unwrap_or("");
        let allocator = s["allocator"].as_str().unwrap_or("");
        v.check(KINDS.contains(&kind), || {
            format!("site kind {} outside {KINDS:?}: {}", s["kind"], s["allocator"])
        });
        if kind == "arraybuffer" {
            v.check(ARRAYBUFFER_ALLOCATORS.contains(&allocator), || {
                format!(
                    "arraybuffer site with allocator {} (expected one of {ARRAYBUFFER_ALLOCATORS:?})",
                    s["allocator"]
                )
            });
        }
        if kind == "v8_heap" {
            v.check(V8_HEAP_ALLOCATORS.contains(&allocator), || {
                format!(
                    "v8_heap site with allocator {} (expected one of {V8_HEAP_ALLOCATORS:?})",
                    s["allocator"]
                )
            });
        }
        // ArrayBuffer memory is counted once: the libc malloc/calloc under
        // NodeArrayBufferAllocator is not also a malloc site.
        if kind == "malloc" {
            let under = frame_functions(s)
                .into_iter()
                .find(|f| f.contains("NodeArrayBufferAllocator::Allocate"));
            v.check(under.is_none(), || {
                format!(
                    "malloc site under {} ({} bytes): ArrayBuffer memory counted twice (contract: the libc call underneath is not also a malloc site)",
                    under.unwrap_or(""),
                    s["outstanding_bytes"]
                )
            });
        }
        for key in ["verdict", "growth_bytes_per_s", "series"] {
            v.check(!s[key].is_null() || key == "growth_bytes_per_s", || {
                format!("site ({} {}) has no {key:?}", s["kind"], s["allocator"])
            });
        }
        if let Some(vd) = s["verdict"].as_str() {
            v.check(VERDICTS.contains(&vd), || {
                format!("site verdict {vd:?} outside {VERDICTS:?}")
            });
        }
    }

    // The node object.
    let n = &report["node"];
    if !n.is_object() {
        v.fail(format!("report has no \"node\" object for a Node target (got {n})"));
        return;
    }
    for key in ["minor", "full"] {
        v.check(n["gc"][key].is_u64(), || {
            format!("node.gc.{key} {} (expected u64)", n["gc"][key])
        });
    }
    let lag = &n["live_after_full_gc"];
    match (lag["t_s"].as_array(), lag["bytes"].as_array()) {
        (Some(t), Some(b)) => {
            v.check(t.len() == b.len(), || {
                format!(
                    "live_after_full_gc: {} t_s values but {} bytes values",
                    t.len(),
                    b.len()
                )
            });
            v.check(t.iter().all(Value::is_number) && b.iter().all(Value::is_u64), || {
                format!("live_after_full_gc values are not numbers / byte counts: {lag}")
            });
            v.check(t.windows(2).all(|w| w[0].as_f64() <= w[1].as_f64()), || {
                format!("live_after_full_gc.t_s is not in time order: {}", lag["t_s"])
            });
            // "one point per full GC (mark-compact)"
            v.check(Some(b.len() as u64) == n["gc"]["full"].as_u64(), || {
                format!(
                    "live_after_full_gc has {} points but node.gc.full is {} (contract: one point per full GC)",
                    b.len(),
                    n["gc"]["full"]
                )
            });
        }
        _ => v.fail(format!("node.live_after_full_gc lacks t_s/bytes arrays: {lag}")),
    }
    let g = &n["live_after_full_gc_growth_bytes_per_s"];
    v.check(g.is_null() || g.is_f64() || g.is_i64() || g.is_u64(), || {
        format!("node.live_after_full_gc_growth_bytes_per_s {g} (expected number or null)")
    });
    match n["pages_by_space"].as_object() {
        Some(spaces) => {
            for (name, held) in spaces {
                v.check(SPACES.contains(&name.as_str()), || {
                    format!("pages_by_space key {name:?} outside {SPACES:?}")
                });
                v.check(held["pages"].is_u64() && held["bytes"].is_u64(), || {
                    format!("pages_by_space.{name} {held} (expected pages and bytes)")
                });
            }
        }
        None => v.fail(format!(
            "node.pages_by_space {} (expected an object)",
            n["pages_by_space"]
        )),
    }
    match n["allocation_samples"].as_array() {
        Some(samples) => {
            for s in samples {
                let reason = s["reason"].as_str().unwrap_or("");
                v.check(
                    SAMPLE_REASONS.contains(&reason)
                        && s["samples"].is_u64()
                        && s["bytes"].is_u64()
                        && s["frames"].is_array(),
                    || {
                        format!(
                            "allocation sample outside the contract (reason in {SAMPLE_REASONS:?}, samples, bytes, frames): reason={} samples={} bytes={}",
                            s["reason"], s["samples"], s["bytes"]
                        )
                    },
                );
            }
        }
        None => v.fail(format!(
            "node.allocation_samples {} (expected an array)",
            n["allocation_samples"]
        )),
    }
    for kind in KINDS {
        let c = &n["categories"][kind];
        let gr = &c["growth_bytes_per_s"];
        v.check(
            c["bytes"].is_u64()
                && (gr.is_null() || gr.is_number())
                && c["verdict"].as_str().is_some_and(|vd| VERDICTS.contains(&vd)),
            || {
                format!("node.categories.{kind} {c} (expected bytes, growth_bytes_per_s number|null, verdict in {VERDICTS:?})")
            },
        );
    }
    for hook in NODE_HOOKS {
        v.check(probe(report, hook).is_some(), || {
            format!("probes[] has no Node hook {hook:?}")
        });
    }
}

/// Common checks of a launch-mode Node run: exit status, the fixture ran,
/// stderr has the Node info line, the report's Node shape, GC counts.
fn check_launch_common(v: &mut Verdict, run: &NodeRun) {
    v.check(run.status.success(), || {
        format!(
            "leakscope exit {} for a node command that exits 0",
            describe_status(run.status)
        )
    });
    v.check(run.summary["gc_exposed"].as_bool() == Some(true), || {
        format!("the fixture did not see --expose-gc: {}", run.summary)
    });
    v.check(run.stderr.lines().any(|l| l.starts_with("leakscope: node:")), || {
        "no \"leakscope: node: ...\" line on stderr for a Node target".to_string()
    });
    check_node_report(v, &run.report, &run.node, Mode::Launch);
    // Every global.gc() is a full (mark-compact) GC; V8 may add its own.
    let forced = num(&run.summary, "forced_gcs");
    let full = run.report["node"]["gc"]["full"].as_u64();
    v.check(full.is_some_and(|f| f >= forced), || {
        format!("node.gc.full {full:?} < {forced}, the full GCs the fixture forced with global.gc()")
    });
    v.check(run.report["ended_by"].as_str() == Some("target-exited"), || {
        format!(
            "ended_by {} (expected \"target-exited\" in launch mode)",
            run.report["ended_by"]
        )
    });
}

fn finish(v: Verdict, run: &NodeRun) {
    v.finish(&format!("node {}", run.name), &run.context());
}

/// The category `kind` grows: verdict leak or growing.
fn check_category_grows(v: &mut Verdict, report: &Value, kind: &str) {
    let c = category(report, kind);
    v.check(verdict(report, kind).is_some_and(|vd| GROWS.contains(&vd)), || {
        format!(
            "node.categories.{kind}.verdict {} (expected one of {GROWS:?}): {c}",
            c["verdict"]
        )
    });
    v.check(c["growth_bytes_per_s"].as_f64().is_some_and(|g| g > 0.0), || {
        format!(
            "node.categories.{kind}.growth_bytes_per_s {} (expected > 0)",
            c["growth_bytes_per_s"]
        )
    });
}

/// JS heap leaks (map_cache, listeners, timers): the v8_heap category grows,
/// live bytes after full GCs rise by about what the fixture measured itself.
fn check_js_heap_leak(v: &mut Verdict, run: &NodeRun) {
    let report = &run.report;
    check_category_grows(v, report, "v8_heap");

    let grew = heap_growth(&run.summary);
    let seconds = float(&run.summary, "seconds");
    // The fixture must actually have leaked a good amount (a fixture problem otherwise).
    assert!(
        grew >= 2 * MIB as i64,
        "fixture {} grew its heap by only {grew} bytes: too little to judge\n{}",
        run.name,
        run.summary
    );

    let live = live_after_gc(report);
    // ~16 forced GCs; 5 is a conservative floor for a meaningful series.
    v.check(live.len() >= 5, || {
        format!(
            "live_after_full_gc has {} points (the fixture forced {} full GCs)",
            live.len(),
            run.summary["forced_gcs"]
        )
    });
    if live.len() >= 2 {
        let rise = live[live.len() - 1] - live[0];
        // The first and last points are the fixture's own forced GCs around the
        // loop, where it read heapUsed: the rise should match. Half of it is a
        // conservative bound (SizeOfObjects vs heapUsed, extra V8 GCs).
        v.check(rise >= 0.5 * grew as f64, || {
            format!(
                "live_after_full_gc rose by {rise} bytes (first {} -> last {}); the fixture measured +{grew} bytes heapUsed after forced GCs",
                live[0],
                live[live.len() - 1]
            )
        });
        let steps = live.len() - 1;
        let ups = live.windows(2).filter(|w| w[1] > w[0]).count();
        // A monotone leak: nearly every full GC finds more live bytes than the
        // previous one. 75% allows a few GCs close together.
        v.check(ups * 4 >= steps * 3, || {
            format!("live_after_full_gc rises in only {ups} of {steps} steps: {live:?}")
        });
    }
    let slope = report["node"]["live_after_full_gc_growth_bytes_per_s"].as_f64();
    let rate = grew as f64 / seconds;
    v.check(slope.is_some_and(|s| s >= 0.5 * rate), || {
        format!(
            "live_after_full_gc_growth_bytes_per_s {slope:?}; the fixture grew {rate:.0} bytes/s (expected at least half)"
        )
    });
    // Pages held cover the live growth (objects live on V8 pages).
    let held = category(report, "v8_heap")["bytes"].as_u64().unwrap_or(0);
    v.check(held as i64 >= grew, || {
        format!("node.categories.v8_heap.bytes {held} < the fixture's live heap growth {grew}")
    });
    let by_kind = report["totals"]["by_kind"]["v8_heap"].as_u64().unwrap_or(0);
    v.check(by_kind as i64 >= grew, || {
        format!("totals.by_kind.v8_heap {by_kind} < the fixture's live heap growth {grew}")
    });
}

/// buffers.js: the ArrayBuffer category and sites hold what retainBuffers
/// kept, the JS heap stays comparatively flat, and the Node hooks are live.
fn check_buffers(v: &mut Verdict, report: &Value, kept_bytes: u64) {
    check_category_grows(v, report, "arraybuffer");
    // Every kept Buffer is one 16 KiB backing store allocated during the hunt
    // and never freed. 4 buffers of slack for events in flight at the end.
    let floor = kept_bytes.saturating_sub(4 * 16 * KIB);
    let ab = category(report, "arraybuffer")["bytes"].as_u64().unwrap_or(0);
    v.check(ab >= floor, || {
        format!(
            "node.categories.arraybuffer.bytes {ab} < {floor} (the fixture kept {kept_bytes} bytes in 16 KiB Buffers)"
        )
    });
    let by_kind = report["totals"]["by_kind"]["arraybuffer"].as_u64().unwrap_or(0);
    v.check(by_kind >= floor, || {
        format!("totals.by_kind.arraybuffer {by_kind} < {floor} (the fixture kept {kept_bytes} bytes)")
    });
    let in_sites: u64 = sites_of(report, "arraybuffer").map(site_bytes).sum();
    v.check(in_sites >= floor, || {
        format!("arraybuffer sites hold {in_sites} bytes in all < {floor} (the fixture kept {kept_bytes} bytes)")
    });
    // Counted once: the calloc under Allocate is not also malloc. node's own
    // malloc'ed memory is a few MiB; the kept buffers are ~20 MiB or more.
    let malloc = report["totals"]["by_kind"]["malloc"].as_u64().unwrap_or(0);
    if kept_bytes >= 8 * MIB {
        v.check(malloc < kept_bytes / 2, || {
            format!("totals.by_kind.malloc {malloc} >= half the kept ArrayBuffer bytes {kept_bytes}: counted twice?")
        });
    }
    // The JS heap holds only the small Buffer objects (~100-200 bytes per 16
    // KiB): "flat-ish" is taken as growing at under a tenth of the rate of
    // the ArrayBuffer bytes (conservative; the real ratio is ~1/80).
    let ab_rate = category(report, "arraybuffer")["growth_bytes_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    let v8_rate = category(report, "v8_heap")["growth_bytes_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    v.check(v8_rate <= ab_rate / 10.0, || {
        format!("v8_heap grows at {v8_rate:.0} B/s, not flat next to arraybuffer at {ab_rate:.0} B/s (expected < 1/10)")
    });
}

// ---------------------------------------------------------------------------
// Launch-mode tests

/// buffers.js: the arraybuffer category grows by what the fixture kept; the
/// Node hooks are live with the calls the fixture made.
#[test]
fn buffers_arraybuffer_grows_and_hooks_are_live() {
    let run = launch("buffers", &[EXPOSE_GC]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    let kept = num(&run.summary, "kept_bytes");
    check_buffers(&mut v, &run.report, kept);

    // Hooks live, with at least the calls the fixture itself made.
    let kept_n = num(&run.summary, "kept_buffers");
    let temp_n = num(&run.summary, "temp_buffers");
    // Buffer.alloc(16 KiB) asks for zeroed memory: one Allocate per Buffer.
    check_probe_hits(
        &mut v,
        &run.report,
        "NodeArrayBufferAllocator::Allocate",
        kept_n + temp_n,
    );
    // Temporary Buffers die at the next forced GC (every 500 ms), and their
    // backing stores are freed (on V8 background threads). Half of them is a
    // conservative floor: sweeping of the last ones may not finish before exit.
    check_probe_hits(&mut v, &run.report, "NodeArrayBufferAllocator::Free", temp_n / 2);
    check_probe_hits(&mut v, &run.report, "MemoryAllocator::AllocatePage", 1);
    check_probe_hits(
        &mut v,
        &run.report,
        "Heap::CollectGarbage",
        num(&run.summary, "forced_gcs"),
    );
    finish(v, &run);
}

/// buffers.js under --perf-basic-prof: the top arraybuffer site names the JS
/// function that allocates, retainBuffers, from /tmp/perf-PID.map.
///
/// --interpreted-frames-native-stack is passed too: without it, an
/// interpreted function has no code of its own on the native stack (every
/// interpreted frame returns into the same InterpreterEntryTrampoline
/// builtin) and so no perf-map entry a tracer could name it from; the
/// contract promises names from the map, not a bytecode decoder.
/// --no-turbo-inlining keeps retainBuffers a frame of its own if TurboFan
/// optimizes its caller (an inlined function has no frame and no map entry).
#[test]
fn buffers_perf_basic_prof_names_retain_buffers() {
    // --perf-basic-prof also turns on V8's log, written to the current
    // directory unless told otherwise: keep it in this run's scratch dir.
    let logfile = format!("--logfile={}", scratch_dir("node-v8-log").join("v8.log").display());
    let run = launch(
        "buffers",
        &[
            EXPOSE_GC,
            "--perf-basic-prof",
            "--interpreted-frames-native-stack",
            "--no-turbo-inlining",
            "--no-logfile-per-isolate",
            &logfile,
        ],
    );
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    let kept = num(&run.summary, "kept_bytes");
    check_buffers(&mut v, &run.report, kept);

    // node leaves /tmp/perf-PID.map behind; the hunt is over, remove it.
    let pid = run.report["target"]["pid"].as_u64().unwrap_or(0);
    let map = read_perf_map(pid);
    let _ = fs::remove_file(format!("/tmp/perf-{pid}.map"));
    // Named from V8 itself: the line retainBuffers is executing (its
    // Buffer.alloc call), where the map has the line the function starts at.
    let line = marked_line("buffers", "const buf = Buffer.alloc(KEEP_BYTES);");
    let top = sites_of(&run.report, "arraybuffer").max_by_key(|s| site_bytes(s));
    match top {
        None => v.fail("no arraybuffer site at all"),
        Some(site) => {
            let frames = site["frames"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            match frames.iter().find(|f| f["function"].as_str() == Some("retainBuffers")) {
                None => v.fail(format!(
                    "the top arraybuffer site ({} bytes) has no frame named retainBuffers; its frames: {:?}",
                    site["outstanding_bytes"],
                    frame_functions(site)
                )),
                Some(f) => {
                    let file = f["file"].as_str().unwrap_or("");
                    // A plain path or a file:// URL, as in the map.
                    v.check(file.ends_with("/tests/fixtures/node/buffers.js"), || {
                        format!(
                            "retainBuffers frame file {} (expected the script, .../tests/fixtures/node/buffers.js)",
                            f["file"]
                        )
                    });
                    // Sparkplug and TurboFan code (`^`, `*` in the map) have
                    // no line yet: their position tables are not decoded.
                    let address =
                        u64::from_str_radix(f["address"].as_str().unwrap_or("0x0").trim_start_matches("0x"), 16)
                            .unwrap_or(0);
                    let optimized = map
                        .iter()
                        .rev()
                        .find(|e| (e.start..e.end).contains(&(address - 1)))
                        .is_some_and(|e| !e.name.starts_with("JS:~"));
                    v.check(
                        f["line"].as_u64() == Some(line) || (optimized && f["line"].is_null()),
                        || {
                            format!(
                                "retainBuffers frame line {} (expected {line}, its Buffer.alloc call)",
                                f["line"]
                            )
                        },
                    );
                    v.check(f["module"].as_str() == Some("[jit]"), || {
                        format!("retainBuffers frame module {} (expected \"[jit]\")", f["module"])
                    });
                }
            }
        }
    }
    finish(v, &run);
}

/// map_cache.js: an unbounded Map grows the JS heap.
#[test]
fn map_cache_grows_v8_heap() {
    let run = launch("map_cache", &[EXPOSE_GC]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    check_js_heap_leak(&mut v, &run);
    // The cache's hash table is rehashed into a bigger one ~14 times
    // (Runtime_MapGrow): the contract's "map-grow" samples.
    let map_grow: u64 = run.report["node"]["allocation_samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["reason"].as_str() == Some("map-grow"))
        .filter_map(|s| s["samples"].as_u64())
        .sum();
    v.check(map_grow >= 1, || {
        format!(
            "no \"map-grow\" allocation samples, though the cache Map grew to {} entries",
            run.summary["cache_entries"]
        )
    });
    finish(v, &run);
}

/// listeners.js: listeners never removed grow the JS heap.
#[test]
fn listeners_grow_v8_heap() {
    let run = launch("listeners", &[EXPOSE_GC]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    check_js_heap_leak(&mut v, &run);
    finish(v, &run);
}

/// timers.js: intervals never cleared grow the JS heap.
#[test]
fn timers_grow_v8_heap() {
    let run = launch("timers", &[EXPOSE_GC]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    check_js_heap_leak(&mut v, &run);
    finish(v, &run);
}

/// pool_slices.js: 32-byte slices kept from the 8 KiB Buffer pool pin whole
/// slabs; the arraybuffer category grows by the pinned slabs, in 8 KiB steps.
#[test]
fn pool_slices_pin_slabs() {
    let run = launch("pool_slices", &[EXPOSE_GC]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    let s = &run.summary;
    let pool = num(s, "pool_size");
    let pinned = num(s, "pinned_bytes");
    assert_eq!(pool, 8 * KIB, "Buffer.poolSize changed: {s}");
    assert_eq!(
        num(s, "pooled_tokens"),
        num(s, "tokens"),
        "the kept tokens are not all pool slices: {s}"
    );
    assert!(
        pinned >= 2 * MIB,
        "the fixture pinned only {pinned} bytes: too little to judge\n{s}"
    );

    check_category_grows(&mut v, &run.report, "arraybuffer");
    // Each pinned slab is an 8 KiB ArrayBuffer allocated during the hunt and
    // never freed; one slab of slack for the last events.
    let floor = pinned - pool;
    let ab = category(&run.report, "arraybuffer")["bytes"].as_u64().unwrap_or(0);
    v.check(ab >= floor, || {
        format!(
            "node.categories.arraybuffer.bytes {ab} < {floor}: the fixture's {} kept tokens ({} bytes) pin {} slabs = {pinned} bytes",
            s["tokens"], s["token_bytes"], s["pinned_slabs"]
        )
    });
    // 8 KiB steps: the slabs sit at arraybuffer sites made only of 8 KiB
    // allocations (the pool's createPool), which together hold the pinned bytes.
    let slab_sites: Vec<&Value> = sites_of(&run.report, "arraybuffer")
        .filter(|s| {
            let n = s["outstanding_allocations"].as_u64().unwrap_or(0);
            n > 0 && site_bytes(s) == n * pool
        })
        .collect();
    let in_slabs: u64 = slab_sites.iter().map(|s| site_bytes(s)).sum();
    let frameless: u64 = sites_of(&run.report, "arraybuffer")
        .filter(|s| s["frames"].as_array().is_none_or(Vec::is_empty))
        .map(site_bytes)
        .sum();
    v.check(in_slabs >= floor, || {
        format!(
            "arraybuffer sites of whole 8 KiB slabs hold {in_slabs} bytes ({} sites) < {floor} pinned by the kept tokens ({frameless} arraybuffer bytes sit in sites without frames)",
            slab_sites.len()
        )
    });
    finish(v, &run);
}

/// zlib_streams.js: deflate streams never closed hold zlib's native state
/// (malloc) while the JS heap stays comparatively flat.
#[test]
fn zlib_streams_grow_malloc_not_v8_heap() {
    let run = launch("zlib_streams", &[EXPOSE_GC]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    let s = &run.summary;
    let initialized = num(s, "initialized");
    assert!(
        initialized >= 40,
        "only {initialized} deflate streams were initialized: too few to judge\n{s}"
    );
    check_category_grows(&mut v, &run.report, "malloc");
    // deflateInit2 with windowBits 15, memLevel 8 allocates window, prev,
    // head and pending buffers of 64 KiB each (plus the state; measured here:
    // ~278 KiB per stream). 256 KiB per initialized stream is a floor.
    let floor = initialized * 256 * KIB;
    let malloc = category(&run.report, "malloc")["bytes"].as_u64().unwrap_or(0);
    v.check(malloc >= floor, || {
        format!("node.categories.malloc.bytes {malloc} < {floor} ({initialized} open deflate streams x 256 KiB)")
    });
    let by_kind = run.report["totals"]["by_kind"]["malloc"].as_u64().unwrap_or(0);
    v.check(by_kind >= floor, || {
        format!("totals.by_kind.malloc {by_kind} < {floor} ({initialized} open deflate streams x 256 KiB)")
    });
    // The JS side of a stream is a few KiB (measured ~5.6 KiB) next to its
    // ~278 KiB of native state: v8_heap must not be called a leak, and grows
    // (if at all) at under a tenth of the malloc rate.
    v.check(verdict(&run.report, "v8_heap") != Some("leak"), || {
        format!(
            "node.categories.v8_heap.verdict \"leak\" for a flat JS heap (fixture: heapUsed after forced GCs {} -> {}); v8_heap: {}",
            s["mem_start"]["heap_used"],
            s["mem_end"]["heap_used"],
            category(&run.report, "v8_heap")
        )
    });
    let malloc_rate = category(&run.report, "malloc")["growth_bytes_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    let v8_rate = category(&run.report, "v8_heap")["growth_bytes_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    v.check(v8_rate <= malloc_rate / 10.0, || {
        format!("v8_heap grows at {v8_rate:.0} B/s, not flat next to malloc at {malloc_rate:.0} B/s (expected < 1/10)")
    });
    check_one_zlib_finding(&mut v, &run);
    finish(v, &run);
}

/// zlib_streams.js's leak is one finding, titled by openCompressor's line
/// whatever JIT tier ran it (optimized frames have no line): the stream
/// objects it made (one per stream) and zlib's state, allocated on the
/// thread pool on their behalf (five blocks per stream whose first write
/// reached the pool: every initialized one, and at most every stream).
fn check_one_zlib_finding(v: &mut Verdict, run: &NodeRun) {
    let found: Vec<&Value> = run.report["findings"].as_array().into_iter().flatten().collect();
    let titles: Vec<&str> = found.iter().filter_map(|f| f["title"].as_str()).collect();
    let compressor: Vec<&&Value> = found
        .iter()
        .filter(|f| f["title"].as_str().is_some_and(|t| t.starts_with("openCompressor")))
        .collect();
    let [finding] = compressor.as_slice() else {
        v.fail(format!(
            "{} findings name openCompressor, not 1: {titles:?}",
            compressor.len()
        ));
        return;
    };
    let line = fs::read_to_string(script("zlib_streams"))
        .unwrap()
        .lines()
        .position(|l| l.contains("const deflate = zlib.createDeflate()"))
        .unwrap()
        + 1;
    v.check(
        finding["title"] == format!("openCompressor (zlib_streams.js:{line})"),
        || {
            format!(
                "the zlib finding is titled {}, not by openCompressor's line {line}",
                finding["title"]
            )
        },
    );
    let (streams, initialized) = (num(&run.summary, "streams"), num(&run.summary, "initialized"));
    let held = zlib_in_finding(&run.report, finding);
    v.check(held.problems.is_empty(), || format!("{:?}", held.problems));
    v.check(held.stream_objects == streams, || {
        format!(
            "{} stream objects in the finding, the fixture made {streams}",
            held.stream_objects
        )
    });
    v.check((5 * initialized..=5 * streams).contains(&held.state_blocks), || {
        format!(
            "{} blocks of zlib state in the finding, not 5 per stream ({initialized} initialized of {streams})",
            held.state_blocks
        )
    });
    let all_state: u64 = sites(&run.report)
        .iter()
        .filter(|s| is_zlib_state(s))
        .map(|s| s["outstanding_allocations"].as_u64().unwrap_or(0))
        .sum();
    v.check(all_state == held.state_blocks, || {
        format!(
            "{all_state} blocks of zlib state outstanding, {} of them in the finding",
            held.state_blocks
        )
    });
    v.check(
        !found
            .iter()
            .filter(|f| !std::ptr::eq(*f, *finding))
            .any(|f| f["title"].as_str().is_some_and(|t| t.contains("AllocForZlib"))),
        || format!("zlib's state has a finding of its own: {titles:?}"),
    );
}

/// zlib_streams.js in growth mode: no malloc probe, yet the pages the open
/// deflate streams' state touches are found at zlib's stack (deflateInit2_
/// zeroes the 64 KiB hash head of each stream: a floor), growing.
#[test]
fn zlib_streams_growth_mode_finds_the_native_leak() {
    let run = launch_on(node_bin(), "zlib_streams", &[EXPOSE_GC], &["--mode", "growth"]);
    let mut v = Verdict::new();
    let report = &run.report;
    v.check(report["mode"] == "growth", || format!("mode {}", report["mode"]));
    for name in LIBC_PROBES {
        v.check(probe(report, name).is_none(), || {
            format!("{name} probed in growth mode")
        });
    }
    let initialized = num(&run.summary, "initialized");
    assert!(
        initialized >= 40,
        "only {initialized} deflate streams: too few to judge"
    );
    let zlib: Vec<&Value> = sites_of(report, "pages_touched")
        .filter(|s| frame_functions(s).iter().any(|f| f.starts_with("deflateInit2")))
        .collect();
    let touched: u64 = zlib.iter().map(|s| site_bytes(s)).sum();
    let floor = initialized * 64 * KIB;
    v.check(touched >= floor, || {
        format!("deflateInit2_ stacks touched {touched} B < {floor} ({initialized} streams x 64 KiB)")
    });
    v.check(
        zlib.iter()
            .any(|s| GROWS.contains(&s["verdict"].as_str().unwrap_or(""))),
        || format!("no deflateInit2_ stack grows: {zlib:#?}"),
    );
    finish(v, &run);
}

/// healthy.js: lots of allocation, nothing kept: no category is a leak and
/// no arraybuffer site holds much.
#[test]
fn healthy_has_no_leak() {
    // The contract gives no number for "small": 4 MiB per arraybuffer site and
    // 8 MiB in all, against the fixture's ~80 KiB of Buffers per request
    // (hundreds of MiB per run). What can legitimately be outstanding is what
    // was allocated since the last GC, and what background threads had not
    // yet swept at exit.
    const SITE_BOUND: u64 = 4 * MIB;
    const TOTAL_BOUND: u64 = 8 * MIB;
    let run = launch("healthy", &[EXPOSE_GC]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    let allocated = num(&run.summary, "buffer_bytes");
    assert!(
        allocated >= 16 * SITE_BOUND,
        "the fixture allocated only {allocated} bytes of Buffers: the bounds would mean little\n{}",
        run.summary
    );
    for kind in KINDS {
        v.check(verdict(&run.report, kind) != Some("leak"), || {
            format!(
                "node.categories.{kind}.verdict \"leak\" for a fixture that keeps nothing: {}",
                category(&run.report, kind)
            )
        });
    }
    for s in sites_of(&run.report, "arraybuffer") {
        v.check(site_bytes(s) <= SITE_BOUND, || {
            format!(
                "arraybuffer site holds {} bytes in {} allocations (bound {SITE_BOUND}); frames {:?}",
                s["outstanding_bytes"],
                s["outstanding_allocations"],
                frame_functions(s)
            )
        });
    }
    let ab = run.report["totals"]["by_kind"]["arraybuffer"]
        .as_u64()
        .unwrap_or(u64::MAX);
    v.check(ab <= TOTAL_BOUND, || {
        format!("totals.by_kind.arraybuffer {ab} (bound {TOTAL_BOUND}) for a fixture that keeps nothing")
    });
    v.check(
        probe(&run.report, "NodeArrayBufferAllocator::Free").is_some_and(|p| p["status"].as_str() == Some("live")),
        || "NodeArrayBufferAllocator::Free not live, though every Buffer here is freed".to_string(),
    );
    finish(v, &run);
}

// ---------------------------------------------------------------------------
// Attach mode

/// Lines of a pipe with the time each was read.
struct TimedLines {
    rx: mpsc::Receiver<String>,
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl TimedLines {
    fn new<R: std::io::Read + Send + 'static>(r: R) -> TimedLines {
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                seen2.lock().unwrap().push((Instant::now(), line.clone()));
                let _ = tx.send(line);
            }
        });
        TimedLines { rx, seen }
    }

    fn wait_for(&self, want: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) if l == want => return Ok(()),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(format!("timed out after {timeout:?}")),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err("stream closed".into()),
            }
        }
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// `node --expose-gc buffers.js --wait` runs; leakscope attaches with
/// `-p PID --duration N`; once it is attached the fixture starts leaking
/// (SIGUSR2) and keeps leaking past the end of the hunt. The report must show
/// the arraybuffer growth, at least what the fixture had kept by a time
/// certain to be before the end of the hunt.
#[test]
fn attach_buffers_with_duration() {
    const DURATION: u64 = 15;
    let node = node_bin();
    let script = script("buffers");
    let dir = scratch_dir("attach-node-buffers");
    let report_path = dir.join("report.json");

    // stdout through our own pipe, to time-stamp its lines.
    let (out_r, out_w) = std::io::pipe().expect("pipe");
    let mut cmd = Command::new(&node);
    cmd.args([EXPOSE_GC])
        .arg(&script)
        .arg("--wait")
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(Stdio::piped());
    // Proc::spawn drops `cmd`, closing our copy of the pipe's write end.
    let mut target = Proc::spawn(cmd, "node buffers.js --wait");
    let target_out = TimedLines::new(out_r);
    let target_err = target.take_stderr();
    if let Err(why) = target_out.wait_for("ready", Duration::from_secs(30)) {
        panic!(
            "node buffers.js --wait never printed \"ready\" ({why})\n--- stderr ---\n{}",
            target_err.text(Duration::from_secs(1))
        );
    }
    let pid = target.pid();

    let mut args: Vec<OsString> = vec![
        "hunt".into(),
        "--mode".into(),
        "exact".into(),
        "-p".into(),
        pid.to_string().into(),
        "--duration".into(),
        DURATION.to_string().into(),
        "--format".into(),
        "json".into(),
        "--top".into(),
        "1000".into(),
        "-o".into(),
    ];
    args.push(report_path.clone().into());
    let mut cmd = Command::new(leakscope_bin());
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = Instant::now();
    let mut tracer = Proc::spawn(cmd, "leakscope");
    let tracer_out = tracer.take_stdout();
    let tracer_err = tracer.take_stderr();
    if let Err(why) = tracer_err.wait_for(|l| l.starts_with(ATTACHED_PREFIX), ATTACH_TIMEOUT) {
        panic!(
            "leakscope never printed \"{ATTACHED_PREFIX} ...\" ({why})\n--- stderr ---\n{}",
            tracer_err.text(Duration::from_secs(2))
        );
    }
    let attached = spawned.elapsed();
    target.signal(libc::SIGUSR2);

    let ctx = || format!("--- leakscope stderr ---\n{}", tracer_err.text(Duration::ZERO));
    let status = tracer.wait_or_panic(Duration::from_secs(DURATION) + STOP_TIMEOUT, &ctx);
    let hunt_took = spawned.elapsed();

    // Whenever the hunt's clock started, it ran at least DURATION seconds
    // from leakscope's start, so a line read before spawned + DURATION was
    // printed before the end of the hunt: what it reports kept is in the
    // report (kept Buffers are never freed).
    let lines = target_out.lines();
    let before_end = spawned + Duration::from_secs(DURATION);
    let last_progress = lines
        .iter()
        .rev()
        .filter(|(t, l)| *t <= before_end && l.starts_with("progress "))
        .find_map(|(_, l)| serde_json::from_str::<Value>(&l["progress ".len()..]).ok());

    // The app keeps running after the hunt; SIGTERM ends it with its final line.
    target.signal(libc::SIGTERM);
    let target_status = target.wait_or_panic(Duration::from_secs(30), &|| "node after SIGTERM".into());
    let stderr = tracer_err.text(Duration::from_secs(2));
    let describe = format!(
        "leakscope exit: {} after {hunt_took:?} (attached after {attached:?})\n--- stderr ---\n{stderr}\n--- stdout ---\n{}\n--- node stdout ---\n{}\n--- node stderr ---\n{}",
        describe_status(status),
        tracer_out.text(Duration::from_secs(1)),
        lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n"),
        target_err.text(Duration::from_secs(1)),
    );
    let text = fs::read_to_string(&report_path).unwrap_or_else(|e| {
        panic!(
            "leakscope wrote no report to {} ({e})\n{describe}",
            report_path.display()
        )
    });
    let report = parse_report(&text, &describe);

    let mut v = Verdict::new();
    v.check(status.success(), || {
        format!("leakscope exit {} (expected 0)", describe_status(status))
    });
    v.check(target_status.success(), || {
        format!(
            "node exited {} after SIGTERM (its handler exits 0): the hunt changed the app",
            describe_status(target_status)
        )
    });
    v.check(stderr.lines().any(|l| l.starts_with("leakscope: node:")), || {
        "no \"leakscope: node: ...\" line on stderr for a Node target".to_string()
    });
    check_node_report(&mut v, &report, &node, Mode::Attach { pid, exited: false });
    v.check(report["ended_by"].as_str() == Some("duration"), || {
        format!("ended_by {} (expected \"duration\")", report["ended_by"])
    });
    // --duration N: the hunt lasts N seconds (1 s of slack each way for the
    // clock's start and the sampling tick).
    v.check(
        report["duration_s"]
            .as_f64()
            .is_some_and(|d| d >= DURATION as f64 - 1.0 && d <= DURATION as f64 + 1.0 + attached.as_secs_f64()),
        || format!("duration_s {} for --duration {DURATION}", report["duration_s"]),
    );
    match last_progress {
        None => v.fail(format!(
            "the fixture printed no progress line within the hunt ({DURATION} s from leakscope's start, attached after {attached:?}): nothing to compare"
        )),
        Some(p) => {
            let kept = num(&p, "kept_bytes");
            // The fixture leaked throughout; by this line alone it had kept
            // `kept` bytes, all allocated after the attach.
            if kept < 4 * MIB {
                v.fail(format!(
                    "by the last progress line within the hunt the fixture had kept only {kept} bytes: too little to judge ({p})"
                ));
            }
            check_buffers(&mut v, &report, kept);
        }
    }
    drop(tracer);
    drop(target);
    v.finish(
        "node buffers (attach)",
        &format!(
            "{describe}\n--- report: totals ---\n{}\n--- report: node ---\n{}\n--- report: probes ---\n{}\n--- top sites ---\n{}",
            report["totals"],
            serde_json::to_string_pretty(&report["node"]).unwrap_or_default(),
            report["probes"],
            describe_top_sites(&report, 12)
        ),
    );
}

// ---------------------------------------------------------------------------
// JS frames named from V8 itself (no --perf-basic-prof)

/// A JS frame as the contract promises it: function, line, column.
#[derive(Clone, Debug, PartialEq, Eq)]
struct JsFrame {
    function: String,
    line: u64,
    column: u64,
}

/// The frame of `function` at the `@marker` line of js_frames.js, at the
/// column of `callee` on it (V8 puts a call's position at the callee's name).
fn js_frame(function: &str, marker: &str, callee: &str) -> JsFrame {
    let (line, text) = marked("js_frames", &format!("// @{marker}"));
    let column = text
        .find(callee)
        .unwrap_or_else(|| panic!("{callee:?} not on the @{marker} line of js_frames.js")) as u64
        + 1;
    JsFrame {
        function: function.to_string(),
        line,
        column,
    }
}

/// The known JS chain of js_frames.js from `leaf` (innermost first): the
/// method, the named function, the anonymous arrow, the named caller.
fn js_chain(leaf: JsFrame) -> Vec<JsFrame> {
    vec![
        leaf,
        js_frame("storeUpload", "store", "keep("),
        js_frame("(anonymous)", "handle", "storeUpload("),
        js_frame("handleUpload", "handle", "forEach("),
    ]
}

/// The report frames of `site` in js_frames.js, innermost first.
fn fixture_frames(site: &Value) -> impl Iterator<Item = &Value> {
    site["frames"].as_array().into_iter().flatten().filter(|f| {
        f["file"]
            .as_str()
            .is_some_and(|p| p.ends_with("/tests/fixtures/node/js_frames.js"))
    })
}

/// The frames of `site` in js_frames.js, innermost first.
fn fixture_js_frames(site: &Value) -> Vec<JsFrame> {
    fixture_frames(site)
        .map(|f| JsFrame {
            function: f["function"].as_str().unwrap_or("").to_string(),
            line: f["line"].as_u64().unwrap_or(0),
            column: f["column"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// Of each frame of `site` in js_frames.js, innermost first: whether it
/// was inlined into the next one.
fn fixture_inlined_levels(site: &Value) -> Vec<bool> {
    fixture_frames(site)
        .map(|f| f["inlined"].as_bool().unwrap_or(false))
        .collect()
}

/// The sites of `kind` whose stack passes through js_frames.js at `leaf`'s
/// line: each must carry exactly the known chain. Returns their (bytes, allocations).
fn check_js_chain(v: &mut Verdict, report: &Value, kind: &str, leaf: JsFrame) -> (u64, u64) {
    let want = js_chain(leaf.clone());
    let mut held = (0, 0);
    // Sites with a frame that moved are counted apart (moved_sites).
    for site in sites_of(report, kind).filter(|site| !has_moved_frame(site)) {
        let got = fixture_js_frames(site);
        if got.first().is_none_or(|f| f.line != leaf.line) {
            continue;
        }
        v.check(got == want, || {
            format!(
                "{kind} site ({} bytes) through js_frames.js:{}: JS frames {got:?}, expected {want:?}",
                site["outstanding_bytes"], leaf.line
            )
        });
        held.0 += site_bytes(site);
        held.1 += site["outstanding_allocations"].as_u64().unwrap_or(0);
    }
    held
}

/// What a JS frame is named when its objects may have moved (a
/// mark-compact) before leakscope read them.
const MOVED: &str = "[v8 jit: moved by a GC]";

/// The Buffers js_frames.js keeps are all under its known chain, to the
/// byte, but for those whose frames say they moved (stacks taken before a
/// mark-compact and named after it: a few, from the first second, when
/// leakscope is still naming node's start-up); its hash objects' native
/// memory is under the same chain.
fn check_js_frames_run(v: &mut Verdict, run: &NodeRun) {
    check_launch_common(v, run);
    check_js_chains(v, run);
}

/// Whether a frame of `site` says it moved.
fn has_moved_frame(site: &Value) -> bool {
    frame_functions(site).contains(&MOVED)
}

/// The `kind` sites with a frame that says it moved.
fn moved_sites<'a>(report: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    sites_of(report, kind).filter(|site| has_moved_frame(site))
}

/// Bytes of the moved `kind` sites whose blocks are all of `size` bytes.
fn moved_bytes(report: &Value, kind: &str, size: u64) -> u64 {
    moved_sites(report, kind)
        .filter(|site| site_bytes(site) == size * site["outstanding_allocations"].as_u64().unwrap_or(0))
        .map(site_bytes)
        .sum()
}

/// The chains alone.
fn check_js_chains(v: &mut Verdict, run: &NodeRun) {
    const KEEP_BYTES: u64 = 32 * KIB;
    let kept_bytes = num(&run.summary, "kept_bytes");
    let buffers = check_js_chain(v, &run.report, "arraybuffer", js_frame("keep", "keep-buffer", "alloc("));
    let moved = moved_bytes(&run.report, "arraybuffer", KEEP_BYTES);
    v.check(buffers.0 + moved == kept_bytes && moved <= kept_bytes / 10, || {
        format!(
            "arraybuffer bytes under the keep() chain {}, under frames that moved {moved} (expected {kept_bytes} in all, what the fixture keeps, at most a tenth moved)",
            buffers.0
        )
    });
    // OpenSSL's sha256 state: at least one block per hash object kept.
    let kept_hashes = num(&run.summary, "kept_hashes");
    let native = check_js_chain(v, &run.report, "malloc", js_frame("keep", "keep-hash", "createHash("));
    let moved: u64 = moved_sites(&run.report, "malloc")
        .map(|site| site["outstanding_allocations"].as_u64().unwrap_or(0))
        .sum();
    v.check(native.1 + moved >= kept_hashes, || {
        format!(
            "malloc blocks under the keep() createHash chain {}, under frames that moved {moved} (expected at least {kept_hashes}, one per hash kept)",
            native.1
        )
    });
}

/// Interpreted frames (no Sparkplug, no TurboFan): every frame of the chain
/// named from V8's own objects, with its line and column.
#[test]
fn js_frames_interpreted_are_named_without_flags() {
    let run = launch("js_frames", &[EXPOSE_GC, "--no-opt", "--no-sparkplug"]);
    let mut v = Verdict::new();
    check_js_frames_run(&mut v, &run);
    finish(v, &run);
}

/// The flags that keep every JS frame interpreted on `node`: no TurboFan,
/// no Sparkplug, and no Maglev where the V8 has it (on by default from V8
/// 13, Node 24; V8 10.2, Node 18, rejects the flag).
fn interpreted_only(node: &Path) -> Vec<&'static str> {
    let mut flags = vec![EXPOSE_GC, "--no-opt", "--no-sparkplug"];
    if has_maglev(node) {
        flags.push("--no-maglev");
    }
    flags
}

/// Whether `node`'s V8 has Maglev (and so takes `--no-maglev`).
fn has_maglev(node: &Path) -> bool {
    let options = Command::new(node)
        .arg("--v8-options")
        .output()
        .unwrap_or_else(|e| panic!("{} --v8-options: {e}", node.display()));
    String::from_utf8_lossy(&options.stdout).contains("\n  --maglev ")
}

/// The flags that let every tier run the chain of js_frames.js, TurboFan
/// last, with the chain inlined into handleUpload (see the fixture).
const ALL_TIERS: &[&str] = &[EXPOSE_GC, "--allow-natives-syntax"];

/// One Node release line, every tier (interpreted, Sparkplug, Maglev where
/// the line has it, TurboFan): the JS chain named from the line's own V8
/// metadata, to the line and column whatever tier ran it, and expanded from
/// TurboFan's inlining (one frame per level); the V8 heap's pages per space
/// as V8 itself counts them (`v8.getHeapSpaceStatistics()` at the fixture's
/// end), and ArrayBuffer memory to the byte of `process.memoryUsage().arrayBuffers`.
fn check_node_line(node: PathBuf) {
    check_node_line_with(node, ALL_TIERS);
}

fn check_node_line_with(node: PathBuf, flags: &[&str]) {
    let run = launch_on(node, "js_frames", flags, &[]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    check_js_chains(&mut v, &run);
    check_inlined_chain(&mut v, &run);
    check_heap_spaces(&mut v, &run);
    let array_buffers = num(&run.summary["mem_end"], "array_buffers");
    let traced = report_arraybuffer_bytes(&run.report);
    v.check(traced == array_buffers, || {
        format!("arraybuffer bytes {traced}, process.memoryUsage().arrayBuffers {array_buffers} (expected equal)")
    });
    finish(v, &run);
}

/// Some kept Buffers were allocated by handleUpload's TurboFan code: their
/// stacks show the method, storeUpload and the arrow inlined into
/// handleUpload (one machine frame, four report frames).
fn check_inlined_chain(v: &mut Verdict, run: &NodeRun) {
    let inlined: u64 = sites_of(&run.report, "arraybuffer")
        .filter(|site| fixture_inlined_levels(site) == [true, true, true, false])
        .map(site_bytes)
        .sum();
    v.check(inlined > 0, || {
        format!(
            "no kept Buffer under the chain inlined into handleUpload (its %GetOptimizationStatus at the end: {})",
            run.summary["handle_upload_status"]
        )
    });
}

/// Baseline code in V8's large-object code space (big_code.js): the frames
/// in it have their line, and the ArrayBuffers it keeps are under it. On V8
/// 10-12, whose AllocateLargePage returns the page itself (V8 13 and 14
/// return its metadata: not placed yet, their frames get no line).
#[test]
fn js_frames_in_large_code_20() {
    let run = launch_on(node_bin(), "big_code", &[EXPOSE_GC, "--allow-natives-syntax"], &[]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    check_large_code(&mut v, &run);
    finish(v, &run);
}

/// bigFunction's frames (its baseline code in large-object space) have its
/// line, and its ArrayBuffers are under it.
fn check_large_code(v: &mut Verdict, run: &NodeRun) {
    let code_large = run.summary["heap_spaces"]["code_large_object_space"].as_u64();
    v.check(code_large.is_some_and(|bytes| bytes > 256 * KIB), || {
        format!("code_large_object_space {code_large:?}: bigFunction's baseline code is not there")
    });
    let (big_line, big_bytes) = (num(&run.summary, "big_line"), num(&run.summary, "big_bytes"));
    let mut named = 0;
    for site in sites_of(&run.report, "arraybuffer") {
        let frames = site["frames"].as_array().into_iter().flatten();
        for frame in frames.filter(|f| f["function"] == "bigFunction") {
            v.check(frame["line"].as_u64() == Some(big_line), || {
                format!(
                    "a bigFunction frame at line {} (expected {big_line}): {frame}",
                    frame["line"]
                )
            });
            v.check(site_bytes(site).is_multiple_of(big_bytes), || {
                format!(
                    "a site through bigFunction holds {} bytes, not its Buffers",
                    site_bytes(site)
                )
            });
            named += site_bytes(site);
        }
    }
    let kept = num(&run.summary, "big_kept_bytes");
    v.check(
        named + moved_bytes(&run.report, "arraybuffer", big_bytes) == kept,
        || {
            format!(
                "{named} bytes under bigFunction:{big_line}, of {kept} it kept (the rest not under frames that moved)"
            )
        },
    );
}

/// All ArrayBuffer memory outstanding at the end.
fn report_arraybuffer_bytes(report: &Value) -> u64 {
    report["totals"]["by_kind"]["arraybuffer"].as_u64().unwrap_or(0)
}

/// The report's name of a V8 heap space (`old_space` → `old`,
/// `large_object_space` → `large`).
fn report_space_name(v8_name: &str) -> String {
    v8_name
        .trim_end_matches("_space")
        .trim_end_matches("_object")
        .to_string()
}

/// node.pages_by_space against the fixture's own heap space statistics:
/// every space V8 counts bytes in has them in the report, within one 256 KiB
/// page (a page allocated or freed between the fixture's last line and the
/// report), and the report has no space V8 does not count.
fn check_heap_spaces(v: &mut Verdict, run: &NodeRun) {
    const PAGE: i64 = 256 * KIB as i64;
    let Some(stats) = run.summary["heap_spaces"].as_object() else {
        v.fail(format!("the fixture's line has no heap_spaces: {}", run.summary));
        return;
    };
    let pages = &run.report["node"]["pages_by_space"];
    let mut expected: Vec<String> = Vec::new();
    for (v8_name, size) in stats {
        let name = report_space_name(v8_name);
        let want = size.as_i64().unwrap_or(-1);
        let got = pages[&name]["bytes"].as_i64().unwrap_or(0);
        v.check((got - want).abs() < PAGE, || {
            format!("pages_by_space.{name}: {got} bytes, V8's {v8_name} {want} (expected within one page)")
        });
        expected.push(name);
    }
    for (name, held) in pages.as_object().into_iter().flatten() {
        v.check(expected.contains(name) || held["bytes"].as_u64() == Some(0), || {
            format!(
                "pages_by_space.{name} ({held}) is no space of this V8 ({:?})",
                stats.keys()
            )
        });
    }
}

#[test]
fn node_line_18() {
    check_node_line(node_line("18.20.8"));
}

#[test]
fn node_line_20() {
    check_node_line(node_bin());
}

#[test]
fn node_line_22() {
    check_node_line(node_line("22.23.5"));
}

#[test]
fn node_line_24() {
    check_node_line(node_line("24.22.3"));
}

#[test]
fn node_line_26() {
    check_node_line(node_line("26.12.1"));
}

/// JS frames named across mark-compacts that move them (gc_moves.js, under
/// --stress-compaction: each full GC moves objects, functions' among them,
/// between a stack being taken and its frames being named): every Buffer
/// the fixture keeps is under its own function, known by the Buffer's size,
/// or under a frame that says it moved; never under another function, nor
/// under a JS frame left silently unnamed.
fn check_names_across_mark_compacts(node: PathBuf) {
    let run = launch_on(node, "gc_moves", &[EXPOSE_GC, "--stress-compaction"], &[]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    let sizes: std::collections::HashMap<&str, u64> = run.summary["sizes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, size)| (name.as_str(), size.as_u64().unwrap_or(0)))
        .collect();
    let (mut named, mut moved) = (0, 0);
    for site in sites_of(&run.report, "arraybuffer") {
        let (bytes, allocations) = (site_bytes(site), site["outstanding_allocations"].as_u64().unwrap_or(0));
        let functions = frame_functions(site);
        let keeper = functions.iter().find(|f| sizes.contains_key(*f));
        // A site's Buffers are all of one size: its function's.
        let size = (allocations > 0 && bytes % allocations == 0).then(|| bytes / allocations);
        match keeper {
            Some(function) => {
                v.check(size == Some(sizes[function]), || {
                    format!(
                        "a site named {function} holds {bytes} bytes in {allocations} Buffers, not Buffers of its {} bytes: {functions:?}",
                        sizes[function]
                    )
                });
                named += bytes;
            }
            None if functions.contains(&MOVED) && size.is_some_and(|s| sizes.values().any(|&k| k == s)) => {
                moved += bytes
            }
            None => {}
        }
    }
    let kept = num(&run.summary, "kept_bytes");
    v.check(named + moved == kept, || {
        format!(
            "kept Buffers: {named} bytes under their function, {moved} under a moved frame, of {kept} kept (expected all in one or the other)"
        )
    });
    // Most stacks are named well within an epoch: naming still works.
    v.check(named > kept / 2, || {
        format!("only {named} of {kept} kept bytes under their function ({moved} under a moved frame)")
    });
    let mark_compacts = run.report["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "Heap::MarkCompact")
        .and_then(|p| p["hits"].as_u64());
    let forced = num(&run.summary, "forced_gcs");
    v.check(mark_compacts.is_some_and(|hits| hits >= forced), || {
        format!("Heap::MarkCompact hits {mark_compacts:?} (expected at least the {forced} GCs forced)")
    });
    eprintln!("gc_moves: {named} bytes named, {moved} under a moved frame, of {kept}; mark-compacts {mark_compacts:?}");
    finish(v, &run);
}

#[test]
fn js_frames_across_mark_compacts_20() {
    check_names_across_mark_compacts(node_bin());
}

#[test]
fn js_frames_across_mark_compacts_26() {
    check_names_across_mark_compacts(node_line("26.12.1"));
}

/// From Node 24 on, zlib's allocation callback is handed a base-class part
/// of the stream object (CompressionStreamMemoryOwner), a pointer inside it:
/// the state still joins its stream's finding.
#[test]
fn zlib_streams_on_node_24_are_one_finding() {
    let run = launch_on(node_line("24.22.3"), "zlib_streams", &[EXPOSE_GC], &[]);
    let mut v = Verdict::new();
    check_launch_common(&mut v, &run);
    check_one_zlib_finding(&mut v, &run);
    finish(v, &run);
}

/// A perf-map entry: `START SIZE NAME`, hex.
struct MapEntry {
    start: u64,
    end: u64,
    name: String,
}

fn read_perf_map(pid: u64) -> Vec<MapEntry> {
    let text = fs::read_to_string(format!("/tmp/perf-{pid}.map")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let start = u64::from_str_radix(f.next()?, 16).ok()?;
            let size = u64::from_str_radix(f.next()?, 16).ok()?;
            Some(MapEntry {
                start,
                end: start + size,
                name: f.next()?.to_string(),
            })
        })
        .collect()
}

/// The same run with --perf-basic-prof: the chain is the same, and every
/// frame that both V8's objects and the perf map (one of the names the map
/// gives the address) name gets the same
/// function and script from both (the map's line, where the function
/// starts, is at or before the line the frame executes).
#[test]
fn js_frames_agree_with_the_perf_map() {
    check_perf_map_agreement(node_bin(), &interpreted_only(&node_bin()));
}

/// The same on V8 14.6 (the line whose layouts differ most from Node
/// 20's; the other lines' names are checked by node_line_*).
#[test]
fn js_frames_agree_with_the_perf_map_26() {
    let flags = interpreted_only(&node_line("26.12.1"));
    check_perf_map_agreement(node_line("26.12.1"), &flags);
}

/// Every tier, TurboFan's inlining included, on V8 12.4 and 13.6 (Maglev
/// on by default): the perf map names the function each machine frame's
/// code is of, the outermost of its inlined levels.
#[test]
fn js_frames_agree_with_the_perf_map_optimized_22() {
    check_perf_map_agreement(node_line("22.23.5"), ALL_TIERS);
}

#[test]
fn js_frames_agree_with_the_perf_map_optimized_24() {
    check_perf_map_agreement(node_line("24.22.3"), ALL_TIERS);
}

/// Baseline (Sparkplug) frames: functions tier up to Sparkplug as they
/// warm up, no further; the perf map names their code in its `^`
/// (baseline) entries.
#[test]
fn js_frames_agree_with_the_perf_map_baseline_20() {
    let node = node_bin();
    let mut flags = vec![EXPOSE_GC, "--no-opt"];
    if has_maglev(&node) {
        flags.push("--no-maglev");
    }
    check_perf_map_agreement_of(node, &flags, Some("^"));
}

fn check_perf_map_agreement(node: PathBuf, tiers: &[&str]) {
    check_perf_map_agreement_of(node, tiers, None);
}

/// The perf-map agreement; with `tier` (the perf map's mark of a code
/// kind: `^` baseline), some of the frames compared must be of that kind.
fn check_perf_map_agreement_of(node: PathBuf, tiers: &[&str], tier: Option<&str>) {
    let logfile = format!("--logfile={}", scratch_dir("node-v8-log").join("v8.log").display());
    let mut flags: Vec<&str> = tiers.to_vec();
    flags.extend([
        "--perf-basic-prof",
        "--interpreted-frames-native-stack",
        "--no-logfile-per-isolate",
        &logfile,
    ]);
    let run = launch_on(node, "js_frames", &flags, &[]);
    let mut v = Verdict::new();
    check_js_frames_run(&mut v, &run);
    let pid = run.report["target"]["pid"].as_u64().unwrap_or(0);
    let map = read_perf_map(pid);
    let _ = fs::remove_file(format!("/tmp/perf-{pid}.map"));
    v.check(!map.is_empty(), || format!("node wrote no /tmp/perf-{pid}.map"));
    let (mut compared, mut of_tier) = (0, 0);
    for site in sites_of(&run.report, "arraybuffer") {
        for (i, f) in site["frames"].as_array().into_iter().flatten().enumerate() {
            let Some(file) = f["file"]
                .as_str()
                .filter(|p| p.ends_with("/tests/fixtures/node/js_frames.js"))
            else {
                continue;
            };
            // The map names a machine frame's code: the outermost level.
            if f["inlined"].as_bool() == Some(true) {
                continue;
            }
            let address =
                u64::from_str_radix(f["address"].as_str().unwrap_or("0x0").trim_start_matches("0x"), 16).unwrap_or(0);
            // Return addresses are looked up at the call instruction.
            let pc = if i > 0 { address - 1 } else { address };
            // Code space is reused after a GC frees code (a module's
            // top-level code, say), and the map keeps every name an address
            // had: the frame's code is one of them, not known which.
            let covering: Vec<(&str, &str, u64, &str)> = map
                .iter()
                .filter(|e| (e.start..e.end).contains(&pc))
                .map(|e| {
                    // `JS:~name file:line:column` (`~` interpreted).
                    let js = e
                        .name
                        .strip_prefix("JS:")
                        .unwrap_or(&e.name)
                        .trim_start_matches(['~', '^', '+', '*', '\'']);
                    let (name, location) = js.split_once(' ').unwrap_or((js, ""));
                    let name = if name.is_empty() { "(anonymous)" } else { name };
                    let mut parts = location.rsplitn(3, ':');
                    let (_column, line, map_file) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
                    let line = line.and_then(|l| l.parse().ok()).unwrap_or(u64::MAX);
                    (name, map_file, line, e.name.as_str())
                })
                .collect();
            if covering.is_empty() {
                continue;
            }
            let function = f["function"].as_str().unwrap_or("");
            compared += 1;
            let same = covering.iter().find(|(name, map_file, _, _)| {
                *name == function
                    && (map_file.ends_with(file) || file.ends_with(map_file.trim_start_matches("file://")))
            });
            let Some(&(_, _, map_line, map_name)) = same else {
                let names: Vec<&str> = covering.iter().map(|c| c.3).collect();
                v.fail(format!(
                    "frame {function:?} ({file}) at {address:#x}: the perf map names that address {names:?}"
                ));
                continue;
            };
            if tier.is_some_and(|mark| map_name.strip_prefix("JS:").is_some_and(|n| n.starts_with(mark))) {
                of_tier += 1;
            }
            v.check(f["line"].as_u64().is_some_and(|l| l >= map_line), || {
                format!(
                    "frame {function:?}: line {} before the line its function starts at in the perf map ({map_line})",
                    f["line"]
                )
            });
        }
    }
    v.check(compared >= 4, || {
        format!("only {compared} frames were named by both V8 and the perf map (expected the whole chain)")
    });
    if let Some(mark) = tier {
        v.check(of_tier >= 4, || {
            format!("only {of_tier} of the {compared} frames compared are in `{mark}` code (expected the whole chain)")
        });
    }
    finish(v, &run);
}

/// `hunt -p PID` with the defaults on a Node fixture already busy when it
/// attaches (its workload started, one progress line printed): auto mode
/// starts in growth mode, says why, and attaches no per-call probe.
/// The fixture spins 3 ms per 10 ms tick besides its requests
/// ($FIXTURE_BUSY_MS): ~30 % of a core, far above the ~2 % at which the
/// default budget starts growth mode, whatever its requests cost here (two
/// Buffers per tick were ~2 %, and a CI run read it as idle).
fn attach_defaults_to_busy(name: &str) -> (Value, String) {
    const DURATION: &str = "8";
    let report_path = scratch_dir(&format!("attach-busy-{name}")).join("report.json");
    let mut cmd = Command::new(node_bin());
    cmd.args([EXPOSE_GC])
        .arg(script(name))
        .arg("--wait")
        .env("FIXTURE_BUSY_MS", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut target = Proc::spawn(cmd, name);
    let target_out = target.take_stdout();
    target_out
        .wait_for(|l| l == "ready", Duration::from_secs(30))
        .unwrap_or_else(|why| panic!("{name} never printed ready ({why})"));
    target.signal(libc::SIGUSR2);
    target_out
        .wait_for(|l| l.starts_with("progress "), Duration::from_secs(30))
        .unwrap_or_else(|why| panic!("{name} never printed progress ({why})"));
    let mut cmd = Command::new(leakscope_bin());
    cmd.args(["hunt", "-p", &target.pid().to_string(), "--duration", DURATION])
        .args(["--format", "json", "-o"])
        .arg(&report_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut tracer = Proc::spawn(cmd, "leakscope");
    let tracer_err = tracer.take_stderr();
    let context = || tracer_err.text(Duration::from_secs(1));
    let status = tracer.wait_or_panic(Duration::from_secs(120), &context);
    let stderr = context();
    assert!(status.success(), "leakscope: {}\n{stderr}", describe_status(status));
    target.signal(libc::SIGTERM);
    let text = fs::read_to_string(&report_path).unwrap_or_else(|e| panic!("no report ({e})\n{stderr}"));
    let report = parse_report(&text, &stderr);
    assert_eq!(report["mode"], "growth", "{stderr}");
    assert!(stderr.contains("started in growth mode"), "{stderr}");
    let start = &report["overhead"]["growth_start"];
    assert!(
        start["predicted_overhead_pct"].as_f64().unwrap() > report["overhead"]["max_overhead_pct"].as_f64().unwrap(),
        "{start}"
    );
    assert!(report["overhead"]["switched"].is_null(), "{}", report["overhead"]);
    for probe_name in LIBC_PROBES.iter().chain(ARRAYBUFFER_ALLOCATORS) {
        assert!(
            probe(&report, probe_name).is_none(),
            "{probe_name} probed: {}",
            report["probes"]
        );
    }
    (report, stderr)
}

/// `attach_defaults_to_busy(name)` finds a growing pages_touched site whose
/// stack has a frame containing `needle`.
/// The report has a growing finding over page-fault sites under `needle`.
/// Findings, not sites: complete stacks split one leak over its JIT tiers'
/// return addresses into sites too small for a verdict each, and a finding
/// is what tells the user (the merge is checked in findings.rs).
fn assert_growing_finding_under(report: &Value, stderr: &str, needle: &str) {
    let sites = report["sites"].as_array().expect("sites");
    let under_needle = |i: &Value| {
        let site = &sites[i.as_u64().expect("site index") as usize];
        site["kind"] == "pages_touched" && frame_functions(site).iter().any(|f| f.contains(needle))
    };
    let growing = report["findings"].as_array().expect("findings").iter().any(|finding| {
        GROWS.contains(&finding["verdict"].as_str().unwrap_or(""))
            && finding["sites"]
                .as_array()
                .is_some_and(|members| members.iter().any(under_needle))
    });
    assert!(
        growing,
        "no growing finding over page faults under {needle}\n{stderr}\n{}",
        describe_top_sites(report, 12)
    );
}

/// A busy buffers.js: the retained Buffers' pages are found under the
/// ArrayBuffer allocator, growing, without any Buffer probe. The pages that
/// glibc's malloc (built without frame pointers) touches, in its own frames,
/// have whole stacks: through malloc, node's C++ and the JS functions that
/// allocate, named, to `node::Start`.
#[test]
fn attach_defaults_to_busy_buffers_finds_the_retained_buffers() {
    let (report, stderr) = attach_defaults_to_busy("buffers");
    assert_growing_finding_under(&report, &stderr, "NodeArrayBufferAllocator::Allocate");
    // The first finding names the JS code that keeps the Buffers (not V8's
    // compiler or GC scratch pages, nor node's allocator).
    let titles: Vec<&str> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["title"].as_str())
        .collect();
    assert!(
        titles.first().is_some_and(|t| t.contains("(buffers.js:")),
        "the first finding is not the fixture's code: {titles:#?}"
    );
    let in_malloc: Vec<Vec<&str>> = sites_of(&report, "pages_touched")
        .map(frame_functions)
        .filter(|f| {
            f.first().is_some_and(|f0| ["_int_malloc", "sysmalloc"].contains(f0))
                && f.iter().any(|f| f.contains("NodeArrayBufferAllocator::Allocate"))
        })
        .collect();
    assert!(
        !in_malloc.is_empty(),
        "no fault inside malloc under the allocator\n{}",
        describe_top_sites(&report, 12)
    );
    for frames in &in_malloc {
        let from = |name: &str| frames.iter().position(|f| f.contains(name));
        let whole = from("__libc_calloc").is_some()
            && from("handleRequest") > from("NodeArrayBufferAllocator::Allocate")
            && from("node::Start") > from("handleRequest");
        assert!(whole, "a stack through malloc is not whole: {frames:?}");
    }
}

/// A busy zlib_streams.js: the open deflate streams' pages are found at
/// zlib's stack, growing, without any malloc probe.
#[test]
fn attach_defaults_to_busy_zlib_streams_finds_the_native_leak() {
    let (report, stderr) = attach_defaults_to_busy("zlib_streams");
    assert_growing_finding_under(&report, &stderr, "deflateInit2");
}
