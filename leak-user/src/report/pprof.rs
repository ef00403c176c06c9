//! pprof: a gzipped `profile.proto`, read by `go tool pprof`, Pyroscope,
//! Parca and speedscope. Sample types follow Go's heap profiles: `inuse_*` is
//! what each site holds at the end, `alloc_*` what it allocated during the
//! hunt. Only sites that hold memory at the end are in the report, so
//! `alloc_*` covers those sites only.
//!
//! The messages below declare the subset of
//! github.com/google/pprof/proto/profile.proto that leakscope fills, with its
//! field numbers, so that no protoc is needed to build.

use std::{collections::HashMap, io::Write as _, sync::Arc};

use flate2::{write::GzEncoder, Compression};
use prost::Message as _;

use super::{file_name, frame_label, Frame, Report};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Index 0 is always "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Innermost first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// Set: pprof must not re-symbolize (it would guess at the module bases).
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// The gzipped profile.
pub fn render(report: &Report) -> anyhow::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile(report).encode_to_vec())?;
    Ok(gz.finish()?)
}

pub fn profile(report: &Report) -> Profile {
    let mut b = Builder::default();
    b.string("");
    let sample_types = [
        ("inuse_space", "bytes"),
        ("inuse_objects", "count"),
        ("alloc_space", "bytes"),
        ("alloc_objects", "count"),
    ];
    b.profile.sample_type = sample_types
        .iter()
        .map(|(kind, unit)| ValueType {
            r#type: b.string(kind),
            unit: b.string(unit),
        })
        .collect();
    b.profile.default_sample_type = b.string("inuse_space");
    let t = &report.target;
    let summary = format!(
        "leakscope: PID {} `{}`, {:.1} s, {} mode",
        t.pid, t.command, report.duration_s, report.mode
    );
    b.profile.comment = std::iter::once(summary)
        .chain(report.command_line.clone())
        .map(|c| b.string(&c))
        .collect();
    b.profile.duration_nanos = (report.duration_s * 1e9) as i64;

    let lost = [Arc::new(Frame {
        address: "0x0".to_string(),
        function: Some("[stack lost]".to_string()),
        file: None,
        line: None,
        column: None,
        module: None,
        inlined: false,
    })];
    for site in super::stack_sites(report).iter() {
        let frames = if site.frames.is_empty() {
            &lost[..]
        } else {
            &site.frames[..]
        };
        // A machine frame and the functions inlined into it are one location.
        let location_id = frames.split_inclusive(|f| !f.inlined).map(|f| b.location(f)).collect();
        // Whatever a site holds it allocated during the hunt: reports without
        // the cumulative counts still get consistent alloc_* values.
        let value = [
            site.outstanding_bytes,
            site.outstanding_allocations,
            site.allocated_bytes.max(site.outstanding_bytes),
            site.allocated_allocations.max(site.outstanding_allocations),
        ]
        .map(|v| v as i64)
        .to_vec();
        let label = [("kind", site.kind.name()), ("allocator", site.allocator.as_str())]
            .iter()
            .map(|(key, value)| Label {
                key: b.string(key),
                str: b.string(value),
            })
            .collect();
        b.profile.sample.push(Sample {
            location_id,
            value,
            label,
        });
    }
    // pprof names the first mapping as the profiled binary: the target's.
    let program = t.command.split_whitespace().next().map_or("", file_name);
    let strings = &b.profile.string_table;
    b.profile
        .mapping
        .sort_by_key(|m| file_name(&strings[m.filename as usize]) != program);
    b.profile
}

