//! Growth analysis: whether a site's outstanding memory keeps growing, and how
//! fast. Pure functions over sampled series, so they are tested without a
//! target.
//!
//! A hunt samples every site's outstanding bytes into a [`BoundedSeries`]; at
//! the end [`analyze_site`] gives each site a robust growth rate (Theil–Sen)
//! and a [`Verdict`]. A cache that fills and stops holds memory too, so the
//! verdict looks at where in the hunt the growth happened and at how old the
//! surviving allocations are; it is built from medians throughout, so that one
//! garbage collection or one burst does not swing it.

use crate::report::{GrowthStats, Series, Verdict};

/// Up to this many points `theil_sen_slope` uses every pair (79,800 pairs).
const EXACT_MAX_POINTS: usize = 400;
/// Pairs sampled beyond `EXACT_MAX_POINTS`: as many as the exact case uses.
const PAIR_BUDGET: usize = EXACT_MAX_POINTS * (EXACT_MAX_POINTS - 1) / 2;
/// A window rises only if the growth its slope implies over it is at least
/// this many times the spread (interquartile range) of its samples around the
/// fitted line. Alloc/free churn (a sawtooth) can give a positive median slope
/// from the pairs inside one period, but with a few periods in the window that
/// slope stays well short of twice the churn's own spread.
const SPREAD_FACTOR: f64 = 2.0;
/// The tail has stalled when it grows at less than this share of the head's
/// rate (or at less than half the growth rate): relative, so that noise on a
/// flat tail does not read as growth.
const STALL_RATIO: f64 = 1.0 / 3.0;

/// Theil–Sen slope (median of pairwise slopes) of (t, y); None with < 2 distinct t.
///
/// Points with a non-finite coordinate are ignored, as are values beyond the
/// shorter slice. Up to 400 points every pair is used. Beyond that the pairs
/// are subsampled deterministically to about 80,000 (cost O(n log n) plus the
/// pairs): with the points sorted by t, all pairs (i, i + k) are taken for lags
/// k spread evenly over 1..n-1. Each lag keeps all of its n - k pairs, so the
/// sample has the same mix of short and long baselines as the full set, and
/// any lag yields a pair with distinct t unless all t are equal, so None keeps
/// its meaning.
pub fn theil_sen_slope(t: &[f64], y: &[f64]) -> Option<f64> {
    let mut points: Vec<(f64, f64)> = t
        .iter()
        .zip(y)
        .map(|(&t, &y)| (t, y))
        .filter(|(t, y)| t.is_finite() && y.is_finite())
        .collect();
    let n = points.len();
    let slope = |(ti, yi): (f64, f64), (tj, yj): (f64, f64)| (tj != ti).then(|| (yj - yi) / (tj - ti));
    let mut slopes = Vec::new();
    if n <= EXACT_MAX_POINTS {
        for (i, &a) in points.iter().enumerate() {
            slopes.extend(points[i + 1..].iter().filter_map(|&b| slope(a, b)));
        }
    } else {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        for lag in sampled_lags(n) {
            slopes.extend(points.iter().zip(&points[lag..]).filter_map(|(&a, &b)| slope(a, b)));
        }
    }
    median_in_place(&mut slopes)
}

/// `m` distinct lags spread evenly over 1..=n-1 (n > EXACT_MAX_POINTS): the
/// midpoints of m equal strata, so that a small m leaves out the noisiest
/// (shortest) lags rather than giving lag 1 and its n-1 pairs a whole stratum.
/// m is chosen so that the pairs (about n/2 per lag) number about `PAIR_BUDGET`.
fn sampled_lags(n: usize) -> impl Iterator<Item = usize> {
    let m = (2 * PAIR_BUDGET / n).clamp(1, n - 2);
    // Steps of (n-2)/m >= 1, so the truncated lags are distinct.
    (0..m).map(move |j| 1 + (2 * j + 1) * (n - 2) / (2 * m))
}

