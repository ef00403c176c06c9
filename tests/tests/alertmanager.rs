//! The shipped alerting rules end to end, on the real servers (Debian's
//! `prometheus` and `prometheus-alertmanager`, installed by `cargo xtask
//! setup`): `leakscope watch` over a leaking fixture, Prometheus scraping it
//! with packaging/prometheus/leakscope.rules.yml and sending to Alertmanager,
//! whose API (`/api/v2/alerts`) must show the growth alert firing with the
//! target's labels and its top growing path.
//!
//! Only the rules' `for:` durations are shortened (to 2 s) in the copy
//! Prometheus loads, so that the test takes well under two minutes; their
//! expressions, labels and annotations are the shipped ones. Every server is
//! in its own process group, killed when the test ends, failing or not.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use leakscope_tests::prometheus::{free_port, Alertmanager, Prometheus, JOB};
use leakscope_tests::*;

const LISTENING_PREFIX: &str = "leakscope: watch listening on http://";
/// The fixture's leak: 2 MiB/s, far over the shipped rules' 10 MiB/h warning.
const RATE_KIB: u32 = 2048;
/// watch's growth-rate window: the rate is served once it is covered.
const WINDOW_S: u32 = 4;
/// What the alert may take from the leak's start: the window, a scrape, the
/// shortened `for:`, an evaluation and the push to Alertmanager.
const ALERT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);
/// The alert checked: the growth warning, which carries the top growing path.
const ALERT: &str = "LeakscopeMemoryGrowth";

/// The shipped rules with every `for:` shortened to 2 s, written to `dir`.
fn rules_for_the_test(dir: &Path) -> std::path::PathBuf {
    let shipped = workspace_root().join("packaging/prometheus/leakscope.rules.yml");
    let text = fs::read_to_string(&shipped).unwrap_or_else(|e| panic!("read {}: {e}", shipped.display()));
    let mut shortened = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => {
                shortened += 1;
                format!("{}for: 2s", &line[..line.len() - line.trim_start().len()])
            }
            None => line.to_string(),
        })
        .collect();
    assert!(shortened > 0, "no `for:` in {}", shipped.display());
    let rules = dir.join("leakscope.rules.yml");
    fs::write(&rules, lines.join("\n") + "\n").expect("write the rules");
    rules
}

#[test]
fn growth_alert_fires_in_alertmanager_with_labels_and_top_path() {
    let dir = scratch_dir("alerting");
    let fixture = build_fixture("late_leak", &[]);
    let alertmanager = Alertmanager::start();

    let mut cmd = Command::new(&fixture);
    cmd.args(["leak", "1", &RATE_KIB.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut leaker = Proc::spawn(cmd, "late_leak leak");
    let out = leaker.take_stdout();
    out.wait_for(|l| l == "ready", Duration::from_secs(30))
        .unwrap_or_else(|why| panic!("late_leak never printed \"ready\" ({why})"));
    let pid = leaker.pid();
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).expect("the fixture's comm");
    let comm = comm.trim_end();

    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(leakscope_bin());
    cmd.args(["watch", "--listen", &listen, "-p", &pid.to_string()])
        .args([
            "--interval",
            "0.5",
            "--window",
            &WINDOW_S.to_string(),
            "--escalate-on",
            "never",
        ])
        .arg("--reports")
        .arg(dir.join("reports"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut watch = Proc::spawn(cmd, "leakscope watch");
    let watch_log = watch.take_stderr();
    if let Err(why) = watch_log.wait_for(|l| l.starts_with(LISTENING_PREFIX), ATTACH_TIMEOUT) {
        panic!(
            "leakscope watch did not start ({why}):\n{}",
            watch_log.text(Duration::ZERO)
        );
    }

    let rules = rules_for_the_test(&dir);
    let alerting = format!(
        "rule_files: ['{}']\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{}']\n",
        rules.display(),
        alertmanager.addr()
    );
    // Resent every second, so Alertmanager sees the annotations as they
    // are now (the top path may show a round after the alert first fires).
    let prometheus = Prometheus::start_with(&listen, &alerting, &["--rules.alert.resend-delay=1s"]);

    let deadline = Instant::now() + ALERT_TIMEOUT;
    let mut last;
    let alert = loop {
        match alertmanager.alerts() {
            Ok(alerts) => {
                let ours = alerts.into_iter().find(|a| {
                    a["labels"]["alertname"] == ALERT
                        && a["labels"]["pid"] == pid.to_string().as_str()
                        && a["status"]["state"] == "active"
                        && a["annotations"]["top_growing_path"]
                            .as_str()
                            .is_some_and(|p| p.contains("leak_slowly"))
                });
                match ours {
                    Some(alert) => break alert,
                    None => last = format!("{ALERT} for PID {pid} not active with its path yet"),
                }
            }
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            panic!(
                "no active {ALERT} naming leak_slowly in Alertmanager within {ALERT_TIMEOUT:?}: {last}\n\
                 --- alertmanager /api/v2/alerts ---\n{:?}\n--- prometheus ALERTS ---\n{:?}\n\
                 --- prometheus top path series ---\n{:?}\n--- targets ---\n{}\n--- watch stderr ---\n{}\n\
                 --- prometheus log ---\n{}\n--- alertmanager log ---\n{}",
                alertmanager.alerts(),
                prometheus.query("ALERTS"),
                prometheus.query("leakscope_target_top_growing_path_bytes_per_second"),
                prometheus.targets(),
                watch_log.text(Duration::ZERO),
                prometheus.log_text(),
                alertmanager.log_text()
            );
        }
        thread::sleep(POLL);
    };

    // The target's labels, as scraped, and the shipped rule's own.
    let labels = &alert["labels"];
    for (name, want) in [
        ("alertname", ALERT),
        ("severity", "warning"),
        ("job", JOB),
        ("instance", listen.as_str()),
        ("pid", pid.to_string().as_str()),
        ("comm", comm),
    ] {
        assert_eq!(labels[name], want, "label {name} of {alert}");
    }
    // The path begins with the leaking function: leak_slowly touches every
    // page it leaks itself.
    let path = alert["annotations"]["top_growing_path"].as_str().unwrap_or_default();
    assert_eq!(
        path.split(" < ").next(),
        Some("leak_slowly"),
        "top_growing_path {path:?} of {alert}"
    );
    let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with(&format!("{comm} (PID {pid}) on {listen} grows ")),
        "summary {summary:?} of {alert}"
    );

    watch.signal(libc::SIGTERM);
    let status = watch.wait_or_panic(Duration::from_secs(60), &|| watch_log.text(Duration::ZERO));
    assert!(status.success(), "watch after SIGTERM: {}", describe_status(status));
    drop((prometheus, alertmanager, leaker));
}
