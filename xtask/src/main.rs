//! `cargo xtask`: set-up, build, demo, tests and benchmarks of leakscope (see README, "Quick start").
mod bench;
mod demo;
mod dist;
mod fuzz;
mod setup;
mod test;

use std::{
    env, fs,
    os::unix::{fs::MetadataExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "leakscope's development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and running leakscope needs (idempotent)
    Setup,
    /// Set up, then build the workspace's binaries (debug)
    Build,
    /// Set up, then build the release binary and target/dist/leakscope_VERSION_amd64.deb
    Dist,
    /// Set up, build, then hunt the leaks of demo/leaky.c (as root)
    Demo,
    /// Set up, check formatting and lints, build, then run the tests (as root)
    Test {
        /// Arguments for the test binaries, e.g. a test name filter
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz each parser of untrusted input (cargo-fuzz, nightly) for a bounded time
    Fuzz {
        /// Seconds per target
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Set up, build, then measure leakscope's costs against untraced runs and peers; writes BENCHMARKS.md (as root)
    Bench {
        /// Fewer repetitions and shorter runs (about 2 minutes instead of 9)
        #[arg(long)]
        quick: bool,
        /// Run only this section (its number, e.g. 4 or 2a) and print it, leaving BENCHMARKS.md alone
        #[arg(long, value_name = "SECTION")]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    env::set_current_dir(repo_root())?;
    match cli.cmd {
        Cmd::Setup => setup::setup()?,
        Cmd::Build => {
            setup::setup()?;
            println!("{}", build()?.display());
        }
        Cmd::Dist => println!("{}", dist::dist()?.display()),
        Cmd::Demo => return demo::demo(),
        Cmd::Test { args } => test::test(&args)?,
        Cmd::Fuzz { seconds } => fuzz::fuzz(seconds)?,
        Cmd::Bench { quick, only } => bench::bench(quick, only.as_deref())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// leak-ebpf only builds for the BPF target, which leak-user/build.rs does
/// with the nightly toolchain: the host-side cargo commands leave it out.
const WORKSPACE: [&str; 3] = ["--workspace", "--exclude", "leak-ebpf"];

/// Builds the workspace's binaries (and through leak-user/build.rs the eBPF
/// object); returns the path of the leakscope binary.
fn build() -> Result<PathBuf> {
    run(Command::new("cargo").arg("build").args(WORKSPACE).arg("--bins"))?;
    Ok(target_dir().join("debug/leakscope"))
}

/// The release binaries, as shipped (`dist`) and measured (`bench`); returns
/// the directory holding them.
fn build_release() -> Result<PathBuf> {
    // An AYA_BUILD_SKIP build would lack its eBPF programs.
    run(Command::new("cargo")
        .env_remove("AYA_BUILD_SKIP")
        .args(["build", "--release", "-p", "leak-user", "--bins"]))?;
    Ok(target_dir().join("release"))
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the repository")
}

fn target_dir() -> PathBuf {
    repo_root().join(env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
}

fn is_root() -> bool {
    // /proc/self belongs to the effective user of the process.
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} must run as root: leakscope loads eBPF programs");
    }
    Ok(())
}

/// The command line as a shell would read it, with the variables it sets.
fn cmd_line(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.display(), v?.display())));
    let words = [cmd.get_program()]
        .into_iter()
        .chain(cmd.get_args())
        .map(|w| w.display().to_string());
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// Prints the command, runs it and returns its exit status.
fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let line = cmd_line(cmd);
    eprintln!("+ {line}");
    cmd.status().with_context(|| format!("cannot run `{line}`"))
}

/// Prints and runs the command; fails unless it succeeds.
fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", cmd_line(cmd));
    }
    Ok(())
}

/// Runs a query without printing it; returns its stdout if it succeeds.
fn output(cmd: &mut Command) -> Result<String> {
    let line = cmd_line(cmd);
    let out = cmd.output().with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The exit code to pass on for a child's status (128 + signal if killed).
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