/// Thresholds for the verdicts. `Default` gives the values documented on each field.
///
/// Growth is judged relative to size: over a series spanning `span` seconds
/// with median level `level`, the growth threshold is
/// `floor = max(min_growth_bytes, min_growth_fraction × level)` bytes, and a
/// slope counts as growth when it is at least
/// `rate = max(min_rate_bytes_per_s, floor / span)`, i.e. when it would add
/// `floor` over the series. See [`analyze_site`] for the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthPolicy {
    /// Fewer samples give `InsufficientData`. Default 5.
    pub min_samples: usize,
    /// A shorter span (last sample time − first) gives `InsufficientData`. Default 3.0 s.
    pub min_span_s: f64,
    /// Slopes below this always count as flat. Default 1.0 byte/s.
    pub min_rate_bytes_per_s: f64,
    /// Absolute floor of the growth over the series that counts. Default 4096 bytes.
    pub min_growth_bytes: f64,
    /// Relative floor of that growth, as a share of the median level. Default 0.10.
    pub min_growth_fraction: f64,
    /// The tail, checked for a plateau or for recent growth: this last share of
    /// the span, in (0, 1). Default 0.4.
    pub tail_fraction: f64,
    /// The tail is judged only with at least this many samples. Default 3.
    pub min_tail_samples: usize,
    /// `Leak` needs at least this share of the non-zero steps to be rises. Default 0.5.
    pub min_share_rising: f64,
    /// `Leak` needs the median age of the survivors to be at least this share
    /// of the hunt. Default 0.25.
    pub min_age_fraction: f64,
}

impl Default for GrowthPolicy {
    fn default() -> Self {
        GrowthPolicy {
            min_samples: 5,
            min_span_s: 3.0,
            min_rate_bytes_per_s: 1.0,
            min_growth_bytes: 4096.0,
            min_growth_fraction: 0.10,
            tail_fraction: 0.4,
            min_tail_samples: 3,
            min_share_rising: 0.5,
            min_age_fraction: 0.25,
        }
    }
}

/// The growth of one site: what the report's `growth_bytes_per_s`, `verdict`
/// and `growth` fields hold.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteGrowth {
    /// Theil–Sen slope of the whole series; None with < 2 distinct sample times.
    pub slope_bytes_per_s: Option<f64>,
    pub verdict: Verdict,
    pub stats: GrowthStats,
}

/// Verdict for one series. `ages_s`: ages in seconds of the site's surviving
/// allocations at the end of the hunt; `hunt_s`: the hunt's duration (the
/// series span is used when it is not positive).
///
/// When `ages_s` is empty (ages unknown) the age condition is skipped and
/// `Leak` cannot be given: steady growth is then `Growing`.
///
/// With `floor` and `rate` as in [`GrowthPolicy`], a window of the series
/// *rises* when its Theil–Sen slope is ≥ `rate` (and > 0) and the growth that
/// slope implies over the window is at least twice the interquartile range of
/// the samples around the fitted line (growth, not churn or noise). The windows
/// are the whole series, the first and second halves (split at mid-span), the
/// tail (last `tail_fraction` of the span, judged only with ≥
/// `min_tail_samples` samples) and the head (before the tail). Then, in order:
///
/// 1. `InsufficientData`: fewer than `min_samples` samples or span < `min_span_s`.
/// 2. `Stable`: neither the whole nor the head rises, and the tail shows no
///    recent growth (tail rises, grows by ≥ `floor` itself, and the median of
///    its last third is above the head's 90th percentile: new highs).
/// 3. `Plateau`: the whole or the head rose but the tail has stalled (its
///    slope is below `rate / 2` or below a third of the head's slope; falling
///    counts) while its median is still ≥ `floor` above the median of the first
///    third of the series: a cache that filled. If the memory was handed back
///    (less than `floor` above), `Stable`.
/// 4. `Leak`: the whole rises, both halves have slopes ≥ `rate`, at least
///    `min_share_rising` of the non-zero steps are rises, and the median age
///    of the survivors is ≥ `min_age_fraction` × hunt: steady growth by
///    memory allocated early and still held.
/// 5. `Growing`: any other growth (young survivors, unknown ages, growth only
///    in part of the hunt, mostly falling steps).
///
/// Everything is a median or a quartile, so one burst or one garbage
/// collection does not swing it.
///
/// Stats: `share_rising` = rises / non-zero steps between consecutive samples
/// (zero steps are ignored so that idle stretches do not dilute it; 0 when all
/// steps are zero), `net_growth_bytes` = last − first sample, `age_p50_s` and
/// `age_p90_s` interpolated between the sorted ages (0 when there are none).
pub fn analyze_site(series: &Series, ages_s: &[f64], hunt_s: f64, policy: &GrowthPolicy) -> SiteGrowth {
    let samples = Samples::new(&series.t_s, &series.bytes);
    let mut ages: Vec<f64> = ages_s.iter().copied().filter(|a| a.is_finite()).collect();
    ages.sort_by(f64::total_cmp);
    let age_p50 = (!ages.is_empty()).then(|| percentile(&ages, 0.5));
    let share_rising = samples.share_rising();
    let all = Trend::of(&samples.t, &samples.y);
    SiteGrowth {
        slope_bytes_per_s: all.map(|w| w.slope),
        verdict: samples.verdict(all, share_rising, age_p50, hunt_s, policy),
        stats: GrowthStats {
            share_rising,
            net_growth_bytes: samples.net_growth(),
            age_p50_s: age_p50.unwrap_or(0.0),
            age_p90_s: percentile(&ages, 0.9),
        },
    }
}

