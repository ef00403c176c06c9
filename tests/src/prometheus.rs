//! A real Prometheus server scraping leakscope, `promtool check metrics`
//! (both from Debian's `prometheus` package) and a real Alertmanager
//! (`prometheus-alertmanager`); `cargo xtask setup` installs both packages.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::webhook::http_get;
use crate::{scratch_dir, Proc};

pub const PROMETHEUS_BIN: &str = "prometheus";
pub const PROMTOOL_BIN: &str = "promtool";
pub const ALERTMANAGER_BIN: &str = "prometheus-alertmanager";
/// The scrape job's name (the `job` label of every scraped series).
pub const JOB: &str = "leakscope";
/// How long a server may take to start serving its API.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A free TCP port on 127.0.0.1 (free when this returns: bind soon after).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// A Prometheus server on 127.0.0.1 (a free port) that scrapes `target`'s
/// /metrics every second, with its config, storage and log in a scratch
/// directory. Killed (its process group) when dropped.
pub struct Prometheus {
    server: Server,
    pub dir: PathBuf,
}

impl Prometheus {
    /// Starts the server scraping `target` (`HOST:PORT`) and waits until its
    /// API answers (/-/ready). Panics with its log if it does not.
    pub fn start(target: &str) -> Prometheus {
        Prometheus::start_with(target, "", &[])
    }

