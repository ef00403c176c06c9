//! The censuses of a hunt as series per group: what each group held at
//! each census, its growth and verdict, and what retains the growing ones.
//!
//! A census taken right after a full GC counts what survived it (and the
//! garbage the GC left: objects that died while it marked, pages not yet
//! swept); one taken without (at attach, or when no full GC came for a
//! while) also counts the old-space objects that died since the last full
//! GC, which only the next one frees: it can overcount a group, never
//! undercount it. So verdicts are judged from the first census after a
//! full GC to the last, and a census in between taken without one counts
//! at most what the next census after one counted: growth to a census
//! after a full GC is never overstated, while growth to one without could
//! be garbage. Censuses before the first full GC are not judged either:
//! they may precede the load whose garbage later censuses hold, and miss
//! what was still young then (new space is not walked).

use std::collections::HashMap;

use crate::analyze::{self, GrowthPolicy};
use crate::report::{self, CensusGroup, CensusPoint, HeapCensus};
use crate::v8::census::{Census, GroupCount, GroupKey};

/// Groups kept in the report: the fastest growing, then the largest.
const MAX_REPORTED_GROUPS: usize = 40;
/// Groups whose retaining paths are looked for after each census.
pub const MAX_TRACED_GROUPS: usize = 8;
/// Bytes a group must have gained since the first census for its
/// retaining paths to be looked for (the verdicts' growth floor).
const MIN_TRACED_GROWTH: u64 = 4096;

#[derive(Default)]
pub struct CensusSeries {
    points: Vec<CensusPoint>,
    /// Per group: (census index, counts).
    groups: HashMap<GroupKey, Vec<(usize, GroupCount)>>,
    retained_by: HashMap<GroupKey, Vec<String>>,
    /// Why censuses and path searches were dropped, counted by reason.
    dropped: HashMap<String, u64>,
    /// Why no census could be taken at all.
    pub unavailable: Option<String>,
}

impl CensusSeries {
    /// `after_full_gc`: taken right after a full GC, so counting no garbage.
    pub fn add(&mut self, t_s: f64, census: Census, after_full_gc: bool) {
        let index = self.points.len();
        self.points.push(CensusPoint {
            t_s,
            after_full_gc,
            live_bytes: census.live_bytes,
            free_bytes: census.free_bytes,
            objects: census.objects,
            duration_s: census.duration.as_secs_f64(),
            frozen_s: 0.0,
            cpu_s: census.cpu.as_secs_f64(),
            unparsed_bytes: census.unparsed_bytes,
            pages: census.pages as u64,
        });
        for (key, count) in census.groups {
            self.groups.entry(key).or_default().push((index, count));
        }
    }

    pub fn has_census_after_full_gc(&self) -> bool {
        self.points.iter().any(|p| p.after_full_gc)
    }

    /// A census or path search was not kept, for `reason`.
    pub fn dropped(&mut self, reason: String) {
        log::info!("dropped a {reason}");
        *self.dropped.entry(reason).or_default() += 1;
    }

    pub fn set_retainers(&mut self, paths: HashMap<GroupKey, Vec<String>>) {
        for (key, path) in paths.into_iter().filter(|(_, p)| !p.is_empty()) {
            self.retained_by.insert(key, path);
        }
    }

    /// Objects per group at the first census, for later ones to compare against.
    fn first_counts(&self) -> HashMap<&GroupKey, u64> {
        self.groups
            .iter()
            .filter_map(|(key, series)| {
                let (index, count) = series.first()?;
                (*index == 0).then_some((key, count.count))
            })
            .collect()
    }

    /// The censuses verdicts use, from the first one after a full GC to
    /// the last, each with the census that caps its counts: itself when
    /// after a full GC, else the next census after one.
    fn judged(&self) -> Vec<(usize, usize)> {
        let marked = |p: &CensusPoint| p.after_full_gc;
        let (Some(first), Some(last)) = (
            self.points.iter().position(marked),
            self.points.iter().rposition(marked),
        ) else {
            return Vec::new();
        };
        let mut judged = Vec::new();
        let mut cap = last;
        for index in (first..=last).rev() {
            if self.points[index].after_full_gc {
                cap = index;
            }
            judged.push((index, cap));
        }
        judged.reverse();
        judged
    }

