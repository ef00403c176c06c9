//! 7: leakscope's own memory: with 1M allocations outstanding, per distinct
//! stack, and the size of the JSON report, with and without `--max-sites`.

use std::{fs, thread, time::Duration, time::Instant};

use anyhow::{bail, Result};

use super::{
    bpf_maps, compile, drops, json_count, rel, shell_line, signal, target_note, vm_mib, words, work_dir, Plan, Running,
    Section, Tools, MIB,
};

pub(super) const TITLE: &str = "7. leakscope's own memory";

/// Allocations kept outstanding in the first run.
const HELD: u64 = 1_000_000;

/// Distinct stacks of the small and the large run: the memory per stack is
/// the difference of their peaks over the difference of their stacks.
const FEW_STACKS: u64 = 1024;
const MANY_STACKS: u64 = 32768;
/// `--max-sites` of the bounded run.
const MAX_SITES: &str = "1000";

/// One measured hunt.
struct Measured {
    peak_mib: Option<f64>,
    report_bytes: u64,
    json: String,
}

pub(super) fn own_memory(_plan: &Plan, tools: &Tools) -> Result<Section> {
    let mut commands = Vec::new();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let row = |workload: String, flags: &str, m: &Measured| {
        vec![
            workload,
            if flags.is_empty() {
                "–".to_string()
            } else {
                format!("`{flags}`")
            },
            m.peak_mib.map_or("–".into(), |v| format!("{v:.1} MiB")),
            format!("{:.1} MiB", m.report_bytes as f64 / MIB),
            m.json.matches("\"allocator\":").count().to_string(),
            json_count(&m.json, "outstanding_allocations").map_or("–".into(), |n| n.to_string()),
            drops(&m.json),
        ]
    };

    let (held, maps_note) = outstanding(tools, &mut commands)?;
    rows.push(row(format!("{HELD} blocks outstanding (attach)"), "", &held));
    notes.push(maps_note);
    if let Some(peak) = held.peak_mib {
        notes.push(target_note(
            "leakscope user-space RSS ≤ 64 MiB at 1M outstanding",
            peak,
            64.0,
            " MiB",
            "VmHWM includes the ring buffer's pages, mapped twice and resident from the moment it is \
             mapped (2 × its size), and leakscope's own baseline.",
        ));
    }

    let prog = compile("many_stacks")?;
    let mut stacks = |leaves: u64, flags: &[&str]| -> Result<Measured> {
        let report_path = work_dir().join(format!("own_memory_{leaves}.json"));
        let report = rel(&report_path);
        let mut args = vec!["--format", "json", "-o", &report];
        args.extend(flags);
        let leaves = leaves.to_string();
        args.extend(["--", &prog, &leaves, "1"]);
        let argv = tools.hunt(false, &args);
        commands.push(shell_line(&argv));
        let mut hunt = Running::leakscope(&argv)?;
        let (status, peak_mib) = hunt.finish_polling(|pid| vm_mib(pid, "VmHWM"))?;
        if !status.success() {
            bail!("`{}` ended with {status}:\n{}", shell_line(&argv), hunt.log());
        }
        let json = fs::read_to_string(&report_path)?;
        Ok(Measured {
            peak_mib,
            report_bytes: json.len() as u64,
            json,
        })
    };
    let few = stacks(FEW_STACKS, &[])?;
    let many = stacks(MANY_STACKS, &[])?;
    let bounded = stacks(MANY_STACKS, &["--max-sites", MAX_SITES])?;
    for (leaves, flags, m) in [
        (FEW_STACKS, String::new(), &few),
        (MANY_STACKS, String::new(), &many),
        (MANY_STACKS, format!("--max-sites {MAX_SITES}"), &bounded),
    ] {
        rows.push(row(format!("{leaves} distinct stacks (launch)"), &flags, m));
    }
    if let (Some(a), Some(b)) = (few.peak_mib, many.peak_mib) {
        let per_stack_kib = (b - a) * 1024.0 / (MANY_STACKS - FEW_STACKS) as f64;
        notes.push(format!(
            "Per distinct stack (VmHWM of {MANY_STACKS} stacks − of {FEW_STACKS}, over the {} more): \
             {per_stack_kib:.2} KiB; JSON report {:.2} KiB per stack.",
            MANY_STACKS - FEW_STACKS,
            (many.report_bytes - few.report_bytes) as f64 / 1024.0 / (MANY_STACKS - FEW_STACKS) as f64
        ));
        notes.push(target_note(
            "≤ 2 KiB of leakscope memory per distinct stack",
            per_stack_kib,
            2.0,
            " KiB",
            "Each stack keeps its addresses, its site, its growth series and its symbolized frames until the \
             report is written.",
        ));
    }
    Ok(Section {
        title: TITLE,
        about: format!(
            "VmHWM (peak RSS) of leakscope, polled from /proc/PID/status every 50 ms until it exits, and the \
             size of the JSON report it wrote. {HELD} blocks: `bench/hold_many.c` waits on stdin; leakscope \
             attaches (`-p`), then the program mallocs {HELD} blocks of 16–64 B and keeps them; a second \
             later leakscope is interrupted (SIGINT) and writes its report. Distinct stacks: \
             `bench/many_stacks.c LEAVES 1` (launch mode) keeps one block at each of LEAVES distinct stacks \
             and exits. One run each."
        ),
        commands,
        header: vec![
            "workload",
            "flags",
            "leakscope VmHWM",
            "JSON report",
            "sites in report",
            "outstanding allocations",
            "drops",
        ],
        rows,
        notes,
    })
}

