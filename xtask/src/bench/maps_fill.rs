//! 2d: tiny maps against a busy allocator with many stacks: the losses must be
//! counted, and neither leakscope nor the target may fail or stall.

use std::fs;

use anyhow::Result;

use super::{compile, drops, exit, rel, shell_line, timed, words, work_dir, Plan, Section, Timed, Tools, LEAVES};

pub(super) const TITLE: &str = "2d. When the maps fill";

pub(super) fn maps_fill(plan: &Plan, tools: &Tools) -> Result<Section> {
    let prog = compile("many_stacks")?;
    let report_path = work_dir().join("fill.json");
    let report = rel(&report_path);
    let workload = words(&[&prog, &LEAVES.to_string(), &plan.fill_rounds.to_string(), "4"]);
    let argv = [
        tools.hunt(
            false,
            &[
                "--ring-buffer-mib",
                "1",
                "--max-stacks",
                "64",
                "--format",
                "json",
                "-o",
                &report,
                "--",
            ],
        ),
        workload.clone(),
    ]
    .concat();
    let untraced = timed(&workload)?;
    let traced = timed(&argv)?;
    let json = fs::read_to_string(&report_path)?;
    let row = |name: &str, run: &Timed, drops: String| {
        let completed = if run.stdout.contains("done") { "yes" } else { "**no**" };
        vec![
            name.into(),
            format!("{:.2} s", run.secs),
            exit(run.status),
            completed.into(),
            drops,
        ]
    };
    let rows = vec![
        row("untraced", &untraced, "–".into()),
        row("leakscope --ring-buffer-mib 1 --max-stacks 64", &traced, drops(&json)),
    ];
    let mut notes = vec![];
    if !traced.status.success() || !traced.stdout.contains("done") {
        notes.push("**leakscope or the target failed under full maps.**".into());
    }
    Ok(Section {
        title: TITLE,
        about: format!(
            "`bench/many_stacks.c` with 4 threads, each walking the {LEAVES} stacks {} times (the first walk keeps \
             its blocks, later ones malloc and free), under the smallest maps. Launch mode, so leakscope's exit \
             status is the target's. One run each.",
            plan.fill_rounds
        ),
        commands: vec![shell_line(&workload), shell_line(&argv)],
        header: vec!["run", "wall time", "exit", "target printed `done`", "drops"],
        rows,
        notes,
    })
}
