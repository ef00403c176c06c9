//! A leak investigation report in Markdown, to paste into an issue or a
//! postmortem. It separates what was measured (bytes, counts, ages) from what
//! was derived (fitted growth rates, verdicts), and ends with the command
//! that reproduces the hunt.

use std::fmt::Write as _;

use super::{file_name, human_bytes, plural, Frame, Listing, Report, Site, Verdict};
use crate::findings::{self, Shown};

/// At most this many rows of the process's memory over time.
const SERIES_ROWS: usize = 12;

pub fn render(report: &Report, listing: Listing) -> String {
    let mut out = String::new();
    let t = &report.target;
    let _ = writeln!(out, "# Memory leak investigation: PID {} {}\n", t.pid, code(&t.command));
    let method = super::mode_description(&report.mode);
    let _ = writeln!(
        out,
        "leakscope traced PID {} for {} ({} mode). {method} Growth rates are fitted slopes \
         (Theil–Sen) over the samples taken during the hunt, and verdicts classify them.\n",
        t.pid,
        secs(report.duration_s),
        report.mode
    );
    if let Some(switched) = report.overhead.as_ref().and_then(|o| o.switched.as_ref()) {
        let _ = writeln!(out, "**Overhead budget**: {}\n", switched.describe());
    }
    if let Some(start) = report.overhead.as_ref().and_then(|o| o.growth_start.as_ref()) {
        let _ = writeln!(out, "**Overhead budget**: {}\n", start.describe());
    }
    summary(&mut out, report);
    findings_table(&mut out, report);
    if let Some(node) = &report.node {
        node_section(&mut out, node);
    }
    heap_census(&mut out, report);
    timeline(&mut out, report);
    sites(&mut out, report, listing);
    by_kind(&mut out, report);
    rss(&mut out, report);
    data_quality(&mut out, report);
    out.push_str("## Reproduce\n\n");
    match &report.command_line {
        Some(command) => {
            let _ = writeln!(out, "```sh\n{command}\n```");
        }
        None => out.push_str("The report does not record the command that produced it.\n"),
    }
    out
}

