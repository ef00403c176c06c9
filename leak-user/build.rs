//! Builds `leak-ebpf` with the nightly toolchain and bpf-linker (aya-build).
//! With AYA_BUILD_SKIP=1 an empty object is written instead, so that `cargo
//! check` and clippy work without the eBPF toolchain; such a binary refuses to
//! load probes with a clear message.
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        fs::write(out_dir.join("leak-ebpf"), b"")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec()?;
    let package_dir = |name: &str| {
        let package = metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == name)
            .ok_or_else(|| anyhow!("{name} package not found"))?;
        package
            .manifest_path
            .parent()
            .map(|dir| dir.to_owned())
            .context("no parent")
    };
    let root_dir = package_dir("leak-ebpf")?;
    // The records both sides share: the eBPF object is stale once they change.
    println!("cargo:rerun-if-changed={}", package_dir("leak-common")?.join("src"));
    aya_build::build_ebpf(
        [Package {
            name: "leak-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom("nightly"),
    )
}
