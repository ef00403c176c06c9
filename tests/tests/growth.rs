//! Growth verdicts on a fixture with known shapes, and `leakscope check`.

use std::{ffi::OsString, time::Duration};

use leakscope_tests::*;

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