/// Process-level verdict for RSS or tracked totals (same rules, no ages).
///
/// Without ages `Leak` is never given: steady growth is `Growing`, since the
/// totals alone cannot tell a leak from a cache that is still filling.
pub fn analyze_totals(t_s: &[f64], bytes: &[u64], policy: &GrowthPolicy) -> (Option<f64>, Verdict) {
    let samples = Samples::new(t_s, bytes);
    let all = Trend::of(&samples.t, &samples.y);
    (
        all.map(|w| w.slope),
        samples.verdict(all, samples.share_rising(), None, 0.0, policy),
    )
}

/// A series as sorted (t, bytes) columns, without non-finite times.
struct Samples {
    t: Vec<f64>,
    y: Vec<f64>,
}

impl Samples {
    fn new(t_s: &[f64], bytes: &[u64]) -> Samples {
        let mut points: Vec<(f64, f64)> = t_s
            .iter()
            .zip(bytes)
            .filter(|(t, _)| t.is_finite())
            .map(|(&t, &b)| (t, b as f64))
            .collect();
        // Stable: samples taken at the same time keep their order.
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (t, y) = points.into_iter().unzip();
        Samples { t, y }
    }

    fn share_rising(&self) -> f64 {
        let steps = self.y.windows(2).map(|w| w[1] - w[0]).filter(|d| *d != 0.0);
        let (rises, moves) = steps.fold((0, 0), |(r, m), d| (r + usize::from(d > 0.0), m + 1));
        if moves == 0 {
            0.0
        } else {
            rises as f64 / moves as f64
        }
    }

    fn net_growth(&self) -> i64 {
        match (self.y.first(), self.y.last()) {
            (Some(first), Some(last)) => (last - first) as i64,
            _ => 0,
        }
    }

    /// Samples with `from <= t < to` (`to_inclusive`: `t <= to`), as a contiguous slice.
    fn window(&self, from: f64, to: f64, to_inclusive: bool) -> (&[f64], &[f64]) {
        let start = self.t.partition_point(|&t| t < from);
        let end = self.t.partition_point(|&t| if to_inclusive { t <= to } else { t < to });
        let end = end.max(start);
        (&self.t[start..end], &self.y[start..end])
    }

