//! `cargo xtask test`: formatting, lints, build and the test suite.
use std::process::Command;

use anyhow::Result;

use crate::{build, require_root, run, setup, WORKSPACE};

/// `args` go to the test binaries, after `--test-threads=1`.
pub fn test(args: &[String]) -> Result<()> {
    require_root("the tests")?;
    setup::setup()?;
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo")
        .arg("clippy")
        .args(WORKSPACE)
        .args(["--all-targets", "--", "-D", "warnings"]))?;
    let leakscope = build()?;
    run(Command::new("cargo")
        .arg("test")
        .args(WORKSPACE)
        .env("LEAKSCOPE_BIN", &leakscope)
        .args(["--", "--test-threads=1"])
        .args(args))
}
