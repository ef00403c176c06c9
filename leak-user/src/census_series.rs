//! The censuses of a hunt as series per group: what each group held at
//! each census, its growth and verdict, and what retains the growing ones.

use std::collections::HashMap;

use crate::analyze::{self, GrowthPolicy};
use crate::report::{self, CensusGroup, CensusPoint, HeapCensus};
use crate::v8::census::{Census, GroupCount, GroupKey};

/// Groups kept in the report: the fastest growing, then the largest.
const MAX_REPORTED_GROUPS: usize = 40;
/// Groups whose retaining paths are looked for after each census.
pub const MAX_TRACED_GROUPS: usize = 3;

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
    pub fn add(&mut self, t_s: f64, census: Census) {
        let index = self.points.len();
        self.points.push(CensusPoint {
            t_s,
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

    /// Counts per group in the last census, for the next one to compare against.
    pub fn last_counts(&self) -> HashMap<GroupKey, u64> {
        let last = self.points.len().wrapping_sub(1);
        self.groups
            .iter()
            .filter_map(|(key, series)| {
                let (index, count) = series.last()?;
                (*index == last).then(|| (key.clone(), count.count))
            })
            .collect()
    }

    pub fn report(&self, policy: &GrowthPolicy) -> HeapCensus {
        let t_s: Vec<f64> = self.points.iter().map(|p| p.t_s).collect();
        let mut groups: Vec<CensusGroup> = self
            .groups
            .iter()
            .map(|(key, series)| {
                // A group absent from a census had no objects then.
                let mut bytes = vec![0; t_s.len()];
                let mut counts = vec![0; t_s.len()];
                let mut entries = vec![0; t_s.len()];
                for (index, count) in series {
                    bytes[*index] = count.bytes;
                    counts[*index] = count.count;
                    entries[*index] = count.entries;
                }
                let (rate, verdict) = analyze::analyze_totals(&t_s, &bytes, policy);
                let last = series.last().map(|(_, c)| c);
                let in_last = series.last().is_some_and(|(i, _)| *i + 1 == t_s.len());
                let has_entries = key.kind == "map" || key.kind == "set";
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
                    external_bytes_last: (key.kind == "typed_array" && in_last)
                        .then(|| last.map_or(0, |c| c.external_bytes)),
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
            growing(b)
                .cmp(&growing(a))
                .then(
                    b.growth_bytes_per_s
                        .unwrap_or(0.0)
                        .total_cmp(&a.growth_bytes_per_s.unwrap_or(0.0)),
                )
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

/// The groups of `census` that grew most since the census before, with
/// sample instances: where retaining paths are looked for. Groups whose
/// paths are known come after the others, so that over a few censuses every
/// growing group gets its turn.
pub fn growing(census: &Census, series: &CensusSeries) -> TraceTargets {
    let previous = series.last_counts();
    if previous.is_empty() {
        return Vec::new();
    }
    let mut grown: Vec<(u64, &GroupKey, &GroupCount)> = census
        .groups
        .iter()
        .filter(|(key, _)| key.kind != "other")
        .filter_map(|(key, count)| {
            let before = previous.get(key).copied().unwrap_or(0);
            let added = count.count.checked_sub(before).filter(|&n| n > 0)?;
            Some((added * (count.bytes / count.count.max(1)), key, count))
        })
        .collect();
    let traced = |key: &GroupKey| series.retained_by.contains_key(key);
    grown.sort_by(|a, b| (traced(a.1), b.0, a.1).cmp(&(traced(b.1), a.0, b.1)));
    grown
        .into_iter()
        .take(MAX_TRACED_GROUPS)
        .map(|(_, key, count)| (key.clone(), count.samples.clone()))
        .collect()
}
