//! 1: ns per malloc+free pair of bench/malloc_free.c under each tracer.

use anyhow::Result;

use super::{
    compile, fmt_ns, libc_of, measure, needs, rel, shell_line, stats, unavailable, words, work_dir, Available, Plan,
    Section, Tools, TrapFloor, SAMPLE_BYTES,
};

pub(super) const TITLE: &str = "1. malloc/free microbenchmark";

/// The target for the cost of an exact hunt, as a fraction of the naive floor.
const EXACT_TARGET: f64 = 0.35;
/// Issue 12's targets: exact and sampled as fractions of the naive floor,
/// exact as a multiple of heaptrack.
const EXACT_FLOOR_TARGET: f64 = 0.25;
const SAMPLED_FLOOR_TARGET: f64 = 0.15;
const EXACT_HEAPTRACK_TARGET: f64 = 2.0;

pub(super) fn malloc_free(plan: &Plan, tools: &Tools) -> Result<Section> {
    let prog = compile("malloc_free")?;
    let libc = libc_of(&prog)?;
    let pairs = plan.pairs.to_string();
    let target = [prog.as_str(), pairs.as_str()];
    let report = rel(&work_dir().join("malloc_free.json"));
    let hunt = |extra: &[&str]| {
        let args = [extra, &["--format", "json", "-o", &report, "--"], &target].concat();
        tools.hunt(false, &args)
    };
    // `-c` starts the command once the probes are attached; `/pid == cpid/`
    // scopes them to it.
    let bpftrace = |script: &str| {
        needs(tools.bpftrace, "bpftrace").map(|()| words(&["bpftrace", script, &libc, "-c", &target.join(" ")]))
    };
    let heaptrack_out = rel(&work_dir().join("heaptrack/malloc_free"));
    let trap_floor = TrapFloor::at_placements(tools, &libc, &words(&[&prog, "0"]))?;
    // Indices in `configs` of the figures that the notes compare.
    const UNTRACED: usize = 0;
    const FLOOR: usize = 1;
    const TRAPS: usize = 2;
    const EXACT: usize = 3;
    const SAMPLED: usize = 4;
    const PEER: usize = 5;
    const HEAPTRACK: usize = 6;
    let configs: [(&str, Available<Vec<String>>); 7] = [
        ("untraced", Ok(words(&target))),
        ("naive floor: empty bpftrace uprobes", bpftrace("bench/floor.bt")),
        (
            "trap floor: empty programs at leakscope's placements",
            Ok(trap_floor.argv(false, &words(&target))),
        ),
        ("leakscope exact", Ok(hunt(&[]))),
        (
            "leakscope sampled",
            tools.sampling().map(|()| hunt(&["--sample-bytes", SAMPLE_BYTES])),
        ),
        ("peer: bpftrace memleak-style script", bpftrace("bench/memleak.bt")),
        (
            "heaptrack (LD_PRELOAD)",
            needs(tools.heaptrack, "heaptrack").map(|()| {
                words(&["heaptrack", "-o", &heaptrack_out])
                    .into_iter()
                    .chain(words(&target))
                    .collect()
            }),
        ),
    ];
    // A configuration that fails once is reported as failed, not retried.
    let mut samples: Vec<Available<Vec<f64>>> = configs
        .iter()
        .map(|(_, argv)| argv.as_ref().map(|_| Vec::new()).map_err(Clone::clone))
        .collect();
    for rep in 1..=plan.reps {
        for ((name, argv), sample) in configs.iter().zip(&mut samples) {
            let (Ok(argv), Ok(values)) = (argv, sample.as_mut()) else {
                continue;
            };
            match measure(argv) {
                Ok(ns) => {
                    eprintln!("rep {rep}/{}: {name}: {ns} ns/pair", plan.reps);
                    values.push(ns);
                }
                Err(e) => *sample = Err(format!("failed: {e:#}")),
            }
        }
    }

    let median_of = |i: usize| samples[i].as_ref().ok().and_then(|v| stats(v)).map(|s| s.median);
    let (untraced, floor) = (median_of(UNTRACED), median_of(FLOOR));
    let mut rows = Vec::new();
    for ((name, _), sample) in configs.iter().zip(&samples) {
        let figures = match sample.as_ref().map(|v| stats(v)) {
            Ok(Some(s)) => {
                let ratio = |base: Option<f64>| base.map_or("–".into(), |b| format!("{:.2}", s.median / b));
                vec![
                    fmt_ns(s.median),
                    fmt_ns(s.min),
                    fmt_ns(s.max),
                    ratio(floor),
                    ratio(untraced),
                ]
            }
            Ok(None) => unavailable("no measurement"),
            Err(why) => unavailable(why),
        };
        rows.push([vec![name.to_string()], figures].concat());
    }

    let mut notes = Vec::new();
    match (median_of(EXACT), floor) {
        (Some(exact), Some(floor)) => {
            let ratio = exact / floor;
            notes.push(if ratio <= EXACT_TARGET {
                format!("Issue target, leakscope exact ≤ {EXACT_TARGET} × floor: **met** ({ratio:.2} ×).")
            } else {
                format!(
                    "Issue target, leakscope exact ≤ {EXACT_TARGET} × floor: **missed** ({ratio:.2} ×): \
                     {} ns/pair against a target of {} ns/pair, {:.0} % too slow.",
                    fmt_ns(exact),
                    fmt_ns(EXACT_TARGET * floor),
                    (ratio / EXACT_TARGET - 1.0) * 100.0
                )
            });
        }
        _ => notes.push("Issue target (exact ≤ 0.35 × floor) not checked: the floor or exact was not measured.".into()),
    }
    if let (Some(exact), Some(peer)) = (median_of(EXACT), median_of(PEER)) {
        notes.push(format!(
            "leakscope exact costs {:.2} × the memleak-style bpftrace peer.",
            exact / peer
        ));
    }
    let target_note = |what: &str, value: Option<f64>, target: f64, unit: &str| {
        value.map_or(
            format!("Issue 12's target, {what} ≤ {target}{unit}: not measured."),
            |v| {
                let verdict = if v <= target { "met" } else { "missed" };
                format!("Issue 12's target, {what} ≤ {target}{unit}: **{verdict}** ({v:.2}{unit}).")
            },
        )
    };
    let over = |a: usize, b: Option<f64>| Some(median_of(a)? / b?);
    let heaptrack = median_of(HEAPTRACK);
    notes.push(target_note(
        "leakscope exact",
        over(EXACT, floor),
        EXACT_FLOOR_TARGET,
        " × floor",
    ));
    notes.push(target_note(
        "leakscope exact",
        over(EXACT, heaptrack),
        EXACT_HEAPTRACK_TARGET,
        " × heaptrack",
    ));
    notes.push(target_note(
        "leakscope sampled",
        over(SAMPLED, floor),
        SAMPLED_FLOOR_TARGET,
        " × floor",
    ));
    if let Some(traps) = over(TRAPS, heaptrack) {
        notes.push(format!(
            "The trap floor (`bench/empty_probes.c`: programs that only return, on multi-links at the file offsets \
             where leakscope probes malloc, entry and return, {:#x}, and free, {:#x}) costs {traps:.2} × \
             heaptrack's pair: what uprobes cost here before any program runs.",
            trap_floor.malloc, trap_floor.free
        ));
    }
    Ok(Section {
        title: TITLE,
        about: format!(
            "`bench/malloc_free.c` (gcc -O2 -g -fno-omit-frame-pointer) keeps 1024 blocks of mixed sizes \
             (16 B to 4000 B) and replaces one per step; it prints the ns per malloc+free pair of its loop. \
             {} pairs per run; {} runs of each configuration, interleaved. Ratios are of medians. \
             The bpftrace scripts probe `{libc}`, the libc the program loads. \
             leakscope's reader shares the 2 cores with the target and with whatever else runs (the bpftrace \
             floor has no such reader), so its ratios move with the load average above.",
            plan.pairs, plan.reps
        ),
        commands: configs
            .iter()
            .filter_map(|(_, argv)| argv.as_ref().ok())
            .map(|a| shell_line(a))
            .collect(),
        header: vec![
            "configuration",
            "ns/pair (median)",
            "min",
            "max",
            "× floor",
            "× untraced",
        ],
        rows,
        notes,
    })
}
