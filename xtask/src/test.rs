//! `cargo xtask test`: formatting, lints, build and the test suite, with
//! `leakscope watch` running for the whole suite, then the Debian package
//! installed and used (tests/tests/package.rs).
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use leakscope_tests::{
    prometheus::{free_port, value, Prometheus, JOB},
    Lines, Proc,
};

use crate::{build, require_root, run, setup, WORKSPACE};

/// `args` go to the test binaries, after `--test-threads=1`.
pub fn test(args: &[String]) -> Result<()> {
    require_root("the tests")?;
    setup::setup()?;
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo")
        .arg("clippy")
        .args(WORKSPACE)
        .args(["--all-targets", "--", "-D", "warnings"]))?;
    let leakscope = build()?;
    let watch = SuiteWatch::start(&leakscope)?;
    let tests = run(Command::new("cargo")
        .arg("test")
        .args(WORKSPACE)
        .env("LEAKSCOPE_BIN", &leakscope)
        .args(["--", "--test-threads=1"])
        .args(args));
    let watched = watch.finish();
    tests?;
    println!("{}", watched?);
    // After the suite and alone: it builds the release package and installs
    // it into /usr (ignored in the suite, which cannot give it either).
    let deb = crate::dist::dist()?;
    run(Command::new("cargo")
        .args(["test", "-p", "leakscope-tests", "--test", "package"])
        .env("LEAKSCOPE_DEB", &deb)
        .args(["--", "--ignored", "--test-threads=1"]))?;
    // A short pass over every fuzz target: the parsers stay panic-free.
    crate::fuzz::fuzz(crate::fuzz::SHORT_PASS_SECONDS)
}

/// The processes the suite starts, by name: the C fixtures and Node.
const FIXTURE_NAMES: &[&str] = &[
    "allocators",
    "mappings",
    "mappings-static",
    "threads",
    "churn",
    "exitcode",
    "sampling",
    "growth",
    "node",
];
/// The suite's fixtures come and go: at least this many must have been watched.
const MIN_WATCHED: f64 = 5.0;
/// Share of Prometheus's scrapes that must succeed.
const MIN_SCRAPES_UP: f64 = 0.95;

/// `leakscope watch` over every fixture process of the suite (they start and
/// exit by the hundred), scraped by a real Prometheus: it must stay up,
/// answer the scrapes, pick up and drop the processes, and stop cleanly.
/// Alerts are logged but start no hunt: the tests' own hunts run meanwhile.
struct SuiteWatch {
    watch: Proc,
    log: Lines,
    prometheus: Prometheus,
    started: Instant,
}

impl SuiteWatch {
    fn start(leakscope: &Path) -> Result<SuiteWatch> {
        let address = format!("127.0.0.1:{}", free_port());
        let reports = leakscope_tests::scratch_dir("suite-watch");
        let mut command = Command::new(leakscope);
        command
            .args([
                "watch",
                "--interval",
                "1",
                "--escalate-on",
                "never",
                "--listen",
                &address,
            ])
            .arg("--reports")
            .arg(&reports)
            .args(FIXTURE_NAMES.iter().flat_map(|name| ["--comm", name]))
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let mut watch = Proc::spawn(command, "leakscope watch");
        let log = watch.take_stderr();
        if let Err(why) = log.wait_for(|l| l.contains("watch listening"), Duration::from_secs(30)) {
            bail!("leakscope watch did not start ({why}):\n{}", log.text(Duration::ZERO));
        }
        println!("leakscope watch runs over the suite, on {address}");
        Ok(SuiteWatch {
            watch,
            log,
            prometheus: Prometheus::start(&address),
            started: Instant::now(),
        })
    }

    /// Checks the run and stops watch with SIGTERM; a one-line summary.
    fn finish(mut self) -> Result<String> {
        let range = format!("[{}s]", self.started.elapsed().as_secs() + 60);
        let scalar = |promql: String| -> Result<f64> {
            let result = self.prometheus.query(&promql).map_err(anyhow::Error::msg)?;
            Ok(result.first().and_then(value).unwrap_or(0.0))
        };
        let watched = scalar(format!(
            "count(count by (pid) (count_over_time(leakscope_target_rss_bytes{range})))"
        ))?;
        let scrapes = scalar(format!("sum(count_over_time(up{{job=\"{JOB}\"}}{range}))"))?;
        let scrapes_up = scalar(format!("sum(sum_over_time(up{{job=\"{JOB}\"}}{range}))"))?;
        let alive = self.watch.try_status().is_none();
        self.watch.signal(libc::SIGTERM);
        let status = self.watch.wait_timeout(Duration::from_secs(60));
        let log = self.log.text(Duration::from_secs(1));
        let stopped = match status {
            Some(status) => leakscope_tests::describe_status(status),
            None => "still running".to_string(),
        };
        let summary = format!(
            "leakscope watch over the suite: {watched} processes watched, {scrapes_up} of {scrapes} scrapes answered, \
             after SIGTERM: {stopped}"
        );
        let mut problems = Vec::new();
        if !alive {
            problems.push("watch exited during the suite".to_string());
        }
        if watched < MIN_WATCHED {
            problems.push(format!("fewer than {MIN_WATCHED} processes watched"));
        }
        if scrapes == 0.0 || scrapes_up < MIN_SCRAPES_UP * scrapes {
            problems.push(format!("under {MIN_SCRAPES_UP} of the scrapes answered"));
        }
        if !status.is_some_and(|s| s.success()) {
            problems.push("watch did not exit 0 within 60 s of SIGTERM".to_string());
        }
        if problems.is_empty() {
            Ok(summary)
        } else {
            bail!(
                "{summary}\n{}\nwatch's log:\n{log}\nPrometheus targets: {}",
                problems.join("\n"),
                self.prometheus.targets()
            )
        }
    }
}
