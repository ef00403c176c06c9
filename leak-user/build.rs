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
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "leak-ebpf")
        .ok_or_else(|| anyhow!("leak-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().context("no parent")?;
    aya_build::build_ebpf(
        [Package {
            name: "leak-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom("nightly"),
    )
}
