//! Alert rules: a growth rate sustained over a window, and memory near its
//! limit. Pure logic, driven by the samples of tier 1.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{analyze::theil_sen_slope, cli::RuleArgs};

/// The part of the window a series must span before its rate is judged
/// (a little slack for the first samples, taken on a timer).
const WINDOW_COVERED: f64 = 0.95;
/// Samples per window that the rate is fitted to, at most (Theil–Sen takes
/// every pair: 120 points are 7,140 slopes).
const MAX_FIT_POINTS: usize = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    GrowthRate,
    MemoryLimit,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::GrowthRate => "growth-rate",
            Rule::MemoryLimit => "memory-limit",
        }
    }
}

/// A rule that holds now.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub rule: Rule,
    pub severity: Severity,
    pub message: String,
}

/// Anonymous memory over time, kept for one window.
#[derive(Clone, Debug, Default)]
pub struct GrowthSeries {
    points: VecDeque<(f64, f64)>,
}

impl GrowthSeries {
    /// Adds a sample at `t_s` seconds and forgets the samples before the
    /// window, except the last of them: with samples on a jittery timer, the
    /// series then always spans the whole window.
    /// Past `MAX_FIT_POINTS` per window the newest sample replaces the
    /// previous one instead of adding to the series: the fit, done every
    /// round, costs the same at any --interval.
    pub fn push(&mut self, t_s: f64, bytes: u64, window_s: f64) {
        let spacing = window_s / MAX_FIT_POINTS as f64;
        // The newest point stays provisional until it is `spacing` past the one before.
        let len = self.points.len();
        if len >= 2 && self.points[len - 1].0 - self.points[len - 2].0 < spacing {
            self.points.pop_back();
        }
        self.points.push_back((t_s, bytes as f64));
        while self.points.get(1).is_some_and(|&(t, _)| t <= t_s - window_s) {
            self.points.pop_front();
        }
    }

    /// The robust (Theil–Sen) growth rate in bytes/s over the window; None
    /// until the samples span nearly all of it, so that a burst at start-up
    /// cannot pass for sustained growth.
    pub fn rate(&self, window_s: f64) -> Option<f64> {
        let (first, last) = (self.points.front()?.0, self.points.back()?.0);
        if last - first < WINDOW_COVERED * window_s {
            return None;
        }
        let (t, y): (Vec<f64>, Vec<f64>) = self.points.iter().copied().unzip();
        theil_sen_slope(&t, &y)
    }
}

/// Judges a rate (bytes/s) and the use of the memory limit (a fraction).
pub fn evaluate(rules: &RuleArgs, rate: Option<f64>, limit_ratio: f64) -> Vec<Finding> {
    let mut findings = Vec::new();
    let over = |value: f64, warning: f64, critical: f64| {
        if value >= critical {
            Some(Severity::Critical)
        } else if value >= warning {
            Some(Severity::Warning)
        } else {
            None
        }
    };
    if let Some(rate) = rate {
        if let Some(severity) = over(rate, rules.warn_rate, rules.crit_rate) {
            findings.push(Finding {
                rule: Rule::GrowthRate,
                severity,
                message: format!(
                    "anonymous memory grew {}/s over the last {:.0} s (threshold {}/s)",
                    human_rate(rate),
                    rules.window.as_secs_f64(),
                    human_rate(if severity == Severity::Critical {
                        rules.crit_rate
                    } else {
                        rules.warn_rate
                    })
                ),
            });
        }
    }
    let percent = limit_ratio * 100.0;
    if let Some(severity) = over(percent, rules.warn_limit, rules.crit_limit) {
        findings.push(Finding {
            rule: Rule::MemoryLimit,
            severity,
            message: format!("memory use is {percent:.1}% of its limit"),
        });
    }
    findings
}

fn human_rate(bytes_per_s: f64) -> String {
    crate::report::human_bytes(bytes_per_s.max(0.0).round() as u64)
}

/// Rate limit of notifications: one per (process, rule, severity) per period.
pub struct Throttle {
    period: Duration,
    last_sent: HashMap<(u32, Rule, Severity), Instant>,
}

