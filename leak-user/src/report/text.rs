//! The text report: readable at a glance in a terminal.

use std::fmt::Write as _;

use super::{drops, human_bytes, plural, Listing, Report, Site};
use crate::findings::{self, Shown};

pub fn render(report: &Report, listing: Listing) -> String {
    let top = listing.top;
    let mut out = String::new();
    let t = &report.target;
    let state = match (t.exited, t.exit_code) {
        (true, Some(code)) => format!("target exited with code {code}"),
        (true, None) => "target exited".to_string(),
        (false, _) => format!("hunt ended by {}", report.ended_by),
    };
    let _ = writeln!(
        out,
        "leakscope: PID {} `{}`: traced {:.1} s ({} mode), {state}",
        t.pid, t.command, report.duration_s, report.mode
    );
    let totals = &report.totals;
    let kinds: Vec<String> = totals
        .by_kind
        .iter()
        .map(|(k, v)| format!("{k} {}", human_bytes(*v)))
        .collect();
    let _ = writeln!(
        out,
        "outstanding: {} in {} ({}); allocator-internal mappings: {}",
        human_bytes(totals.outstanding_bytes),
        plural(totals.outstanding_allocations, "allocation"),
        kinds.join(", "),
        human_bytes(totals.allocator_internal_bytes),
    );
    if totals.reserved_bytes > 0 {
        let _ = writeln!(
            out,
            "reserved address space (PROT_NONE, holds nothing, not counted): {}",
            human_bytes(totals.reserved_bytes)
        );
    }
    if report.mode == "growth" {
        let _ = writeln!(
            out,
            "{} Pages first touched: {}.",
            super::mode_description("growth"),
            human_bytes(totals.pages_touched_bytes)
        );
    }
    if let Some(overhead) = &report.overhead {
        let _ = writeln!(
            out,
            "overhead budget: {:.1}% of the target's CPU time, peak measured {:.1}%",
            overhead.max_overhead_pct, overhead.peak_overhead_pct
        );
        if let Some(switched) = &overhead.switched {
            let _ = writeln!(out, "{}", switched.describe());
        }
        if let Some(start) = &overhead.growth_start {
            let _ = writeln!(out, "{}", start.describe());
        }
    }
    if let Some(mean) = report.sample_bytes {
        let _ = writeln!(
            out,
            "sampled: one sample per {} allocated on average (Poisson); heap figures are unbiased estimates, mappings exact",
            human_bytes(mean)
        );
    }
    let lost = drops::nonzero(&report.drops);
    match drops::Bias::of(&report.drops).describe() {
        // A sampled report is an estimate even when nothing was lost.
        None if report.sample_bytes.is_some() => {
            let _ = writeln!(out, "drops: none");
        }
        None => {
            let _ = writeln!(out, "drops: none (exact)");
        }
        Some(meaning) => {
            let _ = writeln!(out, "drops: {} ({meaning})", lost.join(" "));
        }
    }
    for (status, label) in [
        ("never-fired", "probes that never fired"),
        ("missing", "functions not in the target"),
    ] {
        let names: Vec<&str> = report
            .probes
            .iter()
            .filter(|p| p.status == status)
            .map(|p| p.name.as_str())
            .collect();
        if !names.is_empty() {
            let _ = writeln!(out, "{label}: {}", names.join(", "));
        }
    }
    for module in &report.modules_without_symbols {
        let _ = writeln!(out, "no symbols for {module} (stripped, no debug file found)");
    }
    if let Some(node) = &report.node {
        write_node(&mut out, node);
    }
    if report.sites.is_empty() && report.tail.is_empty() {
        let _ = writeln!(out, "\nno outstanding allocations");
    }
    write_verdicts(&mut out, report);
    let ranked = super::ranked(report);
    write_findings(&mut out, report, &ranked);
    let is_node = report.node.is_some();
    for (rank, site) in ranked.iter().take(top).enumerate() {
        let owner = super::owner_rank(report, &ranked, site);
        write_site(&mut out, rank + 1, site, owner, is_node, listing.full_stacks);
    }
    if report.sites.len() > top {
        let _ = writeln!(
            out,
            "\n... {} more sites (--top N shows more)",
            report.sites.len() - top
        );
    }
    if let Some(tail) = super::tail_description(report) {
        let _ = writeln!(out, "\n{tail}");
    }
    out
}

