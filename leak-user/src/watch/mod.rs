//! `leakscope watch`: a daemon that watches processes for weeks at almost no
//! cost and collects the evidence of a leak on its own.
//!
//! Each round (`--interval`): find the processes the selectors match
//! (`targets`), sample their memory (`memory`, tier 1), fold in the page-fault
//! attribution of the probes (`attribution`, tier 2), judge the rules
//! (`rules`), send alerts (`notify`), and on alert hunt the process
//! (`escalate`, tier 3). The HTTP server (`server`) serves the last round's
//! `status`.

mod attribution;
mod escalate;
pub(crate) mod memory;
mod notify;
mod rules;
mod server;
mod status;
pub(crate) mod targets;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use leak_common::{DropReason, Probe};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use self::{
    attribution::{Attribution, GrowingPath},
    escalate::HuntPlan,
    memory::MemorySample,
    notify::{Alert, Notifier, Subject},
    rules::{Finding, GrowthSeries, Rule, Severity, Throttle},
    status::{Status, TargetStatus},
    targets::{Candidate, Selection},
};
use crate::{
    cli::{EscalateOn, WatchArgs},
    preflight,
    symbolize::Symbolizer,
};

/// How often tier 2's ring buffers are emptied (the kernel side does not
/// wake the reader for every record).
const DRAIN_PERIOD: Duration = Duration::from_millis(250);
/// Growing code paths kept per target.
const GROWING_PATHS: usize = 5;
/// Report directories listed per target in /health (the newest).
const REPORTS_LISTED: usize = 16;

pub fn run(args: &WatchArgs) -> Result<()> {
    let selections = targets::selections(args)?;
    for selection in &selections {
        if let targets::Selector::Pid(pid) = selection.selector {
            anyhow::ensure!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "no process with PID {pid}"
            );
        }
    }
    if let Some(url) = &args.webhook {
        anyhow::ensure!(
            url.starts_with("http://"),
            "--webhook {url}: only http:// URLs are supported (put a local relay in front of https endpoints)"
        );
    }
    if !args.no_probes {
        preflight::check()?;
    }
    std::fs::create_dir_all(&args.reports)
        .with_context(|| format!("cannot create the reports directory {}", args.reports.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(Daemon::new(args, selections).run())
}

/// A watched process.
struct Watched {
    comm: String,
    start_ticks: u64,
    selection: usize,
    series: GrowthSeries,
    memory: MemorySample,
    rate: Option<f64>,
    findings: Vec<Finding>,
    attribution: Option<Attribution>,
    growing_paths: Vec<GrowingPath>,
    last_alert: Option<Alert>,
    reports: Vec<PathBuf>,
    hunts: u64,
    hunting: bool,
    last_hunt: Option<Instant>,
}

/// A finished escalated hunt.
struct HuntDone {
    pid: u32,
    start_ticks: u64,
    result: std::result::Result<PathBuf, String>,
}

struct Daemon<'a> {
    args: &'a WatchArgs,
    selections: Vec<Selection>,
    watched: BTreeMap<u32, Watched>,
    throttle: Throttle,
    notifier: Notifier,
    symbolizer: Symbolizer,
    status: server::SharedStatus,
    alerts_sent: BTreeMap<&'static str, u64>,
    alerts_suppressed: u64,
    host_bytes: u64,
    started: Instant,
    last_round: Instant,
    hunts_done: (mpsc::UnboundedSender<HuntDone>, mpsc::UnboundedReceiver<HuntDone>),
    /// Detaches and hunts still running on their threads: joined at shutdown.
    background: Vec<JoinHandle<()>>,
}