impl Throttle {
    pub fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            last_sent: HashMap::new(),
        }
    }

    /// Whether an alert may go out now; if so, it counts as sent.
    pub fn admit(&mut self, pid: u32, finding: &Finding, now: Instant) -> bool {
        let key = (pid, finding.rule, finding.severity);
        match self.last_sent.get(&key) {
            Some(&at) if now.duration_since(at) < self.period => false,
            _ => {
                self.last_sent.insert(key, now);
                true
            }
        }
    }

    /// Forgets a process that is gone (its PID may come back as another).
    pub fn forget(&mut self, pid: u32) {
        self.last_sent.retain(|&(p, ..), _| p != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleArgs {
        RuleArgs {
            window: Duration::from_secs(60),
            warn_rate: 1000.0,
            crit_rate: 10_000.0,
            warn_limit: 80.0,
            crit_limit: 95.0,
        }
    }

    #[test]
    fn rate_needs_a_covered_window_and_shrugs_off_a_spike() {
        let mut series = GrowthSeries::default();
        for i in 0..30 {
            series.push(f64::from(i), 1_000_000 + 2000 * i as u64, 60.0);
        }
        assert_eq!(series.rate(60.0), None, "29 s of a 60 s window");
        for i in 30..=70 {
            // One sample far off: a transient, not growth.
            let spike = if i == 50 { 50_000_000 } else { 0 };
            series.push(f64::from(i), 1_000_000 + 2000 * i as u64 + spike, 60.0);
        }
        let rate = series.rate(60.0).unwrap();
        assert!((rate - 2000.0).abs() < 1e-6, "{rate}");
        assert_eq!(series.points.len(), 61, "samples older than the window are dropped");
        // Jitter: the next sample comes 0.6 s late, the window still covered.
        series.push(70.6 + 0.5, 1_000_000 + 2000 * 71, 60.0);
        assert!(series.rate(60.0).is_some());
        assert!(series.points.front().unwrap().0 <= 71.1 - 60.0);
    }

    #[test]
    fn dense_samples_are_thinned_to_a_bounded_fit() {
        let mut series = GrowthSeries::default();
        for i in 0..=6000 {
            let t = f64::from(i) * 0.1;
            series.push(t, 1000 + (t * 500.0) as u64, 60.0);
        }
        assert!(series.points.len() <= MAX_FIT_POINTS + 2, "{}", series.points.len());
        assert_eq!(series.points.back().unwrap().0, 600.0, "the newest sample is kept");
        let rate = series.rate(60.0).unwrap();
        assert!((rate - 500.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn findings_by_severity() {
        let rules = rules();
        assert_eq!(evaluate(&rules, Some(999.0), 0.79), vec![]);
        assert_eq!(evaluate(&rules, None, 0.5), vec![]);
        let found = evaluate(&rules, Some(1000.0), 0.95);
        assert_eq!(
            found.iter().map(|f| (f.rule, f.severity)).collect::<Vec<_>>(),
            [
                (Rule::GrowthRate, Severity::Warning),
                (Rule::MemoryLimit, Severity::Critical)
            ]
        );
        assert_eq!(found[1].message, "memory use is 95.0% of its limit");
        assert_eq!(evaluate(&rules, Some(20_000.0), 0.0)[0].severity, Severity::Critical);
    }

    #[test]
    fn throttle_lets_one_alert_through_per_period() {
        let mut throttle = Throttle::new(Duration::from_secs(60));
        let finding = evaluate(&rules(), Some(5000.0), 0.0).remove(0);
        let t0 = Instant::now();
        assert!(throttle.admit(1, &finding, t0));
        assert!(!throttle.admit(1, &finding, t0 + Duration::from_secs(59)));
        assert!(throttle.admit(2, &finding, t0), "another process");
        let critical = Finding {
            severity: Severity::Critical,
            ..finding.clone()
        };
        assert!(throttle.admit(1, &critical, t0), "an escalation goes through");
        assert!(throttle.admit(1, &finding, t0 + Duration::from_secs(60)));
        throttle.forget(1);
        assert!(throttle.admit(1, &finding, t0 + Duration::from_secs(61)));
    }
}
