//! 10: unwinding code built without frame pointers (docs/symbols.md,
//! "Unwinding"): frames per stack of Debian programs against
//! valgrind's for the same sites (10a), and what the kernel side's unwind
//! by rules costs per malloc+free pair against the frame-pointer walk (10b).

use std::{collections::HashMap, fs, path::Path};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    clock_ticks, compile_as, cost::BpfStats, drops, fmt_ns, interleave, logged_secs, measure, needs, rel,
    run_measuring_cpu, shell_line, stats, target_note, timed, unavailable, words, work_dir, Available, Plan, Section,
    Tools,
};

pub(super) const TITLE_FRAMES: &str = "10a. Unwinding: frames per stack of Debian programs, against valgrind";
pub(super) const TITLE_COST: &str = "10b. Unwinding: cost per malloc+free pair, against the frame-pointer walk";

/// Debian's builds (no frame pointers), each with a short workload that
/// allocates a lot and keeps it at exit (gawk and perl free nothing at exit,
/// python3 leaves by `os._exit`, git frees little); git reads this repository.
const PROGRAMS: &[(&str, &[&str])] = &[
    (
        "gawk",
        &[
            "/usr/bin/gawk",
            "BEGIN { for (i = 0; i < 20000; i++) a[i] = i \"abcdefgh\" }",
        ],
    ),
    (
        "python3",
        &[
            "/usr/bin/python3",
            "-c",
            "import os\nd = {}\nfor i in range(20000): d[i] = str(i) * 200\nos._exit(0)",
        ],
    ),
    ("git", &["/usr/bin/git", "log", "-n", "200", "--format=%H %an %s"]),
    (
        "perl",
        &["/usr/bin/perl", "-e", "my %h; $h{$_} = \"x\" x 100 for 1..20000"],
    ),
];

/// valgrind as the issue asks, without its freeing of libc's and libstdc++'s
/// own memory before it counts (a tracer never sees that, as in
/// tests/tests/valgrind_truth.rs).
const VALGRIND: &[&str] = &[
    "valgrind",
    "--leak-check=full",
    "--show-leak-kinds=all",
    "--num-callers=50",
    "--run-libc-freeres=no",
    "--run-cxx-freeres=no",
];

/// One allocation stack at exit: who allocated, what it still holds, where
/// its caller called it, and its frames from that caller out (the
/// allocator's own frame left out).
struct Stack {
    allocator: String,
    bytes: u64,
    blocks: u64,
    /// The offset in its page of the return address into the allocator's
    /// caller: the same in both tools' processes whatever their layout.
    caller: Option<u64>,
    frames: usize,
    /// Whether the stack reaches `main` or what calls it.
    whole: bool,
}

/// The functions at the root of a whole stack: `main` and the start-up code
/// below it, which valgrind shows as one `(below main)`.
const ROOTS: &[&str] = &[
    "main",
    "__libc_start_call_main",
    "__libc_start_main",
    "_start",
    "(below main)",
];

/// The offset in its page of an address.
fn page_offset(address: u64) -> u64 {
    address & 0xfff
}

