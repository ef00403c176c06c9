//! 2c: leakscope's own memory (user space and BPF maps) while 1M allocations are outstanding.

use std::{fs, thread, time::Duration, time::Instant};

use anyhow::{bail, Result};

use super::{
    bpf_maps, compile, drops, json_count, rel, shell_line, signal, target_note, vm_mib, words, work_dir, Plan, Running,
    Section, Tools, MIB,
};

pub(super) const TITLE: &str = "2c. Memory with 1M outstanding allocations";

/// Allocations kept outstanding in the memory benchmark.
const HELD: u64 = 1_000_000;

pub(super) fn outstanding(_plan: &Plan, tools: &Tools) -> Result<Section> {
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
    let argv = hunt_argv(&target.pid().to_string());
    let mut hunt = Running::leakscope(&argv)?;
    hunt.wait_for("attached to PID", Duration::from_secs(60))?;
    let idle_rss = vm_mib(hunt.pid(), "VmRSS");
    let mut maps = bpf_maps(hunt.pid())?;

    let allocating = Instant::now();
    target.send_line()?;
    target.wait_for("held", Duration::from_secs(300))?;
    let alloc_secs = allocating.elapsed().as_secs_f64();
    // The reader drains the ring buffer every 10 ms: a second is ample.
    thread::sleep(Duration::from_secs(1));
    signal(hunt.pid(), "INT")?;
    let (status, peak) = hunt.finish_polling(|pid| vm_mib(pid, "VmHWM"))?;
    if !status.success() {
        bail!("`{}` ended with {status}:\n{}", shell_line(&argv), hunt.log());
    }
    let json = fs::read_to_string(&report_path)?;
    maps.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    let map_bytes: u64 = maps.iter().map(|m| m.memlock).sum();
    let map_list = maps
        .iter()
        .map(|m| {
            format!(
                "{}{} of {} {}: {:.1} MiB",
                m.name.as_ref().map_or(String::new(), |n| format!("{n} ")),
                m.kind,
                m.max_entries,
                // A ring buffer's max_entries is its size in bytes.
                if m.kind == "ringbuf" { "bytes" } else { "entries" },
                m.memlock as f64 / MIB
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut notes = vec![format!(
        "BPF maps: {map_list}. Their size is fixed at load: outstanding allocations live in leakscope's \
         user-space model, not in the maps."
    )];
    if let Some(peak) = peak {
        notes.push(target_note(
            "leakscope user-space RSS ≤ 64 MiB at 1M outstanding",
            peak,
            64.0,
            " MiB",
            "Why: VmHWM includes the ring buffer, mapped into leakscope (32 MiB of its RSS for the default 16 MiB: \
             its pages are mapped twice) and counted again under BPF maps. Each outstanding block takes a 24-byte entry (address, size, site, time) in a table of 64 \
             shards that grow one at a time, so no doubling of the whole table adds to the peak.",
        ));
    }
    if let Some(lost) = json_count(&json, "ring_buffer_full").filter(|&n| n > 0) {
        notes.push(format!(
            "The default 16 MiB ring buffer overflowed while one thread allocated in a tight loop: {lost} \
             records lost, so the report misses some of the {HELD} blocks."
        ));
    }
    let mib = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0} MiB"));
    let rows = vec![
        vec!["leakscope VmHWM (peak RSS), read until it exited".into(), mib(peak)],
        vec![
            "leakscope VmRSS once attached, before the allocations".into(),
            mib(idle_rss),
        ],
        vec![
            format!("BPF maps ({} maps, memlock from /proc/PID/fdinfo)", maps.len()),
            mib(Some(map_bytes as f64 / MIB)),
        ],
        vec![
            "outstanding allocations in the report".into(),
            json_count(&json, "outstanding_allocations").map_or("–".into(), |n| n.to_string()),
        ],
        vec!["drops".into(), drops(&json)],
        vec![
            format!("{HELD} traced mallocs took"),
            format!("{alloc_secs:.1} s ({:.1} µs each)", alloc_secs * 1e6 / HELD as f64),
        ],
    ];
    Ok(Section {
        title: TITLE,
        about: format!(
            "`bench/hold_many.c` waits on stdin; leakscope attaches (`-p`), then the program mallocs {HELD} \
             blocks of 16–64 B, keeps them and sleeps. A second later leakscope is interrupted (SIGINT) and \
             writes its report. Its VmHWM is polled from /proc/PID/status until it exits. The BPF map sizes \
             are the `memlock` of its map fds in /proc/PID/fdinfo; bpftool names them. One run."
        ),
        commands: vec![format!("{prog} {HELD}"), shell_line(&hunt_argv("PID"))],
        header: vec!["figure", "value"],
        rows,
        notes,
    })
}
