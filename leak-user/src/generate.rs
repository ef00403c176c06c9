//! Man pages and shell completions, generated from the clap definitions in
//! `cli` so that they cannot drift from the command line. `cargo xtask dist`
//! runs them through the `leakscope-generate` binary to fill the package.

use std::{fs, io, path::Path};

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// The shells whose completions the package ships.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes `leakscope.1` and one `leakscope-SUBCOMMAND.1` per subcommand into `dir`.
pub fn man_pages(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}

/// Writes the completion script of `shell` into `dir`, under the file name
/// that shell looks for (`leakscope.bash`, `_leakscope`, `leakscope.fish`).
pub fn completions(shell: Shell, dir: &Path) -> io::Result<std::path::PathBuf> {
    fs::create_dir_all(dir)?;
    let mut command = Cli::command();
    clap_complete::generate_to(shell, &mut command, "leakscope", dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_man_page_per_subcommand_and_a_script_per_shell() {
        let dir = std::env::temp_dir().join(format!("leakscope-generate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        man_pages(&dir.join("man")).unwrap();
        let mut pages: Vec<String> = fs::read_dir(dir.join("man"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pages.sort();
        let mut expected: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|s| format!("leakscope-{}.1", s.get_name()))
            .chain(["leakscope.1".to_string()])
            .collect();
        expected.sort();
        assert_eq!(pages, expected);
        let hunt = fs::read_to_string(dir.join("man/leakscope-hunt.1")).unwrap();
        assert!(hunt.contains("\\-\\-sample\\-bytes"), "{hunt}");
        for shell in SHELLS {
            let script = fs::read_to_string(completions(shell, &dir.join("completions")).unwrap()).unwrap();
            assert!(script.contains("sample-bytes"), "{shell}: {script}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