fn summary(out: &mut String, report: &Report) {
    out.push_str("## Summary\n\n");
    let totals = &report.totals;
    let _ = writeln!(
        out,
        "- **Held at the end**: {} in {} at {} (measured).",
        human_bytes(totals.outstanding_bytes),
        plural(totals.outstanding_allocations, "allocation"),
        plural(report.site_count(), "call stack")
    );
    if report.mode == "growth" {
        let _ = writeln!(
            out,
            "- **Pages first touched** during the hunt: {} (page faults; not part of the held total).",
            human_bytes(totals.pages_touched_bytes)
        );
    }
    let growing: Vec<&Site> = report
        .sites
        .iter()
        .filter(|s| matches!(s.verdict, Some(Verdict::Leak | Verdict::Growing)))
        .collect();
    let leaks = growing.iter().filter(|s| s.verdict == Some(Verdict::Leak)).count();
    let analysed = report.sites.iter().any(|s| s.verdict.is_some());
    if !growing.is_empty() {
        let rate: f64 = growing.iter().filter_map(|s| s.growth_bytes_per_s).sum();
        let _ = writeln!(
            out,
            "- **What leaks**: {} with verdict `leak` and {} more `growing`, together growing at {} (fitted).",
            plural(leaks as u64, "call stack"),
            growing.len() - leaks,
            rate_text(rate)
        );
    } else if analysed {
        out.push_str("- **What leaks**: no call stack keeps growing: every verdict is `plateau`, `stable` or `insufficient-data`.\n");
    } else {
        out.push_str(
            "- **What leaks**: this report has no growth analysis, so it cannot tell a leak from memory \
             that is merely held. The call stacks are ranked by the bytes they hold.\n",
        );
    }
    // The fastest-growing site if any grows, else the one holding the most.
    let top = if growing.is_empty() {
        report.sites.iter().max_by_key(|s| s.outstanding_bytes)
    } else {
        super::ranked(report).into_iter().find(|s| growing.contains(s))
    };
    if let Some(top) = top {
        let growth = top
            .growth_bytes_per_s
            .map(|r| format!(", growing at {} (fitted)", rate_text(r)))
            .unwrap_or_default();
        let verdict = top
            .verdict
            .map(|v| format!(", verdict `{}`", v.as_str()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "- **{}**: {} holds {} in {}{growth}{verdict}.",
            if growing.is_empty() { "Largest" } else { "Fastest" },
            site_name(top),
            human_bytes(top.outstanding_bytes),
            plural(top.outstanding_allocations, "allocation"),
        );
        let _ = writeln!(
            out,
            "- **Since when**: its oldest surviving allocation is {} old, made {} (measured; \
             memory allocated before tracing started is not seen).",
            secs(top.oldest_age_s),
            made_at(report, top)
        );
    }
    if let Some(p) = &report.process {
        let _ = writeln!(
            out,
            "- **Process**: RSS grew at {}, tracked memory at {}; process verdict {}.",
            p.rss_growth_bytes_per_s.map_or("?".to_string(), rate_text),
            p.tracked_growth_bytes_per_s.map_or("?".to_string(), rate_text),
            p.verdict.map_or("none".to_string(), |v| format!("`{}`", v.as_str())),
        );
    }
    out.push('\n');
}

/// One row per leak: what to fix first.
fn findings_table(out: &mut String, report: &Report) {
    out.push_str("## Findings\n\n");
    let found = findings::of(report);
    if found.is_empty() {
        out.push_str("None: no memory held by the application's code keeps growing or was left at the end.\n\n");
        return;
    }
    out.push_str(
        "One per leak: the call stacks grouped by the first frame in the application's own code \
         (JIT tiers of one function, addresses inside one library function).\n\n\
         | # | application frame | verdict | held | allocations | growth (fitted) | call stacks |\n\
         |---:|---|---|---:|---:|---:|---:|\n",
    );
    for (n, finding) in found.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            n + 1,
            code(&finding.title),
            finding.verdict.map_or("–", |v| v.as_str()),
            human_bytes(finding.outstanding_bytes),
            finding.outstanding_allocations,
            finding.growth_bytes_per_s.map_or("–".to_string(), rate_text),
            finding.sites.len()
        );
    }
    out.push('\n');
}

/// Node.js: where the memory is (JS heap, Buffers, native), so the reader
/// knows which tool to pick up next.
fn node_section(out: &mut String, node: &super::NodeReport) {
    out.push_str("## Node.js\n\n| category | held | growth (fitted) | verdict |\n|---|---:|---:|---|\n");
    for (name, category) in &node.categories {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | `{}` |",
            human_bytes(category.bytes),
            category.growth_bytes_per_s.map_or("–".to_string(), rate_text),
            category.verdict.as_str()
        );
    }
    let live = node
        .live_after_full_gc
        .bytes
        .last()
        .map_or("n/a".to_string(), |b| human_bytes(*b));
    let live_rate = node
        .live_after_full_gc_growth_bytes_per_s
        .map_or("?".to_string(), rate_text);
    let _ = writeln!(
        out,
        "\nGCs: {} minor, {} full, {} in all. Live JS heap after the last full GC: {live} \
         (growth over the full GCs {live_rate}).\n",
        node.gc.minor,
        node.gc.full,
        secs(node.gc.time_s)
    );
    if let Some(t) = node.torn_down_at_s {
        let _ = writeln!(
            out,
            "Figures are as of node's teardown at {}: it frees the JS heap and Buffers on exit.\n",
            secs(t)
        );
    }
}

