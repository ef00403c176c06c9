//! What the daemon knows, as served: `/health` (JSON) and `/metrics`
//! (Prometheus text format). The sampling loop publishes a new `Status` each
//! round; the HTTP server only reads it.

use std::collections::BTreeMap;

use prometheus::{CounterVec, Encoder as _, GaugeVec, Opts, Registry, TextEncoder};
use serde::Serialize;

use super::{attribution::GrowingPath, notify::Alert, rules::Severity};

/// Frames of the top growing path named in its metric's `path` label.
const PATH_LABEL_FRAMES: usize = 4;
/// Bytes of the `path` label at most: label values stay short in every query.
const PATH_LABEL_BYTES: usize = 160;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub status: &'static str,
    pub targets: Vec<TargetStatus>,
    /// Alerts sent, by severity.
    pub alerts_sent: BTreeMap<&'static str, u64>,
    /// Alerts held back by the repeat limit.
    pub alerts_suppressed: u64,
    pub self_rss_bytes: u64,
    pub self_cpu_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetStatus {
    pub pid: u32,
    pub comm: String,
    /// "leaking" while a growth-rate rule holds, else "healthy".
    pub status: &'static str,
    /// The highest severity of the rules that hold now.
    pub alert: Option<Severity>,
    /// 1: memory sampling only; 2: with growth attribution probes.
    pub tier: u8,
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub cgroup_usage_bytes: Option<u64>,
    pub limit_bytes: u64,
    pub limit_ratio: f64,
    /// Anonymous memory's robust growth rate over the window; None until
    /// the window is covered.
    pub growth_bytes_per_s: Option<f64>,
    pub tracked_bytes: BTreeMap<&'static str, u64>,
    pub page_faulted_bytes: u64,
    pub probe_hits: BTreeMap<&'static str, u64>,
    pub drops: BTreeMap<&'static str, u64>,
    pub hunts: u64,
    pub reports: Vec<String>,
    pub last_alert: Option<Alert>,
    pub growing_paths: Vec<GrowingPath>,
}