/// The 1M-block hunt, and a note on the BPF maps' sizes.
fn outstanding(tools: &Tools, commands: &mut Vec<String>) -> Result<(Measured, String)> {
    let prog = compile("hold_many")?;
    let report_path = work_dir().join("outstanding.json");
    let report = rel(&report_path);
    let mut target = Running::target(&words(&[&prog, &HELD.to_string()]), "waiting")?;
    let hunt_argv = |pid: &str| {
        tools.hunt(
            false,
            &["--mode", "exact", "-p", pid, "--format", "json", "-o", &report],
        )
    };
    commands.push(format!("{prog} {HELD}"));
    commands.push(shell_line(&hunt_argv("PID")));
    let argv = hunt_argv(&target.pid().to_string());
    let mut hunt = Running::leakscope(&argv)?;
    hunt.wait_for("attached to PID", Duration::from_secs(60))?;
    let idle_rss = vm_mib(hunt.pid(), "VmRSS");
    let mut maps = bpf_maps(hunt.pid())?;
    let allocating = Instant::now();
    target.send_line("go")?;
    target.wait_for("held", Duration::from_secs(300))?;
    let alloc_secs = allocating.elapsed().as_secs_f64();
    // The reader drains the ring buffer every 10 ms: a second is ample.
    thread::sleep(Duration::from_secs(1));
    signal(hunt.pid(), "INT")?;
    let (status, peak_mib) = hunt.finish_polling(|pid| vm_mib(pid, "VmHWM"))?;
    if !status.success() {
        bail!("`{}` ended with {status}:\n{}", shell_line(&argv), hunt.log());
    }
    let json = fs::read_to_string(&report_path)?;
    maps.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    let largest: Vec<String> = maps
        .iter()
        .take(4)
        .map(|m| {
            format!(
                "{} {} of {} {}: {:.1} MiB",
                m.name.as_deref().unwrap_or("?"),
                m.kind,
                m.max_entries,
                // A ring buffer's max_entries is its size in bytes.
                if m.kind == "ringbuf" { "bytes" } else { "entries" },
                m.memlock as f64 / MIB
            )
        })
        .collect();
    let note = format!(
        "{HELD} blocks: VmRSS once attached, before the allocations, {}; the {HELD} traced mallocs took {alloc_secs:.1} s \
         ({:.1} µs each). BPF maps: {} maps, {:.1} MiB of memlock in all (kernel memory, not leakscope's RSS, \
         except the ring buffer's pages); the largest: {}.",
        idle_rss.map_or("–".into(), |v| format!("{v:.1} MiB")),
        alloc_secs * 1e6 / HELD as f64,
        maps.len(),
        maps.iter().map(|m| m.memlock).sum::<u64>() as f64 / MIB,
        largest.join(", ")
    );
    Ok((
        Measured {
            peak_mib,
            report_bytes: json.len() as u64,
            json,
        },
        note,
    ))
}