    /// `all`: the trend of the whole series.
    fn verdict(
        &self,
        all: Option<Trend>,
        share_rising: f64,
        age_p50_s: Option<f64>,
        hunt_s: f64,
        policy: &GrowthPolicy,
    ) -> Verdict {
        let (t, y) = (&self.t, &self.y);
        let n = t.len();
        let span = if n > 0 { t[n - 1] - t[0] } else { 0.0 };
        if n < policy.min_samples || span < policy.min_span_s {
            return Verdict::InsufficientData;
        }
        // None only when all samples share one time (min_span_s <= 0).
        let Some(all) = all else {
            return Verdict::InsufficientData;
        };
        let floor = policy.min_growth_bytes.max(policy.min_growth_fraction * median(y));
        let rate = policy.min_rate_bytes_per_s.max(floor / span);
        let (t0, t_end) = (t[0], t[n - 1]);
        let tail_start = t0 + (1.0 - policy.tail_fraction) * span;
        let mid = t0 + span / 2.0;

        let (head_t, head_y) = self.window(t0, tail_start, false);
        let (tail_t, tail_y) = self.window(tail_start, t_end, true);
        let head = Trend::of(head_t, head_y);
        let tail = if tail_t.len() >= policy.min_tail_samples {
            Trend::of(tail_t, tail_y)
        } else {
            None
        };

        let grew = all.rises(rate) || head.is_some_and(|w| w.rises(rate));
        let recent = tail.is_some_and(|w| {
            let mut head_sorted = head_y.to_vec();
            head_sorted.sort_by(f64::total_cmp);
            w.rises(rate) && w.slope * w.span_s >= floor && w.end_level > percentile(&head_sorted, 0.9)
        });
        if !grew && !recent {
            return Verdict::Stable;
        }
        let stall_below = (rate / 2.0).max(STALL_RATIO * head.map_or(0.0, |w| w.slope));
        if grew && tail.is_some_and(|w| w.slope < stall_below) {
            return if median(tail_y) - all.start_level >= floor {
                Verdict::Plateau
            } else {
                Verdict::Stable
            };
        }

        let half_grows = |(t, y): (&[f64], &[f64])| theil_sen_slope(t, y).is_some_and(|s| s >= rate);
        let steady = all.rises(rate)
            && half_grows(self.window(t0, mid, true))
            && half_grows(self.window(mid, t_end, true))
            && share_rising >= policy.min_share_rising;
        let hunt = if hunt_s > 0.0 { hunt_s } else { span };
        let old = age_p50_s.is_some_and(|p50| p50 >= policy.min_age_fraction * hunt);
        if steady && old {
            Verdict::Leak
        } else {
            Verdict::Growing
        }
    }
}

/// The trend of a window of sorted samples.
#[derive(Clone, Copy)]
struct Trend {
    slope: f64,
    span_s: f64,
    /// Interquartile range of the residuals around the fitted line.
    spread: f64,
    /// Medians of the first and last thirds (by time) of the window.
    start_level: f64,
    end_level: f64,
}

impl Trend {
    fn of(t: &[f64], y: &[f64]) -> Option<Trend> {
        let slope = theil_sen_slope(t, y)?;
        let (t0, t_end) = (t[0], t[t.len() - 1]);
        let third = (t_end - t0) / 3.0;
        let first = t.partition_point(|&x| x <= t0 + third);
        let last = t.partition_point(|&x| x < t_end - third);
        let mut residuals: Vec<f64> = t.iter().zip(y).map(|(t, y)| y - slope * t).collect();
        residuals.sort_by(f64::total_cmp);
        Some(Trend {
            slope,
            start_level: median(&y[..first]),
            end_level: median(&y[last..]),
            span_s: t_end - t0,
            spread: percentile(&residuals, 0.75) - percentile(&residuals, 0.25),
        })
    }

    fn rises(&self, rate: f64) -> bool {
        self.slope > 0.0 && self.slope >= rate && self.slope * self.span_s >= SPREAD_FACTOR * self.spread
    }
}

/// Median of unsorted values; 0 when empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5)
}

/// Percentile `q` in [0, 1] of sorted values, interpolated between the two
/// nearest ranks; 0 when empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Median by selection (O(n)), reordering `values`; None when empty.
fn median_in_place(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let (lower, &mut upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        return Some(upper);
    }
    let below = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((below + upper) / 2.0)
}

/// Bounded series: keeps at most `capacity` points by merging (downsampling)
/// old points when full, always keeping the first and the latest sample;
/// pushing is O(1) amortized.
///
/// Between the first and the latest sample, each stored point is the mean (of
/// time, bytes and allocations) of `stride` consecutive samples, plus one
/// partial point for the samples since the last full one. When the points
/// overflow, neighbours are merged pairwise and `stride` doubles: O(capacity)
/// work once per ~capacity/2 pushes. Every point standing for the same number
/// of samples keeps the density of points over time that of the sampling (the
/// sampler runs at a fixed interval), which the pairwise slopes rely on; and
/// means of points on a line stay on it, so a linear series keeps its slope.
/// Samples are expected in time order.
#[derive(Clone, Debug)]
pub struct BoundedSeries {
    capacity: usize,
    first: Option<Bucket>,
    /// Full points, `stride` samples each, oldest first.
    merged: Vec<Bucket>,
    /// Fewer than `stride` samples, after `merged`.
    pending: Bucket,
    stride: u32,
    latest: Option<Bucket>,
}