    pub fn report(&self, policy: &GrowthPolicy) -> HeapCensus {
        let judged = self.judged();
        let t_s: Vec<f64> = judged.iter().map(|&(i, _)| self.points[i].t_s).collect();
        // Without a census after a full GC, the counts are what the censuses
        // saw, garbage included, and no verdict is given.
        let columns: Vec<(usize, usize)> = if judged.is_empty() {
            (0..self.points.len()).map(|i| (i, i)).collect()
        } else {
            judged.clone()
        };
        let mut groups: Vec<CensusGroup> = self
            .groups
            .iter()
            .map(|(key, series)| {
                // A group absent from a census had no objects then.
                let mut bytes = vec![0; self.points.len()];
                let mut counts = vec![0; self.points.len()];
                let mut entries = vec![0; self.points.len()];
                let mut external = vec![0; self.points.len()];
                for (index, count) in series {
                    bytes[*index] = count.bytes;
                    counts[*index] = count.count;
                    entries[*index] = count.entries;
                    external[*index] = count.external_bytes;
                }
                let capped =
                    |raw: &[u64]| -> Vec<u64> { columns.iter().map(|&(i, cap)| raw[i].min(raw[cap])).collect() };
                let (bytes, counts, entries, external) =
                    (capped(&bytes), capped(&counts), capped(&entries), capped(&external));
                let (rate, verdict) = if judged.is_empty() {
                    (None, report::Verdict::InsufficientData)
                } else {
                    analyze::analyze_totals(&t_s, &bytes, policy)
                };
                let has_entries = (key.kind == "map" || key.kind == "set") && !judged.is_empty();
                CensusGroup {
                    kind: key.kind.clone(),
                    name: key.name.clone(),
                    shape: key.shape.clone(),
                    location: key.location.clone(),
                    enclosing_function: key.enclosing_function.clone(),
                    count_first: counts.first().copied().unwrap_or(0),
                    count_last: counts.last().copied().unwrap_or(0),
                    bytes_first: bytes.first().copied().unwrap_or(0),
                    bytes_last: bytes.last().copied().unwrap_or(0),
                    entries_first: has_entries.then(|| entries.first().copied().unwrap_or(0)),
                    entries_last: has_entries.then(|| entries.last().copied().unwrap_or(0)),
                    external_bytes_last: (key.kind == "typed_array").then(|| external.last().copied().unwrap_or(0)),
                    growth_bytes_per_s: rate,
                    verdict,
                    retained_by: self.retained_by.get(key).cloned().unwrap_or_default(),
                }
            })
            .collect();
        groups.sort_by(|a, b| {
            // A Map or Set that gains entries is growing even though its own
            // object does not (its table is another object).
            let growing = |g: &CensusGroup| {
                matches!(g.verdict, report::Verdict::Leak | report::Verdict::Growing)
                    || g.entries_last > g.entries_first
            };
            let rate = |g: &CensusGroup| {
                if growing(g) {
                    g.growth_bytes_per_s.unwrap_or(0.0)
                } else {
                    0.0
                }
            };
            growing(b)
                .cmp(&growing(a))
                .then(rate(b).total_cmp(&rate(a)))
                .then(b.bytes_last.cmp(&a.bytes_last))
                .then(a.name.cmp(&b.name))
        });
        groups.truncate(MAX_REPORTED_GROUPS);
        let mut dropped: Vec<report::DroppedCensuses> = self
            .dropped
            .iter()
            .map(|(reason, &count)| report::DroppedCensuses {
                reason: reason.clone(),
                count,
            })
            .collect();
        dropped.sort_by(|a, b| a.reason.cmp(&b.reason));
        HeapCensus {
            censuses: self.points.clone(),
            groups,
            dropped,
            unavailable: self.unavailable.clone(),
        }
    }
}

/// Groups to find retaining paths for, each with sample instances (tagged addresses).
pub type TraceTargets = Vec<(GroupKey, Vec<u64>)>;

