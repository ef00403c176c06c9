//! 4b: requests/s of the Node.js service of section 3 while `leakscope watch`
//! raises an alert at once and escalates it to its hunt, against untraced.

use std::{fs, time::Duration};

use anyhow::{ensure, Result};

use super::{
    clock_ticks, free_loopback_addr, interleave, median, rel, rps_columns, signal, stats, throughput_note, work_dir,
    Available, HttpService, Plan, Running, Section, Tools,
};

pub(super) const TITLE: &str = "4b. leakscope watch through an alert and its escalated hunt";

/// The target: the service keeps this share of its untraced requests/s.
const TARGET: f64 = 0.95;

pub(super) fn watch_escalation(plan: &Plan, tools: &Tools) -> Result<Section> {
    let secs = plan.load_secs;
    let about = format!(
        "The service and wrk load of section 3 ({secs} s per run), untraced and under a fresh `leakscope watch` \
         whose memory-limit rule fires at its first sample (`--warn-limit 0.01`). Three watch configurations split \
         the cost: the alert without a hunt (`--escalate-on never`: tier 2's probes alone, the load starting with \
         the `ALERT` line); the alert escalated at once to its hunt with the defaults (`--hunt-mode auto`, \
         `--hunt-sample-bytes` 512 KiB, the 10 % budget, `--hunt-duration {secs}`); and the same hunt in \
         `--hunt-mode growth`. With a hunt the load starts when watch logs `hunting PID`, so it covers the hunt's \
         attach (its BPF programs' verification runs in watch's CPU), its first budget window and the rest of \
         the hunt; watch must then log that the hunt's report was written. {} rounds, each running every \
         configuration once, the order rotating. CPU per request is node's utime+stime over the requests wrk \
         counted (the probes run in node's time); watch's CPU is utime+stime of the watch process (the hunt \
         runs on a thread of it) over the load.",
        plan.load_reps
    );
    let header = [
        "node CPU per request (median; × untraced)",
        "watch CPU over the load (median)",
        "hunts written",
    ];
    let mut section = match Section::for_node_service(TITLE, about, &header, tools) {
        Ok(section) => section,
        Err(unavailable) => return Ok(*unavailable),
    };
    let service = HttpService::start(secs, false)?;
    let pid = service.pid().to_string();
    let reports = rel(&work_dir().join("escalation-reports"));
    fs::create_dir_all(&reports)?;
    let hunt_secs = secs.to_string();
    let watch = |listen: &str, escalation: &Escalation| {
        let mut argv = vec![
            "-p",
            &pid,
            "--interval",
            "1",
            "--warn-limit",
            "0.01",
            "--hunt-duration",
            &hunt_secs,
            "--listen",
            listen,
            "--reports",
            &reports,
        ];
        argv.extend_from_slice(escalation.args);
        tools.watch(&argv)
    };
    let configs: [(&str, Available<Option<&Escalation>>); 4] = [
        ("untraced", Ok(None)),
        ("watch, alert, no escalation (tier 2 only)", watched(tools, NO_HUNT)),
        ("watch, alert, escalated hunt (defaults)", watched(tools, DEFAULT_HUNT)),
        (
            "watch, alert, escalated hunt --hunt-mode growth",
            watched(tools, GROWTH_HUNT),
        ),
    ];
    let ticks = clock_ticks()?;
    // Per configuration: requests/s, node's and watch's CPU seconds per request of each run.
    let mut runs: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); configs.len()];
    let mut written = vec![0; configs.len()];
    interleave(plan.load_reps, &configs, |round, i, escalation| {
        let mut watching = None;
        if let Some(escalation) = escalation {
            let argv = watch(&free_loopback_addr()?, escalation);
            let mut running = Running::leakscope(&argv)?;
            running.wait_for(escalation.load_after, Duration::from_secs(60))?;
            watching = Some(running);
        }
        let pids: Vec<u32> = [service.pid()]
            .into_iter()
            .chain(watching.as_ref().map(Running::pid))
            .collect();
        let (rps, cpu) = service.load_cpu(secs, &pids, ticks)?;
        if let (Some(mut running), Some(escalation)) = (watching, escalation) {
            if escalation.hunts {
                running.wait_for("written to", Duration::from_secs(60))?;
                written[i] += 1;
            }
            signal(running.pid(), "TERM")?;
            let (status, _) = running.finish_polling(|_| None)?;
            ensure!(status.success(), "watch exited with {status}:\n{}", running.log());
        }
        let requests = rps * f64::from(secs);
        let watch_cpu = cpu.get(1).copied().unwrap_or(0.0);
        eprintln!(
            "round {round}/{}: {}: {rps:.0} requests/s, {:.1} µs node CPU per request, watch {watch_cpu:.2} s CPU",
            plan.load_reps,
            configs[i].0,
            cpu[0] / requests * 1e6
        );
        runs[i].push((rps, cpu[0] / requests, watch_cpu));
        Ok(())
    })?;
    section.commands = service.commands(
        secs,
        [NO_HUNT, DEFAULT_HUNT, GROWTH_HUNT]
            .iter()
            .map(|e| watch("127.0.0.1:WATCH_PORT", e))
            .collect::<Vec<_>>()
            .iter(),
    );

    let rps = |i: usize| runs[i].iter().map(|r| r.0).collect::<Vec<_>>();
    let cpu = |i: usize| median(&runs[i].iter().map(|r| r.1).collect::<Vec<_>>());
    let watch_cpu = |i: usize| median(&runs[i].iter().map(|r| r.2).collect::<Vec<_>>());
    let untraced = median(&rps(0));
    for (i, (name, escalation)) in configs.iter().enumerate() {
        let Some(columns) = rps_columns(&rps(i), untraced, 2) else {
            continue;
        };
        let cpu_cell = match (cpu(i), cpu(0)) {
            (Some(c), Some(u)) => format!("{:.1} µs ({:.2} ×)", c * 1e6, c / u),
            _ => "–".into(),
        };
        let (watch_cell, hunts) = match escalation {
            Ok(Some(e)) => (
                watch_cpu(i).map_or("–".into(), |c| format!("{c:.2} s")),
                if e.hunts {
                    format!("{} of {}", written[i], runs[i].len())
                } else {
                    "–".into()
                },
            ),
            _ => ("–".into(), "–".into()),
        };
        section
            .rows
            .push([vec![name.to_string()], columns, vec![cpu_cell, watch_cell, hunts]].concat());
    }
    if let (Some(u), Some(w)) = (untraced, stats(&rps(2))) {
        section.notes.push(throughput_note(
            "watch through an alert and its escalated hunt (defaults) ≥ 0.95 × untraced requests/s",
            w.median / u,
            TARGET,
            2,
            "",
        ));
    }
    Ok(section)
}

/// How a watch configuration of the section runs.
struct Escalation {
    /// Added to watch's command line.
    args: &'static [&'static str],
    /// The log line after which the load starts.
    load_after: &'static str,
    /// Whether the alert starts a hunt, which must write its report.
    hunts: bool,
}

/// The alert is raised, not escalated: the load starts with it.
const NO_HUNT: &Escalation = &Escalation {
    args: &["--escalate-on", "never"],
    load_after: "ALERT",
    hunts: false,
};
const DEFAULT_HUNT: &Escalation = &Escalation {
    args: &[],
    load_after: "hunting PID",
    hunts: true,
};
const GROWTH_HUNT: &Escalation = &Escalation {
    args: &["--hunt-mode", "growth"],
    load_after: "hunting PID",
    hunts: true,
};

fn watched(tools: &Tools, escalation: &'static Escalation) -> Available<Option<&'static Escalation>> {
    tools.watching().map(|()| Some(escalation))
}
