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
         whose memory-limit rule fires at its first sample (`--warn-limit 0.01`), so that it escalates at once to \
         its hunt (sampled at `--hunt-sample-bytes`' default, within auto mode's 10 % budget, `--hunt-duration \
         {secs}`). The load starts when watch logs `hunting PID`, so it covers the hunt's attach, its first budget \
         window and the rest of the hunt; watch must then log that the hunt's report was written. {} rounds, \
         each running both once, the order rotating. CPU per request is node's utime+stime over the requests wrk \
         counted (the probes run in node's time).",
        plan.load_reps
    );
    let header = ["CPU per request (median; × untraced)", "hunts written"];
    let mut section = match Section::for_node_service(TITLE, about, &header, tools) {
        Ok(section) => section,
        Err(unavailable) => return Ok(*unavailable),
    };
    let service = HttpService::start(secs)?;
    let pid = service.pid().to_string();
    let reports = rel(&work_dir().join("escalation-reports"));
    fs::create_dir_all(&reports)?;
    let hunt_secs = secs.to_string();
    let watch = |listen: &str| {
        tools.watch(&[
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
        ])
    };
    let configs: [(&str, Available<bool>); 2] = [
        ("untraced", Ok(false)),
        ("watch, alert, escalated hunt", tools.watching().map(|()| true)),
    ];
    let ticks = clock_ticks()?;
    // Per configuration: requests/s and CPU seconds per request of each run.
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); configs.len()];
    let mut written = 0;
    interleave(plan.load_reps, &configs, |round, i, &watched| {
        let mut watching = None;
        if watched {
            let argv = watch(&free_loopback_addr()?);
            let mut running = Running::leakscope(&argv)?;
            running.wait_for("hunting PID", Duration::from_secs(60))?;
            watching = Some(running);
        }
        let (rps, cpu) = service.load_cpu(secs, &[service.pid()], ticks)?;
        if let Some(mut running) = watching {
            running.wait_for("written to", Duration::from_secs(60))?;
            written += 1;
            signal(running.pid(), "TERM")?;
            let (status, _) = running.finish_polling(|_| None)?;
            ensure!(status.success(), "watch exited with {status}:\n{}", running.log());
        }
        let per_request = cpu[0] / (rps * f64::from(secs));
        eprintln!(
            "round {round}/{}: {}: {rps:.0} requests/s, {:.1} µs CPU per request",
            plan.load_reps,
            configs[i].0,
            per_request * 1e6
        );
        runs[i].push((rps, per_request));
        Ok(())
    })?;
    section.commands = service.commands(secs, [&watch("127.0.0.1:WATCH_PORT")]);

    let rps = |i: usize| runs[i].iter().map(|r| r.0).collect::<Vec<_>>();
    let cpu = |i: usize| median(&runs[i].iter().map(|r| r.1).collect::<Vec<_>>());
    let untraced = median(&rps(0));
    for (i, (name, _)) in configs.iter().enumerate() {
        let Some(columns) = rps_columns(&rps(i), untraced, 2) else {
            continue;
        };
        let cpu_cell = match (cpu(i), cpu(0)) {
            (Some(c), Some(u)) => format!("{:.1} µs ({:.2} ×)", c * 1e6, c / u),
            _ => "–".into(),
        };
        let hunts = if i == 0 {
            "–".into()
        } else {
            format!("{written} of {}", runs[i].len())
        };
        section
            .rows
            .push([vec![name.to_string()], columns, vec![cpu_cell, hunts]].concat());
    }
    if let (Some(u), Some(w)) = (untraced, stats(&rps(1))) {
        section.notes.push(throughput_note(
            "watch through an alert and its escalated hunt ≥ 0.95 × untraced requests/s",
            w.median / u,
            TARGET,
            2,
            "The escalated hunt traps every allocator call (it samples only after the trap) until its first \
             budget window finds it over 10 %, then carries on in growth mode; the load covers that start.",
        ));
    }
    Ok(section)
}
