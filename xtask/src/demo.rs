//! `cargo xtask demo`: hunt the leaks of the bundled demo program.
use std::{
    fs,
    process::{Command, ExitCode},
};

use anyhow::Result;

use crate::{build, exit_code, require_root, setup, status, target_dir};

pub fn demo() -> Result<ExitCode> {
    require_root("the demo")?;
    setup::setup()?;
    let leakscope = build()?;
    let leaky = target_dir().join("demo/leaky");
    fs::create_dir_all(leaky.parent().expect("has a parent"))?;
    leakscope_tests::build_demo(&leaky)?;
    // The report goes to stdout; leakscope exits with the child's exit code.
    let status = status(
        Command::new(&leakscope)
            .args(["hunt", "--duration", "6", "--interval", "2", "--"])
            .arg(&leaky),
    )?;
    Ok(exit_code(status))
}
