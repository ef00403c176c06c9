//! JIT code names from `/tmp/perf-PID.map` (written by `node --perf-basic-prof`
//! and other JITs): lines `START SIZE NAME`, hex, appended as code is compiled.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
};

/// A named JIT code range, as parsed from the map.
#[derive(Clone, Debug, PartialEq)]
pub struct JitSymbol {
    pub end: u64,
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// The entries read so far; read incrementally so that it outlives the process.
#[derive(Default)]
pub struct PerfMap {
    by_start: BTreeMap<u64, JitSymbol>,
    /// Bytes of the file consumed (only whole lines).
    read_up_to: u64,
}

impl PerfMap {
    /// Reads lines appended since the last call. The map lives in the
    /// target's mount namespace, under its /tmp.
    pub fn refresh(&mut self, pid: u32) {
        let Ok(mut file) = File::open(format!("/proc/{pid}/root/tmp/perf-{pid}.map")) else {
            return;
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.read_up_to)).is_err() || file.read_to_string(&mut text).is_err() {
            return;
        }
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        self.read_up_to += complete as u64;
        for line in text[..complete].lines() {
            if let Some((start, symbol)) = parse_line(line) {
                // Code moved or recompiled: the newest entry wins.
                self.by_start.retain(|&s, old| old.end <= start || s >= symbol.end);
                self.by_start.insert(start, symbol);
            }
        }
    }

    pub fn lookup(&self, pc: u64) -> Option<&JitSymbol> {
        let (_, symbol) = self.by_start.range(..=pc).next_back()?;
        (pc < symbol.end).then_some(symbol)
    }
}

/// `3ad1a4a0c0a0 12c JS:*retainBuffers file:///srv/app.js:12:20`: V8 prefixes
/// JS functions with `JS:` and a tier mark (`~` interpreted, `^` Sparkplug,
/// `+` Maglev, `*` TurboFan), then `name location:line:column`.
pub(crate) fn parse_line(line: &str) -> Option<(u64, JitSymbol)> {
    let mut fields = line.splitn(3, ' ');
    let start = u64::from_str_radix(fields.next()?, 16).ok()?;
    let size = u64::from_str_radix(fields.next()?, 16).ok()?;
    let name = fields.next()?.trim();
    let mut symbol = JitSymbol {
        end: start.checked_add(size)?,
        function: name.to_string(),
        file: None,
        line: None,
    };
    if let Some(js) = name.strip_prefix("JS:") {
        let js = js.trim_start_matches(['~', '^', '+', '*']);
        let (function, location) = js.split_once(' ').unwrap_or((js, ""));
        // location is `file:line:column`; the file may itself contain colons (URLs).
        let mut parts = location.rsplitn(3, ':');
        let (_column, line, file) = (parts.next(), parts.next(), parts.next());
        symbol.function = if function.is_empty() {
            "(anonymous)".to_string()
        } else {
            function.to_string()
        };
        if let (Some(file), Some(line)) = (file, line.and_then(|l| l.parse().ok())) {
            symbol.file = Some(file.to_string());
            symbol.line = Some(line);
        }
    }
    Some((start, symbol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v8_lines() {
        let (start, s) = parse_line("3ad1a4a0c0a0 12c JS:*retainBuffers file:///srv/app.js:12:20").unwrap();
        assert_eq!(start, 0x3ad1a4a0c0a0);
        assert_eq!(s.end, 0x3ad1a4a0c0a0 + 0x12c);
        assert_eq!(
            (s.function.as_str(), s.file.as_deref(), s.line),
            ("retainBuffers", Some("file:///srv/app.js"), Some(12))
        );
        let (_, s) = parse_line("10 20 JS:~ /srv/app.js:3:5").unwrap();
        assert_eq!(
            (s.function.as_str(), s.file.as_deref(), s.line),
            ("(anonymous)", Some("/srv/app.js"), Some(3))
        );
        let (_, s) = parse_line("10 20 Builtin:ArgumentsAdaptorTrampoline").unwrap();
        assert_eq!(
            (s.function.as_str(), s.file, s.line),
            ("Builtin:ArgumentsAdaptorTrampoline", None, None)
        );
        assert!(parse_line("garbage").is_none());
    }

    #[test]
    fn newest_entry_wins_and_lookup_is_by_range() {
        let mut map = PerfMap::default();
        for line in ["100 50 JS:^old /a.js:1:1", "120 10 JS:*new /a.js:2:1"] {
            let (start, symbol) = parse_line(line).unwrap();
            map.by_start.retain(|&s, old| old.end <= start || s >= symbol.end);
            map.by_start.insert(start, symbol);
        }
        assert_eq!(map.lookup(0x125).map(|s| s.function.as_str()), Some("new"));
        assert_eq!(map.lookup(0x100), None); // the old range was replaced
        assert_eq!(map.lookup(0x200), None);
    }
}
