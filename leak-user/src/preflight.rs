//! Checks that the machine can run the tracer, with one-line reasons when not.

use std::path::Path;

use anyhow::{bail, Result};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Root, kernel BTF and tracefs (mounted here when missing).
pub fn check() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("leakscope must run as root: loading probes needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("kernel BTF not found at /sys/kernel/btf/vmlinux: the kernel needs CONFIG_DEBUG_INFO_BTF=y");
    }
    ensure_tracefs()?;
    raise_memlock_limit();
    Ok(())
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
