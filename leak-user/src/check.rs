//! `leakscope check`: a CI gate that fails when memory grows beyond a limit
//! while a workload runs.

use std::fmt::Write as _;

use crate::{
    analyze, findings,
    report::{human_bytes, Finding, Report, Series},
};

/// The acceptance criteria, e.g. "no more than 10 MB of growth after 5 s of warm-up".
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_growth_bytes: u64,
    pub max_rate_bytes_per_s: Option<f64>,
    pub warmup_s: f64,
}

/// One limit exceeded.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// "total", or the application frame of the sites that grew (their
    /// finding's title) and their allocators.
    pub what: String,
    pub growth_bytes: i64,
    pub rate_bytes_per_s: Option<f64>,
    pub reason: String,
}

/// How late the sample at the warm-up's end may come and still be its baseline.
const WARMUP_SAMPLE_SLACK_S: f64 = 0.05;

/// Growth after warm-up, and its robust rate, of a sampled series. A series
/// that starts after the warm-up grew from nothing, unless `from_first`:
/// then it grew only from its first point.
fn growth_after(t_s: &[f64], bytes: &[u64], warmup_s: f64, from_first: bool) -> (i64, Option<f64>) {
    let Some(&last) = bytes.last() else { return (0, None) };
    let born = if from_first { bytes[0] } else { 0 };
    // The hunt samples at the warm-up's end (`HuntArgs::sample_at`), a timer's
    // lateness after it: that sample is the baseline.
    let baseline = t_s
        .iter()
        .zip(bytes)
        .rfind(|(t, _)| **t <= warmup_s + WARMUP_SAMPLE_SLACK_S)
        .map_or(born, |(_, b)| *b);
    let (t, y): (Vec<f64>, Vec<f64>) = t_s
        .iter()
        .zip(bytes)
        .filter(|(t, _)| **t >= warmup_s)
        .map(|(t, b)| (*t, *b as f64))
        .unzip();
    (last as i64 - baseline as i64, analyze::theil_sen_slope(&t, &y))
}

/// A finding's title and the allocators its sites called.
fn group_name(report: &Report, group: &Finding) -> String {
    let mut allocators: Vec<&str> = group
        .sites
        .iter()
        .map(|&i| report.sites[i].allocator.as_str())
        .collect();
    allocators.sort_unstable();
    allocators.dedup();
    format!("{} via {}", group.title, allocators.join(", "))
}

fn judge(what: String, growth: i64, rate: Option<f64>, limits: &Limits) -> Option<Violation> {
    let reason = if growth > limits.max_growth_bytes as i64 {
        format!(
            "grew {} after warm-up (limit {})",
            human_bytes(growth as u64),
            human_bytes(limits.max_growth_bytes)
        )
    } else {
        match (rate, limits.max_rate_bytes_per_s) {
            (Some(rate), Some(max)) if rate > max => {
                format!(
                    "grows {}/s (limit {}/s)",
                    human_bytes(rate as u64),
                    human_bytes(max as u64)
                )
            }
            _ => return None,
        }
    };
    Some(Violation {
        what,
        growth_bytes: growth,
        rate_bytes_per_s: rate,
        reason,
    })
}

/// Every limit the hunt's report exceeds: per site, and in total.
pub fn evaluate(report: &Report, limits: &Limits) -> Vec<Violation> {
    // Nothing is known of the warm-up before the hunt's first sample (late on
    // a loaded machine): the warm-up lasts until then, so that what every
    // site already held at that sample is its baseline, not growth.
    let first_sample = report.process.as_ref().and_then(|p| p.t_s.first().copied());
    let limits = &Limits {
        warmup_s: limits.warmup_s.max(first_sample.unwrap_or(0.0)),
        ..limits.clone()
    };
    // The sites of one leak are judged together, under its application frame.
    let mut violations: Vec<Violation> = findings::groups(report)
        .iter()
        .filter_map(|group| {
            let (mut growth, mut rate) = (0, None);
            for site in group.sites.iter().map(|&i| &report.sites[i]) {
                let (site_growth, site_rate) = match &site.series {
                    // A library's file mapping first seen after the warm-up
                    // (the loader's, seen late on a loaded machine) is code
                    // loaded, not growth, unless it grows afterwards.
                    Some(Series { t_s, bytes, .. }) => {
                        let file_backed = site.mapping.as_ref().is_some_and(|m| !m.anonymous);
                        growth_after(t_s, bytes, limits.warmup_s, file_backed)
                    }
                    // Unsampled: all it holds counts as growth.
                    None => (site.outstanding_bytes as i64, None),
                };
                growth += site_growth;
                if let Some(r) = site_rate {
                    *rate.get_or_insert(0.0) += r;
                }
            }
            judge(group_name(report, group), growth, rate, limits)
        })
        .collect();
    if let Some(process) = &report.process {
        let (growth, rate) = growth_after(&process.t_s, &process.tracked_bytes, limits.warmup_s, false);
        violations.extend(judge("total".to_string(), growth, rate, limits));
    }
    // The total first, as a summary; then the sites, largest growth first.
    // The total is the process's own series, sampled apart from the sites':
    // it can be below the largest site's growth when others shrank.
    violations.sort_by_key(|v| (v.what != "total", std::cmp::Reverse(v.growth_bytes)));
    violations
}