/// The template's "Objects growing between snapshots" and "Retainer path",
/// from the heap censuses of a Node target.
fn heap_census(out: &mut String, report: &Report) {
    let Some(census) = report.node.as_ref().and_then(|n| n.heap_census.as_ref()) else {
        return;
    };
    if census.unavailable.is_some() || census.censuses.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Objects growing between snapshots\n\n{}.\n",
        super::census::method(census)
    );
    let growing: Vec<_> = super::census::growing(census).collect();
    if growing.is_empty() {
        let _ = writeln!(out, "JS heap census: {}.\n", super::census::none_growing(census));
        return;
    }
    for group in &growing {
        let _ = writeln!(
            out,
            "- {}: {} ({})",
            code(&super::census::label(group)),
            super::census::growth(group),
            format!("{:?}", group.verdict).to_lowercase()
        );
    }
    out.push_str("\n## Retainer path\n\n");
    for group in growing.iter().filter(|g| !g.retained_by.is_empty()) {
        let _ = writeln!(out, "**{}**:\n", code(&super::census::label(group)));
        for path in &group.retained_by {
            let _ = writeln!(out, "```\n{}\n```\n", path.replace(" → ", "\n  → "));
        }
    }
}

fn timeline(out: &mut String, report: &Report) {
    out.push_str("## Timeline\n\nTimes are seconds since tracing started (the report records no wall-clock time).\n\n");
    let ended_by = match report.ended_by.as_str() {
        "duration" => "the `--duration` limit",
        "interrupted" => "an interrupt (Ctrl-C or SIGTERM)",
        "target-exited" => "the target's exit",
        other => other,
    };
    let t = &report.target;
    let target = match (t.exited, t.exit_code) {
        (true, Some(code)) => format!("exited during the hunt, with code {code}"),
        (true, None) => "exited during the hunt".to_string(),
        (false, _) => "was still running at the end".to_string(),
    };
    let end = secs(report.duration_s);
    let _ = writeln!(
        out,
        "| event | t |\n|---|---|\n| probes attached, tracing starts | 0 s |\n\
         | hunt ends, by {ended_by} | {end} |\n\nDuration {end}; the target {target}.\n",
    );
    let Some(p) = report.process.as_ref().filter(|p| !p.t_s.is_empty()) else {
        return;
    };
    out.push_str("| t | RSS | tracked by leakscope |\n|---:|---:|---:|\n");
    for i in spread(p.t_s.len(), SERIES_ROWS) {
        let value = |series: &[u64]| series.get(i).map_or("?".to_string(), |b| human_bytes(*b));
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            secs(p.t_s[i]),
            value(&p.rss_bytes),
            value(&p.tracked_bytes)
        );
    }
    out.push('\n');
}

