//! Checks that the machine can run the tracer, with one-line reasons when not.
//!
//! What the kernel must offer: BTF, BPF ring buffers (Linux 5.8), the uprobe
//! perf PMU (4.17) and syscall tracepoints; and the process must hold
//! CAP_BPF and CAP_PERFMON (5.8), CAP_SYS_ADMIN (uprobes, mounting tracefs)
//! and CAP_SYS_PTRACE (other processes' /proc/PID/maps and /proc/PID/root).

use std::path::Path;

use anyhow::{bail, Result};

const TRACEFS: &str = "/sys/kernel/tracing";

/// The capabilities used, with their bit in /proc/self/status's CapEff.
const CAPABILITIES: [(&str, u32, &str); 4] = [
    ("CAP_BPF", 39, "load eBPF programs and maps"),
    ("CAP_PERFMON", 38, "open perf events and read stacks"),
    ("CAP_SYS_ADMIN", 21, "attach uprobes and mount tracefs"),
    (
        "CAP_SYS_PTRACE",
        19,
        "read other processes' /proc/PID/maps and /proc/PID/root",
    ),
];

/// Root, its capabilities, the kernel features used and tracefs (mounted
/// here when missing). Every missing feature is named, in one line.
pub fn check() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("leakscope must run as root: loading probes needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN");
    }
    let mut missing = missing_capabilities(&std::fs::read_to_string("/proc/self/status").unwrap_or_default());
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("kernel BTF (/sys/kernel/btf/vmlinux): the kernel needs CONFIG_DEBUG_INFO_BTF=y".to_string());
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        missing.push("the uprobe perf PMU (/sys/bus/event_source/devices/uprobe): the kernel needs CONFIG_UPROBE_EVENTS=y (Linux 4.17+)".to_string());
    }
    // Only a kernel without the map type answers false; a refused probe
    // (no CAP_BPF) is already reported above.
    if matches!(aya::sys::is_map_supported(aya::maps::MapType::RingBuf), Ok(false)) {
        missing.push("BPF ring buffers: the kernel needs Linux 5.8 or later".to_string());
    }
    if !missing.is_empty() {
        bail!("this system lacks what leakscope needs: {}", missing.join("; "));
    }
    ensure_tracefs()?;
    raise_memlock_limit();
    Ok(())
}

/// The capabilities of CAPABILITIES that a `/proc/PID/status` text's
/// CapEff lacks, with what each is for.
fn missing_capabilities(status: &str) -> Vec<String> {
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    CAPABILITIES
        .iter()
        .filter(|(_, bit, _)| effective & (1 << bit) == 0)
        .map(|(name, _, why)| format!("{name} (to {why})"))
        .collect()
}

/// Syscall tracepoints are attached through tracefs, which is often not mounted.
fn ensure_tracefs() -> Result<()> {
    let syscalls = |root: &str| Path::new(root).join("events/syscalls").exists();
    if syscalls(TRACEFS) || syscalls("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    if !Path::new(TRACEFS).join("events").exists() {
        let mounted = nix::mount::mount(
            Some("nodev"),
            TRACEFS,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        if let Err(e) = mounted {
            bail!("tracefs is not mounted and mounting it failed ({e}); run: mount -t tracefs nodev {TRACEFS}");
        }
        log::info!("mounted tracefs at {TRACEFS}");
    }
    if !syscalls(TRACEFS) {
        bail!("syscall tracepoints are missing from {TRACEFS}/events: the kernel needs CONFIG_FTRACE_SYSCALLS=y");
    }
    Ok(())
}

/// Kernels since 5.11 charge BPF memory to the memory cgroup, so a refused
/// RLIMIT_MEMLOCK raise (no CAP_SYS_RESOURCE) is harmless.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); relying on memcg accounting",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_missing_capability() {
        assert!(missing_capabilities("Name:\tx\nCapEff:\t000001ffffffffff\n").is_empty());
        // CAP_BPF and CAP_SYS_PTRACE dropped.
        let status = format!("CapEff:\t{:016x}\n", 0x1ff_ffff_ffffu64 & !(1 << 39) & !(1 << 19));
        let missing = missing_capabilities(&status);
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].starts_with("CAP_BPF (to load"), "{missing:?}");
        assert!(missing[1].starts_with("CAP_SYS_PTRACE"), "{missing:?}");
        assert_eq!(missing_capabilities("").len(), CAPABILITIES.len());
    }
}
