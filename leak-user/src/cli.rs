//! Command line. Other tools script against it: keep it stable.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "leakscope",
    version,
    about = "eBPF memory-leak tracer: which call stacks hold the memory that survives"
)]
pub struct Cli {
    /// More detail on stderr (probe placement, attach steps).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace a running process (-p PID) or launch one (-- COMMAND) and report
    /// the memory still outstanding per allocation call stack.
    Hunt(HuntArgs),
}

#[derive(Args, Debug, Clone)]
pub struct HuntArgs {
    /// Process to attach to (all its threads).
    #[arg(short, long, conflicts_with = "command", required_unless_present = "command")]
    pub pid: Option<u32>,
    /// Stop after this many seconds (attach mode default: until Ctrl-C or exit).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Print a short live summary to stderr every SECS.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub interval: Option<Duration>,
    /// Only report allocations older than this.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "0")]
    pub min_age: Duration,
    /// Stacks shown in the text report.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Ring buffer size shared by all CPUs; raise it if drops are reported.
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub ring_buffer_mib: u32,
    /// Capacity of the kernel's stack map (distinct allocation stacks).
    #[arg(long, value_name = "N", default_value_t = 32 * 1024)]
    pub max_stacks: u32,
    /// Command to launch and trace from its first instruction.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` must be a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_attach_and_launch_forms() {
        let cli =
            Cli::try_parse_from(["leakscope", "hunt", "-p", "42", "--duration", "1.5", "--format", "json"]).unwrap();
        let Command::Hunt(h) = cli.command;
        assert_eq!(h.pid, Some(42));
        assert_eq!(h.duration, Some(Duration::from_millis(1500)));
        assert_eq!(h.format, Format::Json);

        let cli = Cli::try_parse_from(["leakscope", "hunt", "--top", "5", "--", "./app", "--flag", "x"]).unwrap();
        let Command::Hunt(h) = cli.command;
        assert_eq!(h.command, ["./app", "--flag", "x"]);
        assert_eq!(h.pid, None);
    }

    #[test]
    fn rejects_missing_target_and_bad_seconds() {
        assert!(Cli::try_parse_from(["leakscope", "hunt"]).is_err());
        assert!(Cli::try_parse_from(["leakscope", "hunt", "-p", "1", "--duration", "-3"]).is_err());
        assert!(Cli::try_parse_from(["leakscope", "hunt", "-p", "1", "--", "x"]).is_err());
    }
}
