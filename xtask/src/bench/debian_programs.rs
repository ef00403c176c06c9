//! 6c: real allocation-heavy programs from Debian, launched under leakscope
//! (exact, auto), heaptrack and valgrind: wall time side by side.

use anyhow::Result;

use super::{
    fmt_secs, median, needs, rel, shell_line, timed, unavailable, words, work_dir, Available, Plan, Section, Tools,
};

pub(super) const TITLE: &str = "6c. Real programs from Debian: wall time under each tool";

/// Each program with a workload that runs well under a second untraced and
/// makes hundreds of thousands of allocator calls.
const PROGRAMS: &[(&str, &[&str])] = &[
    (
        "lua5.4",
        &[
            "lua5.4",
            "-e",
            "local t = {} for i = 1, 150000 do t[i] = {i, tostring(i)} end t = nil collectgarbage()",
        ],
    ),
    ("jq", &["jq", "-n", "[range(100000) | {a: ., b: tostring}] | length"]),
    (
        "sqlite3",
        &[
            "sqlite3",
            ":memory:",
            "CREATE TABLE t(a, b); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) \
             INSERT INTO t SELECT x, printf('%050d', x) FROM c; CREATE INDEX i ON t(b); SELECT count(*) FROM t;",
        ],
    ),
    (
        "python3",
        &[
            "/usr/bin/python3",
            "-c",
            "d = {}\nfor i in range(300000): d[i] = str(i) * 3",
        ],
    ),
];

pub(super) fn debian_programs(plan: &Plan, tools: &Tools) -> Result<Section> {
    let report = rel(&work_dir().join("debian.json"));
    let heaptrack_out = rel(&work_dir().join("heaptrack/debian"));
    let hunt = |mode: &str| {
        words(&[
            &tools.leakscope,
            "hunt",
            "--mode",
            mode,
            "--format",
            "json",
            "-o",
            &report,
            "--",
        ])
    };
    let wrappers: [(&str, Available<Vec<String>>); 5] = [
        ("untraced", Ok(vec![])),
        ("leakscope exact", Ok(hunt("exact"))),
        ("leakscope auto", Ok(hunt("auto"))),
        (
            "heaptrack",
            needs(tools.heaptrack, "heaptrack").map(|()| words(&["heaptrack", "-o", &heaptrack_out])),
        ),
        (
            "valgrind memcheck",
            needs(super::setup::on_path("valgrind"), "valgrind")
                .map(|()| words(&["valgrind", "-q", "--leak-check=full", "--error-exitcode=0"])),
        ),
    ];
    let reps = if plan.quick { 1 } else { 3 };
    let commands = wrappers
        .iter()
        .filter_map(|(_, w)| w.as_ref().ok())
        .map(|w| format!("{} CMD", shell_line(w)).trim_start().to_string())
        .collect();
    let mut rows = Vec::new();
    for (name, program) in PROGRAMS {
        let program = words(program);
        if !super::setup::on_path(&program[0]) {
            rows.push(
                [
                    vec![name.to_string()],
                    unavailable(&format!("{} is not installed", program[0])),
                ]
                .concat(),
            );
            continue;
        }
        let mut secs: Vec<Available<Vec<f64>>> = wrappers
            .iter()
            .map(|(_, w)| w.as_ref().map(|_| Vec::new()).map_err(Clone::clone))
            .collect();
        // Interleaved: each rep runs every tool once.
        for _ in 0..reps {
            for ((_, wrapper), values) in wrappers.iter().zip(&mut secs) {
                let (Ok(wrapper), Ok(list)) = (wrapper, values.as_mut()) else {
                    continue;
                };
                let argv = [wrapper.clone(), program.clone()].concat();
                match timed(&argv) {
                    Ok(t) if t.status.success() => list.push(t.secs),
                    Ok(t) => *values = Err(format!("`{}` failed ({})", shell_line(&argv), t.status)),
                    Err(e) => *values = Err(format!("failed: {e:#}")),
                }
            }
        }
        let untraced = secs[0].as_ref().ok().and_then(|v| median(v));
        let cells = secs.iter().map(|values| match values {
            Ok(v) => match (median(v), untraced) {
                (Some(m), Some(u)) => format!("{} ({:.1} ×)", fmt_secs(v), m / u),
                _ => fmt_secs(v),
            },
            Err(why) => why.clone(),
        });
        rows.push([vec![name.to_string()], cells.collect()].concat());
    }
    let header = vec![
        "program",
        "untraced",
        "leakscope hunt --mode exact",
        "leakscope hunt --mode auto",
        "heaptrack",
        "valgrind",
    ];
    Ok(Section {
        title: TITLE,
        about: format!(
            "Wall time in seconds, median (min–max) of {reps} runs, interleaved; × untraced in brackets. Each \
             program is launched by the tool (`hunt -- CMD`, `heaptrack CMD`, `valgrind CMD`), so the times \
             include each tool's start and its report. Workloads: {}.",
            PROGRAMS
                .iter()
                .map(|(name, argv)| format!("{name}: `{}`", argv[1..].join(" ").replace('\n', "; ")))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        commands,
        header,
        rows,
        notes: vec![
            "Exact mode traps every allocator call (three traps per malloc+free pair, section 6b), so its cost \
             follows the program's allocation rate; auto mode in launch mode starts exact and switches to growth \
             mode once the probes pass `--max-overhead` (10 %), which these programs do within their first \
             budget window."
                .into(),
        ],
    })
}
