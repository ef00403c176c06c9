//! `leakscope-generate DIR`: writes the man pages (`DIR/man`) and the shell
//! completions (`DIR/completions`) of leakscope, for `cargo xtask dist`.
use std::{path::PathBuf, process::ExitCode};

use leakscope::generate;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("leakscope-generate: error: usage: leakscope-generate DIR");
        return ExitCode::from(2);
    };
    let written = generate::man_pages(&dir.join("man")).and_then(|()| {
        generate::SHELLS
            .into_iter()
            .try_for_each(|shell| generate::completions(shell, &dir.join("completions")).map(drop))
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leakscope-generate: error: cannot write into {}: {e}", dir.display());
            ExitCode::from(2)
        }
    }
}