impl Status {
    pub fn health_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the status serializes")
    }

    /// The Prometheus text exposition of this status.
    pub fn metrics_text(&self) -> String {
        let registry = Registry::new();
        let target = ["pid", "comm"];
        let gauge = |name: &str, help: &str, extra: &[&str]| {
            let labels: Vec<&str> = target.iter().chain(extra).copied().collect();
            let g = GaugeVec::new(Opts::new(name, help), &labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = CounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let rss = gauge("leakscope_target_rss_bytes", "Resident memory (VmRSS).", &[]);
        let anon = gauge(
            "leakscope_target_anon_bytes",
            "Anonymous resident memory (RssAnon).",
            &[],
        );
        let file = gauge(
            "leakscope_target_file_bytes",
            "File-backed and shared resident memory.",
            &[],
        );
        let limit = gauge(
            "leakscope_target_memory_limit_bytes",
            "The tightest memory limit: cgroup memory.max up the tree, else the host's memory.",
            &[],
        );
        let ratio = gauge(
            "leakscope_target_memory_limit_ratio",
            "Memory use over the limit (cgroup usage against a cgroup limit, else RSS against host memory).",
            &[],
        );
        let cgroup = gauge(
            "leakscope_target_cgroup_usage_bytes",
            "memory.current of the target's cgroup.",
            &[],
        );
        let growth = gauge(
            "leakscope_target_growth_bytes_per_second",
            "Robust (Theil-Sen) growth rate of anonymous memory over the rule window.",
            &[],
        );
        let alert = gauge(
            "leakscope_target_alert_state",
            "0 no rule holds, 1 warning, 2 critical.",
            &[],
        );
        let tier = gauge(
            "leakscope_target_tier",
            "1 memory sampling only, 2 with growth attribution probes.",
            &[],
        );
        let tracked = gauge(
            "leakscope_target_tracked_bytes",
            "Memory held per kind as the probes see it (mmap, brk, v8_heap).",
            &["kind"],
        );
        let labels = ["pid", "comm"];
        let faults = counter(
            "leakscope_target_page_faulted_bytes_total",
            "Bytes of pages first touched (page faults times the page size), since watching began.",
            &labels,
        );
        let hits = counter(
            "leakscope_target_probe_hits_total",
            "Probe hits: the tracer's cost driver.",
            &["pid", "comm", "probe"],
        );
        let drops = counter(
            "leakscope_target_drops_total",
            "Records lost, by reason.",
            &["pid", "comm", "reason"],
        );
        let hunts = counter("leakscope_target_hunts_total", "Escalated hunts run.", &labels);
        // One series per target (its fastest path only), so the cardinality
        // is that of the targets; the alerting rules quote its label.
        let top_path = gauge(
            "leakscope_target_top_growing_path_bytes_per_second",
            "Bytes of new pages per second of the fastest-growing code path (label path: its innermost functions, \
             callers after `<`).",
            &["path"],
        );
        for t in &self.targets {
            let pid = t.pid.to_string();
            let id = [pid.as_str(), t.comm.as_str()];
            rss.with_label_values(&id).set(t.rss_bytes as f64);
            anon.with_label_values(&id).set(t.anon_bytes as f64);
            file.with_label_values(&id).set(t.file_bytes as f64);
            limit.with_label_values(&id).set(t.limit_bytes as f64);
            ratio.with_label_values(&id).set(t.limit_ratio);
            if let Some(usage) = t.cgroup_usage_bytes {
                cgroup.with_label_values(&id).set(usage as f64);
            }
            if let Some(rate) = t.growth_bytes_per_s {
                growth.with_label_values(&id).set(rate);
            }
            alert
                .with_label_values(&id)
                .set(t.alert.map_or(0.0, |s| f64::from(s as u8 + 1)));
            tier.with_label_values(&id).set(f64::from(t.tier));
            hunts.with_label_values(&id).inc_by(t.hunts as f64);
            if t.tier < 2 {
                continue;
            }
            for (kind, bytes) in &t.tracked_bytes {
                tracked
                    .with_label_values(&[pid.as_str(), t.comm.as_str(), kind])
                    .set(*bytes as f64);
            }
            faults.with_label_values(&id).inc_by(t.page_faulted_bytes as f64);
            if let Some(top) = t.growing_paths.first() {
                top_path
                    .with_label_values(&[pid.as_str(), t.comm.as_str(), &path_label(&top.frames)])
                    .set(top.bytes_per_s);
            }
            for (probe, n) in &t.probe_hits {
                hits.with_label_values(&[pid.as_str(), t.comm.as_str(), probe])
                    .inc_by(*n as f64);
            }
            for (reason, n) in &t.drops {
                drops
                    .with_label_values(&[pid.as_str(), t.comm.as_str(), reason])
                    .inc_by(*n as f64);
            }
        }
        let alerts = counter("leakscope_alerts_total", "Alerts sent, by severity.", &["severity"]);
        for (severity, n) in &self.alerts_sent {
            alerts.with_label_values(&[severity]).inc_by(*n as f64);
        }
        counter(
            "leakscope_alerts_suppressed_total",
            "Alerts held back by --alert-repeat.",
            &[],
        )
        .with_label_values::<&str>(&[])
        .inc_by(self.alerts_suppressed as f64);
        let own = |name: &str, help: &str, value: f64| {
            let g = prometheus::Gauge::with_opts(Opts::new(name, help)).expect("valid metric");
            g.set(value);
            registry.register(Box::new(g)).expect("unique metric");
        };
        own("leakscope_targets", "Processes watched.", self.targets.len() as f64);
        own(
            "leakscope_self_rss_bytes",
            "leakscope's own resident memory.",
            self.self_rss_bytes as f64,
        );
        let cpu = prometheus::Counter::with_opts(Opts::new(
            "leakscope_self_cpu_seconds_total",
            "CPU time leakscope itself used (user + system).",
        ))
        .expect("valid metric");
        cpu.inc_by(self.self_cpu_seconds);
        registry.register(Box::new(cpu)).expect("unique metric");
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .expect("metrics encode");
        String::from_utf8(text).expect("metrics are UTF-8")
    }
}

/// A growing path as a label value: the function of its innermost frames
/// (`function (file:line)` loses the `(file:line)`, so that a path keeps one
/// series while its lines vary), callers after ` < `, control characters
/// dropped, at most PATH_LABEL_BYTES bytes.
fn path_label(frames: &[String]) -> String {
    let function = |frame: &String| match frame.rsplit_once(" (") {
        Some((function, _)) if frame.ends_with(')') => function.to_string(),
        _ => frame.clone(),
    };
    let path: String = frames
        .iter()
        .take(PATH_LABEL_FRAMES)
        .map(function)
        .collect::<Vec<_>>()
        .join(" < ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    match path
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|&end| end <= PATH_LABEL_BYTES)
        .last()
    {
        Some(end) if end < path.len() => path[..end].to_string(),
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: u32, tier: u8) -> TargetStatus {
        TargetStatus {
            pid,
            comm: "svc".into(),
            status: "leaking",
            alert: Some(Severity::Critical),
            tier,
            rss_bytes: 4096,
            anon_bytes: 2048,
            file_bytes: 2048,
            cgroup_usage_bytes: None,
            limit_bytes: 8192,
            limit_ratio: 0.5,
            growth_bytes_per_s: Some(12.5),
            tracked_bytes: [("brk", 1024)].into_iter().collect(),
            page_faulted_bytes: 8192,
            probe_hits: [("page-faults", 2)].into_iter().collect(),
            drops: [("ring_buffer_full", 0)].into_iter().collect(),
            hunts: 1,
            reports: vec![],
            last_alert: None,
            growing_paths: match tier {
                2 => vec![
                    GrowingPath {
                        bytes_per_s: 2048.0,
                        faulted_bytes: 8192,
                        frames: vec!["leak_slowly (late_leak.c:40)".into(), "main (late_leak.c:90)".into()],
                    },
                    GrowingPath {
                        bytes_per_s: 16.0,
                        faulted_bytes: 4096,
                        frames: vec!["churn (late_leak.c:60)".into()],
                    },
                ],
                _ => vec![],
            },
        }
    }

    #[test]
    fn metrics_name_every_target() {
        let status = Status {
            status: "ok",
            targets: vec![target(1, 2), target(2, 1)],
            alerts_sent: [("critical", 3)].into_iter().collect(),
            ..Status::default()
        };
        let text = status.metrics_text();
        for line in [
            r#"leakscope_target_rss_bytes{comm="svc",pid="1"} 4096"#,
            r#"leakscope_target_rss_bytes{comm="svc",pid="2"} 4096"#,
            r#"leakscope_target_alert_state{comm="svc",pid="1"} 2"#,
            r#"leakscope_target_growth_bytes_per_second{comm="svc",pid="1"} 12.5"#,
            r#"leakscope_target_tracked_bytes{comm="svc",kind="brk",pid="1"} 1024"#,
            r#"leakscope_target_page_faulted_bytes_total{comm="svc",pid="1"} 8192"#,
            r#"leakscope_target_drops_total{comm="svc",pid="1",reason="ring_buffer_full"} 0"#,
            r#"leakscope_alerts_total{severity="critical"} 3"#,
            r#"leakscope_target_top_growing_path_bytes_per_second{comm="svc",path="leak_slowly < main",pid="1"} 2048"#,
            "leakscope_targets 2",
            "# TYPE leakscope_self_cpu_seconds_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
        assert!(
            !text.contains(r#"leakscope_target_tracked_bytes{comm="svc",kind="brk",pid="2"}"#),
            "tier 1 has no probe figures"
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("leakscope_target_top_growing_path_bytes_per_second{"))
                .count(),
            1,
            "one series per target with probes, its fastest path only:\n{text}"
        );
        let health: serde_json::Value = serde_json::from_str(&status.health_json()).unwrap();
        assert_eq!(health["targets"][0]["status"], "leaking");
        assert_eq!(health["targets"][0]["alert"], "critical");
    }

    #[test]
    fn path_labels_are_short_and_plain() {
        let frames = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            path_label(&frames(&[
                "memset",
                "leak_zeroed (late_leak.c:51)",
                "main (late_leak.c:90)"
            ])),
            "memset < leak_zeroed < main"
        );
        // Only the innermost frames; an unsymbolized frame stays as it is.
        assert_eq!(
            path_label(&frames(&[
                "a (x.c:1)",
                "b (x.c:2)",
                "c (x.c:3)",
                "d (x.c:4)",
                "e (x.c:5)"
            ])),
            "a < b < c < d"
        );
        assert_eq!(path_label(&frames(&["libc.so.6@0x1234"])), "libc.so.6@0x1234");
        assert_eq!(path_label(&frames(&["bad\nname\u{7f}"])), "badname");
        let long = "é".repeat(200);
        let label = path_label(&[long]);
        assert_eq!(label.len(), PATH_LABEL_BYTES);
        assert!(label.chars().all(|c| c == 'é'));
        assert_eq!(path_label(&[]), "");
    }
}