/// One line per finding, before the sites, with the ranks of its sites.
fn write_findings(out: &mut String, report: &Report, ranked: &[&Site]) {
    let found = findings::of(report);
    if found.is_empty() {
        if !report.sites.is_empty() {
            let _ = writeln!(
                out,
                "\nfindings: none (nothing held grows or comes from the application's code)"
            );
        }
        return;
    }
    let _ = writeln!(out, "\nfindings: {} (one per leak, by application frame)", found.len());
    for (n, finding) in found.iter().enumerate() {
        let verdict = finding.verdict.map(|v| format!("{}: ", v.as_str())).unwrap_or_default();
        let rate = finding
            .growth_bytes_per_s
            .filter(|r| *r > 0.0)
            .map(|r| format!(", +{}/s", human_bytes(r as u64)))
            .unwrap_or_default();
        let ranks: Vec<String> = finding
            .sites
            .iter()
            .filter_map(|&i| ranked.iter().position(|s| std::ptr::eq(*s, &report.sites[i])))
            .map(|rank| format!("#{}", rank + 1))
            .collect();
        let _ = writeln!(
            out,
            "  {}. {verdict}{}: {} in {}{rate}; sites {}",
            n + 1,
            finding.title,
            human_bytes(finding.outstanding_bytes),
            plural(finding.outstanding_allocations, "allocation"),
            ranks.join(" ")
        );
    }
}

fn write_site(out: &mut String, rank: usize, site: &Site, owner: Option<usize>, is_node: bool, full_stacks: bool) {
    let mapping = site
        .mapping
        .as_ref()
        .map(|m| format!(" [{} {}]", if m.anonymous { "anon" } else { "file" }, m.prot))
        .unwrap_or_default();
    let caveat = site
        .verdict_caveat
        .as_ref()
        .map(|c| format!(" (unsure: {c})"))
        .unwrap_or_default();
    let verdict = match (site.verdict, site.growth_bytes_per_s) {
        (Some(v), Some(rate)) if rate > 0.0 => format!("{}, +{}/s{caveat}: ", v.as_str(), human_bytes(rate as u64)),
        (Some(v), _) => format!("{}{caveat}: ", v.as_str()),
        (None, _) => String::new(),
    };
    let held = if site.kind == crate::heap::Kind::PagesTouched {
        format!(
            "{} of pages first touched ({} pages), first {:.1} s ago, via page faults",
            human_bytes(site.outstanding_bytes),
            site.outstanding_allocations,
            site.oldest_age_s
        )
    } else {
        format!(
            "{} outstanding in {}, oldest {:.1} s, via {}{mapping}",
            human_bytes(site.outstanding_bytes),
            plural(site.outstanding_allocations, "allocation"),
            site.oldest_age_s,
            site.allocator,
        )
    };
    let _ = writeln!(out, "\n#{rank} {verdict}{held}");
    if let Some(owner) = owner {
        let _ = writeln!(out, "    allocated on behalf of the blocks of #{owner}");
    }
    if site.frames.is_empty() {
        let _ = writeln!(out, "    (stack lost: see drops)");
    }
    for shown in findings::shown_frames(site, is_node, full_stacks) {
        let frame = match shown {
            Shown::Frame(frame) => frame,
            Shown::Folded(n) => {
                let _ = writeln!(
                    out,
                    "    ... {n} runtime frame{} (--full-stacks shows them)",
                    if n == 1 { "" } else { "s" }
                );
                continue;
            }
        };
        let function = frame.function.as_deref().unwrap_or("??");
        let location = match (&frame.file, frame.line) {
            (Some(file), Some(line)) => format!("  {file}:{line}"),
            (Some(file), None) => format!("  {file}"),
            _ => String::new(),
        };
        let module = frame
            .module
            .as_deref()
            .map(|m| m.rsplit('/').next().unwrap_or(m))
            .unwrap_or("?");
        let _ = writeln!(out, "    {:<18} {function}{location}  ({module})", frame.address);
    }
}

