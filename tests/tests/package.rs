//! The Debian package as a host installs it: `dpkg -i` the .deb of
//! `cargo xtask dist`, hunt the demo's leaks with the installed binary
//! (its output checked), `systemd-analyze verify` the watch unit, render
//! every man page with `man -l`, load the bash completions, then `dpkg -r`.
//!
//! Ignored in a plain `cargo test`: it needs the release package, which
//! takes minutes to build, and it installs into the host's /usr, so no other
//! test may run meanwhile. `cargo xtask test` builds the package after the
//! suite and runs this with `LEAKSCOPE_DEB` set to it, alone:
//! `LEAKSCOPE_DEB=target/dist/leakscope_VERSION_amd64.deb cargo test -p
//! leakscope-tests --test package -- --ignored`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leakscope_tests::console::{normalized, output_matches};
use leakscope_tests::*;

const PACKAGE: &str = "leakscope";
const BINARY: &str = "/usr/bin/leakscope";
const UNIT: &str = "/usr/lib/systemd/system/leakscope-watch.service";
const BASH_COMPLETION: &str = "/usr/share/bash-completion/completions/leakscope";
const CONFFILE: &str = "/etc/leakscope/watch.toml";
const MAN1: &str = "/usr/share/man/man1";
/// Pages the package must have among its man pages (one per subcommand).
const REQUIRED_MAN_PAGES: &[&str] = &["leakscope", "leakscope-hunt", "leakscope-check", "leakscope-watch"];
/// The demo hunt, as README.md's first task shows it: `...` where PIDs and
/// times vary; everything else exact.
const DEMO_OUTPUT: &str = "\
leakscope: attached to PID ... (13 probes, exact mode)
leaky: done
leakscope: PID ... `.../leaky 60`: traced ... s (exact mode), target exited with code 0
outstanding: 2.0 MiB in 69 allocations (malloc 39.0 KiB, mmap 2.0 MiB); allocator-internal mappings: 0 B
drops: none (exact)
probes that never fired: calloc, reallocarray, posix_memalign, aligned_alloc, memalign, valloc, pvalloc, mremap
sites by verdict: 1 leak, ... (ranked below by verdict, then growth rate)
findings: 2 (one per leak, by application frame)
  1. leak: remember_session (leaky.c:63): 15.0 KiB in 60 allocations, ...; sites #1
  2. growing: grow_log (leaky.c:76): ...
#1 leak, ...: 15.0 KiB outstanding in 60 allocations, oldest ... s, via malloc
    0x... remember_session .../leaky.c:63 (leaky)
    0x... handle_request .../leaky.c:102 (leaky)
    0x... main .../leaky.c:113 (leaky)
    ... 1 runtime frame (--full-stacks shows them)
... 9 more sites (--top N shows more)
";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `program args` must succeed; its stdout.
fn succeed(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe_status(out.status),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]).stdout == b"install ok installed"
}

/// While alive the package is installed; dropping it purges the package,
/// so a failing check leaves the host as it was.
struct Installed;

impl Installed {
    fn install(deb: &Path) -> Installed {
        assert!(
            !installed(),
            "{PACKAGE} is already installed on this host: this test installs and removes its own"
        );
        succeed("dpkg", &["-i", &deb.display().to_string()]);
        Installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // Also after `dpkg -r`, which leaves the conffile behind.
        let _ = run("dpkg", &["--purge", PACKAGE]);
    }
}

#[test]
#[ignore = "needs the release package: run by `cargo xtask test` with LEAKSCOPE_DEB set"]
fn installed_package_hunts_and_ships_its_files() {
    let deb = PathBuf::from(
        std::env::var_os("LEAKSCOPE_DEB").expect("LEAKSCOPE_DEB: the .deb of `cargo xtask dist` to install"),
    );
    assert!(deb.is_file(), "LEAKSCOPE_DEB={} is not a file", deb.display());
    let package = Installed::install(&deb);

    // The installed binary hunts the demo program's leaks.
    let dir = scratch_dir("package-demo");
    build_demo(&dir.join("leaky")).expect("build the demo");
    let leaky = dir.join("leaky").into_os_string();
    let args = [
        "hunt".into(),
        "--top".into(),
        "1".into(),
        "--".into(),
        leaky,
        "60".into(),
    ];
    let demo = run_captured(Path::new(BINARY), &args, LAUNCH_TIMEOUT, "installed-hunt");
    assert!(demo.status.success(), "{}", demo.describe());
    let output = format!("{}\n{}", demo.stderr, demo.stdout);
    let shown: Vec<&str> = DEMO_OUTPUT.lines().collect();
    assert!(
        output_matches(&normalized(&shown), &normalized(output.lines())),
        "the installed binary's demo hunt printed, on stderr then stdout:\n{output}\n--- expected ---\n{DEMO_OUTPUT}"
    );

    // The unit is valid as installed (its ExecStart exists now).
    let verify = run("systemd-analyze", &["verify", UNIT]);
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify {UNIT}: {}\n{}{}",
        describe_status(verify.status),
        text(&verify.stdout),
        text(&verify.stderr)
    );

    // Every man page renders, without a warning, under its own name.
    let listed = succeed("dpkg", &["-L", PACKAGE]);
    let pages: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{MAN1}/"))?.strip_suffix(".1.gz"))
        .collect();
    for required in REQUIRED_MAN_PAGES {
        assert!(
            pages.contains(required),
            "no man page {required} in the package:\n{listed}"
        );
    }
    for page in &pages {
        let file = format!("{MAN1}/{page}.1.gz");
        let out = Command::new("man")
            .args(["-l", &file])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .expect("run man");
        let rendered = text(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "man -l {file}: {}\n{}",
            describe_status(out.status),
            text(&out.stderr)
        );
        let name = rendered
            .lines()
            .skip_while(|l| l.trim() != "NAME")
            .nth(1)
            .unwrap_or_default();
        assert!(
            // Justified text may put two spaces before the dash.
            name.split_whitespace().take(2).eq([*page, "-"]),
            "man -l {file}: NAME is {name:?}:\n{rendered}"
        );
    }

    // The bash completions register for the command.
    let complete = succeed(
        "bash",
        &["-c", &format!("source {BASH_COMPLETION} && complete -p {PACKAGE}")],
    );
    assert!(
        complete.trim_end().ends_with(&format!(" {PACKAGE}")) && complete.contains("-F "),
        "complete -p {PACKAGE} after sourcing {BASH_COMPLETION}: {complete:?}"
    );

    // Removed, the files go and the edited-or-not config stays (a conffile).
    succeed("dpkg", &["-r", PACKAGE]);
    for gone in [BINARY, UNIT, BASH_COMPLETION] {
        assert!(!Path::new(gone).exists(), "{gone} is left after dpkg -r");
    }
    assert!(Path::new(CONFFILE).is_file(), "dpkg -r removed the conffile {CONFFILE}");
    drop(package);
    assert!(!Path::new(CONFFILE).exists(), "dpkg --purge left {CONFFILE}");
    let _ = fs::remove_dir_all(dir);
}