pub(super) fn frames(_plan: &Plan, tools: &Tools) -> Result<Section> {
    let report = rel(&work_dir().join("unwinding.json"));
    let hunt = |mode: &str, walk: &str| {
        words(&[
            &tools.leakscope,
            "hunt",
            "--mode",
            mode,
            "--stack-walk",
            walk,
            "--format",
            "json",
            "-o",
            &report,
            "--",
        ])
    };
    let valgrind_log = rel(&work_dir().join("unwinding.valgrind"));
    let valgrind = needs(super::setup::on_path("valgrind"), "valgrind")
        .map(|()| [words(VALGRIND), vec![format!("--log-file={valgrind_log}")]].concat());
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (name, program) in PROGRAMS {
        let program = words(program);
        if !Path::new(&program[0]).is_file() {
            rows.push(
                [
                    vec![name.to_string()],
                    unavailable(&format!("not available: {} is not installed", program[0])),
                ]
                .concat(),
            );
            continue;
        }
        let exact = sites(&[hunt("exact", "frame-pointers"), program.clone()].concat(), &report)?;
        let exact_malloc = stacks(&exact, &["malloc"]);
        let exact_cfi = sites(&[hunt("exact", "cfi"), program.clone()].concat(), &report)?;
        let cfi_malloc = stacks(&exact_cfi, &["malloc"]);
        let cut = exact_cfi["drops"]["stacks_cut"].as_u64().unwrap_or(0);
        // The allocator calls that returned (what a stack is walked for).
        let calls = exact_cfi["probes"].as_array().map_or(0, |probes| {
            probes
                .iter()
                .filter(|p| !["mmap", "munmap", "mremap"].contains(&p["name"].as_str().unwrap_or_default()))
                .filter_map(|p| p["return_hits"].as_u64())
                .sum::<u64>()
        });
        let cfi_cell = format!(
            "{}: {}; {cut} stacks cut of {calls} allocator calls",
            cfi_malloc.len(),
            all_frames(&cfi_malloc)
        );
        let growth = sites(&[hunt("growth", "frame-pointers"), program.clone()].concat(), &report)?;
        let [pages, mmaps] = ["pages_touched", "mmap"].map(|kind| stacks(&growth, &[kind]));
        let compared = match &valgrind {
            Ok(valgrind) => {
                let argv = [valgrind.clone(), program.clone()].concat();
                let run = timed(&argv)?;
                anyhow::ensure!(run.status.success(), "`{}` failed ({})", shell_line(&argv), run.status);
                let theirs = valgrind_stacks(&fs::read_to_string(&valgrind_log)?);
                let (vg, ls) = matched(&theirs, &exact_malloc);
                vec![
                    format!("{} / {} / {}", theirs.len(), exact_malloc.len(), vg.len()),
                    frame_figures(&vg),
                    frame_figures(&ls),
                    format!("{} / {}", all_frames(&theirs), all_frames(&exact_malloc)),
                ]
            }
            Err(why) => vec![why.clone(); 4],
        };
        let growth_cell = |stacks: &[Stack]| format!("{}: {}", stacks.len(), all_frames(stacks));
        rows.push(
            [
                vec![name.to_string()],
                compared,
                vec![cfi_cell, growth_cell(&pages), growth_cell(&mmaps)],
            ]
            .concat(),
        );
        for (mode, report) in [
            ("exact", &exact),
            ("exact --stack-walk cfi", &exact_cfi),
            ("growth", &growth),
        ] {
            // Cut stacks are the cfi column's own figure.
            let dropped: u64 = report["drops"].as_object().map_or(0, |drops| {
                drops
                    .iter()
                    .filter(|(reason, _)| *reason != "stacks_cut")
                    .filter_map(|(_, n)| n.as_u64())
                    .sum()
            });
            if dropped > 0 {
                notes.push(format!("{name}, {mode} hunt: drops {}.", drops(&report.to_string())));
            }
        }
    }
    let mut commands: Vec<String> = [
        ("exact", "frame-pointers"),
        ("exact", "cfi"),
        ("growth", "frame-pointers"),
    ]
    .iter()
    .map(|(mode, walk)| format!("{} CMD", shell_line(&hunt(mode, walk))))
    .collect();
    if let Ok(valgrind) = &valgrind {
        commands.push(format!("{} CMD", shell_line(valgrind)));
    }
    notes.splice(
        0..0,
        [
            "Sites are matched between the two tools by allocating function (valgrind's first frame, \
             leakscope's `allocator`), bytes and blocks still allocated at exit and first caller outside \
             the allocator (the offset in its page of the return address into it, which valgrind shows \
             less 1: the same in both processes whatever their layout), among the malloc sites \
             (leakscope's `kind: malloc`, valgrind's loss records) whose key no other site of the same \
             tool has; valgrind's loss records of one stack (one per leak kind) are summed first. Sites \
             whose stacks the two tools split differently (a leakscope stack cut short joins callers that \
             valgrind keeps apart) have different totals and are not matched."
                .to_string(),
            "Frames are counted as each tool lists them, inlined ones included, from the allocator's \
             caller out: valgrind's own first frame (its replacement malloc) is left out, since leakscope's \
             stacks start at the allocator's caller. valgrind stops at `main` or at `(below main)` and \
             at 50 frames (`--num-callers=50`); leakscope goes on to `_start`. A stack is whole (`to main`) \
             if it reaches `main` or the start-up code below it (`__libc_start_call_main`, \
             `__libc_start_main`, `_start`; valgrind's `(below main)`): the dynamic loader's own \
             mappings reach its `_start`."
                .to_string(),
            "No hunt dropped an event unless a note below says so (the reports' `drops`).".to_string(),
            "Growth mode's `pages_touched` and `mmap` sites (the stacks of first touches of pages and of \
             mappings, whose events carry 3 pages of the stack) have no valgrind equivalent: valgrind \
             tracks no page or mapping, so they are not compared."
                .to_string(),
        ],
    );
    Ok(Section {
        title: TITLE_FRAMES,
        about: format!(
            "Each program is launched once under `leakscope hunt --mode exact` (every allocator call; its \
             events carry 16 words of the stack), once more with `--stack-walk cfi` (the kernel side unwinds \
             by the rules leakscope reads from CFI), once under valgrind's memcheck and once under \
             `leakscope hunt --mode growth`; figures are frames per stack, median (max), of the sites \
             still holding memory at exit. Workloads: {}.",
            PROGRAMS
                .iter()
                .map(|(name, argv)| format!("{name}: `{}`", shell_line(&words(&argv[1..])).replace('\n', "; ")))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        commands,
        header: vec![
            "program",
            "malloc sites: valgrind / leakscope exact / matched",
            "matched: valgrind frames",
            "matched: leakscope exact frames",
            "all malloc sites: valgrind / leakscope exact frames, whole stacks",
            "leakscope exact --stack-walk cfi, malloc sites: count: frames, whole stacks",
            "leakscope growth, pages_touched sites: count: frames, whole stacks",
            "leakscope growth, mmap sites: count: frames, whole stacks",
        ],
        rows,
        notes,
    })
}

/// Runs a hunt that writes its JSON report to `report`; returns the report's sites.
fn sites(argv: &[String], report: &str) -> Result<Value> {
    let run = timed(argv)?;
    anyhow::ensure!(run.status.success(), "`{}` failed ({})", shell_line(argv), run.status);
    let text = fs::read_to_string(report).with_context(|| format!("no report {report}"))?;
    serde_json::from_str(&text).with_context(|| format!("{report} is not JSON"))
}

/// The sites of `kinds` in a leakscope report.
fn stacks(report: &Value, kinds: &[&str]) -> Vec<Stack> {
    let sites = report["sites"].as_array().map_or(&[][..], Vec::as_slice);
    sites
        .iter()
        .filter(|s| kinds.contains(&s["kind"].as_str().unwrap_or_default()))
        .map(|s| Stack {
            allocator: s["allocator"].as_str().unwrap_or_default().to_string(),
            bytes: s["outstanding_bytes"].as_u64().unwrap_or(0),
            blocks: s["outstanding_allocations"].as_u64().unwrap_or(0),
            caller: s["frames"][0]["address"]
                .as_str()
                .and_then(|a| u64::from_str_radix(a.strip_prefix("0x")?, 16).ok())
                .map(page_offset),
            frames: s["frames"].as_array().map_or(0, Vec::len),
            whole: s["frames"].as_array().is_some_and(|frames| {
                frames
                    .iter()
                    .any(|f| ROOTS.contains(&f["function"].as_str().unwrap_or_default()))
            }),
        })
        .collect()
}

/// The stacks of valgrind's loss records, those of one stack summed:
/// `==PID== 48 (16 direct, 32 indirect) bytes in 1 blocks are definitely lost in loss record 3 of 9`,
/// then `==PID==    at 0x48417B4: malloc (in …)` and `by 0x…: …` lines, then `==PID== `.
fn valgrind_stacks(log: &str) -> Vec<Stack> {
    let mut merged: Vec<Stack> = Vec::new();
    let mut index: HashMap<Vec<&str>, usize> = HashMap::new();
    let mut record: Option<(u64, u64, Vec<&str>)> = None;
    let number = |s: &str| s.replace(',', "").parse::<u64>().ok();
    for line in log.lines().chain([""]) {
        let text = line.split_once("== ").map_or("", |(_, text)| text);
        let frame = text.trim_start();
        if let Some(frame) = frame.strip_prefix("at 0x").or(frame.strip_prefix("by 0x")) {
            if let Some((_, _, frames)) = record.as_mut() {
                frames.push(frame);
            }
            continue;
        }
        if let Some((bytes, blocks, frames)) = record.take() {
            match index.get(&frames) {
                Some(&i) => {
                    merged[i].bytes += bytes;
                    merged[i].blocks += blocks;
                }
                None => {
                    // `48417B4: malloc (in …)`
                    let allocator = frames
                        .first()
                        .and_then(|f| f.split_once(": ")?.1.split_whitespace().next())
                        .unwrap_or_default();
                    // valgrind shows a caller's frame at its return address − 1 (`1FF11D: Perl_savepvn …`).
                    let caller = frames
                        .get(1)
                        .and_then(|f| u64::from_str_radix(f.split_once(':')?.0, 16).ok())
                        .map(|a| page_offset(a + 1));
                    merged.push(Stack {
                        allocator: allocator.to_string(),
                        bytes,
                        blocks,
                        caller,
                        frames: frames.len().saturating_sub(1),
                        // `4AFD249: (below main) (libc_start_call_main.h:58)`, `10915E: main (x.c:5)`
                        whole: frames.iter().any(|f| {
                            f.split_once(": ")
                                .is_some_and(|(_, f)| ROOTS.iter().any(|r| f.starts_with(&format!("{r} "))))
                        }),
                    });
                    index.insert(frames, merged.len() - 1);
                }
            }
        }
        // Direct bytes only: the indirect ones are other stacks' blocks.
        let Some((bytes, rest)) = text.split_once(" bytes in ") else {
            continue;
        };
        if !rest.contains(" in loss record ") {
            continue;
        }
        let bytes = match bytes.split_once(" (") {
            Some((_, direct)) => direct.split_whitespace().next(),
            None => Some(bytes),
        };
        if let (Some(bytes), Some(blocks)) = (bytes.and_then(number), rest.split_whitespace().next().and_then(number)) {
            record = Some((bytes, blocks, Vec::new()));
        }
    }
    merged
}

/// The frames of the sites both tools have (valgrind's, leakscope's): those
/// whose allocator, bytes, blocks and caller no other site of either tool shares.
fn matched(valgrind: &[Stack], leakscope: &[Stack]) -> (Vec<usize>, Vec<usize>) {
    let ours = unique_keys(leakscope);
    unique_keys(valgrind)
        .into_iter()
        .filter_map(|(key, theirs)| Some((theirs?, (*ours.get(&key)?)?)))
        .unzip()
}

/// The frames of each site by allocator, bytes, blocks and caller; `None`
/// for a key that several sites share.
fn unique_keys(stacks: &[Stack]) -> HashMap<(&str, u64, u64, Option<u64>), Option<usize>> {
    let mut by_key = HashMap::new();
    for s in stacks {
        by_key
            .entry((s.allocator.as_str(), s.bytes, s.blocks, s.caller))
            .and_modify(|frames| *frames = None)
            .or_insert(Some(s.frames));
    }
    by_key
}

/// `median (max), N % to main` of the stacks' frames and how many are whole.
fn all_frames(stacks: &[Stack]) -> String {
    let frames: Vec<usize> = stacks.iter().map(|s| s.frames).collect();
    let whole = stacks.iter().filter(|s| s.whole).count();
    format!(
        "{}, {:.0} % to main",
        frame_figures(&frames),
        100.0 * whole as f64 / stacks.len().max(1) as f64
    )
}

/// `median (max)` of frame counts, or `–` for none.
fn frame_figures(frames: &[usize]) -> String {
    let values: Vec<f64> = frames.iter().map(|&f| f as f64).collect();
    stats(&values).map_or("–".into(), |s| format!("{} ({})", s.median, s.max))
}

/// A configuration of 10b: the kernel side's walk when traced (None:
/// untraced), and its command.
type Run = (Option<&'static str>, Vec<String>);

/// The kernel side's walks compared (`hunt --stack-walk`): the unwind rules,
/// and the frame-pointer walk that was the only one before them.
const WALKS: [&str; 2] = ["cfi", "frame-pointers"];

/// The target: the unwinder adds at most 20 % per pair.
const COST_TARGET: f64 = 1.2;

pub(super) fn cost(plan: &Plan, tools: &Tools) -> Result<Section> {
    let ticks = clock_ticks()?;
    // 5 × section 1's pairs: leakscope's CPU per run is then ~50 clock ticks (10 ms each), not ~10.
    let pairs_per_run = 5 * plan.pairs;
    let pairs = pairs_per_run.to_string();
    let report = rel(&work_dir().join("unwinding_cost.json"));
    let builds = [
        (
            "-fno-omit-frame-pointer",
            compile_as("malloc_free", "malloc_free_fp", "-fno-omit-frame-pointer")?,
        ),
        (
            "-fomit-frame-pointer",
            compile_as("malloc_free", "malloc_free_nofp", "-fomit-frame-pointer")?,
        ),
    ];
    // Per build: untraced, then traced with each walk.
    let configs: Vec<(&str, Available<Run>)> = builds
        .iter()
        .flat_map(|(name, binary)| {
            let target = words(&[binary, &pairs]);
            let traced = WALKS.map(|walk| {
                let args = [
                    "--mode",
                    "exact",
                    "--stack-walk",
                    walk,
                    "--format",
                    "json",
                    "-o",
                    &report,
                    "--",
                    binary,
                    &pairs,
                ];
                (*name, Ok((Some(walk), tools.hunt(true, &args))))
            });
            std::iter::once((*name, Ok((None, target)))).chain(traced)
        })
        .collect();
    // The kernel's run-time statistics of the BPF programs, on for these runs only.
    let _stats = BpfStats::enable()?;
    // Per configuration: the target's ns/pair; traced, the BPF programs' and
    // leakscope's CPU ns/pair after attach.
    let mut ns = vec![Vec::new(); configs.len()];
    let mut bpf_ns = vec![Vec::new(); configs.len()];
    let mut cpu_ns = vec![Vec::new(); configs.len()];
    interleave(plan.reps, &configs, |round, i, (walk, argv)| {
        if walk.is_some() {
            let (stdout, log, cpu) = run_measuring_cpu(argv, ticks)?;
            // `the BPF programs ran 12.5 ms in all`.
            let programs_ms = logged_secs(&log, "the BPF programs ran ")
                .with_context(|| format!("no `the BPF programs ran` line in:\n{log}"))?;
            bpf_ns[i].push(programs_ms * 1e6 / pairs_per_run as f64);
            let figure: f64 = stdout
                .lines()
                .rev()
                .find_map(|l| l.trim().parse().ok())
                .with_context(|| format!("`{}` printed no figure", shell_line(argv)))?;
            ns[i].push(figure);
            cpu_ns[i].push((cpu.total_s - cpu.attach_s) * 1e9 / pairs_per_run as f64);
        } else {
            ns[i].push(measure(argv)?);
        }
        let how = walk.map_or("untraced".to_string(), |walk| format!("hunt --stack-walk {walk}"));
        eprintln!(
            "round {round}/{}: {}, {how}: {:?} ns/pair",
            plan.reps,
            configs[i].0,
            ns[i].last()
        );
        Ok(())
    })?;
    let med = |values: &[f64]| stats(values).map(|s| s.median);
    let cell = |values: &[f64]| {
        stats(values).map_or("–".into(), |s| {
            format!("{} ({}–{})", fmt_ns(s.median), fmt_ns(s.min), fmt_ns(s.max))
        })
    };
    let mut rows = Vec::new();
    // Per (build, walk): traced − untraced ns/pair, BPF programs ns/pair, leakscope CPU ns/pair.
    let mut costs: HashMap<(&str, &str), (f64, f64, f64)> = HashMap::new();
    let per_build = 1 + WALKS.len();
    for (b, (name, _)) in builds.iter().enumerate() {
        let untraced = per_build * b;
        for (w, walk) in WALKS.iter().enumerate() {
            let traced = untraced + 1 + w;
            let ratio = match (med(&ns[traced]), med(&ns[untraced])) {
                (Some(t), Some(u)) => {
                    costs.insert(
                        (name, walk),
                        (
                            t - u,
                            med(&bpf_ns[traced]).unwrap_or(0.0),
                            med(&cpu_ns[traced]).unwrap_or(0.0),
                        ),
                    );
                    format!("{:.1}", t / u)
                }
                _ => "–".into(),
            };
            rows.push(vec![
                format!("-O2 -g {name}"),
                format!("`{walk}`"),
                cell(&ns[untraced]),
                cell(&ns[traced]),
                ratio,
                cell(&bpf_ns[traced]),
                cell(&cpu_ns[traced]),
            ]);
        }
    }
    let mut notes = vec![
        "leakscope's CPU is utime + stime of its /proc/PID/stat from its `loaded and attached` line to its \
         exit (read before it is reaped): its reader, where events are unwound and symbolized, and its \
         report; the verifier's work at load is left out."
            .to_string(),
        "`--stack-walk cfi` steps each frame by the unwind rule of its address in a BPF map \
         (one hash lookup per frame), written by leakscope from the CFI it read unwinding the stack copy \
         that the stack's first event brought; `--stack-walk frame-pointers` is the frame-pointer walk \
         alone, with 16 words of stack for leakscope to unwind (the default)."
            .to_string(),
    ];
    let (fp, nofp) = (builds[0].0, builds[1].0);
    if let (Some(&(before, before_bpf, before_cpu)), Some(&(after, after_bpf, after_cpu)), Some(&(fp_cfi, _, _))) = (
        costs.get(&(fp, "frame-pointers")),
        costs.get(&(nofp, "cfi")),
        costs.get(&(fp, "cfi")),
    ) {
        notes.push(target_note(
            "the unwinder adds ≤ 20 % to the tracing cost per pair (traced − untraced ns/pair, \
             -fomit-frame-pointer with `cfi` over -fno-omit-frame-pointer with `frame-pointers`)",
            after / before,
            COST_TARGET,
            " ×",
            &format!("{} against {} ns/pair.", fmt_ns(after), fmt_ns(before)),
        ));
        notes.push(target_note(
            "the unwinder adds ≤ 20 % to leakscope's own CPU per pair (the same two)",
            after_cpu / before_cpu,
            COST_TARGET,
            " ×",
            &format!("{} against {} ns/pair.", fmt_ns(after_cpu), fmt_ns(before_cpu)),
        ));
        notes.push(format!(
            "Unwound by rules without frame pointers, a pair costs the traced program {} ns more than the \
             frame-pointer walk of the frame-pointer build, of which its BPF programs (the walk, run in the \
             kernel in its context) {} ns and the rest (traps, ring buffer, preemption) {} ns; leakscope's \
             reader, on the other core, {} ns more CPU. On the frame-pointer build, `cfi` costs {:.2} × \
             what `frame-pointers` does.",
            fmt_ns(after - before),
            fmt_ns(after_bpf - before_bpf),
            fmt_ns((after - before) - (after_bpf - before_bpf)),
            fmt_ns(after_cpu - before_cpu),
            fp_cfi / before,
        ));
    }
    Ok(Section {
        title: TITLE_COST,
        about: format!(
            "`bench/malloc_free.c` (section 1) built twice, with and without frame pointers, each run \
             untraced and under `leakscope hunt --mode exact` with each of the kernel side's stack walks \
             (`--stack-walk cfi`, `--stack-walk frame-pointers`): {} pairs per run, {} runs of each of the {} \
             configurations, interleaved (the order rotating each round). ns per malloc+free pair as the \
             program prints it (wall time of its loop), median (min–max); the BPF programs' run time as the \
             kernel counts it (`kernel.bpf_stats_enabled`, set for these runs only: leakscope's `-v` log) \
             and leakscope's own CPU, per pair.",
            pairs_per_run,
            plan.reps,
            configs.len()
        ),
        commands: configs
            .iter()
            .filter_map(|(_, c)| c.as_ref().ok())
            .map(|(_, argv)| shell_line(argv))
            .collect(),
        header: vec![
            "malloc_free.c built with",
            "stack walk",
            "untraced ns/pair",
            "hunt --mode exact ns/pair",
            "× untraced",
            "of which BPF programs, ns/pair",
            "leakscope CPU ns/pair after attach",
        ],
        rows,
        notes,
    })
}
