//! 2b: a launch-mode hunt of a program that leaks once at each of 10k distinct stacks.

use std::fs;

use anyhow::{Context as _, Result};

use super::{
    compile, fmt_secs, json_count, logged_secs, output_stderr, rel, shell_line, stats, work_dir, Plan, Section, Tools,
    LEAVES, LOGGED,
};

pub(super) const TITLE: &str = "2b. Symbolization of 10k distinct stacks";

pub(super) fn distinct_stacks(plan: &Plan, tools: &Tools) -> Result<Section> {
    let prog = compile("many_stacks")?;
    let report_path = work_dir().join("stacks.json");
    let report = rel(&report_path);
    let argv = tools.hunt(
        true,
        &["--format", "json", "-o", &report, "--", &prog, &LEAVES.to_string(), "1"],
    );
    let mut figures = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for run in 1..=plan.stack_reps {
        let log = output_stderr(&argv)?;
        let json = fs::read_to_string(&report_path)?;
        let sites = json
            .split_once("\"sites\":")
            .map_or(0, |(_, s)| s.matches("\"kind\":").count());
        let measured = [
            logged_secs(&log, LOGGED[0]),
            logged_secs(&log, LOGGED[1]),
            Some(sites as f64),
            // Each leaf's site has leaf() as its innermost frame.
            Some(json.matches("\"function\": \"leaf\"").count() as f64),
            json_count(&json, "stack_lost").map(|n| n as f64),
        ];
        for (values, value) in figures.iter_mut().zip(measured) {
            values.push(value.with_context(|| format!("missing figure in the log or report:\n{log}"))?);
        }
        eprintln!("run {run}/{}: {} sites at leaf()", plan.stack_reps, figures[3][run - 1]);
    }
    let [attached, built, sites, leaf_sites, lost] = &figures;
    let median = |v: &Vec<f64>| stats(v).map_or(0.0, |s| s.median);
    let mut notes = Vec::new();
    let missing = LEAVES as f64 - median(leaf_sites);
    if missing > 0.0 {
        notes.push(format!(
            "{missing:.0} of the {LEAVES} leaf stacks are missing from the report (median); `stack_lost` counts \
             {:.0} (their bytes still count, under a site without frames).",
            median(lost)
        ));
    }
    Ok(Section {
        title: TITLE,
        about: format!(
            "`bench/many_stacks.c` walks a binary call tree of depth 14 whose first {LEAVES} leaves each malloc \
             one block and keep it: every level calls down through one of two call sites, so every block has \
             its own stack. Launch mode, default capacities. {} runs; times are median (min–max), seconds; \
             counts are medians.",
            plan.stack_reps
        ),
        commands: vec![shell_line(&argv)],
        header: vec![
            "load + attach",
            "report built",
            "sites",
            "sites at leaf()",
            "stack_lost",
        ],
        rows: vec![vec![
            fmt_secs(attached),
            fmt_secs(built),
            format!("{:.0}", median(sites)),
            format!("{:.0}", median(leaf_sites)),
            format!("{:.0}", median(lost)),
        ]],
        notes,
    })
}
