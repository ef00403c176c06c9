//! What the Node.js/V8 hooks tell beyond allocations: garbage collections,
//! live bytes after each, and samples of JS heap allocation per stack.

use std::collections::HashMap;

use leak_common::Probe;

/// V8's GarbageCollector enum, as passed to GarbageCollectionEpilogue.
pub const MARK_COMPACTOR: u8 = 1;

/// Points kept per live-bytes series (one per GC; older ones beyond are dropped).
const MAX_GC_POINTS: usize = 4096;

#[derive(Default)]
pub struct NodeStats {
    pub minor_gcs: u64,
    pub full_gcs: u64,
    /// Time spent between GC starts and ends (pauses and their main-thread work).
    pub gc_seconds: f64,
    gc_started_at: Option<f64>,
    /// (seconds into the hunt, live bytes) after each full GC.
    pub live_after_full: Vec<(f64, u64)>,
    /// Seconds into the hunt at which each full GC started (as many as
    /// `live_after_full`): what a heap census that it overlapped must drop.
    pub full_gc_starts: Vec<f64>,
    /// Allocation samples by (probe, stack hash): (samples, bytes).
    pub samples: HashMap<(Probe, u64), (u64, u64)>,
}

impl NodeStats {
    pub fn gc_start(&mut self, t_s: f64) {
        self.gc_started_at = Some(t_s);
    }

    /// A GC ended; `collector` is V8's GarbageCollector, `live` the heap's
    /// live bytes (Heap::SizeOfObjects) at that point.
    pub fn gc_end(&mut self, t_s: f64, collector: u8, live: u64) {
        let started = self.gc_started_at.take();
        if let Some(start) = started {
            self.gc_seconds += t_s - start;
        }
        if collector == MARK_COMPACTOR {
            self.full_gcs += 1;
            if self.live_after_full.len() < MAX_GC_POINTS {
                self.live_after_full.push((t_s, live));
                self.full_gc_starts.push(started.unwrap_or(t_s));
            }
        } else {
            self.minor_gcs += 1;
        }
    }

    /// Whether a GC started and has not ended.
    pub fn gc_in_progress(&self) -> bool {
        self.gc_started_at.is_some()
    }

    /// Whether a full GC, or a GC not yet ended, started in `[from_s, to_s]`
    /// (seconds into the hunt): it may have moved objects under a reader.
    pub fn full_gc_overlapped(&self, from_s: f64, to_s: f64) -> bool {
        let within = |t: &f64| (from_s..=to_s).contains(t);
        self.gc_started_at.as_ref().is_some_and(within) || self.full_gc_starts.iter().rev().any(within)
    }

    pub fn sample(&mut self, probe: Probe, stack: u64, bytes: u64) {
        let (samples, total) = self.samples.entry((probe, stack)).or_default();
        *samples += 1;
        *total += bytes;
    }
}

/// Why an allocation sample was taken.
pub fn sample_reason(probe: Probe) -> &'static str {
    match probe {
        Probe::V8LargeObject => "large-object",
        Probe::V8MapGrow => "map-grow",
        Probe::V8ArrayGrow => "array-grow",
        _ => "young-refill",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A census from 1.0 to 2.0 s is overlapped by a full GC that started
    /// inside, or by any GC still running, not by scavenges or earlier GCs.
    #[test]
    fn full_gcs_overlap_by_their_start() {
        let mut stats = NodeStats::default();
        stats.gc_start(0.8);
        stats.gc_end(1.1, MARK_COMPACTOR, 100);
        stats.gc_start(1.5);
        stats.gc_end(1.6, 0, 100);
        assert!(!stats.full_gc_overlapped(1.0, 2.0));
        stats.gc_start(1.9);
        assert!(stats.full_gc_overlapped(1.0, 2.0));
        stats.gc_end(2.5, MARK_COMPACTOR, 100);
        assert!(stats.full_gc_overlapped(1.0, 2.0));
        assert_eq!(stats.full_gc_starts, [0.8, 1.9]);
        assert!(!stats.full_gc_overlapped(2.0, 3.0));
        assert!(!stats.full_gc_overlapped(0.0, 0.7));
    }

    #[test]
    fn counts_gcs_and_samples() {
        let mut stats = NodeStats::default();
        stats.gc_start(0.5);
        stats.gc_end(1.0, 0, 100);
        assert!((stats.gc_seconds - 0.5).abs() < 1e-9);
        stats.gc_end(2.0, MARK_COMPACTOR, 500);
        stats.gc_end(3.0, 2, 100);
        assert_eq!((stats.minor_gcs, stats.full_gcs), (2, 1));
        assert_eq!(stats.live_after_full, [(2.0, 500)]);
        stats.sample(Probe::V8LargeObject, 7, 1000);
        stats.sample(Probe::V8LargeObject, 7, 24);
        assert_eq!(stats.samples[&(Probe::V8LargeObject, 7)], (2, 1024));
        assert_eq!(sample_reason(Probe::V8YoungRefill), "young-refill");
    }
}
