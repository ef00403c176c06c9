//! The executable file mappings of a traced process, with their files held
//! open so that stacks stay resolvable after the process exits.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::{fd::AsRawFd, unix::fs::MetadataExt as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::debuginfo::{self, ElfFacts};
use super::{cfi::Cfi, perfmap::PerfMap};
use crate::target_files::{open_in_root, Owner};

/// An ELF file mapped by the target.
pub(super) struct ModuleFile {
    /// Unique within this process. It keys the symbol cache: neither an
    /// address (reused after exec or dlopen) nor a descriptor number (reused
    /// after close) identifies a file for long.
    pub(super) id: u64,
    pub(super) file: File,
    /// Unwind tables, parsed on first use by `skipped_caller`.
    pub(super) cfi: OnceLock<Option<Cfi>>,
    /// None when the file is not ELF.
    pub(super) facts: Option<ElfFacts>,
    /// A stripped module's debug file found on the target's file system,
    /// looked for while the target's root can still be reached.
    pub(super) local_debug_file: Option<File>,
}

impl ModuleFile {
    fn open(pid: u32, entry: &MapsEntry<'_>) -> Option<Self> {
        // map_files/ yields exactly the mapped inode, even if the file was
        // since replaced or deleted. The path is the fallback when that
        // entry is gone; the target may have swapped a symlink or another
        // file in since it mapped it, hence the rules of target_files and the
        // inode check. Both work across mount namespaces.
        let file = File::open(format!("/proc/{pid}/map_files/{}", entry.range))
            .and_then(|file| match file.metadata()?.file_type().is_file() {
                true => Ok(file),
                false => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")),
            })
            .or_else(|_| {
                let file = open_in_root(pid, entry.path, Owner::Any)?;
                match file.metadata()?.ino() == entry.inode {
                    true => Ok(file),
                    false => Err(io::Error::other("not the file that was mapped")),
                }
            })
            .map_err(|err| log::debug!("cannot open {} of pid {pid}: {err}", entry.path))
            .ok()?;
        let mut module = Self::new(file);
        module.local_debug_file = module
            .facts
            .as_ref()
            .filter(|facts| !facts.has_dwarf)
            .and_then(|facts| debuginfo::find_local(pid, entry.path, facts));
        Some(module)
    }

    /// The module in `file`, its debug file not yet looked for.
    pub(super) fn new(file: File) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            facts: ElfFacts::read(&file),
            file,
            cfi: OnceLock::new(),
            local_debug_file: None,
        }
    }
}

/// A path that reaches an open file, for APIs that want a path.
pub(super) fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

pub(super) struct Mapping {
    pub(super) start: u64,
    end: u64,
    offset: u64,
    dev: String,
    inode: u64,
    /// As the target sees it.
    pub(super) path: String,
    /// None when the file could not be opened: the module is still known.
    pub(super) file: Option<Arc<ModuleFile>>,
}

