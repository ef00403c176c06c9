//! The heap census as text lines, shared by the text and markdown reports:
//! the groups that grew between censuses, and what retains them.

use super::{human_bytes, CensusGroup, HeapCensus, Verdict};

/// Groups listed as growing.
const MAX_GROWING: usize = 8;

/// The groups whose verdict is a leak or growth, fastest first (the
/// report keeps them in that order).
pub fn growing(census: &HeapCensus) -> impl Iterator<Item = &CensusGroup> {
    census
        .groups
        .iter()
        .filter(|g| matches!(g.verdict, Verdict::Leak | Verdict::Growing))
        .take(MAX_GROWING)
}

/// What to say when no group is growing: that none grew, or that some
/// grew over too few censuses for a verdict.
pub fn none_growing(census: &HeapCensus) -> &'static str {
    if !census.censuses.iter().any(|c| c.after_full_gc) {
        return "no census followed a full GC, so none can tell growth from garbage yet";
    }
    let undecided = census
        .groups
        .iter()
        .any(|g| g.verdict == Verdict::InsufficientData && g.count_last > g.count_first);
    if undecided {
        "groups grew, over too few censuses for a verdict (five over 3 s at least)"
    } else {
        "no group grew"
    }
}

/// `CachedResult {key, size, hits}`, `closure onData (app.js:51:33, in handleRequest)`.
pub fn label(group: &CensusGroup) -> String {
    let mut label = match group.kind.as_str() {
        "closure" => format!("closure {}", group.name),
        "object" | "native" => group.name.clone(),
        kind => format!("{kind} {}", group.name),
    };
    if !group.shape.is_empty() {
        label.push_str(&format!(" {{{}}}", group.shape.join(", ")));
    }
    let mut place = Vec::new();
    if let Some(location) = &group.location {
        place.push(location.clone());
    }
    if let Some(enclosing) = &group.enclosing_function {
        place.push(format!("in {enclosing}"));
    }
    if !place.is_empty() {
        label.push_str(&format!(" ({})", place.join(", ")));
    }
    label
}

/// `+1,200 objects (+57.6 KiB, 14.0 KiB/s)`.
pub fn growth(group: &CensusGroup) -> String {
    let added = group.count_last as i64 - group.count_first as i64;
    let bytes = group.bytes_last as i64 - group.bytes_first as i64;
    let sign = |v: i64| if v < 0 { "-" } else { "+" };
    let rate = group
        .growth_bytes_per_s
        .map(|r| format!(", {}/s", human_bytes(r.max(0.0) as u64)))
        .unwrap_or_default();
    let entries = group.entries_last.map(|e| format!(", {e} entries")).unwrap_or_default();
    format!(
        "{}{} objects ({}{}{rate}{entries})",
        sign(added),
        added.unsigned_abs(),
        sign(bytes),
        human_bytes(bytes.unsigned_abs())
    )
}

/// One line on how the censuses were taken.
pub fn method(census: &HeapCensus) -> String {
    let durations = census.censuses.iter().map(|c| c.duration_s);
    let longest = durations.fold(0.0, f64::max);
    let dropped: u64 = census
        .dropped
        .iter()
        .filter(|d| d.reason.starts_with("census"))
        .map(|d| d.count)
        .sum();
    let after_gc = census.censuses.iter().filter(|c| c.after_full_gc).count();
    format!(
        "{} heap censuses, {after_gc} after full GCs (the longest took {longest:.2} s; the target was never stopped){}",
        census.censuses.len(),
        if dropped > 0 {
            format!("; {dropped} dropped")
        } else {
            String::new()
        }
    )
}