/// Sums over some consecutive samples. 32 bytes: every site keeps a series
/// of them. (A u64 sum overflows only past 2^64 bytes-samples: 2^47 bytes,
/// the whole address space, held for 2^17 samples in one point.)
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    t_sum: f64,
    bytes_sum: u64,
    allocations_sum: u64,
    count: u32,
}

impl Bucket {
    fn add(&mut self, other: &Bucket) {
        self.t_sum += other.t_sum;
        self.bytes_sum = self.bytes_sum.saturating_add(other.bytes_sum);
        self.allocations_sum = self.allocations_sum.saturating_add(other.allocations_sum);
        self.count = self.count.saturating_add(other.count);
    }

    /// Mean time, and bytes and allocations rounded to the nearest integer.
    fn mean(&self) -> (f64, u64, u64) {
        let n = u128::from(self.count);
        let round = |sum: u64| ((u128::from(sum) + n / 2) / n) as u64;
        (
            self.t_sum / self.count as f64,
            round(self.bytes_sum),
            round(self.allocations_sum),
        )
    }
}

impl BoundedSeries {
    /// `capacity` below 3 (first, one merged point, latest) is raised to 3.
    pub fn new(capacity: usize) -> Self {
        BoundedSeries {
            capacity: capacity.max(3),
            first: None,
            merged: Vec::new(),
            pending: Bucket::default(),
            stride: 1,
            latest: None,
        }
    }

    pub fn push(&mut self, t_s: f64, bytes: u64, allocations: u64) {
        let sample = Bucket {
            t_sum: t_s,
            bytes_sum: bytes,
            allocations_sum: allocations,
            count: 1,
        };
        if self.first.is_none() {
            self.first = Some(sample);
            return;
        }
        let Some(previous) = self.latest.replace(sample) else {
            return;
        };
        self.pending.add(&previous);
        if self.pending.count == self.stride {
            self.merged.push(std::mem::take(&mut self.pending));
        }
        // Each push adds at most one point, so one merge brings it back under.
        if self.len() > self.capacity {
            self.merge_pairs();
        }
    }

    fn merge_pairs(&mut self) {
        // An odd last point joins the pending one (it precedes it in time):
        // stride + (< stride) samples, fewer than the doubled stride.
        let odd = self.merged.len() % 2 == 1;
        if let Some(mut last) = self.merged.pop_if(|_| odd) {
            last.add(&self.pending);
            self.pending = last;
        }
        let pairs = self.merged.len() / 2;
        for i in 0..pairs {
            let mut pair = self.merged[2 * i];
            pair.add(&self.merged[2 * i + 1]);
            self.merged[i] = pair;
        }
        self.merged.truncate(pairs);
        self.stride = self.stride.saturating_mul(2);
    }

    pub fn to_series(&self) -> Series {
        let partial = (self.pending.count > 0).then_some(&self.pending);
        let points = self.first.iter().chain(&self.merged).chain(partial).chain(&self.latest);
        let mut series = Series::default();
        for (t, bytes, allocations) in points.map(Bucket::mean) {
            series.t_s.push(t);
            series.bytes.push(bytes);
            series.allocations.push(allocations);
        }
        series
    }