/// The groups of `census` that grew most since the first census, by at
/// least [`MIN_TRACED_GROWTH`], with sample instances: where retaining
/// paths are looked for. Groups whose paths are known are not looked for
/// again, so that the censuses get the time.
pub fn growing(census: &Census, series: &CensusSeries) -> TraceTargets {
    if series.points.is_empty() {
        return Vec::new();
    }
    let first = series.first_counts();
    let mut grown: Vec<(u64, &GroupKey, &GroupCount)> = census
        .groups
        .iter()
        .filter(|(key, _)| key.kind != "other" && !series.retained_by.contains_key(key))
        .filter_map(|(key, count)| {
            let before = first.get(key).copied().unwrap_or(0);
            let added = count.count.checked_sub(before)? * (count.bytes / count.count.max(1));
            (added >= MIN_TRACED_GROWTH).then_some((added, key, count))
        })
        .collect();
    grown.sort_by(|a, b| (b.0, a.1).cmp(&(a.0, b.1)));
    grown
        .into_iter()
        .take(MAX_TRACED_GROUPS)
        .map(|(_, key, count)| (key.clone(), count.samples.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Verdict;

    fn key(name: &str) -> GroupKey {
        GroupKey {
            kind: "object".to_string(),
            name: name.to_string(),
            shape: Vec::new(),
            location: None,
            enclosing_function: None,
        }
    }

    /// A census holding `count` objects of 64 bytes in each named group.
    fn census(groups: &[(&str, u64)]) -> Census {
        Census {
            groups: groups
                .iter()
                .map(|&(name, count)| {
                    let count = GroupCount {
                        count,
                        bytes: 64 * count,
                        ..GroupCount::default()
                    };
                    (key(name), count)
                })
                .collect(),
            ..Census::default()
        }
    }

    fn group<'a>(report: &'a HeapCensus, name: &str) -> &'a CensusGroup {
        report.groups.iter().find(|g| g.name == name).expect("group")
    }

    /// A service that makes a full GC every 8 s, censused every second
    /// without one: a leak grows at every census; a healthy churn group
    /// holds 1000 live objects while its dead ones pile up in old space
    /// until a GC frees them, and its first census, before the load,
    /// counted none (they were young).
    fn two_full_gcs_in_twenty_seconds() -> CensusSeries {
        let mut series = CensusSeries::default();
        for t in 0..20u64 {
            let after_full_gc = t == 6 || t == 14;
            let since_gc = (t + 2) % 8;
            let churn = if t == 0 { 0 } else { 1000 + 300 * since_gc };
            series.add(t as f64, census(&[("Leak", 50 * t), ("Churn", churn)]), after_full_gc);
        }
        series
    }

    #[test]
    fn garbage_counted_without_a_full_gc_is_never_growth() {
        let series = two_full_gcs_in_twenty_seconds();
        // Judged as they were counted, the dead objects would grow.
        let raw: Vec<u64> = series.groups[&key("Churn")].iter().map(|(_, c)| c.bytes).collect();
        let t_s: Vec<f64> = series.points.iter().map(|p| p.t_s).collect();
        let policy = GrowthPolicy::default();
        assert_eq!(
            analyze::analyze_totals(&t_s[6..14], &raw[6..14], &policy).1,
            Verdict::Growing
        );
        let report = series.report(&policy);
        let churn = group(&report, "Churn");
        assert_eq!(churn.verdict, Verdict::Stable, "{churn:?}");
        // Judged from the first census after a full GC to the last.
        assert_eq!((churn.count_first, churn.count_last), (1000, 1000));
        let leak = group(&report, "Leak");
        assert!(matches!(leak.verdict, Verdict::Growing | Verdict::Leak), "{leak:?}");
        assert_eq!((leak.count_first, leak.count_last), (300, 700));
        assert!((leak.growth_bytes_per_s.unwrap() - 50.0 * 64.0).abs() < 1.0, "{leak:?}");
        assert_eq!(report.censuses.iter().filter(|c| c.after_full_gc).count(), 2);
    }

    /// Garbage that piles up after the last full GC would look like growth
    /// from that census on: those censuses are not judged.
    #[test]
    fn censuses_after_the_last_full_gc_are_not_judged() {
        let mut series = CensusSeries::default();
        for t in 0..8u64 {
            let after_full_gc = t < 4;
            let churn = if after_full_gc { 1000 } else { 1000 + 500 * t };
            series.add(t as f64, census(&[("Churn", churn)]), after_full_gc);
        }
        let report = series.report(&GrowthPolicy::default());
        let churn = group(&report, "Churn");
        assert_eq!(churn.count_last, 1000);
        assert_eq!(churn.verdict, Verdict::InsufficientData, "four censuses judged");
    }

    #[test]
    fn no_verdict_without_a_census_after_a_full_gc() {
        let mut series = CensusSeries::default();
        for t in 0..10u64 {
            series.add(t as f64, census(&[("Churn", 1000 + 300 * t)]), false);
        }
        let report = series.report(&GrowthPolicy::default());
        let churn = group(&report, "Churn");
        assert_eq!(churn.verdict, Verdict::InsufficientData);
        assert_eq!(churn.growth_bytes_per_s, None);
        assert_eq!((churn.count_first, churn.count_last), (1000, 3700));
        assert_eq!(
            report::census::none_growing(&report),
            "no census followed a full GC, so none can tell growth from garbage yet"
        );
    }

    /// Paths are looked for where a group gained since the first census,
    /// not again once known.
    #[test]
    fn retaining_paths_are_looked_for_once_per_growing_group() {
        let mut series = CensusSeries::default();
        series.add(0.0, census(&[("Leak", 10), ("Flat", 500)]), false);
        let later = census(&[("Leak", 200), ("Flat", 500), ("New", 100)]);
        let names = |targets: TraceTargets| -> Vec<String> { targets.into_iter().map(|(k, _)| k.name).collect() };
        assert_eq!(names(growing(&later, &series)), ["Leak", "New"]);
        series.set_retainers(HashMap::from([(
            key("Leak"),
            vec!["(context).cache → Leak".to_string()],
        )]));
        assert_eq!(names(growing(&later, &series)), ["New"]);
    }
}