/// The short explanation printed by `check`.
pub fn explain(violations: &[Violation], limits: &Limits) -> String {
    let mut out = String::new();
    if violations.is_empty() {
        let _ = writeln!(
            out,
            "leakscope check: passed (no growth beyond {} after warm-up)",
            human_bytes(limits.max_growth_bytes)
        );
        return out;
    }
    let _ = writeln!(out, "leakscope check: FAILED, {} limit(s) exceeded:", violations.len());
    for v in violations {
        let _ = writeln!(out, "  {}: {}", v.what, v.reason);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{json, ProcessGrowth};

    fn report_with(series: Vec<(f64, u64)>, total: Vec<(f64, u64)>) -> Report {
        let site = serde_json::json!({
            "kind": "malloc", "allocator": "malloc", "outstanding_bytes": 1300, "outstanding_allocations": 13,
            "oldest_age_s": 5.0,
            "frames": [{"address": "0x1", "function": "leak_malloc", "file": "fixture.c", "line": 26, "module": "/f"}]
        });
        let report = serde_json::json!({
            "schema": crate::report::SCHEMA, "target": {"pid": 1, "command": "f", "exited": true, "exit_code": 0},
            "duration_s": 6.0, "mode": "exact", "ended_by": "target-exited",
            "totals": {"outstanding_bytes": 1300, "outstanding_allocations": 13, "by_kind": {}, "allocator_internal_bytes": 0},
            "drops": {}, "probes": [], "sites": [site]
        });
        let mut report = json::parse(&report.to_string()).unwrap();
        let (t_s, bytes): (Vec<f64>, Vec<u64>) = series.into_iter().unzip();
        report.sites[0].series = Some(Series {
            allocations: vec![0; t_s.len()],
            t_s,
            bytes,
        });
        let (t_s, tracked_bytes): (Vec<f64>, Vec<u64>) = total.into_iter().unzip();
        report.process = Some(ProcessGrowth {
            rss_bytes: tracked_bytes.clone(),
            t_s,
            tracked_bytes,
            ..Default::default()
        });
        report
    }

    fn limits(max_growth_bytes: u64, max_rate: Option<f64>) -> Limits {
        Limits {
            max_growth_bytes,
            max_rate_bytes_per_s: max_rate,
            warmup_s: 2.0,
        }
    }

    #[test]
    fn growth_is_measured_from_the_end_of_warmup() {
        // 1000 bytes held during warm-up, then +300.
        let s = vec![
            (0.0, 0),
            (1.0, 1000),
            (2.0, 1000),
            (3.0, 1100),
            (4.0, 1200),
            (5.0, 1300),
        ];
        let report = report_with(s.clone(), s);
        assert!(evaluate(&report, &limits(300, None)).is_empty());
        let v = evaluate(&report, &limits(299, None));
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].growth_bytes, 300);
        assert!(v.iter().any(|v| v.what == "total"));
        assert!(
            v.iter().any(|v| v.what.starts_with("leak_malloc (fixture.c:26)")),
            "{v:?}"
        );
    }

    #[test]
    fn rate_limit_uses_the_robust_slope_after_warmup() {
        let s = vec![(0.0, 0), (2.0, 0), (3.0, 100), (4.0, 200), (5.0, 300), (6.0, 400)];
        let report = report_with(s, vec![]);
        let v = evaluate(&report, &limits(1 << 20, Some(50.0)));
        assert_eq!(v.len(), 1);
        assert!((v[0].rate_bytes_per_s.unwrap() - 100.0).abs() < 1e-9);
        assert!(evaluate(&report, &limits(1 << 20, Some(150.0))).is_empty());
    }

    #[test]
    fn a_hunt_first_sampled_after_warmup_measures_from_that_sample() {
        // The first sample came at 2.5 s, after a 2 s warm-up: the 1000
        // bytes held then were there before; only the +300 is growth.
        let s = vec![(2.5, 1000), (3.0, 1000), (4.0, 1200), (5.0, 1300)];
        let report = report_with(s.clone(), s);
        assert!(evaluate(&report, &limits(300, None)).is_empty());
        assert_eq!(evaluate(&report, &limits(299, None))[0].growth_bytes, 300);
    }

    #[test]
    fn the_sample_taken_at_the_end_of_warmup_is_the_baseline() {
        // The hunt's extra sample at the 2 s warm-up came 20 ms late.
        let s = vec![(0.0, 0), (1.0, 600), (2.02, 1000), (3.0, 1000), (4.0, 1100)];
        let report = report_with(s.clone(), s);
        assert!(evaluate(&report, &limits(100, None)).is_empty());
        assert_eq!(evaluate(&report, &limits(99, None))[0].growth_bytes, 100);
    }

    #[test]
    fn a_site_born_after_warmup_grew_from_nothing() {
        let report = report_with(vec![(3.0, 500), (4.0, 500)], vec![]);
        assert_eq!(evaluate(&report, &limits(499, None))[0].growth_bytes, 500);
        assert!(explain(&evaluate(&report, &limits(499, None)), &limits(499, None)).contains("FAILED"));
        assert!(explain(&[], &limits(499, None)).contains("passed"));
    }

    #[test]
    fn a_file_mapping_first_seen_after_warmup_grew_only_from_there() {
        let mut report = report_with(vec![(3.0, 500), (4.0, 500), (5.0, 800)], vec![]);
        report.sites[0].mapping = Some(crate::report::Mapping {
            anonymous: false,
            prot: "r-x".into(),
        });
        assert_eq!(evaluate(&report, &limits(299, None))[0].growth_bytes, 300);
        assert!(evaluate(&report, &limits(300, None)).is_empty());
    }
}