/// Builds the tables, each entry once.
#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    /// (name, file) -> function id
    functions: HashMap<(i64, i64), u64>,
    /// (address, module, function) -> location id: the lost stack and the
    /// tail's frames are all at 0x0 in no module.
    locations: HashMap<(String, Option<String>, Option<String>), u64>,
    /// module -> index in `profile.mapping`
    mappings: HashMap<String, usize>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    /// `frames`: the functions at one address, innermost first (the
    /// inlined ones, then the one they were compiled into), as pprof's lines.
    fn location(&mut self, frames: &[Arc<Frame>]) -> u64 {
        let frame = frames.last().expect("split_inclusive yields no empty group");
        let key = (frame.address.clone(), frame.module.clone(), frame.function.clone());
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let address = u64::from_str_radix(frame.address.trim_start_matches("0x"), 16).unwrap_or(0);
        let mapping_id = frame.module.as_deref().map_or(0, |m| self.mapping(m, address));
        let line = frames
            .iter()
            .map(|f| Line {
                function_id: self.function(f),
                line: f.line.map_or(0, i64::from),
            })
            .collect();
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line,
        });
        self.locations.insert(key, id);
        id
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let name = self.string(&frame_label(frame));
        let filename = self.string(frame.file.as_deref().unwrap_or(""));
        if let Some(&id) = self.functions.get(&(name, filename)) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name,
            system_name: name,
            filename,
        });
        self.functions.insert((name, filename), id);
        id
    }

    /// The module's mapping, spanning the addresses seen in it: the report
    /// does not record where modules were mapped.
    fn mapping(&mut self, module: &str, address: u64) -> u64 {
        if let Some(&i) = self.mappings.get(module) {
            let m = &mut self.profile.mapping[i];
            m.memory_start = m.memory_start.min(address);
            m.memory_limit = m.memory_limit.max(address + 1);
            return m.id;
        }
        let filename = self.string(module);
        let id = self.profile.mapping.len() as u64 + 1;
        self.mappings.insert(module.to_string(), self.profile.mapping.len());
        self.profile.mapping.push(Mapping {
            id,
            memory_start: address,
            memory_limit: address + 1,
            filename,
            has_functions: true,
        });
        id
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::super::tests::{sample_report, without_analysis};
    use super::*;

    fn decode(bytes: &[u8]) -> Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut raw).expect("gzip");
        Profile::decode(raw.as_slice()).expect("a profile.proto message")
    }

    #[test]
    fn encodes_deduplicated_tables_and_four_sample_types() {
        let p = decode(&render(&sample_report()).unwrap());
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        let types: Vec<(&str, &str)> = p.sample_type.iter().map(|t| (s(t.r#type), s(t.unit))).collect();
        assert_eq!(
            types,
            [
                ("inuse_space", "bytes"),
                ("inuse_objects", "count"),
                ("alloc_space", "bytes"),
                ("alloc_objects", "count")
            ]
        );
        assert_eq!(s(p.default_sample_type), "inuse_space");
        let names: Vec<&str> = p.function.iter().map(|f| s(f.name)).collect();
        // main is in three stacks, at one address: one function, one location
        assert_eq!(names.iter().filter(|n| **n == "main").count(), 1);
        assert_eq!(p.location.iter().filter(|l| l.address == 0x401200).count(), 1);
        for name in [
            "cache_insert",
            "handle_request",
            "[stack lost]",
            "libapp.so@0x7f00001234",
        ] {
            assert!(names.contains(&name), "no function {name} in {names:?}");
        }
        let mut strings = p.string_table.clone();
        strings.sort();
        strings.dedup();
        assert_eq!(strings.len(), p.string_table.len(), "strings are unique");
        assert_eq!(p.mapping.len(), 1);
        assert_eq!(
            (p.mapping[0].memory_start, p.mapping[0].memory_limit),
            (0x401100, 0x7f00001235)
        );

        let leak = &p.sample[0];
        assert_eq!(leak.value, [40960, 10, 81920, 20]);
        let loc = |id: u64| &p.location[id as usize - 1];
        let first = loc(leak.location_id[0]);
        let function = &p.function[first.line[0].function_id as usize - 1];
        assert_eq!(
            (s(function.name), s(function.filename), first.line[0].line),
            ("cache_insert", "/src/app.c", 31)
        );
        let labels: Vec<(&str, &str)> = leak.label.iter().map(|l| (s(l.key), s(l.str))).collect();
        assert_eq!(labels, [("kind", "malloc"), ("allocator", "malloc")]);
        let total: i64 = p.sample.iter().map(|x| x.value[0]).sum();
        assert_eq!(total, 50664);
    }

    #[test]
    fn inlined_frames_are_lines_of_one_location() {
        let mut report = sample_report();
        // cache_insert inlined into handle_request: one machine frame.
        let frames = &mut report.sites[0].frames;
        let caller_address = frames[1].address.clone();
        let inlined = Arc::make_mut(&mut frames[0]);
        inlined.inlined = true;
        inlined.address = caller_address;
        let p = profile(&report);
        let s = |i: i64| p.string_table[i as usize].as_str();
        let leak = &p.sample[0];
        assert_eq!(leak.location_id.len(), 2);
        let lines: Vec<(&str, i64)> = p.location[leak.location_id[0] as usize - 1]
            .line
            .iter()
            .map(|l| (s(p.function[l.function_id as usize - 1].name), l.line))
            .collect();
        assert_eq!(lines, [("cache_insert", 31), ("handle_request", 55)]);
    }

    #[test]
    fn alloc_values_never_fall_below_inuse() {
        let p = decode(&render(&without_analysis(sample_report())).unwrap());
        assert_eq!(p.sample[0].value, [40960, 10, 40960, 10]);
        assert_eq!(p.comment.len(), 1, "no command line to record");
    }

    #[test]
    fn lists_the_target_binary_first() {
        let mut report = sample_report();
        report.target.command = "/opt/app --serve".into();
        std::sync::Arc::make_mut(&mut report.sites[0].frames[0]).module = Some("/usr/lib/libc.so.6".into());
        std::sync::Arc::make_mut(&mut report.sites[0].frames[2]).module = Some("/opt/app".into());
        let p = profile(&report);
        let files: Vec<&str> = p
            .mapping
            .iter()
            .map(|m| p.string_table[m.filename as usize].as_str())
            .collect();
        assert_eq!(files, ["/opt/app", "/usr/lib/libc.so.6", "/usr/lib/libapp.so"]);
    }
}