fn sites(out: &mut String, report: &Report, listing: Listing) {
    let top = listing.top;
    let is_node = report.node.is_some();
    let by_growth = report.sites.iter().any(|s| s.growth_bytes_per_s.is_some());
    out.push_str(if by_growth {
        "## Top growing call stacks\n\nRanked by fitted growth rate, then by bytes held.\n\n"
    } else {
        "## Largest call stacks\n\nRanked by bytes held at the end.\n\n"
    });
    let ranked = super::ranked(report);
    if ranked.is_empty() && report.tail.is_empty() {
        out.push_str("No outstanding allocations.\n\n");
    }
    for (rank, site) in ranked.iter().take(top).enumerate() {
        let caveat = site
            .verdict_caveat
            .as_ref()
            .map(|c| format!(" (unsure: {c})"))
            .unwrap_or_default();
        let verdict = site
            .verdict
            .map(|v| format!(": {}{caveat}", v.as_str()))
            .unwrap_or_default();
        let _ = writeln!(out, "### {}. {}{verdict}\n", rank + 1, site_name(site));
        let via = match &site.mapping {
            Some(m) => format!(
                "{} ({} {})",
                code(&site.allocator),
                if m.anonymous { "anonymous" } else { "file-backed" },
                m.prot
            ),
            None => code(&site.allocator),
        };
        if let Some(owner) = super::owner_rank(report, &ranked, site) {
            let _ = writeln!(out, "- **Allocated on behalf of** the blocks of call stack {owner}");
        }
        if site.kind == crate::heap::Kind::PagesTouched {
            let _ = writeln!(
                out,
                "- **Touched** {} ({} B) of new pages ({}): page faults, not bytes outstanding",
                human_bytes(site.outstanding_bytes),
                site.outstanding_bytes,
                plural(site.outstanding_allocations, "page"),
            );
        } else {
            let _ = writeln!(
                out,
                "- **Holds** {} ({} B) in {}, {} memory via {via}",
                human_bytes(site.outstanding_bytes),
                site.outstanding_bytes,
                plural(site.outstanding_allocations, "allocation"),
                site.kind.name()
            );
        }
        let _ = writeln!(
            out,
            "- **Oldest allocation** {} old, made {}",
            secs(site.oldest_age_s),
            made_at(report, site)
        );
        if site.allocated_allocations > 0 {
            let _ = writeln!(
                out,
                "- **Allocated during the hunt** {} in {} (freed or not)",
                human_bytes(site.allocated_bytes),
                plural(site.allocated_allocations, "allocation")
            );
        }
        if let Some(rate) = site.growth_bytes_per_s {
            let mut growth = format!("- **Growth** {} (fitted)", rate_text(rate));
            if let Some(g) = &site.growth {
                let _ = write!(
                    growth,
                    "; net {}{} over the hunt, rising in {:.0}% of samples; allocation ages p50 {}, p90 {}",
                    if g.net_growth_bytes < 0 { "-" } else { "+" },
                    human_bytes(g.net_growth_bytes.unsigned_abs()),
                    g.share_rising * 100.0,
                    secs(g.age_p50_s),
                    secs(g.age_p90_s)
                );
            }
            let _ = writeln!(out, "{growth}");
        }
        out.push_str("\n```text\n");
        if site.frames.is_empty() {
            out.push_str("(stack lost: see Drops)\n");
        }
        for shown in findings::shown_frames(site, is_node, listing.full_stacks) {
            let _ = match shown {
                Shown::Frame(frame) => writeln!(out, "{}", frame_line(frame)),
                Shown::Folded(n) => writeln!(out, "... {n} runtime frame{}", if n == 1 { "" } else { "s" }),
            };
        }
        out.push_str("```\n\n");
    }
    if ranked.len() > top {
        let rest: u64 = ranked[top..].iter().map(|s| s.outstanding_bytes).sum();
        let _ = writeln!(
            out,
            "Not listed: {}, holding {} (`--top N` lists more).\n",
            plural((ranked.len() - top) as u64, "call stack"),
            human_bytes(rest)
        );
    }
    if let Some(tail) = super::tail_description(report) {
        let _ = writeln!(out, "{tail}.\n");
    }
}

fn by_kind(out: &mut String, report: &Report) {
    let totals = &report.totals;
    out.push_str("## Memory by kind\n\n| kind | held | share |\n|---|---:|---:|\n");
    for (kind, bytes) in &totals.by_kind {
        let share = if totals.outstanding_bytes == 0 {
            0.0
        } else {
            *bytes as f64 * 100.0 / totals.outstanding_bytes as f64
        };
        let _ = writeln!(out, "| {kind} | {} | {share:.1}% |", human_bytes(*bytes));
    }
    let _ = writeln!(
        out,
        "\nMappings made by the allocator itself (arenas, large blocks) hold {} more; \
         the malloc call stacks already count that memory.\n",
        human_bytes(totals.allocator_internal_bytes)
    );
    if totals.reserved_bytes > 0 {
        let _ = writeln!(
            out,
            "Reserved address space (mapped PROT_NONE: glibc's per-thread arena heaps, V8's reservations) \
             spans {}; it holds nothing and is not counted.\n",
            human_bytes(totals.reserved_bytes)
        );
    }
}