impl<'a> Daemon<'a> {
    fn new(args: &'a WatchArgs, selections: Vec<Selection>) -> Daemon<'a> {
        Daemon {
            args,
            selections,
            watched: BTreeMap::new(),
            throttle: Throttle::new(args.alert_repeat),
            notifier: Notifier {
                webhook: args.webhook.clone(),
                command: args.alert_command.clone(),
            },
            symbolizer: Symbolizer::new(),
            status: Arc::new(Mutex::new(Status::default())),
            alerts_sent: BTreeMap::new(),
            alerts_suppressed: 0,
            host_bytes: memory::host_memory(),
            started: Instant::now(),
            last_round: Instant::now(),
            hunts_done: mpsc::unbounded_channel(),
            background: Vec::new(),
        }
    }

    async fn run(mut self) -> Result<()> {
        let server = server::Server::start(self.args.listen, self.status.clone())?;
        eprintln!("leakscope: watch listening on http://{}", server.address);
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut round = tokio::time::interval(self.args.interval.max(Duration::from_millis(100)));
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain = tokio::time::interval(DRAIN_PERIOD);
        loop {
            tokio::select! {
                _ = round.tick() => self.round(),
                _ = drain.tick() => self.drain(),
                Some(done) = self.hunts_done.1.recv() => self.hunt_finished(done),
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        eprintln!("leakscope: stopping: detaching from {} processes", self.watched.len());
        server.stop();
        let pids: Vec<u32> = self.watched.keys().copied().collect();
        for pid in pids {
            self.forget(pid);
        }
        // Hunts see the same signal and end with a report.
        for handle in self.background.drain(..) {
            let _ = handle.join();
        }
        while let Ok(done) = self.hunts_done.1.try_recv() {
            self.hunt_finished(done);
        }
        Ok(())
    }

    /// One sampling round.
    fn round(&mut self) {
        let now = Instant::now();
        let dt_s = now.duration_since(self.last_round).as_secs_f64();
        self.last_round = now;
        match targets::scan(&self.selections) {
            Ok(found) => self.update_targets(found),
            // Out of descriptors, say: nothing is dropped for that.
            Err(e) => eprintln!("leakscope: warning: cannot scan the processes ({e}): the targets stay as they are"),
        }
        let t_s = self.started.elapsed().as_secs_f64();
        let pids: Vec<u32> = self.watched.keys().copied().collect();
        for pid in pids {
            if !self.sample(pid, t_s, dt_s) {
                // Unreadable but still there (out of descriptors): next round.
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    self.forget(pid);
                }
                continue;
            }
            self.judge(pid);
        }
        self.background.retain(|handle| !handle.is_finished());
        self.publish();
    }

    /// Drops the targets that are gone (or were replaced: a reused PID) and
    /// adds the new ones.
    fn update_targets(&mut self, found: BTreeMap<u32, Candidate>) {
        let gone: Vec<u32> = self
            .watched
            .iter()
            .filter(|(pid, w)| found.get(pid).is_none_or(|c| c.start_ticks != w.start_ticks))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in gone {
            self.forget(pid);
        }
        for (pid, candidate) in found {
            if !self.watched.contains_key(&pid) {
                self.add(pid, candidate);
            }
        }
    }

    fn add(&mut self, pid: u32, candidate: Candidate) {
        let probed = self.watched.values().filter(|w| w.attribution.is_some()).count();
        let attribution = if self.args.no_probes || probed >= self.args.max_probed {
            None
        } else {
            match Attribution::start(pid, self.args.fault_period) {
                Ok(attribution) => Some(attribution),
                Err(e) => {
                    eprintln!(
                        "leakscope: warning: PID {pid} ({}): no growth attribution, memory sampling only: {e:#}",
                        candidate.comm
                    );
                    None
                }
            }
        };
        eprintln!(
            "leakscope: watching PID {pid} ({}){}",
            candidate.comm,
            if attribution.is_some() {
                ""
            } else {
                " (memory sampling only)"
            }
        );
        self.watched.insert(
            pid,
            Watched {
                comm: candidate.comm,
                start_ticks: candidate.start_ticks,
                selection: candidate.selection,
                series: GrowthSeries::default(),
                memory: MemorySample::default(),
                rate: None,
                findings: Vec::new(),
                attribution,
                growing_paths: Vec::new(),
                last_alert: None,
                reports: Vec::new(),
                hunts: 0,
                hunting: false,
                last_hunt: None,
            },
        );
    }

    /// Stops watching `pid`; its probes are detached in the background.
    fn forget(&mut self, pid: u32) {
        let Some(watched) = self.watched.remove(&pid) else {
            return;
        };
        eprintln!("leakscope: no longer watching PID {pid} ({})", watched.comm);
        self.throttle.forget(pid);
        if let Some(attribution) = watched.attribution {
            self.background.push(std::thread::spawn(move || attribution.detach()));
        }
    }

    /// Samples `pid`'s memory; false when it is gone.
    fn sample(&mut self, pid: u32, t_s: f64, dt_s: f64) -> bool {
        let Some(memory) = memory::sample(pid, self.host_bytes) else {
            return false;
        };
        let watched = self.watched.get_mut(&pid).expect("sampled a watched pid");
        let rules = &self.selections[watched.selection].rules;
        let window_s = rules.window.as_secs_f64();
        watched.series.push(t_s, memory.anon_bytes, window_s);
        watched.rate = watched.series.rate(window_s);
        watched.findings = rules::evaluate(rules, watched.rate, memory.limit_ratio());
        watched.memory = memory;
        if let Some(attribution) = &mut watched.attribution {
            match attribution.update(dt_s, window_s) {
                Ok(()) => watched.growing_paths = attribution.growing_paths(&mut self.symbolizer, GROWING_PATHS),
                Err(e) => log::warn!("PID {pid}: cannot read the page-fault counts: {e:#}"),
            }
        }
        true
    }

    /// Sends the alerts of `pid`'s findings and escalates.
    fn judge(&mut self, pid: u32) {
        let now = Instant::now();
        let watched = &self.watched[&pid];
        let alerts: Vec<(Alert, bool)> = watched
            .findings
            .iter()
            .map(|finding| {
                let subject = Subject {
                    pid,
                    comm: &watched.comm,
                    growth_bytes_per_s: watched.rate,
                    memory: &watched.memory,
                    growing_paths: watched.growing_paths.clone(),
                };
                (Alert::new(finding, subject), self.throttle.admit(pid, finding, now))
            })
            .collect();
        for (alert, admitted) in &alerts {
            if *admitted {
                self.notifier.send(alert);
                *self.alerts_sent.entry(alert.severity.name()).or_default() += 1;
            } else {
                self.alerts_suppressed += 1;
            }
        }
        let escalating = alerts.into_iter().map(|(alert, _)| alert).max_by_key(|a| a.severity);
        if let Some(alert) = escalating {
            self.watched.get_mut(&pid).expect("judged a watched pid").last_alert = Some(alert.clone());
            self.escalate(alert, now);
        }
    }

    /// Starts a hunt of the alert's process, if its level calls for one and
    /// the process is not hunted already or too recently.
    fn escalate(&mut self, alert: Alert, now: Instant) {
        let level = match self.args.escalate_on {
            EscalateOn::Warning => Severity::Warning,
            EscalateOn::Critical => Severity::Critical,
            EscalateOn::Never => return,
        };
        let cooldown = self.args.hunt_cooldown;
        let watched = self.watched.get_mut(&alert.pid).expect("escalating a watched pid");
        let cooling = watched.last_hunt.is_some_and(|at| now.duration_since(at) < cooldown);
        if alert.severity < level || watched.hunting || cooling {
            return;
        }
        watched.hunting = true;
        watched.last_hunt = Some(now);
        watched.hunts += 1;
        eprintln!(
            "leakscope: hunting PID {} ({}) for {:.0} s",
            alert.pid,
            alert.comm,
            self.args.hunt_duration.as_secs_f64()
        );
        let plan = HuntPlan {
            duration: self.args.hunt_duration,
            mode: self.args.hunt_mode,
            sample_bytes: self.args.hunt_sample_bytes,
            reports: self.args.reports.clone(),
        };
        let (done, start_ticks) = (self.hunts_done.0.clone(), watched.start_ticks);
        self.background.push(std::thread::spawn(move || {
            let result = escalate::hunt_and_report(&alert, &plan).map_err(|e| format!("{e:#}"));
            let _ = done.send(HuntDone {
                pid: alert.pid,
                start_ticks,
                result,
            });
        }));
    }

    fn hunt_finished(&mut self, done: HuntDone) {
        let watched = self
            .watched
            .get_mut(&done.pid)
            .filter(|w| w.start_ticks == done.start_ticks);
        match &done.result {
            Ok(dir) => eprintln!("leakscope: hunt of PID {} written to {}", done.pid, dir.display()),
            Err(e) => eprintln!("leakscope: warning: hunt of PID {} failed: {e}", done.pid),
        }
        if let Some(watched) = watched {
            watched.hunting = false;
            if let Ok(dir) = done.result {
                if watched.reports.len() == REPORTS_LISTED {
                    watched.reports.remove(0);
                }
                watched.reports.push(dir);
            }
        }
    }

    fn drain(&mut self) {
        for (pid, watched) in &mut self.watched {
            let Some(attribution) = &mut watched.attribution else {
                continue;
            };
            attribution.drain();
            if attribution.is_oversized() {
                log::warn!("PID {pid}: too many distinct stacks: restarting growth attribution");
                let fresh = Attribution::start(*pid, self.args.fault_period);
                let old = std::mem::replace(&mut watched.attribution, fresh.ok());
                if let Some(old) = old {
                    self.background.push(std::thread::spawn(move || old.detach()));
                }
            }
        }
    }

    /// Publishes this round's state to the HTTP server.
    fn publish(&mut self) {
        let targets = self.watched.iter().map(|(&pid, w)| target_status(pid, w)).collect();
        let (self_rss_bytes, self_cpu_seconds) = own_usage();
        let status = Status {
            status: "ok",
            targets,
            alerts_sent: self.alerts_sent.clone(),
            alerts_suppressed: self.alerts_suppressed,
            self_rss_bytes,
            self_cpu_seconds,
        };
        *self.status.lock().expect("status lock") = status;
    }
}

fn target_status(pid: u32, w: &Watched) -> TargetStatus {
    let leaking = w.findings.iter().any(|f| f.rule == Rule::GrowthRate);
    let (mut probe_hits, mut drops) = (BTreeMap::new(), BTreeMap::new());
    if let Some(Ok(counters)) = w.attribution.as_ref().map(Attribution::counters) {
        probe_hits = Probe::ALL
            .iter()
            .map(|&p| (p.name(), counters.entry_hits(p)))
            .filter(|&(_, n)| n > 0)
            .collect();
        drops = DropReason::ALL.iter().map(|&r| (r.name(), counters.drops(r))).collect();
    }
    TargetStatus {
        pid,
        comm: w.comm.clone(),
        status: if leaking { "leaking" } else { "healthy" },
        alert: w.findings.iter().map(|f| f.severity).max(),
        tier: if w.attribution.is_some() { 2 } else { 1 },
        rss_bytes: w.memory.rss_bytes,
        anon_bytes: w.memory.anon_bytes,
        file_bytes: w.memory.file_bytes,
        cgroup_usage_bytes: w.memory.cgroup.as_ref().map(|c| c.usage_bytes),
        limit_bytes: w.memory.limit_bytes,
        limit_ratio: w.memory.limit_ratio(),
        growth_bytes_per_s: w.rate,
        tracked_bytes: w
            .attribution
            .as_ref()
            .map(Attribution::tracked_bytes)
            .unwrap_or_default(),
        page_faulted_bytes: w.attribution.as_ref().map_or(0, Attribution::faulted_bytes),
        probe_hits,
        drops,
        hunts: w.hunts,
        reports: w.reports.iter().map(|d| d.display().to_string()).collect(),
        last_alert: w.last_alert.clone(),
        growing_paths: w.growing_paths.clone(),
    }
}

/// leakscope's own resident memory and CPU seconds.
fn own_usage() -> (u64, f64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024);
    // SAFETY: plain libc call.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    (rss, cpu / ticks_per_s)
}
