//! Sampled mode (`--sample-bytes`): estimates against the fixture's exact
//! figures.
//!
//! The Poisson estimator's relative standard error for a site holding B bytes
//! in blocks much smaller than the interval N is about √(N/B): 25% at B = 16N.
//! So the ±10% bound is checked where it holds with a wide margin: N = 64 KiB
//! and sites of 64 MiB (1024 N, σ ≈ 3%, the bound is > 3σ).

use leakscope_tests::*;

const MIB: u64 = 1 << 20;

#[test]
fn estimates_are_within_ten_percent() {
    let path = build_fixture("sampling", &[]);
    let run = run_launch(&path, &[], &["--sample-bytes", "64KiB"]);
    assert!(run.status.success(), "leakscope failed:\n{}", run.stderr);
    let report = &run.report;
    assert_eq!(report["mode"], "sampled");
    assert_eq!(u64_field(report, "sample_bytes"), 64 << 10);
    for (reason, count) in report["drops"].as_object().unwrap() {
        assert_eq!(count.as_u64(), Some(0), "drops.{reason}");
    }
    for (function, blocks, size) in [
        ("hold_small", 524_288, 128),
        ("hold_pages", 16_384, 4096),
        ("hold_large", 64, MIB),
    ] {
        let site = find_site(report, &path, function).unwrap_or_else(|| panic!("no site for {function}"));
        let exact = blocks * size;
        let estimate = u64_field(site, "outstanding_bytes");
        let error = (estimate as f64 - exact as f64) / exact as f64;
        eprintln!("{function}: estimate {estimate} for {exact} ({:+.1}%)", error * 100.0);
        assert!(
            error.abs() <= 0.10,
            "{function}: estimated {estimate} bytes for {exact} ({:+.1}%)",
            error * 100.0
        );
        let allocations = u64_field(site, "outstanding_allocations") as f64;
        assert!(
            (allocations / blocks as f64 - 1.0).abs() <= 0.10,
            "{function}: {allocations} allocations for {blocks}"
        );
    }
    // Everything the churn site allocated was freed: sampled blocks included.
    assert!(
        find_site(report, &path, "churn").is_none(),
        "the churn site holds memory"
    );
}
