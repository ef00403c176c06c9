//! Alerts: to the log, to an optional webhook (JSON POST) and to an optional
//! command. Delivery runs on its own thread so that a slow receiver never
//! stalls the sampling loop.

use std::{io::Write as _, process::Stdio, time::Duration};

use serde::Serialize;

use super::{
    attribution::GrowingPath,
    rules::{Finding, Rule, Severity},
};

pub const SCHEMA: &str = "leakscope/alert/v1";
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub schema: &'static str,
    pub state: &'static str,
    pub severity: Severity,
    pub rule: Rule,
    pub pid: u32,
    pub comm: String,
    pub message: String,
    pub growth_bytes_per_s: Option<f64>,
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    pub limit_bytes: u64,
    pub limit_ratio: f64,
    /// RFC 3339, UTC.
    pub at: String,
    /// Tier 2's fastest-growing code paths at the time of the alert (empty
    /// without probes).
    pub growing_paths: Vec<GrowingPath>,
}

/// What an alert is about, beyond the finding.
pub struct Subject<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub growth_bytes_per_s: Option<f64>,
    pub memory: &'a super::memory::MemorySample,
    pub growing_paths: Vec<GrowingPath>,
}

impl Alert {
    pub fn new(finding: &Finding, subject: Subject) -> Alert {
        Alert {
            schema: SCHEMA,
            state: "firing",
            severity: finding.severity,
            rule: finding.rule,
            pid: subject.pid,
            comm: subject.comm.to_string(),
            message: finding.message.clone(),
            growth_bytes_per_s: subject.growth_bytes_per_s,
            rss_bytes: subject.memory.rss_bytes,
            anon_bytes: subject.memory.anon_bytes,
            limit_bytes: subject.memory.limit_bytes,
            limit_ratio: subject.memory.limit_ratio(),
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            growing_paths: subject.growing_paths,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("an alert serializes")
    }
}

#[derive(Clone, Default)]
pub struct Notifier {
    pub webhook: Option<String>,
    pub command: Option<String>,
}

impl Notifier {
    /// Logs the alert now; the webhook and the command run in the background.
    pub fn send(&self, alert: &Alert) {
        eprintln!(
            "leakscope: ALERT {} PID {} ({}): {}: {}",
            alert.severity.name(),
            alert.pid,
            alert.comm,
            alert.rule.name(),
            alert.message
        );
        if self.webhook.is_none() && self.command.is_none() {
            return;
        }
        let (notifier, body) = (self.clone(), alert.to_json());
        std::thread::spawn(move || {
            if let Some(url) = &notifier.webhook {
                post(url, &body);
            }
            if let Some(command) = &notifier.command {
                run_command(command, &body);
            }
        });
    }
}

fn post(url: &str, body: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(WEBHOOK_TIMEOUT))
        .build()
        .into();
    let sent = agent.post(url).header("Content-Type", "application/json").send(body);
    if let Err(e) = sent {
        eprintln!("leakscope: warning: webhook {url}: {e}");
    }
}

fn run_command(command: &str, body: &str) {
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return eprintln!("leakscope: warning: alert command: {e}"),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine.
        let _ = stdin.write_all(body.as_bytes());
    }
    match child.wait() {
        Ok(status) if !status.success() => eprintln!("leakscope: warning: alert command exited with {status}"),
        Err(e) => eprintln!("leakscope: warning: alert command: {e}"),
        Ok(_) => {}
    }
}
