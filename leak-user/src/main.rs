use std::{io::Write, path::Path, process::ExitCode};

use clap::Parser as _;
use leakscope::{
    check,
    cli::{CheckArgs, Cli, Command, DiffArgs, DiffFormat, HuntArgs, ReportArgs},
    diff, hunt,
    report::{self, json, Report},
    watch,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.verbose { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    let result = match &cli.command {
        Command::Hunt(args) => hunt_command(args),
        Command::Report(args) => report_command(args),
        Command::Diff(args) => diff_command(args),
        Command::Check(args) => check_command(args),
        Command::Watch(args) => watch::run(args).map(|()| ExitCode::SUCCESS),
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
    let outcome = hunt::run(args, None)?;
    let listing = report::Listing {
        top: args.top,
        full_stacks: args.full_stacks,
    };
    write_output(args.output.as_deref(), |out| {
        report::write(&outcome.report, args.format, listing, out)
    })?;
    outcome.attachment.detach_before_exit();
    // A launched command's exit code passes through.
    Ok(ExitCode::from(outcome.exit_code.unwrap_or(0).clamp(0, 255) as u8))
}

fn report_command(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let mut report = read_report(&args.file)?;
    // A report saved by an older leakscope has no marks yet.
    report::drops::mark_and_warn(&mut report);
    if let Some(max) = args.max_sites {
        report::limit_sites(&mut report, max);
    }
    let listing = report::Listing {
        top: args.top,
        full_stacks: args.full_stacks,
    };
    write_output(args.output.as_deref(), |out| {
        report::write(&report, args.format, listing, out)
    })?;
    Ok(ExitCode::SUCCESS)
}

fn diff_command(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let d = diff::diff(&read_report(&args.a)?, &read_report(&args.b)?);
    let rendered = match args.format {
        DiffFormat::Text => diff::render_text(&d),
        DiffFormat::Json => diff::render_json(&d),
    };
    write_output(args.output.as_deref(), |out| Ok(out.write_all(rendered.as_bytes())?))?;
    Ok(ExitCode::SUCCESS)
}

fn read_report(path: &Path) -> anyhow::Result<Report> {
    let text = leakscope::input::read_text(path, leakscope::input::REPORT_LIMIT)?;
    json::parse(&text).map_err(|e| anyhow::anyhow!("{} is not a leakscope JSON report: {e}", path.display()))
}

/// Lets `write` write to `path`, or to stdout without one (binary formats
/// too: `> file` works).
fn write_output(path: Option<&Path>, write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    match path {
        Some(path) => std::fs::File::create(path)
            .map_err(anyhow::Error::from)
            .and_then(|mut file| write(&mut file))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e:#}", path.display())),
        None => write(&mut std::io::stdout().lock()),
    }
}

/// Exit codes: 0 within limits, 1 a limit was exceeded, 2 the check could not run.
fn check_command(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let mut hunt_args = HuntArgs::launching(&args.command);
    hunt_args.duration = args.duration;
    hunt_args.sample_at = Some(args.warmup);
    let load = args.load.as_ref().map(|shell_command| hunt::Load {
        shell_command: shell_command.clone(),
        after: args.warmup,
    });
    let outcome = hunt::run(&hunt_args, load.as_ref())?;
    let report = &outcome.report;
    if let Some(path) = &args.output {
        write_output(Some(path), |out| Ok(json::write(report, out)?))?;
    }
    outcome.attachment.detach_before_exit();
    if !report.target.exited {
        // The workload is a service that outlived the load or the duration.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(report.target.pid as i32),
            nix::sys::signal::SIGTERM,
        );
    }
    if let Some(code) = report.target.exit_code.filter(|&code| code != 0) {
        anyhow::bail!("the workload `{}` failed with exit code {code}", report.target.command);
    }
    let limits = check::Limits {
        max_growth_bytes: args.max_growth,
        max_rate_bytes_per_s: args.max_rate,
        warmup_s: args.warmup.as_secs_f64(),
    };
    let violations = check::evaluate(report, &limits);
    eprint!("{}", check::explain(&violations, &limits));
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
