//! Tier 3: a bounded, sampled hunt of a process that raised an alert, whose
//! report lands in a directory of its own.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::notify::Alert;
use crate::{
    cli::{Format, HuntArgs, Mode},
    hunt,
    report::{self, Report},
};

/// Stacks listed in the Markdown report.
const MARKDOWN_LISTING: report::Listing = report::Listing {
    top: 20,
    full_stacks: false,
};

pub struct HuntPlan {
    pub duration: Duration,
    pub mode: Mode,
    pub sample_bytes: u64,
    pub reports: PathBuf,
}

/// Hunts `alert.pid` and writes `report.json`, `report.pb.gz`, `report.md`
/// and `alert.json` to a new `<comm>-<pid>-<UTC time>` directory. Blocks for
/// the hunt's duration: run it on a thread of its own.
pub fn hunt_and_report(alert: &Alert, plan: &HuntPlan) -> Result<PathBuf> {
    let mut args = HuntArgs::attaching(alert.pid);
    args.duration = Some(plan.duration);
    args.mode = Some(plan.mode);
    if matches!(plan.mode, Mode::Auto | Mode::Sampled) {
        args.sample_bytes = Some(plan.sample_bytes);
    }
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "");
    let dir = plan
        .reports
        .join(format!("{}-{}-{stamp}", sanitize(&alert.comm), alert.pid));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write(&dir, "alert.json", alert.to_json().as_bytes())?;
    let outcome = hunt::run(&args, None)?;
    let written = write_reports(&dir, &outcome.report);
    outcome.attachment.detach();
    written.map(|()| dir)
}

fn write_reports(dir: &Path, report: &Report) -> Result<()> {
    for (name, format) in [
        ("report.json", Format::Json),
        ("report.pb.gz", Format::Pprof),
        ("report.md", Format::Markdown),
    ] {
        write(dir, name, &report::render(report, format, MARKDOWN_LISTING)?)?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// A process name as a file-name component.
fn sanitize(comm: &str) -> String {
    comm.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_names_become_safe_file_names() {
        assert_eq!(super::sanitize("node"), "node");
        assert_eq!(super::sanitize("a/b c:d"), "a_b_c_d");
    }
}