    /// `start`, with `extra_config` appended to prometheus.yml (top-level
    /// keys such as `rule_files` and `alerting`) and `extra_args` on its
    /// command line.
    pub fn start_with(target: &str, extra_config: &str, extra_args: &[&str]) -> Prometheus {
        let dir = scratch_dir("prometheus");
        let config = dir.join("prometheus.yml");
        // Scrapes every second; the timeout must not exceed the interval.
        let yaml = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
        );
        fs::write(&config, yaml + extra_config).expect("write prometheus.yml");
        // The port is free now; another process taking it before Prometheus
        // binds would show as a start-up failure in the log, with the port.
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(PROMETHEUS_BIN);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .arg("--log.level=info")
            .args(extra_args)
            .current_dir(&dir);
        let server = Server::start(cmd, "prometheus", addr, dir.join("prometheus.log"));
        Prometheus { server, dir }
    }

    /// `127.0.0.1:PORT` of its HTTP API.
    pub fn addr(&self) -> &str {
        &self.server.addr
    }

    /// Its log so far (stdout and stderr).
    pub fn log_text(&self) -> String {
        self.server.log_text()
    }

    /// An instant query (`/api/v1/query?query=...`): the `data.result` vector
    /// of a successful vector query, else Err with the reason.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let resp = http_get(&self.server.addr, &path, HTTP_TIMEOUT)?;
        let v: Value = serde_json::from_str(&resp.body).map_err(|e| {
            format!(
                "query {promql:?}: HTTP {} with a non-JSON body ({e}): {}",
                resp.status, resp.body
            )
        })?;
        if resp.status != 200 || v["status"] != "success" {
            return Err(format!("query {promql:?}: HTTP {}: {v}", resp.status));
        }
        if v["data"]["resultType"] != "vector" {
            return Err(format!("query {promql:?}: not a vector: {v}"));
        }
        v["data"]["result"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("query {promql:?}: no data.result array: {v}"))
    }

    /// The scrape targets' state (`/api/v1/targets`: health, lastError, ...),
    /// for failure messages.
    pub fn targets(&self) -> String {
        match http_get(&self.server.addr, "/api/v1/targets", HTTP_TIMEOUT) {
            Ok(r) => match serde_json::from_str::<Value>(&r.body) {
                Ok(v) => v["data"]["activeTargets"]
                    .as_array()
                    .map(|ts| {
                        ts.iter()
                            .map(|t| {
                                format!(
                                    "{} health={} lastError={} lastScrape={}",
                                    t["scrapeUrl"], t["health"], t["lastError"], t["lastScrape"]
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_else(|| v.to_string()),
                Err(_) => r.body,
            },
            Err(e) => format!("(targets unavailable: {e})"),
        }
    }
}

/// An Alertmanager on 127.0.0.1 (a free port), its config and storage in a
/// scratch directory, with one receiver that delivers nowhere (its API shows
/// the alerts it holds) and clustering off (no port 9094). Killed (its
/// process group) when dropped.
pub struct Alertmanager {
    server: Server,
}

impl Alertmanager {
    /// Starts it and waits until its API answers (/-/ready).
    pub fn start() -> Alertmanager {
        let dir = scratch_dir("alertmanager");
        let config = dir.join("alertmanager.yml");
        fs::write(
            &config,
            "route:\n  receiver: nowhere\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: nowhere\n",
        )
        .expect("write alertmanager.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(ALERTMANAGER_BIN);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=");
        Alertmanager {
            server: Server::start(cmd, "alertmanager", addr, dir.join("alertmanager.log")),
        }
    }

    /// `127.0.0.1:PORT` of its HTTP API.
    pub fn addr(&self) -> &str {
        &self.server.addr
    }

    /// Its log so far (stdout and stderr).
    pub fn log_text(&self) -> String {
        self.server.log_text()
    }

    /// The alerts it holds (`GET /api/v2/alerts`).
    pub fn alerts(&self) -> Result<Vec<Value>, String> {
        let r = http_get(&self.server.addr, "/api/v2/alerts", HTTP_TIMEOUT)?;
        match serde_json::from_str::<Value>(&r.body) {
            Ok(Value::Array(alerts)) if r.status == 200 => Ok(alerts),
            _ => Err(format!("/api/v2/alerts answered {}: {}", r.status, r.body)),
        }
    }
}

/// A server of the Prometheus project serving its API on `addr`, its stdout
/// and stderr in `log`.
struct Server {
    proc: Proc,
    addr: String,
    log: PathBuf,
}

impl Server {
    /// Spawns `cmd` and waits until its /-/ready answers; panics with its log
    /// if it exits or is not ready within READY_TIMEOUT.
    fn start(mut cmd: Command, name: &str, addr: String, log: PathBuf) -> Server {
        let file = fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log's descriptor"))
            .stderr(file);
        let mut server = Server {
            proc: Proc::spawn(cmd, name),
            addr,
            log,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = server.proc.try_status() {
                panic!(
                    "{name} exited during start-up ({})\n{}",
                    crate::describe_status(status),
                    server.log_text()
                );
            }
            let last = match http_get(&server.addr, "/-/ready", HTTP_TIMEOUT) {
                Ok(r) if r.status == 200 => return server,
                Ok(r) => format!("/-/ready answered {}: {}", r.status, r.body.trim()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "{name} not ready within {READY_TIMEOUT:?} (last: {last})\n{}",
                    server.log_text()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log at {}: {e})", self.log.display()))
    }
}

/// A query's series as `{labels} value` lines, for failure messages.
pub fn describe_series(result: &[Value]) -> String {
    if result.is_empty() {
        return "(no series)".into();
    }
    result
        .iter()
        .map(|s| format!("{} {}", s["metric"], s["value"][1]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a label in one series of a query result.
pub fn label<'a>(series: &'a Value, name: &str) -> Option<&'a str> {
    series["metric"][name].as_str()
}

/// The sample value of one series of an instant vector.
pub fn value(series: &Value) -> Option<f64> {
    series["value"][1].as_str()?.parse().ok()
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What `promtool check metrics` said about an exposition.
#[derive(Debug)]
pub struct PromtoolVerdict {
    /// Its exit code: 0 valid and lint-free, 1 unparsable, 3 lint problems
    /// (listed on stderr).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl PromtoolVerdict {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for PromtoolVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "promtool check metrics: exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `promtool check metrics` with `text` on stdin.
pub fn promtool_check_metrics(text: &str) -> PromtoolVerdict {
    let mut child = Command::new(PROMTOOL_BIN)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {PROMTOOL_BIN} (installed by `cargo xtask setup`): {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let text = text.to_string();
    // Written from a thread: a large text must not fill the pipe while
    // promtool's output pipes fill too.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for promtool");
    let _ = writer.join();
    PromtoolVerdict {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn promtool_verdicts() {
        let good = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"1\"} 3\n";
        let v = promtool_check_metrics(good);
        assert!(v.ok(), "{v}");
        let lint = promtool_check_metrics("# TYPE x counter\nx 1\n");
        assert_eq!(lint.code, Some(3), "{lint}");
        assert!(lint.stderr.contains("_total"), "{lint}");
        let broken = promtool_check_metrics("x{ 1\n");
        assert_eq!(broken.code, Some(1), "{broken}");
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("a{b=\"c d\"}"), "a%7Bb%3D%22c%20d%22%7D");
    }

    /// A real server scraping a tiny exporter served from this test.
    #[test]
    fn scrapes_and_queries() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicU32::new(0));
        let hits2 = hits.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut conn, &mut buf);
                let n = hits2.fetch_add(1, Ordering::SeqCst);
                let body = format!("# HELP demo_value A demo.\n# TYPE demo_value gauge\ndemo_value{{pid=\"7\"}} {n}\n");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let prom = Prometheus::start(&target);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = prom.query("demo_value").unwrap();
            if let [s] = r.as_slice() {
                assert_eq!(label(s, "pid"), Some("7"));
                assert_eq!(label(s, "job"), Some(JOB));
                assert!(value(s).is_some());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no demo_value after 30 s: {}\ntargets: {}\n{}",
                describe_series(&r),
                prom.targets(),
                prom.log_text()
            );
            thread::sleep(Duration::from_millis(250));
        }
        assert!(hits.load(Ordering::SeqCst) >= 1);
        assert!(prom.query("sum(").is_err());
    }
}
