//! What lost events do to the figures. A lost free or unmap leaves memory
//! counted that the target gave back (an over-count); a lost allocation
//! leaves out memory it holds (an under-count). Which way a counter biases
//! depends on what it can lose.

use std::collections::BTreeMap;

use super::{Report, Verdict};

/// The directions in which the lost records can have moved the figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bias {
    /// Frees or unmaps may be lost: outstanding figures and growth may be too high.
    pub inflated: bool,
    /// Allocations may be lost: outstanding figures and growth may be too low.
    pub deflated: bool,
    /// Allocations counted under a site without frames, not under their own.
    pub stacks_lost: u64,
    /// Page faults not counted.
    pub faults_lost: bool,
    /// Allocations counted under a stack cut short (the kernel side had no
    /// unwind rule yet for one of its frames), not under their whole stack.
    pub stacks_cut: u64,
}

impl Bias {
    pub fn of(drops: &BTreeMap<String, u64>) -> Bias {
        let mut bias = Bias::default();
        for (reason, &n) in drops.iter().filter(|(_, n)| **n > 0) {
            match reason.as_str() {
                // The lost record may have been a free as well as an allocation.
                "ring_buffer_full" | "malformed_records" => (bias.inflated, bias.deflated) = (true, true),
                // A lost malloc is missing; a lost realloc or munmap leaves the old memory counted.
                "pending_calls_full" => (bias.inflated, bias.deflated) = (true, true),
                // The block is counted, but its free will not be reported.
                "sampled_blocks_full" => bias.inflated = true,
                "stack_lost" => bias.stacks_lost += n,
                "fault_stacks_full" => bias.faults_lost = true,
                "stacks_cut" => bias.stacks_cut += n,
                // A counter this build does not know: assume the worst.
                _ => (bias.inflated, bias.deflated) = (true, true),
            }
        }
        bias
    }

    /// What the drops mean for the figures, in one clause; `None` without drops.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        match (self.inflated, self.deflated) {
            (true, true) => parts.push(
                "outstanding figures may be over-counts (frees were lost) or under-counts (allocations were lost)"
                    .to_string(),
            ),
            (true, false) => parts.push("outstanding figures may be over-counts: frees were lost".to_string()),
            (false, true) => parts.push("outstanding figures may be under-counts: allocations were lost".to_string()),
            (false, false) => {}
        }
        if self.stacks_lost > 0 {
            parts.push(format!(
                "{} allocations lost their stack: totals hold, but those bytes count under a site without frames",
                self.stacks_lost
            ));
        }
        if self.faults_lost {
            parts.push("page-fault figures are under-counts".to_string());
        }
        if self.stacks_cut > 0 {
            parts.push(format!(
                "{} allocation stacks were cut short (no unwind rule yet): totals hold, but those bytes count under a shorter stack",
                self.stacks_cut
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Why `verdict` may be wrong given these drops: growth can come from
    /// lost frees, and lost allocations can hide growth.
    pub fn verdict_caveat(&self, verdict: Verdict) -> Option<&'static str> {
        match verdict {
            Verdict::Leak | Verdict::Growing | Verdict::Plateau if self.inflated => {
                Some("lost frees may have inflated this growth")
            }
            Verdict::Stable | Verdict::InsufficientData if self.deflated => Some("lost allocations may hide growth"),
            _ => None,
        }
    }
}

/// Marks every verdict the drops can have changed (idempotent: a saved
/// report read again gets the same marks).
pub fn mark_verdicts(report: &mut Report) {
    let bias = Bias::of(&report.drops);
    for site in &mut report.sites {
        site.verdict_caveat = site.verdict.and_then(|v| bias.verdict_caveat(v)).map(str::to_string);
    }
}

/// The drop counters that are not zero, as `name=count`.
pub fn nonzero(drops: &BTreeMap<String, u64>) -> Vec<String> {
    drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect()
}

/// Marks the verdicts and warns on stderr: every path that hands a report
/// to a renderer goes through here.
pub fn mark_and_warn(report: &mut Report) {
    mark_verdicts(report);
    if let Some(warning) = warning(report) {
        eprintln!("{warning}");
    }
}

/// The line for stderr, whatever the output format: a JSON report read by
/// a script must not hide that its figures are biased.
pub fn warning(report: &Report) -> Option<String> {
    let meaning = Bias::of(&report.drops).describe()?;
    Some(format!(
        "leakscope: warning: events were lost ({}): {meaning}",
        nonzero(&report.drops).join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    fn drops(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|&(k, n)| (k.to_string(), n)).collect()
    }

    #[test]
    fn lost_frees_inflate_and_lost_allocations_deflate() {
        let none = Bias::of(&drops(&[("ring_buffer_full", 0), ("stack_lost", 0)]));
        assert_eq!(none.describe(), None);
        let sampled = Bias::of(&drops(&[("sampled_blocks_full", 2)]));
        assert!(sampled.inflated && !sampled.deflated);
        assert!(sampled.describe().unwrap().contains("over-counts: frees were lost"));
        let ring = Bias::of(&drops(&[("ring_buffer_full", 5)]));
        assert!(ring.inflated && ring.deflated);
        let stacks = Bias::of(&drops(&[("stack_lost", 3)]));
        assert!(!stacks.inflated && !stacks.deflated);
        assert!(stacks.describe().unwrap().starts_with("3 allocations lost their stack"));
    }

    #[test]
    fn marks_the_verdicts_a_bias_can_explain() {
        let mut report = sample_report();
        report.drops = drops(&[("sampled_blocks_full", 1)]);
        mark_verdicts(&mut report);
        let caveats: Vec<Option<&str>> = report.sites.iter().map(|s| s.verdict_caveat.as_deref()).collect();
        let inflated = Some("lost frees may have inflated this growth");
        // leak, plateau, stable, no verdict
        assert_eq!(caveats, [inflated, inflated, None, None]);
        report.drops = drops(&[("pending_calls_full", 1)]);
        mark_verdicts(&mut report);
        assert_eq!(
            report.sites[2].verdict_caveat.as_deref(),
            Some("lost allocations may hide growth")
        );
        report.drops = drops(&[("stack_lost", 1)]);
        mark_verdicts(&mut report);
        assert!(report.sites.iter().all(|s| s.verdict_caveat.is_none()));
    }
}