    /// Points `to_series` returns.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some())
            + self.merged.len()
            + usize::from(self.pending.count > 0)
            + usize::from(self.latest.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: f64 = 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    /// Samples every 2 s for 120 s, as a hunt with the default interval would.
    const N: usize = 60;
    const DT: f64 = 2.0;
    const HUNT: f64 = N as f64 * DT;

    /// Deterministic uniform noise in [-1, 1] (xorshift64).
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    /// A series sampled every `DT` seconds from `level(i)`.
    fn sampled(mut level: impl FnMut(usize) -> f64) -> Series {
        let mut series = Series::default();
        for i in 0..N {
            series.t_s.push(i as f64 * DT);
            series.bytes.push(level(i).max(0.0).round() as u64);
            series.allocations.push(i as u64);
        }
        series
    }

    /// Survivors allocated evenly over the hunt: what a steady leak leaves.
    fn old_ages() -> Vec<f64> {
        (0..100).map(|i| i as f64 * HUNT / 100.0).collect()
    }

    fn verdict(series: &Series) -> Verdict {
        analyze_site(series, &old_ages(), HUNT, &GrowthPolicy::default()).verdict
    }

    /// 1 MiB growing by 10 KiB/s, with ±2 KiB of noise (a step is 20 KiB).
    fn steady_leak(i: usize) -> f64 {
        MIB + 10.0 * KIB * i as f64 * DT
    }

    fn least_squares_slope(t: &[f64], y: &[u64]) -> f64 {
        let n = t.len() as f64;
        let (mt, my) = (t.iter().sum::<f64>() / n, y.iter().map(|&y| y as f64).sum::<f64>() / n);
        let cov: f64 = t.iter().zip(y).map(|(t, &y)| (t - mt) * (y as f64 - my)).sum();
        cov / t.iter().map(|t| (t - mt) * (t - mt)).sum::<f64>()
    }

    #[test]
    fn theil_sen_needs_two_distinct_times() {
        assert_eq!(theil_sen_slope(&[], &[]), None);
        assert_eq!(theil_sen_slope(&[1.0], &[5.0]), None);
        assert_eq!(theil_sen_slope(&[2.0, 2.0, 2.0], &[1.0, 5.0, 9.0]), None);
        // Non-finite points do not count.
        assert_eq!(theil_sen_slope(&[1.0, f64::NAN], &[5.0, 6.0]), None);
        assert_eq!(theil_sen_slope(&[0.0, 1.0, 2.0], &[f64::INFINITY, 3.0, 5.0]), Some(2.0));
    }

    #[test]
    fn theil_sen_of_constant_data_is_zero() {
        let t: Vec<f64> = (0..50).map(f64::from).collect();
        assert_eq!(theil_sen_slope(&t, &[7.0; 50]), Some(0.0));
        // Subsampled too.
        let t: Vec<f64> = (0..2000).map(f64::from).collect();
        assert_eq!(theil_sen_slope(&t, &[7.0; 2000]), Some(0.0));
    }

    #[test]
    fn theil_sen_ignores_a_quarter_of_outliers() {
        let outlier = |i: usize| if i % 4 == 1 { 1e9 } else { 0.0 };
        for n in [40, 5000] {
            let t: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
            let y: Vec<f64> = (0..n).map(|i| 100.0 + 3.0 * (i as f64 * 0.5) + outlier(i)).collect();
            let slope = theil_sen_slope(&t, &y).unwrap();
            assert!((slope - 3.0).abs() < 0.03, "n={n}: {slope}");
        }
    }

    #[test]
    fn theil_sen_subsampling_finds_the_one_distinct_time() {
        // Sampled pairs keep None meaning "all t equal", in any input order.
        let mut t = vec![5.0; 1000];
        t[0] = 6.0;
        let mut y = vec![0.0; 1000];
        y[0] = 10.0;
        assert_eq!(theil_sen_slope(&t, &y), Some(10.0));
        let lags: Vec<usize> = sampled_lags(401).collect();
        assert!(lags.len() == 398 && lags.windows(2).all(|w| w[0] < w[1]) && lags[397] <= 400);
        assert_eq!(sampled_lags(1_000_000).collect::<Vec<_>>(), [500_000]);
    }

    #[test]
    fn steady_leak_is_a_leak_with_its_slope() {
        let mut noise = Noise(1);
        let series = sampled(|i| steady_leak(i) + 2.0 * KIB * noise.next());
        let growth = analyze_site(&series, &old_ages(), HUNT, &GrowthPolicy::default());
        assert_eq!(growth.verdict, Verdict::Leak);
        let slope = growth.slope_bytes_per_s.unwrap();
        assert!((slope / (10.0 * KIB) - 1.0).abs() < 0.05, "{slope}");
        assert!(growth.stats.share_rising > 0.9);
        assert!(growth.stats.net_growth_bytes > (110.0 * 10.0 * KIB) as i64);
        assert_eq!(growth.stats.age_p50_s, 59.4);
    }

    #[test]
    fn rise_then_flat_is_a_plateau() {
        let mut noise = Noise(2);
        let series = sampled(|i| MIB + 20.0 * KIB * (i.min(N / 2) as f64 * DT) + 2.0 * KIB * noise.next());
        assert_eq!(verdict(&series), Verdict::Plateau);
    }

    #[test]
    fn filled_then_emptied_is_stable() {
        // Up for half the hunt, back down within a tenth, then flat at the start.
        let series = sampled(|i| match i {
            0..30 => MIB + 20.0 * KIB * (i as f64 * DT),
            30..36 => MIB + 20.0 * KIB * ((60 - 5 * (i - 30)) as f64 * DT),
            _ => MIB,
        });
        assert_eq!(verdict(&series), Verdict::Stable);
    }

    #[test]
    fn alloc_free_churn_is_stable() {
        // 0..X..0 repeating, whatever the period.
        for period in [4, 6, 10, 15, 20] {
            let triangle = sampled(|i| {
                let phase = (i % period) as f64 / period as f64;
                MIB * (1.0 - (2.0 * phase - 1.0).abs())
            });
            assert_eq!(verdict(&triangle), Verdict::Stable, "triangle, period {period}");
        }
        // Allocate step by step, free everything at once: most steps rise.
        for period in [4, 6, 10, 15] {
            let ramp = sampled(|i| MIB * (i % period) as f64);
            assert_eq!(verdict(&ramp), Verdict::Stable, "ramp, period {period}");
        }
    }

    #[test]
    fn one_burst_on_a_flat_line_is_stable() {
        let mut noise = Noise(3);
        let series = sampled(|i| {
            if i == N / 2 {
                50.0 * MIB
            } else {
                MIB + 2.0 * KIB * noise.next()
            }
        });
        assert_eq!(verdict(&series), Verdict::Stable);
    }

    #[test]
    fn one_gc_drop_leaves_a_leak_and_its_slope() {
        // At 70% of the hunt a collection hands back 180 KiB for good.
        let mut noise = Noise(4);
        let drop = 0.15 * 10.0 * KIB * HUNT;
        let series = sampled(|i| steady_leak(i) + 2.0 * KIB * noise.next() - if i >= 42 { drop } else { 0.0 });
        let growth = analyze_site(&series, &old_ages(), HUNT, &GrowthPolicy::default());
        assert_eq!(growth.verdict, Verdict::Leak);
        let robust = growth.slope_bytes_per_s.unwrap() / (10.0 * KIB) - 1.0;
        let least_squares = least_squares_slope(&series.t_s, &series.bytes) / (10.0 * KIB) - 1.0;
        assert!(robust.abs() < 0.05, "Theil–Sen off by {robust}");
        assert!(least_squares < -0.15, "least squares off by {least_squares}");
    }

    #[test]
    fn too_few_or_too_short_is_insufficient() {
        let short = Series {
            t_s: vec![0.0, 2.0, 4.0, 6.0],
            bytes: vec![0, 1 << 20, 2 << 20, 3 << 20],
            allocations: vec![0; 4],
        };
        assert_eq!(verdict(&short), Verdict::InsufficientData);
        let brief = Series {
            t_s: (0..20).map(|i| f64::from(i) * 0.1).collect(),
            bytes: (0..20).map(|i| i << 20).collect(),
            allocations: vec![0; 20],
        };
        let growth = analyze_site(&brief, &old_ages(), HUNT, &GrowthPolicy::default());
        assert_eq!(growth.verdict, Verdict::InsufficientData);
        // The slope is still reported.
        assert_eq!(growth.slope_bytes_per_s, Some(10.0 * MIB));
    }

    #[test]
    fn growth_only_at_the_end_is_growing() {
        // Flat for 80% of the hunt, then +1 MiB.
        let mut noise = Noise(5);
        let series = sampled(|i| MIB + MIB * (i.saturating_sub(48) as f64 / 12.0) + 2.0 * KIB * noise.next());
        assert_eq!(verdict(&series), Verdict::Growing);
    }

    #[test]
    fn steady_growth_of_young_survivors_is_growing() {
        let mut noise = Noise(6);
        let series = sampled(|i| steady_leak(i) + 2.0 * KIB * noise.next());
        let young: Vec<f64> = (0..100).map(|i| f64::from(i) * 0.02).collect();
        let policy = GrowthPolicy::default();
        assert_eq!(analyze_site(&series, &young, HUNT, &policy).verdict, Verdict::Growing);
        // Unknown ages cannot make a leak either.
        assert_eq!(analyze_site(&series, &[], HUNT, &policy).verdict, Verdict::Growing);
    }

    #[test]
    fn totals_use_the_same_rules_without_ages() {
        let policy = GrowthPolicy::default();
        let t: Vec<f64> = (0..N).map(|i| i as f64 * DT).collect();
        let growing: Vec<u64> = (0..N).map(|i| steady_leak(i) as u64).collect();
        let (slope, verdict) = analyze_totals(&t, &growing, &policy);
        assert_eq!((slope, verdict), (Some(10.0 * KIB), Verdict::Growing));
        assert_eq!(
            analyze_totals(&t, &[MIB as u64; N], &policy),
            (Some(0.0), Verdict::Stable)
        );
        assert_eq!(
            analyze_totals(&t[..3], &growing[..3], &policy).1,
            Verdict::InsufficientData
        );
    }

    #[test]
    fn stats_ignore_zero_steps() {
        let series = Series {
            t_s: (0..6).map(f64::from).collect(),
            bytes: vec![10, 10, 20, 15, 15, 30],
            allocations: vec![0; 6],
        };
        let ages: Vec<f64> = (1..=10).map(f64::from).collect();
        let stats = analyze_site(&series, &ages, 6.0, &GrowthPolicy::default()).stats;
        assert_eq!(stats.share_rising, 2.0 / 3.0);
        assert_eq!(stats.net_growth_bytes, 20);
        assert_eq!((stats.age_p50_s, stats.age_p90_s), (5.5, 9.1));
        let none = analyze_site(&series, &[], 6.0, &GrowthPolicy::default()).stats;
        assert_eq!((none.age_p50_s, none.age_p90_s), (0.0, 0.0));
    }

    #[test]
    fn bounded_series_keeps_first_latest_and_capacity() {
        let mut bounded = BoundedSeries::new(16);
        assert!(bounded.is_empty());
        for i in 0..1000u64 {
            bounded.push(i as f64, i * i, i);
            let series = bounded.to_series();
            assert!(bounded.len() <= 16);
            assert_eq!(series.t_s.len(), bounded.len());
            assert_eq!((series.t_s[0], series.bytes[0]), (0.0, 0));
            assert_eq!(
                (*series.t_s.last().unwrap(), *series.bytes.last().unwrap()),
                (i as f64, i * i)
            );
            assert!(series.t_s.windows(2).all(|w| w[0] < w[1]));
        }
        assert!(!bounded.is_empty());
        assert!(bounded.len() >= 8, "merging halves, so at least half stays filled");
        // The smallest capacity still holds a middle point.
        let mut tiny = BoundedSeries::new(0);
        for i in 0..100 {
            tiny.push(f64::from(i), 0, 0);
            assert!(tiny.len() <= 3);
        }
        assert_eq!(tiny.to_series().t_s, [0.0, 49.5, 99.0]);
    }

    #[test]
    fn downsampling_preserves_a_linear_slope() {
        let mut bounded = BoundedSeries::new(64);
        for i in 0..10_000u64 {
            bounded.push(i as f64 * 0.5, 1000 + 37 * i, 3 * i);
        }
        let series = bounded.to_series();
        assert!(series.t_s.len() <= 64);
        // Means of points on a line lie on it (bytes rounded to whole bytes).
        for (t, b) in series.t_s.iter().zip(&series.bytes) {
            assert!((*b as f64 - (1000.0 + 74.0 * t)).abs() <= 0.5, "{t} {b}");
        }
        let slope = theil_sen_slope(&series.t_s, &series.bytes.iter().map(|&b| b as f64).collect::<Vec<_>>());
        assert!((slope.unwrap() - 74.0).abs() < 0.01);
    }

    #[test]
    fn a_long_hunt_downsampled_still_shows_the_leak() {
        // An hour sampled every 0.5 s: 1 KiB/s under ±8 KiB of churn.
        let mut noise = Noise(7);
        let mut bounded = BoundedSeries::new(256);
        for i in 0..7200u64 {
            let t = i as f64 * 0.5;
            bounded.push(t, (MIB + KIB * t + 8.0 * KIB * noise.next()) as u64, i);
        }
        let ages: Vec<f64> = (0..1000).map(|i| f64::from(i) * 3.6).collect();
        let growth = analyze_site(&bounded.to_series(), &ages, 3600.0, &GrowthPolicy::default());
        assert_eq!(growth.verdict, Verdict::Leak);
        assert!((growth.slope_bytes_per_s.unwrap() / KIB - 1.0).abs() < 0.01);
    }
}
