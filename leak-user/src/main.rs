use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use leakscope::{
    cli::{Cli, Command, Format, HuntArgs},
    hunt,
    report::{json, text},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.verbose { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    let result = match &cli.command {
        Command::Hunt(args) => hunt_command(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leakscope: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn hunt_command(args: &HuntArgs) -> anyhow::Result<ExitCode> {
    let outcome = hunt::run(args)?;
    let rendered = match args.format {
        Format::Text => text::render(&outcome.report, args.top),
        Format::Json => json::render(&outcome.report),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, rendered).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?
        }
        None => std::io::stdout().write_all(rendered.as_bytes())?,
    }
    outcome.attachment.detach();
    // A launched command's exit code passes through.
    Ok(ExitCode::from(outcome.exit_code.unwrap_or(0).clamp(0, 255) as u8))
}
