//! Which loaded object a process's `malloc` (and each other allocator
//! function) resolves to: the first object of the dynamic loader's global
//! lookup scope that exports it. That scope is the executable, then the
//! LD_PRELOAD and /etc/ld.so.preload libraries, then the DT_NEEDED
//! dependencies breadth-first (glibc's `_dl_map_object_deps`): a preloaded
//! or linked jemalloc, tcmalloc or mimalloc comes before libc.

use std::{
    collections::{HashSet, VecDeque},
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, Context as _, Result};
use object::{
    elf,
    read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _},
    Endianness,
};

/// A loaded object of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleRef {
    /// As the target's /proc/PID/maps names it, for reports.
    pub path: PathBuf,
    /// A path that opens the same file from here. For a running process,
    /// /proc/PID/map_files/RANGE: the mapped inode itself, whatever mount
    /// namespace, pivot_root or chroot the target lives in.
    pub open_path: PathBuf,
}

impl ModuleRef {
    /// A file of this machine's own view (launch mode, before exec).
    pub fn local(path: PathBuf) -> ModuleRef {
        ModuleRef {
            open_path: path.clone(),
            path,
        }
    }
}

/// Bytes read from /proc/PID/environ and ld.so.preload: the loader reads
/// LD_PRELOAD from the start of the environment, and nothing legitimate is larger.
const MAX_PRELOAD_SOURCE_BYTES: u64 = 1 << 20;

/// The DT_SONAME and DT_NEEDED entries of an ELF file.
#[derive(Debug, Default)]
pub(crate) struct Dynamic {
    soname: Option<String>,
    needed: Vec<String>,
}

/// Whether `path` and its DT_SONAME answer to the library name `name`
/// (a DT_NEEDED entry or an LD_PRELOAD entry, with or without directories).
fn answers_to(path: &Path, soname: Option<&str>, name: &str) -> bool {
    let base = Path::new(name).file_name().and_then(|n| n.to_str()).unwrap_or(name);
    soname == Some(base) || path.file_name().and_then(|n| n.to_str()) == Some(base)
}

pub(crate) fn read_dynamic(path: &Path) -> Result<Dynamic> {
    let file = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // SAFETY: a read-only private mapping of a file the target has mapped
    // (libraries in use are not truncated).
    let data = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    let invalid = |e: object::Error| anyhow!("{} is not a valid ELF file: {e}", path.display());
    let header = elf::FileHeader64::<Endianness>::parse(&*data).map_err(invalid)?;
    let endian = header.endian().map_err(invalid)?;
    let sections = header.sections(endian, &*data).map_err(invalid)?;
    let mut found = Dynamic::default();
    let Some((entries, link)) = sections.dynamic(endian, &*data).map_err(invalid)? else {
        return Ok(found);
    };
    let strings = sections.strings(endian, &*data, link).map_err(invalid)?;
    for entry in entries {
        let Ok(name) = entry.string(endian, strings) else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        match entry.tag32(endian) {
            Some(elf::DT_NEEDED) => found.needed.push(name),
            Some(elf::DT_SONAME) => found.soname = Some(name),
            _ => {}
        }
    }
    Ok(found)
}

/// The global lookup scope of a running process, from its mapped objects.
pub fn process_lookup_order(pid: u32) -> Result<Vec<ModuleRef>> {
    let maps =
        fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| crate::target::proc_read_error(pid, "maps", e))?;
    let mut objects: Vec<ModuleRef> = Vec::new();
    for line in maps.lines() {
        // Five fields separated by one space, then the padded path (which
        // may contain spaces, and ends in " (deleted)" for a replaced file).
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(path)) = (fields.next(), fields.nth(4).map(str::trim_start)) else {
            continue;
        };
        if !path.starts_with('/') || objects.iter().any(|o| o.path == Path::new(path)) {
            continue; // anonymous or special ([heap], [vdso])
        }
        let map_file = PathBuf::from(format!("/proc/{pid}/map_files/{range}"));
        let open_path = if fs::File::open(&map_file).is_ok() {
            map_file
        } else {
            PathBuf::from(format!("/proc/{pid}/root")).join(path.trim_start_matches('/'))
        };
        objects.push(ModuleRef {
            path: PathBuf::from(path),
            open_path,
        });
    }
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
    let Some(exe_index) = exe.as_ref().and_then(|exe| objects.iter().position(|o| &o.path == exe)) else {
        // The executable is not mapped from a file (a kernel thread) or
        // could not be named: every object, in address order, as a guess.
        return Ok(objects);
    };
    let dynamics: Vec<Dynamic> = objects
        .iter()
        .map(|o| read_dynamic(&o.open_path).unwrap_or_default())
        .collect();
    let find = |name: &str, taken: &HashSet<usize>| {
        (0..objects.len())
            .find(|&i| !taken.contains(&i) && answers_to(&objects[i].path, dynamics[i].soname.as_deref(), name))
    };
    let mut queue = VecDeque::from([exe_index]);
    let mut taken = HashSet::from([exe_index]);
    for name in preload_names(pid) {
        if let Some(i) = find(&name, &taken) {
            taken.insert(i);
            queue.push_back(i);
        }
    }
    let mut order = Vec::new();
    while let Some(i) = queue.pop_front() {
        order.push(objects[i].clone());
        for name in &dynamics[i].needed {
            if let Some(dep) = find(name, &taken) {
                taken.insert(dep);
                queue.push_back(dep);
            }
        }
    }
    Ok(order)
}

