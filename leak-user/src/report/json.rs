//! JSON rendering (schema `leakscope/report/v1`).

use std::io::{BufWriter, Write};

use super::Report;

/// Streams the report to `out`: its size is that of the report, not twice it.
pub fn write(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let mut out = BufWriter::new(out);
    serde_json::to_writer_pretty(&mut out, report)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Reads a report written by `write`.
pub fn parse(text: &str) -> anyhow::Result<Report> {
    let report: Report = serde_json::from_str(text)?;
    anyhow::ensure!(
        report.schema == super::SCHEMA,
        "unsupported report schema `{}`",
        report.schema
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample_report;
    use super::*;

    #[test]
    fn streamed_like_a_pretty_string_and_read_back() {
        let report = sample_report();
        let mut streamed = Vec::new();
        write(&report, &mut streamed).unwrap();
        let whole = serde_json::to_string_pretty(&report).unwrap() + "\n";
        assert_eq!(String::from_utf8(streamed).unwrap(), whole);
        assert_eq!(parse(&whole).unwrap(), report);
    }
}
