//! 3: requests/s of a small Node.js HTTP service, untraced and under leakscope.

use std::{fs, time::Duration};

use anyhow::{bail, Result};

use super::{
    drops, has_node_section, interleave, median, rel, rps_columns, signal, throughput_note, unavailable, work_dir,
    Available, HttpService, Plan, Running, Section, Tools, SAMPLE_BYTES,
};

pub(super) const TITLE: &str = "3. Node.js HTTP service under load";

pub(super) fn http_service(plan: &Plan, tools: &Tools) -> Result<Section> {
    let about = format!(
        "`bench/http_service.js` (plain `http`; a 1 KiB Buffer and a small JSON body per request) on 127.0.0.1, \
         loaded by wrk (1 thread, 16 connections) for {} s per run after a 2 s warm-up; {} runs per configuration, \
         interleaved (the order rotating each round). leakscope attaches (`-p`) before each traced load and is \
         interrupted after it.",
        plan.load_secs, plan.load_reps
    );
    let header = ["drops (last run)"];
    let mut section = match Section::for_node_service(TITLE, about, &header, tools) {
        Ok(section) => section,
        Err(unavailable) => return Ok(*unavailable),
    };
    let service = HttpService::start(2, false)?;
    let report_path = work_dir().join("http.json");
    let report = rel(&report_path);
    let pid = service.pid().to_string();
    let hunt = |extra: &[&str]| {
        tools.hunt(
            false,
            &[extra, &["-p", &pid, "--format", "json", "-o", &report]].concat(),
        )
    };
    // The hunt to run during the load, if any.
    let configs: [(&str, Available<Option<Vec<String>>>); 3] = [
        ("untraced", Ok(None)),
        ("leakscope exact", Ok(Some(hunt(&["--mode", "exact"])))),
        (
            "leakscope sampled",
            tools.sampling().map(|()| Some(hunt(&["--sample-bytes", SAMPLE_BYTES]))),
        ),
    ];
    let mut samples = vec![Vec::new(); configs.len()];
    let mut last_drops = vec!["–".to_string(); configs.len()];
    let mut node_probes = false;
    interleave(plan.load_reps, &configs, |rep, i, hunt_argv| {
        let mut hunt = hunt_argv.as_deref().map(Running::leakscope).transpose()?;
        if let Some(hunt) = hunt.as_mut() {
            hunt.wait_for("attached to PID", Duration::from_secs(60))?;
        }
        let rps = service.load(plan.load_secs)?;
        if let Some(mut hunt) = hunt {
            signal(hunt.pid(), "INT")?;
            let (status, _) = hunt.finish_polling(|_| None)?;
            if !status.success() {
                bail!("leakscope ended with {status} on the Node.js service:\n{}", hunt.log());
            }
            let json = fs::read_to_string(&report_path)?;
            last_drops[i] = drops(&json);
            node_probes |= has_node_section(&json);
        }
        eprintln!("rep {rep}/{}: {}: {rps:.0} requests/s", plan.load_reps, configs[i].0);
        samples[i].push(rps);
        Ok(())
    })?;
    let untraced = median(&samples[0]);
    for (i, (name, config)) in configs.iter().enumerate() {
        let figures = match (config, rps_columns(&samples[i], untraced, 2)) {
            (Err(why), _) => unavailable(why),
            (Ok(_), None) => unavailable("no measurement"),
            (Ok(_), Some(columns)) => [columns, vec![last_drops[i].clone()]].concat(),
        };
        section.rows.push([vec![name.to_string()], figures].concat());
    }
    if let (Some(untraced), Some(sampled)) = (untraced, median(&samples[2])) {
        section.notes.push(throughput_note(
            "sampled ≥ 0.90 × untraced requests/s",
            sampled / untraced,
            0.9,
            2,
            "Why: Node calls malloc/free constantly (a node script that runs 0.1 s untraced made 444k mallocs and \
             453k frees) and every call still traps into the kernel (~1 µs per emulated uprobe hit per the field \
             notes; see section 1 for whole pairs); sampling only saves the BPF work after the trap. Reaching 90 % \
             needs fewer traps per call: uprobe sessions or multi-uprobes (not in aya 0.14), or probing only \
             Node's own allocators and page faults.",
        ));
    }
    section.notes.push(match node_probes {
        true => "The traced runs had leakscope's Node-specific probes live too (ArrayBuffer allocator, V8 pages, \
                 GC; the reports have a `node` section): the figures include their cost."
            .into(),
        false => "Node-specific probes (ArrayBuffer allocator, V8 heap pages, GC): not available in this build (the \
                  reports have no `node` section); leakscope traced node's libc allocator calls and mappings only."
            .into(),
    });
    let hunts = configs.iter().filter_map(|(_, config)| config.as_ref().ok()?.as_ref());
    section.commands = service.commands(plan.load_secs, hunts);
    Ok(section)
}
