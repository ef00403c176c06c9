//! `cargo xtask dist`: the release binary (its eBPF object is embedded by
//! leak-user/build.rs) and `target/dist/leakscope_VERSION_amd64.deb`, built
//! with dpkg-deb from a staged tree: the binary, man pages and completions
//! generated from the clap definitions (leakscope-generate), the watch unit,
//! its default config and the Prometheus alerting rules.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{build_release, output, run, setup, target_dir};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where each shipped file of `packaging/` goes, and its mode.
const PACKAGING: &[(&str, &str, u32)] = &[
    (
        "leakscope-watch.service",
        "usr/lib/systemd/system/leakscope-watch.service",
        0o644,
    ),
    ("watch.toml", "etc/leakscope/watch.toml", 0o644),
    (
        "prometheus/leakscope.rules.yml",
        "usr/share/leakscope/prometheus/leakscope.rules.yml",
        0o644,
    ),
];

/// Where each shell looks for completions, by the file name clap_complete writes.
const COMPLETIONS: &[(&str, &str)] = &[
    ("leakscope.bash", "usr/share/bash-completion/completions/leakscope"),
    ("_leakscope", "usr/share/zsh/vendor-completions/_leakscope"),
    ("leakscope.fish", "usr/share/fish/vendor_completions.d/leakscope.fish"),
];

/// Builds the package; returns its path.
pub fn dist() -> Result<PathBuf> {
    setup::setup()?;
    let release = build_release()?;
    let dist = target_dir().join("dist");
    let name = format!("leakscope_{VERSION}_amd64");
    let root = dist.join(&name);
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))?;
    }
    install(&release.join("leakscope"), &root.join("usr/bin/leakscope"), 0o755)?;
    for (source, destination, mode) in PACKAGING {
        install(&Path::new("packaging").join(source), &root.join(destination), *mode)?;
    }
    let generated = dist.join("generated");
    run(Command::new(release.join("leakscope-generate")).arg(&generated))?;
    let man1 = root.join("usr/share/man/man1");
    for entry in fs::read_dir(generated.join("man"))? {
        let page = entry?.path();
        let file_name = page.file_name().expect("a file").to_string_lossy();
        install(&page, &man1.join(&*file_name), 0o644)?;
        // Debian compresses man pages; -n leaves the time out, for reproducible packages.
        run(Command::new("gzip").args(["-9nf"]).arg(man1.join(&*file_name)))?;
    }
    for (written, destination) in COMPLETIONS {
        install(
            &generated.join("completions").join(written),
            &root.join(destination),
            0o644,
        )?;
    }
    write(
        &root.join("usr/share/doc/leakscope/copyright"),
        "leakscope\nLicense: MIT OR Apache-2.0\n",
    )?;
    write(&root.join("DEBIAN/conffiles"), "/etc/leakscope/watch.toml\n")?;
    write(
        &root.join("DEBIAN/control"),
        &control(&release.join("leakscope"), &root)?,
    )?;
    let deb = dist.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb))?;
    Ok(deb)
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().expect("inside the tree"))?;
    fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::create_dir_all(path.parent().expect("inside the tree"))?;
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// DEBIAN/control; libc6's version is the newest GLIBC_ symbol version the
/// binary imports.
fn control(binary: &Path, root: &Path) -> Result<String> {
    let symbols = output(Command::new("objdump").arg("-T").arg(binary))?;
    let glibc = symbols
        .split_whitespace()
        // objdump writes the version as `(GLIBC_2.34)`.
        .filter_map(|word| word.trim_matches(['(', ')']).strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max();
    let Some((major, minor)) = glibc else {
        bail!(
            "{} imports no GLIBC_ symbols: not the binary expected",
            binary.display()
        );
    };
    let kib = output(Command::new("du").args(["-sk", "--exclude=DEBIAN"]).arg(root))?;
    let installed_kib = kib.split_whitespace().next().unwrap_or("0");
    Ok(format!(
        "Package: leakscope\nVersion: {VERSION}\nArchitecture: amd64\nMaintainer: leakscope developers <leakscope@localhost>\n\
         Installed-Size: {installed_kib}\nDepends: libc6 (>= {major}.{minor}), libgcc-s1\nSection: devel\nPriority: optional\n\
         Description: eBPF memory-leak tracer\n \
         leakscope hunts the call stacks that hold the memory a process never\n \
         frees, and `leakscope watch` watches a host's processes for leaks,\n \
         serving Prometheus metrics. Needs Linux 5.8 or later with BTF.\n"
    ))
}