fn rss(out: &mut String, report: &Report) {
    out.push_str("## RSS versus tracked memory\n\n");
    let Some(p) = &report.process else {
        out.push_str("Not recorded in this report.\n\n");
        return;
    };
    let ends = |series: &[u64]| match (series.first(), series.last()) {
        (Some(first), Some(last)) => (human_bytes(*first), human_bytes(*last)),
        _ => ("?".to_string(), "?".to_string()),
    };
    let rate = |r: Option<f64>| r.map_or("?".to_string(), rate_text);
    let (rss_start, rss_end) = ends(&p.rss_bytes);
    let (tracked_start, tracked_end) = ends(&p.tracked_bytes);
    let _ = writeln!(
        out,
        "| | start | end | growth (fitted) |\n|---|---:|---:|---:|\n\
         | RSS | {rss_start} | {rss_end} | {} |\n| tracked by leakscope | {tracked_start} | {tracked_end} | {} |\n",
        rate(p.rss_growth_bytes_per_s),
        rate(p.tracked_growth_bytes_per_s)
    );
    if let Some(verdict) = p.verdict {
        let _ = writeln!(out, "Process verdict: `{}`.\n", verdict.as_str());
    }
    out.push_str(
        "RSS counts resident pages, tracked memory what the traced allocators handed out. \
         RSS growing faster than tracked memory is memory the probes do not see: \
         fragmentation, other allocators, stacks.\n\n",
    );
}

fn data_quality(out: &mut String, report: &Report) {
    out.push_str("## Data quality\n\n### Drops\n\n");
    let lost: Vec<(&String, &u64)> = report.drops.iter().filter(|(_, n)| **n > 0).collect();
    match super::drops::Bias::of(&report.drops).describe() {
        None if report.sample_bytes.is_some() => {
            out.push_str("None: no sampled event was lost (the heap figures are still estimates).\n\n")
        }
        None => out.push_str("None: every event was recorded.\n\n"),
        Some(meaning) => {
            let _ = writeln!(out, "Events were lost: {meaning}.\n");
        }
    }
    if !lost.is_empty() {
        out.push_str("| counter | lost |\n|---|---:|\n");
        for (name, n) in lost {
            let _ = writeln!(out, "| {name} | {n} |");
        }
        out.push('\n');
    }
    out.push_str("### Probes\n\n| probe | status | hits | return hits |\n|---|---|---:|---:|\n");
    for p in &report.probes {
        let returns = p.return_hits.map_or("–".to_string(), |n| n.to_string());
        let _ = writeln!(out, "| {} | {} | {} | {returns} |", p.name, p.status, p.hits);
    }
    out.push('\n');
}

/// The innermost named frame past the allocator's own (libc's `__mmap64`
/// for `mmap`), with its source line: where the memory was asked for.
fn site_name(site: &Site) -> String {
    let allocator_own = |f: &&std::sync::Arc<Frame>| {
        let function = f.function.as_deref().unwrap_or_default();
        site.allocator.split('/').any(|name| function.contains(name))
    };
    let named = site.frames.iter().filter(|f| f.function.is_some());
    let Some(frame) = named
        .clone()
        .find(|f| !allocator_own(f))
        .or_else(|| named.clone().next())
    else {
        return if site.frames.is_empty() {
            "a lost stack".to_string()
        } else {
            "an unnamed stack".to_string()
        };
    };
    let function = code(frame.function.as_deref().unwrap_or_default());
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!("{function} ({}:{line})", file_name(file)),
        _ => function,
    }
}

/// When the oldest surviving allocation of `site` was made, in hunt time.
fn made_at(report: &Report, site: &Site) -> String {
    format!("at t ≈ {}", secs((report.duration_s - site.oldest_age_s).max(0.0)))
}

/// Seconds, with milliseconds for short spans (a hunt of a short command).
fn secs(s: f64) -> String {
    if s.abs() < 1.0 {
        format!("{s:.3} s")
    } else {
        format!("{s:.1} s")
    }
}

fn frame_line(frame: &Frame) -> String {
    let mut line = frame.function.clone().unwrap_or_else(|| frame.address.clone());
    if let Some(file) = &frame.file {
        let _ = write!(line, "  {file}");
        if let Some(n) = frame.line {
            let _ = write!(line, ":{n}");
        }
    }
    if let Some(module) = &frame.module {
        let _ = write!(line, "  ({})", file_name(module));
    }
    line
}

