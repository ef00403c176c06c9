//! 6: what a hunt costs regardless of the target's work (6a: attach, detach,
//! a whole launch), and what an exact hunt costs per malloc+free pair,
//! divided between the traps and the BPF programs (6b).

use anyhow::{Context as _, Result};

use super::{
    compile, fmt_ns, fmt_secs, libc_of, logged_secs, measure, median, needs, output_stderr, rel, shell_line, stats,
    timed, unavailable, words, work_dir, Plan, Running, Section, Tools, TrapFloor,
};

pub(super) const TITLE_FIXED: &str = "6a. Fixed costs: attach, detach, launch";
pub(super) const TITLE_PER_PAIR: &str = "6b. Exact mode per malloc+free pair: traps and programs";

/// The target for a launch's fixed cost (attach + detach, C program).
const LAUNCH_TARGET_S: f64 = 0.3;

pub(super) fn fixed_costs(plan: &Plan, tools: &Tools) -> Result<Section> {
    let sleeper = compile("hold_many")?;
    let pairs = compile("malloc_free")?;
    let report = rel(&work_dir().join("cost.json"));
    let mut targets = vec![(
        "attach: C program asleep in read (bench/hold_many.c)",
        Running::target(&words(&[&sleeper, "0"]), "waiting")?,
    )];
    if tools.node {
        let node = ["node", "-e", "setInterval(() => {}, 1000); console.log('ready')"];
        targets.push((
            "attach: node -e 'setInterval(() => {}, 1000)'",
            Running::target(&words(&node), "ready")?,
        ));
    }
    let common = ["--mode", "exact", "--format", "json", "-o", &report];
    let attach = |pid: &str| tools.hunt(true, &[&common[..], &["--duration", "1", "-p", pid]].concat());
    let launch = tools.hunt(true, &[&common[..], &["--", &pairs, "0"]].concat());
    let untraced = words(&[&pairs, "0"]);
    // attach, detach (logged); for the launch also its wall time and the untraced one's.
    let mut logged = vec![[Vec::new(), Vec::new()]; targets.len() + 1];
    let (mut launch_wall, mut untraced_wall) = (Vec::new(), Vec::new());
    let phrases = ["loaded and attached in ", "detached in "];
    let mut record = |row: usize, log: &str| -> Result<()> {
        for (phrase, values) in phrases.iter().zip(logged[row].iter_mut()) {
            values.push(logged_secs(log, phrase).with_context(|| format!("no `{phrase}` line in:\n{log}"))?);
        }
        Ok(())
    };
    for rep in 1..=plan.reps {
        for (row, (name, target)) in targets.iter().enumerate() {
            record(row, &output_stderr(&attach(&target.pid().to_string()))?)?;
            eprintln!("rep {rep}/{}: {name}", plan.reps);
        }
        untraced_wall.push(timed(&untraced)?.secs);
        let started = std::time::Instant::now();
        let log = output_stderr(&launch)?;
        launch_wall.push(started.elapsed().as_secs_f64());
        record(targets.len(), &log)?;
    }
    let mut rows: Vec<Vec<String>> = targets
        .iter()
        .map(|(name, _)| name.to_string())
        .chain(["launch: hunt -- bench/malloc_free.c 0 (no pairs)".to_string()])
        .zip(&logged)
        .map(|(name, [attached, detached])| vec![name, fmt_secs(attached), fmt_secs(detached), String::new()])
        .collect();
    let fixed: Vec<f64> = launch_wall.iter().zip(&untraced_wall).map(|(l, u)| l - u).collect();
    if let Some(row) = rows.last_mut() {
        row[3] = fmt_secs(&fixed);
    }
    let mut notes = vec![
        "Uprobes are attached with one multi-link per program and module (kernel 6.6+) and detached \
         with one close each; the tracepoints and page-fault events are disabled at once and closed by a \
         short-lived child, so `detached in` does not wait for their grace periods."
            .to_string(),
        "Wall times carry whatever else ran on the machine's 2 cores (see the load average).".to_string(),
    ];
    if let Some(fixed) = stats(&fixed) {
        notes.push(super::target_note(
            "launch fixed cost (hunt wall time − untraced wall time, C program) ≤ 0.3 s",
            fixed.median,
            LAUNCH_TARGET_S,
            "s",
            "",
        ));
    }
    Ok(Section {
        title: TITLE_FIXED,
        about: format!(
            "Seconds, median (min–max) of {} runs, interleaved. Attach and detach are leakscope's `-v` log lines \
             (`loaded and attached in`, `detached in`); the launch's fixed cost is the wall time of the whole \
             `leakscope hunt -- CMD` less that of CMD alone, for a command that makes no allocator call.",
            plan.reps
        ),
        commands: vec![shell_line(&attach("PID")), shell_line(&launch)],
        header: vec!["hunt", "load + attach", "detach", "launch fixed cost"],
        rows,
        notes,
    })
}

