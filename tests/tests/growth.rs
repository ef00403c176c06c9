//! Growth verdicts on a fixture with known shapes, and `leakscope check`.

use std::{ffi::OsString, path::Path, process::Stdio, time::Duration};

use leakscope_tests::{bpf::*, *};
use serde_json::Value;

#[test]
fn leak_and_plateau_are_told_apart() {
    let path = build_fixture("growth", &[]);
    let run = run_launch(&path, &[], &[]);
    assert!(run.status.success(), "leakscope failed:\n{}", run.stderr);
    let report = &run.report;
    let verdict = |function: &str| {
        let site = find_site(report, &path, function).unwrap_or_else(|| panic!("no site for {function}"));
        (
            site["verdict"].as_str().unwrap_or("none").to_string(),
            site["growth_bytes_per_s"].as_f64(),
        )
    };
    let (leak, leak_rate) = verdict("leak_request");
    assert_eq!(leak, "leak", "leak_request");
    // 200 B every 100 ms, give or take the scheduler.
    let rate = leak_rate.expect("a growth rate");
    assert!(
        (1500.0..=2500.0).contains(&rate),
        "leak_request grows {rate} B/s (expected ~2000)"
    );
    assert_eq!(verdict("cache_fill").0, "plateau", "cache_fill");
    assert!(find_site(report, &path, "churn").is_none(), "churn holds nothing");
    let series = &find_site(report, &path, "leak_request").unwrap()["series"];
    assert!(
        series["t_s"].as_array().is_some_and(|t| t.len() >= 5),
        "too few samples: {series}"
    );
}

fn check(fixture_args: &[&str]) -> HuntOutput {
    let path = build_fixture("growth", &[]);
    let mut args: Vec<OsString> = ["check", "--max-growth", "8KiB", "--warmup", "1", "--"]
        .iter()
        .map(OsString::from)
        .collect();
    args.push(path.into());
    args.extend(fixture_args.iter().map(OsString::from));
    run_captured(&leakscope_bin(), &args, Duration::from_secs(120), "check")
}

#[test]
fn check_passes_a_healthy_workload() {
    let out = check(&["healthy"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    assert!(out.stderr.contains("passed"), "{}", out.describe());
}

#[test]
fn check_fails_a_leaking_workload_and_names_the_site() {
    // The leak adds ~14 KiB after the warm-up: over the 8 KiB limit.
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("FAILED"), "{}", out.describe());
    assert!(
        out.stderr.contains("leak_request"),
        "the explanation names the site:\n{}",
        out.describe()
    );
}

/// Sites of `kind` whose origin frame is in `function`.
fn sites_of<'a>(report: &'a Value, path: &Path, kind: &str, function: &str) -> Vec<&'a Value> {
    sites(report)
        .iter()
        .filter(|s| s["kind"] == kind)
        .filter(|s| origin_frame(s, path, OriginRule::Module).is_some_and(|f| f["function"].as_str() == Some(function)))
        .collect()
}

/// Growth mode: the growing call stack is found from page faults alone.
/// 200 B a tick for 80 ticks is 16,000 B, 4 pages give or take the page a
/// block straddles with the cache's; the cache's pages stop growing.
#[test]
fn growth_mode_finds_the_leaking_stack_without_allocator_probes() {
    let path = build_fixture("growth", &[]);
    let run = run_launch(&path, &[], &["--mode", "growth"]);
    assert!(run.status.success(), "leakscope failed:\n{}", run.stderr);
    let report = &run.report;
    assert_eq!(report["mode"], "growth");
    for name in LIBC_PROBES {
        assert!(probe(report, name).is_none(), "{name} probed in growth mode");
    }
    assert!(
        report["totals"]["by_kind"].get("malloc").is_none(),
        "{}",
        report["totals"]
    );
    // malloc's first call may fault a page of its own set-up (ptmalloc_init)
    // under leak_request: a one-off page, never a growing stack.
    let (leak, once): (Vec<_>, Vec<_>) = sites_of(report, &path, "pages_touched", "leak_request")
        .into_iter()
        .partition(|s| s["verdict"] == "growing");
    assert_eq!(leak.len(), 1, "one growing fault stack for leak_request: {leak:#?}");
    for site in once {
        assert_eq!(u64_field(site, "outstanding_allocations"), 1, "{site:#}");
    }
    let pages = u64_field(leak[0], "outstanding_allocations");
    assert!((3..=6).contains(&pages), "leak_request touched {pages} pages");
    assert_eq!(u64_field(leak[0], "outstanding_bytes"), pages * 4096);
    let rate = leak[0]["growth_bytes_per_s"].as_f64().expect("a growth rate");
    assert!(
        (1000.0..=3000.0).contains(&rate),
        "leak_request grows {rate} B/s (~2000)"
    );
    let cache = sites_of(report, &path, "pages_touched", "cache_fill");
    assert_eq!(cache.len(), 1, "{cache:#?}");
    assert_eq!(cache[0]["verdict"], "plateau", "{:#}", cache[0]);
    // Blocks of 208 and 1040 B from one heap: the pages of both add up.
    let cache_pages = u64_field(cache[0], "outstanding_allocations");
    assert!(
        (11..=13).contains(&(pages + cache_pages)),
        "{pages} + {cache_pages} pages"
    );
    for site in sites_of(report, &path, "pages_touched", "churn") {
        assert_ne!(site["verdict"], "growing", "churn frees everything: {site:#}");
    }
}

/// A hunt of `growth --wait FIXTURE_ARGS` through its whole workload.
struct AttachedHunt {
    report: Value,
    stderr: String,
    /// leakscope's BPF programs and links once attached, and at the end.
    attached: Vec<BpfObject>,
    at_end: Vec<BpfObject>,
}