/// The JS heap groups that grew between censuses, and what holds them.
fn write_census(out: &mut String, census: &super::HeapCensus) {
    if let Some(reason) = &census.unavailable {
        let _ = writeln!(out, "\nJS heap census: not taken ({reason})");
        return;
    }
    let mut growing = super::census::growing(census).peekable();
    if growing.peek().is_none() {
        let _ = writeln!(
            out,
            "\nJS heap census: {} ({})",
            super::census::none_growing(census),
            super::census::method(census)
        );
        return;
    }
    let _ = writeln!(out, "\nJS heap objects growing ({}):", super::census::method(census));
    for group in growing {
        let verdict = format!("{:?}", group.verdict).to_lowercase();
        let _ = writeln!(
            out,
            "  {verdict:<8} {}  {}",
            super::census::growth(group),
            super::census::label(group)
        );
        for path in &group.retained_by {
            let _ = writeln!(out, "           retained by {path}");
        }
    }
}

/// Node.js: one line per category, so a reader knows where to look first.
fn write_node(out: &mut String, node: &super::NodeReport) {
    if let Some(census) = &node.heap_census {
        write_census(out, census);
    }
    let _ = writeln!(out, "\nnode.js memory by category:");
    for (name, category) in &node.categories {
        let rate = category
            .growth_bytes_per_s
            .map(|r| format!(" at {}/s", human_bytes(r.max(0.0) as u64)))
            .unwrap_or_default();
        let verdict = format!("{:?}", category.verdict).to_lowercase();
        let _ = writeln!(out, "  {name:<12} {:>10}  {verdict}{rate}", human_bytes(category.bytes));
    }
    let live = node
        .live_after_full_gc
        .bytes
        .last()
        .map(|b| human_bytes(*b))
        .unwrap_or_else(|| "n/a".to_string());
    let _ = writeln!(
        out,
        "  GCs: {} minor, {} full ({:.2} s); live after the last full GC: {live}",
        node.gc.minor, node.gc.full, node.gc.time_s
    );
    if let Some(t) = node.torn_down_at_s {
        let _ = writeln!(
            out,
            "  (figures as of node's teardown at {t:.1} s: it frees the JS heap and Buffers on exit)"
        );
    }
    if let Some(top) = node.allocation_samples.first() {
        let js: Vec<&str> = top
            .frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .filter(|f| !f.starts_with("Builtins_"))
            .take(4)
            .collect();
        let _ = writeln!(
            out,
            "  most sampled JS heap allocation ({}, {} samples): {}",
            top.reason,
            top.samples,
            js.join(" <- ")
        );
    }
}

/// The verdict counts, so a reader sees first whether anything keeps growing.
fn write_verdicts(out: &mut String, report: &Report) {
    let mut counts = std::collections::BTreeMap::new();
    for site in &report.sites {
        if let Some(v) = site.verdict {
            *counts.entry(v).or_insert(0u64) += 1;
        }
    }
    if counts.is_empty() {
        return;
    }
    let summary: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {}", v.as_str())).collect();
    let _ = writeln!(
        out,
        "\nsites by verdict: {} (ranked below by verdict, then growth rate)",
        summary.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    const LISTING: Listing = Listing {
        top: 10,
        full_stacks: false,
    };

    fn drops_line(report: &Report) -> String {
        let text = render(report, LISTING);
        text.lines().find(|l| l.starts_with("drops:")).unwrap().to_string()
    }

    #[test]
    fn says_which_way_drops_bias_the_figures() {
        let mut report = sample_report();
        report.drops.insert("ring_buffer_full".into(), 7);
        crate::report::drops::mark_verdicts(&mut report);
        let line = drops_line(&report);
        assert!(line.contains("ring_buffer_full=7"), "{line}");
        assert!(line.contains("over-counts (frees were lost)"), "{line}");
        assert!(line.contains("under-counts (allocations were lost)"), "{line}");
        assert!(!line.contains("lower bounds"), "{line}");
        let text = render(&report, LISTING);
        assert!(
            text.contains("leak, +700 B/s (unsure: lost frees may have inflated this growth)"),
            "{text}"
        );
    }

    #[test]
    fn a_sampled_report_is_never_exact() {
        let mut report = sample_report();
        report.drops.values_mut().for_each(|n| *n = 0);
        assert_eq!(drops_line(&report), "drops: none (exact)");
        report.mode = "sampled".into();
        report.sample_bytes = Some(512 << 10);
        assert_eq!(drops_line(&report), "drops: none");
    }
}