/// The LD_PRELOAD entries of the process's initial environment, then those of
/// the ld.so.preload of its root, in the loader's order.
fn preload_names(pid: u32) -> Vec<String> {
    let read = |path: String| -> Vec<u8> {
        let mut bytes = Vec::new();
        if let Ok(file) = fs::File::open(path) {
            let _ = file.take(MAX_PRELOAD_SOURCE_BYTES).read_to_end(&mut bytes);
        }
        bytes
    };
    let environ = read(format!("/proc/{pid}/environ"));
    let from_env = environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"LD_PRELOAD"))
        .and_then(|rest| rest.strip_prefix(b"="))
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .unwrap_or_default();
    let from_file = String::from_utf8_lossy(&read(format!("/proc/{pid}/root/etc/ld.so.preload"))).into_owned();
    let split = |s: &str| -> Vec<String> {
        s.split([' ', ':', '\t', '\n'])
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut names = split(&from_env);
    names.extend(split(&from_file));
    names
}

/// The dynamic loader named by the ELF's PT_INTERP; None for a static executable.
fn interpreter(program: &Path) -> Result<Option<PathBuf>> {
    let file = fs::File::open(program).with_context(|| format!("cannot read {}", program.display()))?;
    // SAFETY: a read-only private mapping of the executable about to run.
    let data = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", program.display()))?;
    let Ok(header) = elf::FileHeader64::<Endianness>::parse(&*data) else {
        return Ok(None); // a script: its interpreter's modules are not known before exec
    };
    let invalid = |e: object::Error| anyhow!("{} is not a valid ELF file: {e}", program.display());
    let endian = header.endian().map_err(invalid)?;
    for segment in header.program_headers(endian, &*data).map_err(invalid)? {
        if let Ok(Some(interp)) = segment.interpreter(endian, &*data) {
            return Ok(Some(PathBuf::from(String::from_utf8_lossy(interp).into_owned())));
        }
    }
    Ok(None)
}

/// Launch mode, before exec: the lookup scope `program` will get with this
/// process's environment (which the command inherits). glibc's loader lists
/// it without running the program (`ld.so --list`, what ldd does); for any
/// other loader, the same system libc as leakscope's is assumed.
pub fn command_lookup_order(program: &Path) -> Result<Vec<ModuleRef>> {
    let Some(loader) = interpreter(program)? else {
        return Ok(vec![]);
    };
    let mut order = vec![ModuleRef::local(program.to_path_buf())];
    let is_glibc_loader = loader
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("ld-linux"));
    let listed = is_glibc_loader
        .then(|| {
            Command::new(&loader)
                .arg("--list")
                .arg(program)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()
        })
        .flatten();
    match listed {
        Some(output) => order.extend(parse_loader_list(&String::from_utf8_lossy(&output.stdout))),
        None => order.extend(process_lookup_order(std::process::id())?.into_iter().skip(1)),
    }
    Ok(order)
}

/// The objects of `ld.so --list` output, in its (load) order.
fn parse_loader_list(text: &str) -> Vec<ModuleRef> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.split_once(" => ").map_or(line, |(_, path)| path);
            let path = line.rsplit_once(" (0x").map_or(line, |(path, _)| path);
            path.starts_with('/').then(|| ModuleRef::local(PathBuf::from(path)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_loader_list() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd6a5f1000)\n\
                    \t/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f0e1c400000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1c21f000)\n\
                    \tlibmissing.so.1 => not found\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1c8a2000)\n";
        let paths: Vec<PathBuf> = parse_loader_list(text).into_iter().map(|m| m.path).collect();
        assert_eq!(
            paths,
            [
                "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn this_process_starts_with_its_executable_and_reaches_libc() {
        let order = process_lookup_order(std::process::id()).unwrap();
        assert_eq!(Some(&order[0].path), fs::read_link("/proc/self/exe").ok().as_ref());
        let libc = order.iter().position(|m| {
            m.path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        });
        assert!(libc.is_some_and(|i| i > 0), "{order:?}");
    }

    #[test]
    fn names_match_by_soname_or_file_name() {
        let path = Path::new("/chroot/usr/lib/libjemalloc.so.2");
        assert!(answers_to(path, None, "/usr/lib/libjemalloc.so.2"));
        assert!(answers_to(
            Path::new("/lib/libc-2.36.so"),
            Some("libc.so.6"),
            "libc.so.6"
        ));
        assert!(!answers_to(path, Some("libjemalloc.so.2"), "libc.so.6"));
    }
}
