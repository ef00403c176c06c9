//! 5: the Node.js HTTP service of section 3 under `hunt -p PID` in each
//! mode: requests/s and the service's CPU per request, ratios in one run.

use std::{fs, time::Duration};

use anyhow::{bail, Result};
use serde_json::Value;

use super::{
    clock_ticks, interleave, median, rel, rps_columns, signal, work_dir, Available, HttpService, Plan, Running,
    Section, Tools,
};

pub(super) const TITLE: &str = "5. hunt modes on the Node.js HTTP service under load";

pub(super) fn hunt_modes(plan: &Plan, tools: &Tools) -> Result<Section> {
    let about = format!(
        "The service and load of section 3; {} s of wrk per run, {} runs per configuration, interleaved. \
         `hunt -p PID` attaches before each traced load and is interrupted after it: with the defaults (`auto`: \
         exact within `--max-overhead 10`, growth mode beyond), `--mode growth` (page faults, mappings, V8's \
         page and GC hooks, no malloc or Buffer probes) and `--mode exact`. CPU per request is node's utime+stime (from \
         /proc) over the requests wrk counted; the traced runs include the probes' cost, which runs in node's time.",
        plan.load_secs, plan.load_reps
    );
    let header = [
        "CPU per request (median)",
        "× untraced CPU",
        "started in growth; switched to growth",
        "leaks found: Buffers; zlib",
    ];
    let mut section = match Section::for_node_service(TITLE, about, &header, tools) {
        Ok(section) => section,
        Err(unavailable) => return Ok(*unavailable),
    };
    let service = HttpService::start(2, true)?;
    let report_path = work_dir().join("hunt_modes.json");
    let report = rel(&report_path);
    let pid = service.pid().to_string();
    let hunt = |extra: &[&str]| {
        tools.hunt(
            false,
            &[extra, &["-p", &pid, "--format", "json", "-o", &report]].concat(),
        )
    };
    let configs: [(&str, Available<Option<Vec<String>>>); 4] = [
        ("untraced", Ok(None)),
        ("hunt -p PID (defaults: auto)", Ok(Some(hunt(&[])))),
        ("hunt --mode growth", Ok(Some(hunt(&["--mode", "growth"])))),
        ("hunt --mode exact", Ok(Some(hunt(&["--mode", "exact"])))),
    ];
    let ticks = clock_ticks()?;
    let mut rps = vec![Vec::new(); configs.len()];
    let mut cpu_us = vec![Vec::new(); configs.len()];
    // Per configuration: hunts that started in growth mode, and that switched to it.
    let mut growth = vec![(0, 0); configs.len()];
    // Per configuration: reports with a growing finding at each leak.
    let mut found = vec![(0, 0); configs.len()];
    interleave(plan.load_reps, &configs, |round, i, hunt_argv| {
        let mut hunt = hunt_argv.as_deref().map(Running::leakscope).transpose()?;
        if let Some(hunt) = hunt.as_mut() {
            hunt.wait_for("attached to PID", Duration::from_secs(60))?;
        }
        let (requests_per_s, cpu) = service.load_cpu(plan.load_secs, &[service.pid()], ticks)?;
        if let Some(mut hunt) = hunt {
            signal(hunt.pid(), "INT")?;
            let (status, _) = hunt.finish_polling(|_| None)?;
            if !status.success() {
                bail!("leakscope ended with {status} on the Node.js service:\n{}", hunt.log());
            }
            let written = fs::read_to_string(&report_path)?;
            growth[i].0 += usize::from(written.contains("\"growth_start\""));
            growth[i].1 += usize::from(written.contains("\"switched\""));
            let report: Value = serde_json::from_str(&written)?;
            found[i].0 += usize::from(has_growing_finding(&report, "keepUpload"));
            found[i].1 += usize::from(has_growing_finding(&report, "keepStream"));
        }
        let per_request_us = cpu[0] / (requests_per_s * f64::from(plan.load_secs)) * 1e6;
        eprintln!(
            "round {round}/{}: {}: {requests_per_s:.0} requests/s, {per_request_us:.1} µs CPU per request",
            plan.load_reps, configs[i].0
        );
        rps[i].push(requests_per_s);
        cpu_us[i].push(per_request_us);
        Ok(())
    })?;
    let (untraced_rps, untraced_cpu) = (median(&rps[0]), median(&cpu_us[0]));
    for (i, (name, _)) in configs.iter().enumerate() {
        let Some(columns) = rps_columns(&rps[i], untraced_rps, 2) else {
            continue;
        };
        let cpu = median(&cpu_us[i]);
        let cpu_ratio = match (cpu, untraced_cpu) {
            (Some(cpu), Some(untraced)) => format!("{:.2}", cpu / untraced),
            _ => "–".into(),
        };
        let runs = rps[i].len();
        let of_runs = |(a, b): (usize, usize)| match i {
            0 => "–".to_string(),
            _ => format!("{a} of {runs}; {b} of {runs}"),
        };
        let cpu = cpu.map_or("–".into(), |c| format!("{c:.1} µs"));
        section.rows.push(
            [
                vec![name.to_string()],
                columns,
                vec![cpu, cpu_ratio, of_runs(growth[i]), of_runs(found[i])],
            ]
            .concat(),
        );
    }
    section.notes.push(
        "Target (issue 12): `hunt -p PID` with the defaults ≥ 0.95 × untraced requests/s. Here the hunt attaches \
         to the idle service, before its load: auto then starts exact (a busy node would start in growth mode) \
         and pays exact mode's cost until its first budget window (0.1 s after attaching, then every 0.25 s) \
         finds it over budget, then detaches the per-call uprobes in the background while growth mode carries on."
            .into(),
    );
    section.notes.push(
        "The service runs with `--leak`: every 500th request keeps a 16 KiB Buffer (`keepUpload`), every 2000th an \
         open deflate stream (`keepStream`: zlib's native state). A leak is found when the hunt's report has a \
         finding titled by that function with the verdict `leak` or `growing`."
            .into(),
    );
    let hunts = configs.iter().filter_map(|(_, config)| config.as_ref().ok()?.as_ref());
    section.commands = service.commands(plan.load_secs, hunts);
    Ok(section)
}

/// Whether `report` has a finding titled by JS function `function` that grows.
fn has_growing_finding(report: &Value, function: &str) -> bool {
    report["findings"].as_array().into_iter().flatten().any(|finding| {
        finding["title"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("{function} ")))
            && matches!(finding["verdict"].as_str(), Some("leak" | "growing"))
    })
}
