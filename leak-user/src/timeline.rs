//! Samples of every site's outstanding memory, of the tracked total and of
//! the process RSS over the hunt: the input of the growth verdicts.

use std::collections::HashMap;

use crate::{
    analyze::{self, BoundedSeries, GrowthPolicy},
    heap::{Heap, Kind, SiteId},
    report::{ProcessGrowth, Series},
};

/// Points kept per series; older points are merged when it is full.
const SERIES_CAPACITY: usize = 240;
/// Points kept per site: every distinct stack has a series, so it stays
/// near 2 KiB (60 points of 32 bytes). Theil–Sen slopes need far fewer.
const SITE_SERIES_CAPACITY: usize = 60;

pub struct Timeline {
    pid: u32,
    sites: HashMap<SiteId, BoundedSeries>,
    kinds: HashMap<Kind, BoundedSeries>,
    rss: BoundedSeries,
    tracked: BoundedSeries,
    /// Kinds no longer traced (their probes were detached): their series end.
    ended: Vec<Kind>,
}

impl Timeline {
    pub fn new(pid: u32) -> Timeline {
        Timeline {
            pid,
            sites: HashMap::new(),
            kinds: HashMap::new(),
            rss: BoundedSeries::new(SERIES_CAPACITY),
            tracked: BoundedSeries::new(SERIES_CAPACITY),
            ended: Vec::new(),
        }
    }

    /// Site ids are re-issued after the target execs: the old series mean nothing.
    pub fn reset_sites(&mut self) {
        self.sites.clear();
    }

    /// `kind` is no longer traced: its sites' series and its own end here.
    pub fn end_kind(&mut self, kind: Kind) {
        self.ended.push(kind);
    }

    /// Records one sample, `t_s` seconds into the hunt. Sites that held
    /// memory before and hold none now get a zero point.
    pub fn sample(&mut self, heap: &Heap, t_s: f64) {
        let mut totals = heap.totals(u64::MAX);
        totals.retain(|&site, _| !self.ended.contains(&heap.site(site).kind));
        for (site, series) in &mut self.sites {
            if !totals.contains_key(site) && !self.ended.contains(&heap.site(*site).kind) {
                series.push(t_s, 0, 0);
            }
        }
        let mut by_kind: HashMap<Kind, (u64, u64)> = Kind::ALL.iter().map(|&k| (k, (0, 0))).collect();
        for (&site, t) in &totals {
            let series = self
                .sites
                .entry(site)
                .or_insert_with(|| BoundedSeries::new(SITE_SERIES_CAPACITY));
            series.push(t_s, t.bytes, t.allocations);
            let (bytes, allocations) = by_kind.entry(heap.site(site).kind).or_default();
            *bytes += t.bytes;
            *allocations += t.allocations;
        }
        for (kind, (bytes, allocations)) in by_kind.into_iter().filter(|(k, _)| !self.ended.contains(k)) {
            self.kinds
                .entry(kind)
                .or_insert_with(|| BoundedSeries::new(SERIES_CAPACITY))
                .push(t_s, bytes, allocations);
        }
        // Both process series are sampled together, while the process lives.
        if let Some(rss) = resident_bytes(self.pid) {
            self.rss.push(t_s, rss, 0);
            self.tracked.push(t_s, totals.values().map(|t| t.bytes).sum(), 0);
        }
    }

    /// Outstanding memory of one kind over the hunt.
    pub fn kind_series(&self, kind: Kind) -> Series {
        self.kinds.get(&kind).map(BoundedSeries::to_series).unwrap_or_default()
    }

    pub fn site_series(&self, site: SiteId) -> Option<Series> {
        self.sites.get(&site).map(BoundedSeries::to_series)
    }

    /// RSS against tracked memory, with their growth rates.
    pub fn process(&self, policy: &GrowthPolicy) -> ProcessGrowth {
        let rss = self.rss.to_series();
        let tracked = self.tracked.to_series();
        let (rss_rate, verdict) = analyze::analyze_totals(&rss.t_s, &rss.bytes, policy);
        let (tracked_rate, _) = analyze::analyze_totals(&tracked.t_s, &tracked.bytes, policy);
        ProcessGrowth {
            t_s: tracked.t_s,
            rss_bytes: rss.bytes,
            tracked_bytes: tracked.bytes,
            rss_growth_bytes_per_s: rss_rate,
            tracked_growth_bytes_per_s: tracked_rate,
            verdict: Some(verdict),
        }
    }
}

/// VmRSS from /proc/PID/status, in bytes.
fn resident_bytes(pid: u32) -> Option<u64> {
    vm_rss_bytes(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

pub(crate) fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
