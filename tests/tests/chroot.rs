//! A chrooted process is hunted like any other: its files are named in
//! /proc/PID/maps as this process sees them, and opened through map_files/.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use leakscope_tests::*;

const NAME: &str = "replacements";

/// A minimal root: the fixture and the libraries its loader lists, at the
/// same paths.
fn chroot_with(fixture: &Path) -> (PathBuf, PathBuf) {
    let root = scratch_dir("chroot");
    let listed = Command::new("/lib64/ld-linux-x86-64.so.2")
        .arg("--list")
        .arg(fixture)
        .output()
        .expect("run ld.so --list");
    let text = String::from_utf8_lossy(&listed.stdout);
    let libraries = text.lines().filter_map(|line| {
        let line = line.trim();
        let line = line.split_once(" => ").map_or(line, |(_, path)| path);
        let path = line.rsplit_once(" (0x").map_or(line, |(path, _)| path);
        path.starts_with('/').then(|| PathBuf::from(path))
    });
    for library in libraries {
        let inside = root.join(library.strip_prefix("/").unwrap());
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        fs::copy(&library, &inside).unwrap_or_else(|e| panic!("copy {}: {e}", library.display()));
    }
    let inside = root.join(NAME);
    fs::copy(fixture, &inside).unwrap();
    (root.canonicalize().unwrap(), inside.canonicalize().unwrap())
}

#[test]
fn attach_to_a_chrooted_process() {
    let (root, inside) = chroot_with(&build_fixture(NAME, &[]));
    let mut cmd = Command::new("chroot");
    cmd.arg(&root).arg(format!("/{NAME}")).arg("--wait");
    let run = run_attach_command(&inside, cmd, &[], Stop::Signal(libc::SIGINT));
    check_fixture_report(
        &run.report,
        NAME,
        &inside,
        OriginRule::Module,
        run.mode_alive(),
        &expected::replacements(),
        |v| {
            v.check_exit_ok(run.status, &run.stderr);
            for (name, calls) in expected::REPLACEMENT_CALLS {
                check_probe_hits(v, &run.report, name, *calls);
            }
        },
    );
}
