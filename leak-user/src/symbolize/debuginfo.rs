//! Separate debug information for stripped modules, found where gdb and perf
//! look: the `.gnu_debuglink` file (CRC-checked) next to the module, in its
//! `.debug/` directory and under /usr/lib/debug, then
//! `/usr/lib/debug/.build-id/xx/yyyy.debug` (Debian's -dbgsym packages).
//! All paths are the target's (inside its root) and opened under the rules
//! of `target_files`; a debuginfod server is asked later (see `debuginfod`).

use super::segments::LoadSegments;
use std::fs::File;
use std::io::{self, Read as _};

use object::{Object, ObjectSection, ReadCache};

use crate::target_files::{open_in_root, Owner};

/// Where distributions install debug files.
const DEBUG_DIR: &str = "/usr/lib/debug";

/// What the symbolizer needs to know about a module's ELF file.
pub(super) struct ElfFacts {
    /// The GNU build-id note, the key of `.build-id` paths and debuginfod.
    pub(super) build_id: Option<Vec<u8>>,
    /// The file carries DWARF itself: no debug file needed.
    pub(super) has_dwarf: bool,
    /// A full symbol table (`.symtab`), not only the exported `.dynsym`.
    pub(super) has_symtab: bool,
    /// `.gnu_debuglink`: the debug file's name and the CRC-32 of its contents.
    debuglink: Option<(String, u32)>,
    loads: LoadSegments,
}

impl ElfFacts {
    pub(super) fn read(file: &File) -> Option<Self> {
        // Read on demand: headers and two notes of what may be a 100 MB binary.
        let cache = ReadCache::new(file);
        let elf = object::File::parse(&cache)
            .map_err(|err| log::debug!("cannot parse ELF for its debug information: {err}"))
            .ok()?;
        Some(Self {
            build_id: elf.build_id().ok().flatten().map(<[u8]>::to_vec),
            has_dwarf: elf.section_by_name(".debug_info").is_some_and(|s| s.size() > 0),
            has_symtab: elf.section_by_name(".symtab").is_some(),
            debuglink: elf
                .gnu_debuglink()
                .ok()
                .flatten()
                .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc)),
            loads: LoadSegments::of(&elf),
        })
    }

    /// The ELF virtual address of a file offset of the module.
    pub(super) fn vaddr(&self, file_offset: u64) -> Option<u64> {
        self.loads.vaddr(file_offset)
    }

    /// `/usr/lib/debug/.build-id/xx/yyyy.debug` for this build-id.
    fn build_id_path(&self) -> Option<String> {
        let hex = hex(self.build_id.as_deref()?);
        (hex.len() > 2).then(|| format!("{DEBUG_DIR}/.build-id/{}/{}.debug", &hex[..2], &hex[2..]))
    }
}

/// Lower-case hex, as build-ids are written in paths and URLs.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The debug file of the module at `module_path` (as the target sees it),
/// opened with the target's rights: the first candidate that exists and
/// belongs to the module (matching CRC for a debug link, matching build-id
/// for a `.build-id` path).
pub(super) fn find_local(pid: u32, module_path: &str, facts: &ElfFacts) -> Option<File> {
    let dir = module_path.rsplit_once('/').map_or("", |(dir, _)| dir);
    if let Some((name, crc)) = &facts.debuglink {
        // A name with a slash would leave the directories searched.
        if !name.contains('/') {
            for path in [
                format!("{dir}/{name}"),
                format!("{dir}/.debug/{name}"),
                format!("{DEBUG_DIR}{dir}/{name}"),
            ] {
                // The module itself may be its own link target's namesake.
                if path == module_path {
                    continue;
                }
                if let Some(file) = open_candidate(pid, &path, |file| crc32(file).is_ok_and(|c| c == *crc)) {
                    return Some(file);
                }
            }
        }
    }
    let path = facts.build_id_path()?;
    open_candidate(pid, &path, |file| {
        ElfFacts::read(file).is_some_and(|debug| debug.build_id == facts.build_id)
    })
}

fn open_candidate(pid: u32, path: &str, belongs: impl Fn(&File) -> bool) -> Option<File> {
    let file = match open_in_root(pid, path, Owner::Any) {
        Ok(file) => file,
        Err(err) => {
            if err.kind() != io::ErrorKind::NotFound {
                log::debug!("debug file candidate {path} of pid {pid} refused: {err}");
            }
            return None;
        }
    };
    if !belongs(&file) {
        log::warn!("{path} is not the debug file of the module that names it (CRC or build-id differs): ignored");
        return None;
    }
    log::debug!("debug information of pid {pid} from {path}");
    Some(file)
}

/// The CRC-32 that `.gnu_debuglink` records (zlib's).
fn crc32(file: &File) -> io::Result<u32> {
    let mut crc = flate2::Crc::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut reader = file;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(crc.sum());
        }
        crc.update(&buf[..n]);
    }
}

/// Whether `file` is an ELF debug file for the module with `build_id`.
pub(super) fn is_debug_file_for(file: &File, build_id: &[u8]) -> bool {
    ElfFacts::read(file).is_some_and(|debug| debug.build_id.as_deref() == Some(build_id) && debug.has_dwarf)
}
