//! 9: what naming JS frames costs, on bench/js_stacks.js: in the kernel (each
//! traced call's stack walk reads V8's frame slots) and in leakscope itself
//! (resolving each distinct JS stack from the target's memory), on the
//! system's Node 20 and on Node 18, 22, 24 and 26 (`cargo xtask setup` installs them).

use std::{env, fs, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{bail, Context as _, Result};

use super::{
    clock_ticks, command, cost::BpfStats, fmt_secs, interleave, logged_secs, measure, median, rel, run_measuring_cpu,
    shell_line, stats, unavailable, words, work_dir, Available, Plan, Section, Tools, LOGGED,
};

pub(super) const TITLE: &str = "9. Naming JS frames: kernel-side reads and user-side resolution";

const SCRIPT: &str = "bench/js_stacks.js";
/// JS frames under each allocation: deep enough that the walk's V8 reads dominate.
const DEPTH: &str = "30";
/// Buffer allocations per run of the kernel-side workload (~1 s traced).
const CALLS: u64 = 10_000;
/// The short run whose figures are subtracted from the long one's.
const SHORT_CALLS: u64 = 1_000;
/// Distinct JS stacks, each keeping one Buffer, in the user-side workload.
const STACKS: u64 = 500;
/// The Node lines measured besides the system's: every other line leakscope knows.
const OTHER_LINES: &[&str] = &["18.20.8", "22.23.5", "24.22.3", "26.12.1"];

/// The metadata entry renamed in the copy of node that has no naming: the
/// frame's function slot, without which leakscope names no JS frame.
const FP_FUNCTION: &[u8] = b"\0v8dbg_off_fp_function\0";
const FP_FUNCTION_RENAMED: &[u8] = b"\0v8dbg_off_fp_functioX\0";

/// The node a configuration runs, and whether leakscope traces it naming
/// its JS frames (None: untraced).
type NodeRun = (String, Option<bool>);

/// What one configuration measured.
#[derive(Default, Clone)]
struct Figures {
    cpu_ns_per_call: Vec<f64>,
    bpf_ns_per_call: Vec<f64>,
    hits_per_call: Vec<f64>,
    leakscope_attach_cpu_s: Vec<f64>,
    leakscope_after_attach_cpu_s: Vec<f64>,
    report_built_s: Vec<f64>,
    sites: Vec<f64>,
    keep_frames: Vec<f64>,
}

pub(super) fn js_naming(plan: &Plan, tools: &Tools) -> Result<Section> {
    let mut section = Section {
        title: TITLE,
        about: about(plan),
        commands: vec![],
        header: vec![
            "configuration",
            "node CPU per allocation, µs (median, min–max)",
            "BPF programs per allocation",
            "probe hits per allocation",
            "BPF programs per probe hit",
            "leakscope CPU to load + attach, s",
            "leakscope CPU after attach, s",
            "report built, s",
            "sites",
            "frames named keep_*",
        ],
        rows: vec![],
        notes: vec![],
    };
    let Some(node) = on_path("node") else {
        section
            .rows
            .push([vec!["all".into()], unavailable("not available: `node` not found")].concat());
        return Ok(section);
    };
    let mut lines = vec![(format!("node {}", node_version(&node)?), node)];
    for version in OTHER_LINES {
        let binary = crate::setup::node_line_binary(version)?;
        match binary.is_file() {
            true => lines.push((format!("node v{version}"), binary.display().to_string())),
            false => section.rows.push(
                [
                    vec![format!("node v{version}")],
                    unavailable("not available: not installed (cargo xtask setup)"),
                ]
                .concat(),
            ),
        }
    }
    for (label, node) in &lines {
        measure_line(plan, tools, label, node, &mut section)?;
    }
    section.notes.push(
        "Other load on the machine's 2 cores (see the load average) disturbs CPU times less than wall \
         times, but they still move (±15 %)."
            .into(),
    );
    Ok(section)
}

/// The `node --version` of `node`.
fn node_version(node: &str) -> Result<String> {
    let out = command(&words(&[node, "--version"])).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The section's rows, notes and commands for one Node line, `label` naming it.
fn measure_line(plan: &Plan, tools: &Tools, label: &str, node: &str, section: &mut Section) -> Result<()> {
    let node = node.to_string();
    let unnamed = unnamed_node(&node, label)?;
    let report_path = work_dir().join("js_naming.json");
    let report = rel(&report_path);
    let workload = |node: &str, mode: &str, n: u64| words(&[node, SCRIPT, mode, &n.to_string(), DEPTH]);
    let hunt = |argv: Vec<String>| {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        tools.hunt(
            true,
            &[&["--mode", "exact", "--format", "json", "-o", &report, "--"][..], &argv].concat(),
        )
    };
    let configs: [(&str, Available<NodeRun>); 3] = [
        ("untraced", Ok((node.clone(), None))),
        ("hunt --mode exact, JS frames named", Ok((node.clone(), Some(true)))),
        ("hunt --mode exact, naming off", Ok((unnamed.clone(), Some(false)))),
    ];
    let mut figures = vec![Figures::default(); configs.len()];
    {
        // Run-time statistics of the BPF programs, for the kernel-side workload only.
        let _stats = BpfStats::enable()?;
        // Rounds as for the stacks: each traced run costs a node start and an
        // attach (~7 s in all under load), and the section keeps to ~2 minutes.
        interleave(plan.stack_reps, &configs, |round, i, (node, named)| {
            let fig = &mut figures[i];
            let Some(named) = *named else {
                fig.cpu_ns_per_call.push(measure(&workload(node, "calls", CALLS))?);
                return Ok(());
            };
            // A short run and a long one: their differences are the loop's
            // alone, without node's start (~1.3M probe hits of its own).
            let short = traced_calls(&hunt(workload(node, "calls", SHORT_CALLS)), named, &report_path)?;
            let long = traced_calls(&hunt(workload(node, "calls", CALLS)), named, &report_path)?;
            let calls = (CALLS - SHORT_CALLS) as f64;
            fig.cpu_ns_per_call.push(long.cpu_ns_per_call);
            fig.bpf_ns_per_call.push((long.programs_ns - short.programs_ns) / calls);
            fig.hits_per_call.push((long.hits - short.hits) / calls);
            eprintln!(
                "round {round}/{}: {label}: {}: calls done",
                plan.stack_reps, configs[i].0
            );
            Ok(())
        })?;
    }
    let ticks = clock_ticks()?;
    interleave(plan.stack_reps, &configs[1..], |round, i, (node, named)| {
        let argv = hunt(workload(node, "stacks", STACKS));
        let (_, log, cpu) = run_measuring_cpu(&argv, ticks)?;
        check_naming(&log, named.unwrap_or_default())?;
        let json = fs::read_to_string(&report_path)?;
        let fig = &mut figures[i + 1];
        fig.leakscope_attach_cpu_s.push(cpu.attach_s);
        fig.leakscope_after_attach_cpu_s.push(cpu.total_s - cpu.attach_s);
        fig.report_built_s
            .push(logged_secs(&log, LOGGED[1]).with_context(|| format!("no `report built` line in:\n{log}"))?);
        fig.sites.push(
            json.split_once("\"sites\":")
                .map_or(0, |(_, s)| s.matches("\"kind\":").count()) as f64,
        );
        fig.keep_frames
            .push(json.matches("\"function\": \"keep_").count() as f64);
        eprintln!(
            "round {round}/{}: {label}: {}: {:.2} s leakscope CPU, {:.2} s of it to attach",
            plan.stack_reps,
            configs[i + 1].0,
            cpu.total_s,
            cpu.attach_s
        );
        Ok(())
    })?;

    let untraced = median(&figures[0].cpu_ns_per_call);
    for ((name, _), fig) in configs.iter().zip(&figures) {
        let med = |v: &[f64]| median(v).map_or("–".into(), |m| format!("{m:.0}"));
        let cpu = stats(&fig.cpu_ns_per_call).map_or("–".into(), |s| {
            let ratio = untraced.map_or(String::new(), |u| format!(", {:.1} × untraced", s.median / u));
            format!("{:.1} ({:.1}–{:.1}){ratio}", s.median / 1e3, s.min / 1e3, s.max / 1e3)
        });
        let bpf = median(&fig.bpf_ns_per_call).map_or("–".into(), |ns| format!("{:.1} µs", ns / 1e3));
        let hits = median(&fig.hits_per_call);
        let per_hit = median(&fig.bpf_ns_per_call)
            .zip(hits)
            .map_or("–".into(), |(ns, hits)| format!("{:.0} ns", ns / hits));
        let secs = |v: &[f64]| match v.is_empty() {
            true => "–".into(),
            false => fmt_secs(v),
        };
        section.rows.push(vec![
            format!("{label}: {name}"),
            cpu,
            bpf,
            hits.map_or("–".into(), |h| format!("{h:.1}")),
            per_hit,
            secs(&fig.leakscope_attach_cpu_s),
            secs(&fig.leakscope_after_attach_cpu_s),
            secs(&fig.report_built_s),
            med(&fig.sites),
            med(&fig.keep_frames),
        ]);
    }
    section
        .notes
        .extend(notes(&figures).into_iter().map(|note| format!("{label}: {note}")));
    let traced = |node: &str, mode: &str, n: u64| shell_line(&hunt(workload(node, mode, n)));
    section.commands.extend([
        shell_line(&workload(&node, "calls", CALLS)),
        traced(&node, "calls", SHORT_CALLS),
        traced(&node, "calls", CALLS),
        traced(&unnamed, "calls", SHORT_CALLS),
        traced(&unnamed, "calls", CALLS),
        traced(&node, "stacks", STACKS),
        traced(&unnamed, "stacks", STACKS),
    ]);
    Ok(())
}

fn about(plan: &Plan) -> String {
    format!(
        "`{SCRIPT}` on the system's node and on Node {} (the same runs on each, one after the other), launch mode, `hunt --mode exact`. Kernel side: `calls N {DEPTH}` makes N \
         1 KiB Buffers, each {DEPTH} JS frames deep, and prints its own CPU time (user + system, where the probes \
         run) per allocation over that loop ({CALLS} allocations). The BPF programs' run time (the kernel's count, \
         `kernel.bpf_stats_enabled`, set for these runs only) and the report's probe hits are per allocation as \
         the difference between a run of {CALLS} and one of {SHORT_CALLS}, which leaves out node's start. {} \
         round(s), the configurations interleaved; medians, min–max for node's CPU. User side: `stacks {STACKS} \
         {DEPTH}` keeps one Buffer under each of {STACKS} generated functions (`keep_0` …, {DEPTH} frames deep): \
         {STACKS} distinct JS stacks. leakscope's own CPU time (utime + stime of /proc/PID/stat, read when it logs \
         `loaded and attached` and when it has exited, before it is reaped: the report's work included, its \
         target's not) and its `-v` `report built` time, {} round(s), interleaved, median (min–max). Naming off: a copy of the same node binary whose \
         `v8dbg_off_fp_function` metadata symbol is renamed (one byte of its name in `.dynsym`'s and \
         `.symtab`'s strings; code, hooks and probes unchanged): leakscope then warns `JS frames are not named` \
         and loads the frame layout disabled, so the stack walk reads no V8 slot and user space resolves no JS \
         frame (each run's log is checked for that warning, and the named runs for `JS frames are named`).",
        OTHER_LINES.join(" and "),
        plan.stack_reps,
        plan.stack_reps
    )
}

fn notes(figures: &[Figures]) -> Vec<String> {
    let mut notes = Vec::new();
    let m = |v: &[f64]| median(v);
    let (named, off) = (&figures[1], &figures[2]);
    if let (Some(a), Some(b), Some(hits)) = (
        m(&named.bpf_ns_per_call),
        m(&off.bpf_ns_per_call),
        m(&named.hits_per_call),
    ) {
        let cpu = m(&named.cpu_ns_per_call)
            .zip(m(&off.cpu_ns_per_call))
            .map_or(String::new(), |(x, y)| {
                format!("; node's own CPU per allocation, which also carries the traps and the ring buffer, rose by {:.1} µs", (x - y) / 1e3)
            });
        notes.push(format!(
            "Kernel side: reading the V8 slots of every frame of each stack ({DEPTH} JS frames and node's own) costs \
             the BPF programs {:.1} µs more per Buffer allocation, {:.0} ns per probe hit at {hits:.1} hits per \
             allocation (node's malloc, calloc and free calls under each Buffer and the GC's){cpu}. The kernel \
             counts the programs' run time by the clock, so preemption by the other work on the machine inflates \
             it: it moved by up to 2× between runs of this section.",
            (a - b) / 1e3,
            (a - b) / hits,
        ));
    }
    if let (Some(a), Some(b)) = (
        m(&named.leakscope_after_attach_cpu_s),
        m(&off.leakscope_after_attach_cpu_s),
    ) {
        let built = m(&named.report_built_s)
            .zip(m(&off.report_built_s))
            .map_or(String::new(), |(x, y)| {
                format!("; `report built` per stack: {:+.2} ms", (x - y) * 1e3 / STACKS as f64)
            });
        let extra_sites = m(&named.sites).zip(m(&off.sites)).filter(|(x, y)| x > y);
        let sites = extra_sites.map_or(String::new(), |(x, y)| {
            format!(
                " ({:.0} sites named against {:.0} unnamed: {:.2} ms per extra site)",
                x,
                y,
                (a - b) * 1e3 / (x - y)
            )
        });
        notes.push(format!(
            "User side: leakscope's CPU after attach per distinct JS stack resolved: {:.2} ms ((named − off) / \
             {STACKS} stacks){built}. Without naming, the {STACKS} stacks run through the same interpreter code and fold \
             into far fewer sites{sites}: the difference includes recording, symbolizing and reporting those \
             extra sites, which is what naming costs a report.",
            (a - b) * 1e3 / STACKS as f64,
        ));
    }
    if let (Some(a), Some(b)) = (m(&named.leakscope_attach_cpu_s), m(&off.leakscope_attach_cpu_s)) {
        notes.push(format!(
            "A fixed cost: loading the BPF programs with the frame layout enabled took leakscope {:.2} s more CPU \
             ({a:.2} s against {b:.2} s): the kernel's verifier checks the frame-slot reads, which it drops as dead \
             code when the layout is disabled. It is left out of the per-stack figure.",
            a - b
        ));
    }
    notes
}

/// What a traced run of the kernel-side workload gave.
struct TracedCalls {
    /// The fixture's own figure: CPU per allocation, over its loop only.
    cpu_ns_per_call: f64,
    /// The BPF programs' run time and the probes' hits over the whole run.
    programs_ns: f64,
    hits: f64,
}

fn traced_calls(argv: &[String], named: bool, report: &Path) -> Result<TracedCalls> {
    let out = command(argv).output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{}` failed ({}):\n{log}", shell_line(argv), out.status);
    }
    check_naming(&log, named)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cpu_ns_per_call = stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .context("the traced run printed no figure")?;
    // `the BPF programs ran 12.5 ms in all`.
    let programs_ms = logged_secs(&log, "the BPF programs ran ")
        .with_context(|| format!("no `the BPF programs ran` line in:\n{log}"))?;
    Ok(TracedCalls {
        cpu_ns_per_call,
        programs_ns: programs_ms * 1e6,
        hits: probe_hits(&fs::read_to_string(report)?),
    })
}

/// The probes' hits of a report: every `"hits"` and `"return_hits"` count.
fn probe_hits(json: &str) -> f64 {
    ["\"hits\": ", "\"return_hits\": "]
        .iter()
        .flat_map(|key| json.split(key).skip(1))
        .filter_map(|rest| rest[..rest.find(|c: char| !c.is_ascii_digit())?].parse::<f64>().ok())
        .sum()
}

/// Fails unless the log says leakscope named JS frames (`named`) or that it did not.
fn check_naming(log: &str, named: bool) -> Result<()> {
    let (expected, said) = match named {
        true => ("JS frames are named", log.contains(": JS frames are named")),
        false => ("JS frames are not named", log.contains("JS frames are not named")),
    };
    match said {
        true => Ok(()),
        false => bail!("leakscope's log does not say `{expected}`:\n{log}"),
    }
}

/// A copy of `node` (the line `label` names) whose frame-slot metadata leakscope cannot find.
fn unnamed_node(node: &str, label: &str) -> Result<String> {
    let mut bytes = fs::read(node).with_context(|| format!("cannot read {node}"))?;
    let mut renamed = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(FP_FUNCTION.len()).position(|w| w == FP_FUNCTION) {
        let start = at + found;
        bytes[start..start + FP_FUNCTION.len()].copy_from_slice(FP_FUNCTION_RENAMED);
        renamed += 1;
        at = start + FP_FUNCTION.len();
    }
    if renamed == 0 {
        bail!("{node} has no `v8dbg_off_fp_function` symbol: its JS frames are not named anyway");
    }
    let copy = work_dir().join(format!("node-unnamed-{}", label.replace(' ', "-")));
    fs::write(&copy, bytes)?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
    Ok(rel(&copy))
}

/// The first `name` on PATH.
fn on_path(name: &str) -> Option<String> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .map(|path| path.display().to_string())
}
