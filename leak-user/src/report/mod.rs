//! The report: what a hunt measured, independent of how it is rendered.
//! Schema `leakscope/report/v1`; fields are documented in the README.

pub mod json;
pub mod text;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::heap::Kind;

pub const SCHEMA: &str = "leakscope/report/v1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema: String,
    pub target: TargetInfo,
    pub duration_s: f64,
    pub mode: String,
    /// Why the hunt ended: "duration", "interrupted", "target-exited".
    pub ended_by: String,
    pub totals: Totals,
    /// Records lost, by reason; all zero means the report is exact.
    pub drops: BTreeMap<String, u64>,
    pub probes: Vec<ProbeReport>,
    pub sites: Vec<Site>,
    /// The leakscope command line that produced this report.
    #[serde(default)]
    pub command_line: Option<String>,
    /// Process-level growth: RSS against what the tracer sees.
    #[serde(default)]
    pub process: Option<ProcessGrowth>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TargetInfo {
    pub pid: u32,
    pub command: String,
    pub exited: bool,
    /// Exit code (or 128+signal) of a launched command that exited.
    pub exit_code: Option<i32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Outstanding bytes per site kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Mapped inside allocator calls (malloc arenas, large blocks): already
    /// counted by the malloc sites, so not part of `outstanding_bytes`.
    pub allocator_internal_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeReport {
    pub name: String,
    /// Other names at the same address, covered by this probe.
    pub aliases: Vec<String>,
    /// Probe point as a file offset in the module ("0x..."), for uprobes.
    pub offset: Option<String>,
    /// Why the probe sits where it does.
    pub placement: Option<String>,
    /// "live" (fired), "never-fired", "missing" (not in the target), "alias".
    pub status: String,
    pub hits: u64,
    pub return_hits: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Site {
    pub kind: Kind,
    /// The allocator function (or syscall) called.
    pub allocator: String,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub oldest_age_s: f64,
    /// Mapping sites only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<Mapping>,
    /// Innermost first. Empty when the stack was lost (see drops).
    pub frames: Vec<Frame>,
    /// Everything this site allocated during the hunt, freed or not.
    #[serde(default)]
    pub allocated_bytes: u64,
    #[serde(default)]
    pub allocated_allocations: u64,
    /// Robust slope of `series.bytes` (Theil–Sen), bytes per second.
    #[serde(default)]
    pub growth_bytes_per_s: Option<f64>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// The numbers behind the verdict.
    #[serde(default)]
    pub growth: Option<GrowthStats>,
    /// Outstanding memory of this site sampled over the hunt.
    #[serde(default)]
    pub series: Option<Series>,
}

/// Whether a site (or the process) keeps growing.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Steady growth with old survivors.
    Leak,
    /// Growth, but not (yet) steady or not old.
    Growing,
    /// Grew, then flat: a cache filling up.
    Plateau,
    Stable,
    InsufficientData,
}

/// Samples over the hunt: `t_s[i]` seconds after it began.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub t_s: Vec<f64>,
    pub bytes: Vec<u64>,
    pub allocations: Vec<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GrowthStats {
    /// Share of consecutive samples in which the value rose.
    pub share_rising: f64,
    /// Growth over the whole hunt (last sample − first), bytes.
    pub net_growth_bytes: i64,
    /// Ages of the surviving allocations at the end: median and 90th percentile.
    pub age_p50_s: f64,
    pub age_p90_s: f64,
}

/// RSS (from /proc/PID/status) against the memory the tracer tracks: a gap
/// that grows is memory the probes do not see (fragmentation, other allocators).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessGrowth {
    pub t_s: Vec<f64>,
    pub rss_bytes: Vec<u64>,
    pub tracked_bytes: Vec<u64>,
    pub rss_growth_bytes_per_s: Option<f64>,
    pub tracked_growth_bytes_per_s: Option<f64>,
    pub verdict: Option<Verdict>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Mapping {
    pub anonymous: bool,
    /// Like /proc/PID/maps: "rw-".
    pub prot: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    pub address: String,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<String>,
}

impl From<crate::symbolize::Frame> for Frame {
    fn from(f: crate::symbolize::Frame) -> Frame {
        Frame {
            address: format!("{:#x}", f.address),
            function: f.function,
            file: f.file,
            line: f.line,
            module: f.module,
        }
    }
}

/// `prot_string` of a mapping moved by mremap from one made before the hunt.
pub const PROT_UNKNOWN: u8 = 0xff;

pub fn prot_string(prot: u8) -> String {
    if prot == PROT_UNKNOWN {
        return "???".to_string();
    }
    let bit = |mask: u8, c: char| if prot & mask != 0 { c } else { '-' };
    [bit(1, 'r'), bit(2, 'w'), bit(4, 'x')].iter().collect()
}

/// Human-readable byte counts: "512 B", "12.5 KiB", "3.0 MiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_bytes_and_protection() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(12 * 1024 + 512), "12.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(prot_string(3), "rw-");
        assert_eq!(prot_string(0), "---");
        assert_eq!(prot_string(5), "r-x");
        assert_eq!(prot_string(PROT_UNKNOWN), "???");
    }
}