fn hunt_attached(fixture_args: &[&str], hunt_args: &[&str]) -> AttachedHunt {
    let path = build_fixture("growth", &[]);
    let report_path = scratch_dir("budget").join("report.json");
    let mut cmd = std::process::Command::new(&path);
    cmd.arg("--wait")
        .args(fixture_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut target = Proc::spawn(cmd, "growth --wait");
    let target_out = target.take_stdout();
    target_out.wait_for(|l| l == "ready", Duration::from_secs(30)).unwrap();

    let mut cmd = std::process::Command::new(leakscope_bin());
    cmd.args(["-v", "hunt", "-p", &target.pid().to_string(), "--format", "json", "-o"])
        .arg(&report_path)
        .args(hunt_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut tracer = Proc::spawn(cmd, "leakscope");
    let tracer_err = tracer.take_stderr();
    let context = || tracer_err.text(Duration::from_secs(1));
    if let Err(why) = tracer_err.wait_for(|l| l.starts_with(ATTACHED_PREFIX), ATTACH_TIMEOUT) {
        panic!("leakscope never attached ({why})\n{}", context());
    }
    let attached = bpf_objects(tracer.pid());
    target.signal(libc::SIGUSR1);
    if let Err(why) = target_out.wait_for(|l| l == "done", WORKLOAD_TIMEOUT) {
        panic!("the workload never finished ({why})\n{}", context());
    }
    if context().contains("continuing in growth mode") {
        if let Err(why) = tracer_err.wait_for(|l| l.contains("per-call probes detached"), STOP_TIMEOUT) {
            panic!("the per-call probes were never detached ({why})\n{}", context());
        }
    }
    let at_end = bpf_objects(tracer.pid());
    tracer.signal(libc::SIGINT);
    let status = tracer.wait_or_panic(STOP_TIMEOUT, &context);
    assert!(
        status.success(),
        "leakscope: {}\n{}",
        describe_status(status),
        context()
    );
    let text = std::fs::read_to_string(&report_path).unwrap();
    AttachedHunt {
        report: parse_report(&text, &context()),
        stderr: context(),
        attached,
        at_end,
    }
}

/// Once leakscope is gone, so is every program and link it held (its
/// tracepoint links within moments: a child closes them).
fn assert_nothing_left(hunt: &AttachedHunt) {
    assert!(!hunt.attached.is_empty(), "no BPF objects seen while attached");
    let objects: Vec<BpfObject> = hunt.attached.iter().chain(&hunt.at_end).cloned().collect();
    assert_gone_within(&objects, Duration::from_secs(30));
}

/// The uprobes the links place, one perf event or multi-link at a time.
fn uprobe_links(objects: &[BpfObject]) -> usize {
    objects
        .iter()
        .filter(|o| o.kind == BpfKind::Link)
        .map(|o| o.uprobes as usize)
        .sum()
}

/// The default attach mode (auto) on 20,000 traced malloc/free pairs a
/// tick: over the 10% budget, so the per-call probes go and growth mode
/// carries on, finds the leak, and the report says when and why.
#[test]
fn the_budget_moves_a_busy_target_to_growth_mode() {
    let hunt = hunt_attached(&["busy"], &[]);
    let report = &hunt.report;
    let path = build_fixture("growth", &[]);
    assert_eq!(report["mode"], "growth", "{}", hunt.stderr);
    assert!(hunt.stderr.contains("continuing in growth mode"), "{}", hunt.stderr);
    let overhead = &report["overhead"];
    assert_eq!(overhead["max_overhead_pct"], 10.0);
    let switched = &overhead["switched"];
    assert_eq!(
        (&switched["from"], &switched["to"]),
        (&"exact".into(), &"growth".into())
    );
    assert!(switched["overhead_pct"].as_f64().unwrap() > 10.0, "{switched}");
    let detached = strings(&switched["detached"]);
    assert!(
        detached.contains(&"malloc") && detached.contains(&"free"),
        "{detached:?}"
    );
    let leak = sites_of(report, &path, "pages_touched", "leak_request");
    assert_eq!(leak.len(), 1, "{leak:#?}");
    assert_eq!(leak[0]["verdict"], "growing", "{:#}", leak[0]);
    // Every uprobe was detached while the hunt went on.
    assert!(
        uprobe_links(&hunt.attached) >= LIBC_PROBES.len() - 1,
        "{:?}",
        hunt.attached
    );
    assert_eq!(uprobe_links(&hunt.at_end), 0, "{:?}", hunt.at_end);
    assert_nothing_left(&hunt);
}

/// The same default on the quiet workload (~1,000 calls a second) stays
/// exact: the bytes of every site are the fixture's.
#[test]
fn a_quiet_target_stays_exact_within_the_budget() {
    let hunt = hunt_attached(&[], &[]);
    let report = &hunt.report;
    let path = build_fixture("growth", &[]);
    assert_eq!(report["mode"], "exact", "{}", hunt.stderr);
    let overhead = &report["overhead"];
    assert!(overhead["switched"].is_null(), "{overhead}");
    assert!(overhead["peak_overhead_pct"].as_f64().unwrap() <= 10.0, "{overhead}");
    let held = |function| {
        let found = sites_of(report, &path, "malloc", function);
        assert_eq!(found.len(), 1, "{function}: {found:#?}");
        (
            u64_field(found[0], "outstanding_bytes"),
            u64_field(found[0], "outstanding_allocations"),
        )
    };
    assert_eq!(held("leak_request"), (80 * 200, 80));
    assert_eq!(held("cache_fill"), (30 * 1024, 30));
    assert!(sites_of(report, &path, "malloc", "churn").is_empty());
    assert_nothing_left(&hunt);
}
