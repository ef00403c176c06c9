//! JIT code names from `/tmp/perf-PID.map` (written by `node --perf-basic-prof`
//! and other JITs): lines `START SIZE NAME`, hex, appended as code is compiled.

use std::{collections::BTreeMap, io};

use crate::target_files::{open_in_root, read_bounded, Owner};

/// At most this much of the map is read per refresh, so that one refresh
/// stays short whatever the file holds.
const MAX_READ_PER_REFRESH: u64 = 16 << 20;
/// At most this much of the map is read in all: V8 appends a line per
/// compiled function, and a map larger than this is hostile or runaway.
const MAX_TOTAL_READ: u64 = 256 << 20;

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
    /// Lines that were not valid UTF-8 or not `START SIZE NAME`.
    pub skipped_lines: u64,
    /// Why the map was last refused (a symlink, a FIFO, another owner), said once.
    refused: Option<String>,
}

impl PerfMap {
    /// Reads lines appended since the last call. The map lives in the
    /// target's mount namespace, under its /tmp, which any user can write:
    /// it is opened under the rules of [`crate::target_files`].
    pub fn refresh(&mut self, pid: u32) {
        let path = format!("/tmp/perf-{pid}.map");
        let mut file = match open_in_root(pid, &path, Owner::Target) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => return self.refuse(&path, &e.to_string()),
        };
        let budget = MAX_READ_PER_REFRESH.min(MAX_TOTAL_READ.saturating_sub(self.read_up_to));
        if budget == 0 {
            return self.refuse(&path, &format!("larger than {} MiB", MAX_TOTAL_READ >> 20));
        }
        let Ok(data) = read_bounded(&mut file, self.read_up_to, budget) else {
            return;
        };
        self.refused = None;
        let complete = match data.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            // A line longer than a whole refresh's read is hostile: skip it.
            None if data.len() as u64 == budget => {
                self.read_up_to += budget;
                self.skipped_lines += 1;
                return;
            }
            None => 0,
        };
        self.read_up_to += complete as u64;
        let skipped_before = self.skipped_lines;
        for line in data[..complete].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match std::str::from_utf8(line).ok().and_then(parse_line) {
                Some((start, symbol)) => self.insert(start, symbol),
                None => self.skipped_lines += 1,
            }
        }
        if self.skipped_lines > skipped_before {
            log::warn!(
                "{path} of PID {pid}: skipped {} malformed lines so far (JIT names on them are missing)",
                self.skipped_lines
            );
        }
    }

    fn refuse(&mut self, path: &str, why: &str) {
        if self.refused.as_deref() != Some(why) {
            log::warn!("not reading {path}: {why}; JIT frames stay unnamed by it");
            self.refused = Some(why.to_string());
        }
    }

    fn insert(&mut self, start: u64, symbol: JitSymbol) {
        // Code moved or recompiled: the newest entry wins.
        self.by_start.retain(|&s, old| old.end <= start || s >= symbol.end);
        self.by_start.insert(start, symbol);
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
    let end = start.checked_add(size)?;
    let name = fields.next()?.trim();
    let mut symbol = JitSymbol {
        end,
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

    /// The map of this test process, written as the target would.
    fn own_map(contents: &[u8], len: u64) -> PerfMap {
        let path = format!("/tmp/perf-{}.map", std::process::id());
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, contents).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len)
            .unwrap();
        let mut map = PerfMap::default();
        map.refresh(std::process::id());
        map
    }

    #[test]
    fn bad_lines_are_skipped_and_counted_and_reads_bounded() {
        let text = b"10 20 JS:~bad\xff /a.js:1:1\n30 10 JS:*good /a.js:2:1\nnot a line\n";
        let map = own_map(text, text.len() as u64);
        assert_eq!(map.lookup(0x31).map(|s| s.function.as_str()), Some("good"));
        assert_eq!(map.skipped_lines, 2);
        // 1 GiB without a newline (sparse: no disk used): bounded per refresh and in all.
        let mut map = own_map(b"", 1 << 30);
        for refreshes in 1..=20u64 {
            assert_eq!(map.read_up_to, (refreshes * MAX_READ_PER_REFRESH).min(MAX_TOTAL_READ));
            map.refresh(std::process::id());
        }
        assert!(map.refused.is_some());
        std::fs::remove_file(format!("/tmp/perf-{}.map", std::process::id())).unwrap();
    }

    #[test]
    fn newest_entry_wins_and_lookup_is_by_range() {
        let mut map = PerfMap::default();
        for line in ["100 50 JS:^old /a.js:1:1", "120 10 JS:*new /a.js:2:1"] {
            let (start, symbol) = parse_line(line).unwrap();
            map.insert(start, symbol);
        }
        assert_eq!(map.lookup(0x125).map(|s| s.function.as_str()), Some("new"));
        assert_eq!(map.lookup(0x100), None); // the old range was replaced
        assert_eq!(map.lookup(0x200), None);
    }
}