impl Mapping {
    pub(super) fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// Executable file-backed mappings of a process, kept across refreshes so that
/// addresses stay resolvable after the process exits.
pub struct ProcessModules {
    pid: u32,
    /// Sorted by start and disjoint.
    mappings: Vec<Mapping>,
    /// Executable mappings without a file (JIT code, the vDSO), start → end,
    /// disjoint: kept once seen, like `mappings`, for old stacks.
    anonymous_code: BTreeMap<u64, u64>,
    /// JIT code names, for addresses outside every file mapping.
    pub perf_map: PerfMap,
}

impl ProcessModules {
    /// Empty; call [`refresh`](Self::refresh).
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            mappings: Vec::new(),
            anonymous_code: BTreeMap::new(),
            perf_map: PerfMap::default(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Re-read /proc/PID/maps. New executable file mappings are added with
    /// their files opened; mappings that disappeared are kept (old stacks may
    /// point into them) unless a new mapping overlaps them. Fails only if the
    /// maps file cannot be read (process gone).
    pub fn refresh(&mut self) -> io::Result<()> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))?;
        self.perf_map.refresh(self.pid);
        for line in maps.lines() {
            match MapsEntry::parse(line) {
                Some(entry) => self.add(entry),
                None => {
                    if let Some((start, end)) = anonymous_code_range(line) {
                        self.add_anonymous_code(start, end);
                    }
                }
            }
        }
        Ok(())
    }

    fn add_anonymous_code(&mut self, start: u64, end: u64) {
        let overlapping: Vec<u64> = self
            .anonymous_code
            .range(..end)
            .filter(|&(_, &e)| e > start)
            .map(|(&s, _)| s)
            .collect();
        let (mut start, mut end) = (start, end);
        for s in overlapping {
            let e = self.anonymous_code.remove(&s).expect("listed above");
            (start, end) = (start.min(s), end.max(e));
        }
        self.anonymous_code.insert(start, end);
    }

    /// Whether `pc` is in code the target mapped: a file mapped executable,
    /// an anonymous executable mapping or a JIT region its perf map names.
    pub fn is_code(&self, pc: u64) -> bool {
        self.find(pc).is_some()
            || self
                .anonymous_code
                .range(..=pc)
                .next_back()
                .is_some_and(|(_, &end)| pc < end)
            || self.perf_map.lookup(pc).is_some()
    }

    fn add(&mut self, entry: MapsEntry<'_>) {
        let idx = self.mappings.partition_point(|m| m.start < entry.start);
        if self.mappings.get(idx).is_some_and(|m| {
            m.start == entry.start
                && m.end == entry.end
                && m.offset == entry.offset
                && m.dev == entry.dev
                && m.inode == entry.inode
        }) {
            return;
        }
        // Libraries remapped after dlclose+dlopen keep their open file.
        let file = self
            .mappings
            .iter()
            .find(|m| m.dev == entry.dev && m.inode == entry.inode && m.path == entry.path)
            .and_then(|m| m.file.clone())
            .or_else(|| ModuleFile::open(self.pid, &entry).map(Arc::new));
        self.mappings.retain(|m| m.end <= entry.start || m.start >= entry.end);
        let idx = self.mappings.partition_point(|m| m.start < entry.start);
        self.mappings.insert(
            idx,
            Mapping {
                start: entry.start,
                end: entry.end,
                offset: entry.offset,
                dev: entry.dev.to_owned(),
                inode: entry.inode,
                path: entry.path.to_owned(),
                file,
            },
        );
    }

    pub(super) fn find(&self, addr: u64) -> Option<&Mapping> {
        let idx = self.mappings.partition_point(|m| m.start <= addr);
        let mapping = self.mappings.get(idx.checked_sub(1)?)?;
        (addr < mapping.end).then_some(mapping)
    }
}

/// The range of an executable line of /proc/PID/maps without a file.
fn anonymous_code_range(line: &str) -> Option<(u64, u64)> {
    let mut rest = line;
    let range = next_field(&mut rest);
    let perms = next_field(&mut rest);
    for _ in 0..3 {
        next_field(&mut rest);
    }
    if perms.as_bytes().get(2) != Some(&b'x') || rest.trim_start().starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?))
}

/// One executable, file-backed line of /proc/PID/maps.
pub(crate) struct MapsEntry<'a> {
    range: &'a str,
    start: u64,
    end: u64,
    offset: u64,
    dev: &'a str,
    inode: u64,
    path: &'a str,
}

impl<'a> MapsEntry<'a> {
    pub(crate) fn parse(line: &'a str) -> Option<Self> {
        let mut rest = line;
        let range = next_field(&mut rest);
        let perms = next_field(&mut rest);
        let offset = next_field(&mut rest);
        let dev = next_field(&mut rest);
        let inode = next_field(&mut rest);
        // The path is the rest of the line: it may contain spaces.
        let path = rest.trim_start();
        if perms.as_bytes().get(2) != Some(&b'x') || !path.starts_with('/') {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        Some(Self {
            range,
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            offset: u64::from_str_radix(offset, 16).ok()?,
            dev,
            inode: inode.parse().ok()?,
            path: path.strip_suffix(" (deleted)").unwrap_or(path),
        })
    }
}

fn next_field<'a>(rest: &mut &'a str) -> &'a str {
    let trimmed = rest.trim_start();
    let (field, tail) = trimmed.split_at(trimmed.find(' ').unwrap_or(trimmed.len()));
    *rest = tail;
    field
}
