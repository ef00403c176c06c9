//! Collapsed stacks ("folded"), the input of flamegraph.pl, inferno and
//! speedscope: one line per site, `[kind];outermost;...;innermost BYTES`.
//! The root frame keeps heap and mappings apart in a flame graph.

use super::{frame_label, stack_sites, Report, Site};

pub fn render(report: &Report) -> String {
    stack_sites(report).iter().map(|site| line(site) + "\n").collect()
}

/// A site's line, without the newline.
pub fn line(site: &Site) -> String {
    format!("{} {}", stack(site).join(";"), site.outstanding_bytes)
}

/// A site's frame names, outermost first, under its kind's root frame.
pub fn stack(site: &Site) -> Vec<String> {
    let root = format!("[{}]", site.kind.name());
    let frames: Vec<String> = if site.frames.is_empty() {
        vec!["[stack lost]".to_string()]
    } else {
        site.frames.iter().rev().map(|f| sanitize(&frame_label(f))).collect()
    };
    std::iter::once(root).chain(frames).collect()
}

/// `;` separates frames and a newline ends a stack, so neither may appear in
/// a name (C++ names can hold `;` in template arguments).
fn sanitize(label: &str) -> String {
    label.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample_report;
    use super::*;

    #[test]
    fn one_line_per_site_summing_to_the_totals() {
        let report = sample_report();
        let text = render(&report);
        let mut sum = 0;
        for line in text.lines() {
            // frames (which may hold spaces), one space, an integer
            let (stack, bytes) = line.rsplit_once(' ').expect("a space before the count");
            assert!(stack.split(';').all(|f| !f.is_empty()), "empty frame in {line:?}");
            sum += bytes.parse::<u64>().unwrap_or_else(|_| panic!("no count in {line:?}"));
        }
        assert_eq!(text.lines().count(), report.sites.len());
        assert_eq!(sum, report.totals.outstanding_bytes);
        assert!(
            text.contains("[malloc];main;handle_request;cache_insert 40960\n"),
            "{text}"
        );
        assert!(text.contains("[malloc];[stack lost] 512\n"), "{text}");
        // unnamed frame, and a `;` inside a name
        assert!(
            text.contains("[mmap];main;libapp.so@0x7f00001234;std::array<int: 2>::fill 8192\n"),
            "{text}"
        );
    }
}
