//! 2a: the `-v` timings of short hunts attached to idle processes.

use std::fs;

use anyhow::{Context as _, Result};

use super::{
    compile, fmt_secs, has_node_section, logged_secs, output_stderr, rel, shell_line, stats, target_note, unavailable,
    words, work_dir, Plan, Running, Section, Tools, LOGGED,
};

pub(super) const TITLE: &str = "2a. Time to attach and to report";

pub(super) fn attach(plan: &Plan, tools: &Tools) -> Result<Section> {
    let sleeper = compile("hold_many")?;
    let report = rel(&work_dir().join("attach.json"));
    let mut targets = vec![(
        "C program asleep in read (bench/hold_many.c)",
        Running::target(&words(&[&sleeper, "0"]), "waiting")?,
    )];
    if tools.node {
        // It prints once its event loop is set up, so the attach sees a started node.
        let node = ["node", "-e", "setInterval(() => {}, 1000); console.log('ready')"];
        targets.push((
            "node -e 'setInterval(() => {}, 1000)'",
            Running::target(&words(&node), "ready")?,
        ));
    }
    let hunt = |pid: &str| {
        tools.hunt(
            true,
            &[
                "--mode",
                "exact",
                "--duration",
                "1",
                "-p",
                pid,
                "--format",
                "json",
                "-o",
                &report,
            ],
        )
    };
    let mut timings = vec![[Vec::new(), Vec::new(), Vec::new()]; targets.len()];
    let mut node_probes = false;
    for rep in 1..=plan.reps {
        for ((name, target), timing) in targets.iter().zip(&mut timings) {
            let log = output_stderr(&hunt(&target.pid().to_string()))?;
            for (phrase, values) in LOGGED.iter().zip(timing.iter_mut()) {
                values.push(logged_secs(&log, phrase).with_context(|| format!("no `{phrase}` line in:\n{log}"))?);
            }
            node_probes |= has_node_section(&fs::read_to_string(&report)?);
            eprintln!(
                "rep {rep}/{}: {name}: attached in {} s",
                plan.reps,
                timing[0].last().expect("pushed")
            );
        }
    }
    let mut rows: Vec<Vec<String>> = targets
        .iter()
        .zip(&timings)
        .map(|((name, _), timing)| [vec![name.to_string()], timing.iter().map(|v| fmt_secs(v)).collect()].concat())
        .collect();
    if !tools.node {
        rows.push([vec!["node".to_string()], unavailable("not available: `node` not found")].concat());
    }
    let mut notes =
        vec!["An idle target leaves next to nothing to symbolize: 2b times the report of 10k stacks.".into()];
    // Issue targets: attach ≤ 1 s (libc target) and ≤ 3 s (Node target); report ≤ 1 s after the hunt.
    for ((name, _), timing) in targets.iter().zip(&timings) {
        let limit = if name.starts_with("node") { 3.0 } else { 1.0 };
        if let (Some(attach), Some(report)) = (stats(&timing[0]), stats(&timing[1])) {
            notes.push(target_note(
                &format!("{name}: attach ≤ {limit} s"),
                attach.median,
                limit,
                "s",
                "",
            ));
            notes.push(target_note(
                &format!("{name}: report ≤ 1 s after the hunt"),
                report.median,
                1.0,
                "s",
                "",
            ));
        }
    }
    if node_probes {
        notes.push(
            "On node, leakscope also attached its Node-specific probes (the reports have a `node` section): \
             load + attach includes resolving them."
                .into(),
        );
    }
    Ok(Section {
        title: TITLE,
        about: format!(
            "leakscope attaches to an idle process for 1 s; the times are those of its `-v` log lines \
             (`loaded and attached in`, `report built … after the hunt ended`, `detached in`). {} runs per target, \
             interleaved; median (min–max), seconds.",
            plan.reps
        ),
        commands: vec![shell_line(&hunt("PID"))],
        header: vec!["target", "load + attach", "report built", "detach"],
        rows,
        notes,
    })
}
