//! JSON rendering (schema `leakscope/report/v1`).

use super::Report;

pub fn render(report: &Report) -> String {
    let mut out = serde_json::to_string_pretty(report).expect("a report always serializes");
    out.push('\n');
    out
}

/// Reads a report written by `render`.
pub fn parse(text: &str) -> anyhow::Result<Report> {
    let report: Report = serde_json::from_str(text)?;
    anyhow::ensure!(
        report.schema == super::SCHEMA,
        "unsupported report schema `{}`",
        report.schema
    );
    Ok(report)
}