pub(super) fn per_pair(plan: &Plan, tools: &Tools) -> Result<Section> {
    let program = compile("malloc_free")?;
    let pairs = plan.pairs.to_string();
    let report = rel(&work_dir().join("cost.json"));
    let untraced = words(&[&program, &pairs, "cpu"]);
    let floor = TrapFloor::at_placements(tools, &libc_of(&program)?, &words(&[&program, "0"]))?;
    let heaptrack_out = rel(&work_dir().join("heaptrack/cost"));
    let heaptrack = needs(tools.heaptrack, "heaptrack")
        .map(|()| [words(&["heaptrack", "-o", &heaptrack_out]), untraced.clone()].concat());
    // The kernel's run-time statistics, on for these runs only: a budget
    // would turn them on too, but would switch modes at its limit.
    let _stats = BpfStats::enable()?;
    let exact = tools.hunt(
        true,
        &[
            "--mode", "exact", "--format", "json", "-o", &report, "--", &program, &pairs, "cpu",
        ],
    );
    let others = [
        (
            "empty programs at leakscope's placements (the trap floor)",
            Ok(floor.argv(false, &untraced)),
        ),
        (
            "the same, malloc's entry a session uprobe that declines its return",
            Ok(floor.argv(true, &untraced)),
        ),
        ("heaptrack (LD_PRELOAD)", heaptrack),
    ];
    let (mut untraced_ns, mut traced_ns, mut programs_ns) = (Vec::new(), Vec::new(), Vec::new());
    // Per pair, each program's run time, from the `-v` log's `program NAME ran`
    // lines: malloc's entry and return probes and free's.
    let per_program = ["size_enter", "alloc_return", "free_enter"];
    let mut program_ns = vec![Vec::new(); per_program.len()];
    let mut others_ns = vec![Vec::new(); others.len()];
    for rep in 1..=plan.reps {
        untraced_ns.push(measure(&untraced)?);
        let out = super::command(&exact).output()?;
        anyhow::ensure!(out.status.success(), "`{}` failed ({})", shell_line(&exact), out.status);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let log = String::from_utf8_lossy(&out.stderr);
        traced_ns.push(
            stdout
                .lines()
                .rev()
                .find_map(|l| l.trim().parse().ok())
                .context("the traced run printed no figure")?,
        );
        let ran_ms: f64 = log
            .lines()
            .find_map(|l| {
                l.split_once("the BPF programs ran ")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .with_context(|| format!("no `the BPF programs ran` line in:\n{log}"))?;
        programs_ns.push(ran_ms * 1e6 / plan.pairs as f64);
        for (name, values) in per_program.iter().zip(&mut program_ns) {
            let phrase = format!("program {name} ran ");
            let ms: f64 = log
                .lines()
                .find_map(|l| l.split_once(&phrase)?.1.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("no `{phrase}` line in:\n{log}"))?;
            values.push(ms * 1e6 / plan.pairs as f64);
        }
        for ((_, argv), values) in others.iter().zip(&mut others_ns) {
            if let Ok(argv) = argv {
                values.push(measure(argv)?);
            }
        }
        eprintln!("rep {rep}/{}", plan.reps);
    }
    let traps_ns: Vec<f64> = traced_ns
        .iter()
        .zip(&untraced_ns)
        .zip(&programs_ns)
        .map(|((traced, untraced), programs)| traced - untraced - programs)
        .collect();
    let cell = |values: &[f64]| {
        stats(values).map_or("–".into(), |s| {
            format!("{} ({}–{})", fmt_ns(s.median), fmt_ns(s.min), fmt_ns(s.max))
        })
    };
    let mut rows = vec![
        vec!["untraced".into(), cell(&untraced_ns), "–".into(), "–".into()],
        vec![
            "hunt --mode exact".into(),
            cell(&traced_ns),
            cell(&programs_ns),
            cell(&traps_ns),
        ],
    ];
    for ((name, argv), values) in others.iter().zip(&others_ns) {
        rows.push(match argv {
            Ok(_) => vec![name.to_string(), cell(values), "–".into(), "–".into()],
            Err(why) => [vec![name.to_string()], unavailable(why)].concat(),
        });
    }
    let mut notes = vec![
        "The BPF programs' share is their run time as the kernel counts it (`kernel.bpf_stats_enabled`, set \
         for these runs only); the rest of the \
         traced CPU time over the untraced one is the traps: breakpoint exception, uprobe handler, \
         single-step or emulation, the return probe's trampoline."
            .to_string(),
        "CPU time (not wall time) is what the fixture measures, which other load on the machine's 2 \
         cores (see the load average) disturbs less."
            .to_string(),
        format!(
            "The trap floor is `bench/empty_probes.c`: programs that only return, on uprobe multi-links at the \
             file offsets where leakscope places its probes in {} (malloc {:#x}, entry and return; free {:#x}), \
             read from its `-v` log.",
            floor.libc, floor.malloc, floor.free
        ),
    ];
    if let (Some(traps), Some(programs)) = (median(&traps_ns), median(&programs_ns)) {
        notes.push(format!(
            "Per pair (three probe hits: malloc's entry and return, free's entry) the traps took {:.0}% and the \
             programs {:.0}% of the tracing cost.",
            100.0 * traps / (traps + programs),
            100.0 * programs / (traps + programs)
        ));
    }
    let by_program: Vec<String> = per_program
        .iter()
        .zip(&program_ns)
        .filter_map(|(name, values)| Some(format!("{name} {}", fmt_ns(median(values)?))))
        .collect();
    notes.push(format!(
        "The programs per pair, medians: {} (malloc's entry, its return, free's entry; the log's \
         `program NAME ran` lines).",
        by_program.join(", ")
    ));
    let base = median(&untraced_ns).unwrap_or(0.0);
    if let (Some(empty), Some(session), Some(heaptrack)) =
        (median(&others_ns[0]), median(&others_ns[1]), median(&others_ns[2]))
    {
        notes.push(format!(
            "Over the untraced pair, the trap floor costs {:.1} × heaptrack's CPU per pair, and {:.1} × with \
             malloc's return probe declined.",
            (empty - base) / (heaptrack - base),
            (session - base) / (heaptrack - base)
        ));
    }
    Ok(Section {
        title: TITLE_PER_PAIR,
        about: format!(
            "bench/malloc_free.c with `cpu`: the process's CPU time (user + system, where the probes run) per \
             malloc+free pair over {} pairs, ns, median (min–max) of {} runs, interleaved.",
            plan.pairs, plan.reps
        ),
        commands: [
            vec![shell_line(&untraced), shell_line(&exact)],
            others
                .iter()
                .filter_map(|(_, argv)| argv.as_ref().ok().map(|a| shell_line(a)))
                .collect(),
        ]
        .concat(),
        header: vec![
            "configuration",
            "CPU ns per pair",
            "of which BPF programs",
            "of which traps",
        ],
        rows,
        notes,
    })
}

/// `kernel.bpf_stats_enabled` set while this lives, then restored.
pub(super) struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub(super) fn enable() -> Result<Self> {
        let before = std::fs::read_to_string(BPF_STATS).with_context(|| format!("cannot read {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("cannot write {BPF_STATS}"))?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.before.trim());
    }
}