fn rate_text(bytes_per_s: f64) -> String {
    let sign = if bytes_per_s < 0.0 { "-" } else { "+" };
    format!("{sign}{}/s", human_bytes(bytes_per_s.abs().round() as u64))
}

/// Inline code; a name holding a backtick gets a longer fence.
fn code(s: &str) -> String {
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// Up to `rows` indices spread evenly over `0..len`, first and last included.
fn spread(len: usize, rows: usize) -> Vec<usize> {
    if len <= rows {
        return (0..len).collect();
    }
    (0..rows).map(|i| i * (len - 1) / (rows - 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{sample_report, without_analysis};
    use super::*;

    fn listing(top: usize) -> Listing {
        Listing {
            top,
            full_stacks: false,
        }
    }

    /// The text between `## heading` and the next `## `.
    fn section<'a>(md: &'a str, heading: &str) -> &'a str {
        let start = md
            .find(&format!("## {heading}\n"))
            .unwrap_or_else(|| panic!("no section {heading}:\n{md}"));
        let rest = &md[start + 3..];
        &rest[..rest.find("\n## ").unwrap_or(rest.len())]
    }

    #[test]
    fn leads_with_the_leak_and_ranks_by_growth() {
        let md = render(&sample_report(), listing(2));
        let summary = section(&md, "Summary");
        assert!(
            summary.contains("1 call stack with verdict `leak` and 0 more `growing`"),
            "{summary}"
        );
        assert!(
            summary.contains("`cache_insert` (app.c:31) holds 40.0 KiB"),
            "{summary}"
        );
        assert!(summary.contains("made at t ≈ 1.5 s"), "{summary}");
        let sites = section(&md, "Top growing call stacks");
        let leak = sites.find("### 1. `cache_insert` (app.c:31): leak").expect(sites);
        let plateau = sites.find("### 2. `std::array<int; 2>::fill`: plateau").expect(sites);
        assert!(leak < plateau);
        assert!(sites.contains("```text\ncache_insert  /src/app.c:31  (libapp.so)\nhandle_request"));
        assert!(sites.contains("Not listed: 2 call stacks, holding 1.5 KiB"), "{sites}");
        assert!(section(&md, "Timeline").contains("| 30.0 s | 3.8 MiB | 29.3 KiB |"));
        assert!(section(&md, "RSS versus tracked memory").contains("| RSS | 3.8 MiB | 3.9 MiB | +1000 B/s |"));
        assert!(section(&md, "Data quality").contains("| stack_lost | 1 |"));
        assert!(section(&md, "Data quality").contains("| pvalloc | never-fired | 0 | 0 |"));
        assert!(section(&md, "Reproduce").contains("```sh\nleakscope hunt -p 4242"));
        assert_eq!(md.matches("```").count() % 2, 0, "fences are balanced");
    }

    #[test]
    fn without_analysis_ranks_by_bytes_and_says_so() {
        let md = render(&without_analysis(sample_report()), listing(10));
        assert!(section(&md, "Summary").contains("no growth analysis"));
        let sites = section(&md, "Largest call stacks");
        assert!(sites.contains("### 1. `cache_insert` (app.c:31)\n"));
        assert!(sites.contains("### 4. a lost stack\n"));
        assert!(sites.contains("(stack lost: see Drops)"));
        assert!(section(&md, "RSS versus tracked memory").contains("Not recorded"));
        assert!(section(&md, "Reproduce").contains("does not record"));
    }

    #[test]
    fn names_a_site_past_the_allocators_own_frames() {
        let mut site = sample_report().sites[1].clone();
        std::sync::Arc::make_mut(&mut site.frames[0]).function = Some("__mmap64".into());
        assert_eq!(
            site_name(&site),
            "`main` (app.c:90)",
            "the unnamed frame is skipped too"
        );
        site.frames.truncate(1);
        assert_eq!(site_name(&site), "`__mmap64`", "no other named frame");
    }

    #[test]
    fn spreads_rows_over_the_series() {
        assert_eq!(spread(3, 12), [0, 1, 2]);
        assert_eq!(spread(100, 4), [0, 33, 66, 99]);
    }
}
