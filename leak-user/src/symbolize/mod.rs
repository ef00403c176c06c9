//! Names the user stacks captured by the eBPF side.
//!
//! Stacks are raw virtual addresses in the traced process. [`ProcessModules`]
//! keeps the process's executable mappings and their files open, so that
//! symbolization works after the process has exited and across mount
//! namespaces; [`Symbolizer`] turns addresses into [`Frame`]s with blazesym.

mod cfi;
mod debuginfo;
mod debuginfod;
mod frame_walk;
pub(crate) mod maps;
pub(crate) mod perfmap;
mod segments;
mod unwind;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::Input;

use debuginfod::Debuginfod;
pub use maps::ProcessModules;
use maps::{fd_path, ModuleFile};
pub use unwind::{Registers, Splice, StackMemory, Unwinder};

/// The `module` of frames named from a perf map.
pub const JIT_MODULE: &str = "[jit]";

/// One symbolized frame. Fields are None when unknown.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    /// The raw address as captured.
    pub address: u64,
    /// Demangled (Rust and C++), e.g. "leak_malloc" or "std::vector<int>::push_back".
    pub function: Option<String>,
    /// Source file path from DWARF, when present.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Path of the ELF the address is in, as the target sees it.
    pub module: Option<String>,
    /// Functions inlined at the address, innermost first. `function` is then
    /// the function the code was compiled into, and `line` its line of the
    /// call that was inlined.
    #[serde(default)]
    pub inlined: Vec<Inlined>,
}

/// One level of inlining at an address.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Inlined {
    pub function: Option<String>,
    pub file: Option<String>,
    /// The line of the call to the next inner function or, in the innermost
    /// one, the line of the address.
    pub line: Option<u32>,
}

/// What a code location resolves to, independent of the address it was
/// reached through.
#[derive(Clone, Default)]
struct SymInfo {
    function: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    inlined: Vec<Inlined>,
}

pub struct Symbolizer {
    /// One instance: it caches parsed ELF and DWARF data per file.
    inner: blazesym::symbolize::Symbolizer,
    /// Keyed by (module file id, file offset looked up): unlike a raw address
    /// this stays valid across processes, exec and dlopen.
    cache: HashMap<(u64, u64), SymInfo>,
    /// Modules whose DWARF failed to load (e.g. a stale debug link): ELF
    /// symbols only, rather than retrying the expensive failure per address.
    no_dwarf: HashSet<u64>,
    /// The separate debug file of each stripped module, by module file id.
    debug_files: HashMap<u64, Option<File>>,
    /// Asked for the debug files of modules that have none locally.
    debuginfod: Option<Debuginfod>,
    /// Modules (as the target sees them) that named an address.
    named_modules: HashSet<String>,
    /// Stripped modules without a debug file that left an address unnamed.
    stripped_unnamed: BTreeSet<String>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            // With inlined functions, an address in inlined code gets each
            // inlined level and, for the outermost function (the real
            // frame), its line of the call. Debug files are found here
            // (`debuginfo`), under the target's root and rights, not by blazesym.
            inner: blazesym::symbolize::Symbolizer::builder()
                .set_debug_dirs(Some::<&[PathBuf]>(&[]))
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(false)
                .build(),
            cache: HashMap::new(),
            no_dwarf: HashSet::new(),
            debug_files: HashMap::new(),
            debuginfod: Debuginfod::from_env(),
            named_modules: HashSet::new(),
            stripped_unnamed: BTreeSet::new(),
        }
    }

    /// Modules that named none of the addresses looked up in them: stripped,
    /// and no debug file was found for them. (A stripped library that named
    /// some through its exported symbols is not one.)
    pub fn modules_without_symbols(&self) -> impl Iterator<Item = &str> {
        self.stripped_unnamed
            .iter()
            .filter(|path| !self.named_modules.contains(*path))
            .map(String::as_str)
    }

    /// Symbolize one stack. `addrs[i]` for i>0 are return addresses, looked up
    /// at addr-1 (the call instruction); frame 0 is too when
    /// `all_return_addresses` is true, otherwise it is an exact ip. Frames keep
    /// the address as captured. The stack ends before its first return
    /// address outside the target's code (the walk followed data). Unknown
    /// addresses give Frames with Nones (module still filled when the address
    /// is in a known mapping).
    pub fn symbolize(&mut self, modules: &ProcessModules, addrs: &[u64], all_return_addresses: bool) -> Vec<Frame> {
        addrs[..frame_walk::code_frames(modules, addrs)]
            .iter()
            .enumerate()
            .map(|(i, &address)| self.frame(modules, address, i > 0 || all_return_addresses))
            .collect()
    }

    fn frame(&mut self, modules: &ProcessModules, address: u64, is_return: bool) -> Frame {
        let pc = if is_return { address.saturating_sub(1) } else { address };
        let Some(mapping) = modules.find(pc) else {
            // Outside every file: JIT code, named if the JIT writes a perf map.
            let jit = modules.perf_map.lookup(pc);
            return Frame {
                address,
                function: jit.map(|s| s.function.clone()),
                file: jit.and_then(|s| s.file.clone()),
                line: jit.and_then(|s| s.line),
                module: jit.map(|_| JIT_MODULE.to_string()),
                inlined: Vec::new(),
            };
        };
        let info = match &mapping.file {
            Some(module) => {
                let info = self.lookup(module, mapping.file_offset(pc));
                let stripped = module.facts.as_ref().is_some_and(|f| !f.has_symtab && !f.has_dwarf)
                    && self.debug_files.get(&module.id).is_some_and(Option::is_none);
                if info.function.is_some() {
                    self.named_modules.insert(mapping.path.clone());
                } else if stripped {
                    self.stripped_unnamed.insert(mapping.path.clone());
                }
                info
            }
            None => SymInfo::default(),
        };
        Frame {
            address,
            function: info.function,
            file: info.file,
            line: info.line,
            module: Some(mapping.path.clone()),
            inlined: info.inlined,
        }
    }

    fn lookup(&mut self, module: &ModuleFile, offset: u64) -> SymInfo {
        if let Some(info) = self.cache.get(&(module.id, offset)) {
            return info.clone();
        }
        // A debug file has the module's addresses, not its file layout.
        let from_debug_file = self
            .debug_file(module)
            .zip(module.facts.as_ref().and_then(|f| f.vaddr(offset)))
            .and_then(|(path, vaddr)| {
                resolve(&self.inner, &path, true, Input::VirtOffset(vaddr))
                    .map_err(|err| log::warn!("debug file of module {path:?} unusable: {err:#}"))
                    .ok()
            });
        let info = from_debug_file.unwrap_or_else(|| self.lookup_in_module(module, offset));
        self.cache.insert((module.id, offset), info.clone());
        info
    }

    fn lookup_in_module(&mut self, module: &ModuleFile, offset: u64) -> SymInfo {
        let path = fd_path(&module.file);
        // Mapped to an ELF address here, not by blazesym: its sum of a
        // segment's offset and size overflows on hostile headers.
        let Some(vaddr) = module.facts.as_ref().and_then(|f| f.vaddr(offset)) else {
            log::debug!("offset {offset:#x} of {path:?} is in no loaded segment");
            return SymInfo::default();
        };
        let input = Input::VirtOffset(vaddr);
        let result = if self.no_dwarf.contains(&module.id) {
            resolve(&self.inner, &path, false, input)
        } else {
            resolve(&self.inner, &path, true, input).or_else(|err| {
                log::warn!("DWARF of module {path:?} unusable, using ELF symbols: {err:#}");
                self.no_dwarf.insert(module.id);
                resolve(&self.inner, &path, false, input)
            })
        };
        result.unwrap_or_else(|err| {
            log::debug!("cannot symbolize offset {offset:#x} of {path:?}: {err:#}");
            SymInfo::default()
        })
    }

    /// The separate debug file of a module without DWARF: found next to it
    /// or under /usr/lib/debug when it was opened, else from debuginfod.
    fn debug_file(&mut self, module: &ModuleFile) -> Option<PathBuf> {
        let facts = module.facts.as_ref().filter(|f| !f.has_dwarf)?;
        let debuginfod = &mut self.debuginfod;
        self.debug_files
            .entry(module.id)
            .or_insert_with(|| {
                module
                    .local_debug_file
                    .as_ref()
                    .and_then(|file| file.try_clone().ok())
                    .or_else(|| debuginfod.as_mut()?.debuginfo(facts.build_id.as_deref()?))
            })
            .as_ref()
            .map(fd_path)
    }
}

fn resolve(
    symbolizer: &blazesym::symbolize::Symbolizer,
    path: &Path,
    debug_syms: bool,
    input: Input<u64>,
) -> Result<SymInfo, blazesym::Error> {
    let mut elf = Elf::new(path);
    elf.debug_syms = debug_syms;
    let symbolized = symbolizer.symbolize_single(&Source::Elf(elf), input)?;
    let location = |code: Option<&blazesym::symbolize::CodeInfo<'_>>| {
        (
            code.map(|code| code.to_path().to_string_lossy().into_owned()),
            code.and_then(|code| code.line),
        )
    };
    Ok(symbolized
        .into_sym()
        .map(|sym| {
            let (file, line) = location(sym.code_info.as_deref());
            SymInfo {
                function: (!sym.name.is_empty()).then(|| demangle(&sym.name)),
                file,
                line,
                // blazesym lists them outermost first.
                inlined: sym
                    .inlined
                    .iter()
                    .rev()
                    .map(|inlined| {
                        let (file, line) = location(inlined.code_info.as_ref());
                        Inlined {
                            function: (!inlined.name.is_empty()).then(|| demangle(&inlined.name)),
                            file,
                            line,
                        }
                    })
                    .collect(),
            }
        })
        .unwrap_or_default())
}

/// Reads `file` as a module of a target is read (the target chooses its
/// binaries): names each of `offsets` from DWARF and from the ELF symbols,
/// and finds the unwind rule there. The entry point of the `elf_module` fuzz target.
pub fn read_as_module(file: std::fs::File, offsets: &[u64]) {
    let module = ModuleFile::new(file);
    let mut symbolizer = Symbolizer::new();
    let cfi = cfi::Cfi::load(&module.file);
    for &offset in offsets {
        let _ = symbolizer.lookup(&module, offset);
        let _ = resolve(
            &symbolizer.inner,
            &fd_path(&module.file),
            false,
            Input::VirtOffset(offset),
        );
        if let Some(cfi) = &cfi {
            let _ = cfi.vaddr(offset).map(|vaddr| cfi.row(vaddr));
        }
    }
}

/// Rust (legacy `_ZN...`, v0 `_R...`) and C++ (`_Z...`) names demangled;
/// any other name is a C name and stays as it is.
fn demangle(name: &str) -> String {
    if let Ok(rust) = rustc_demangle::try_demangle(name) {
        return format!("{rust:#}");
    }
    let cpp = name
        .starts_with("_Z")
        .then(|| cpp_demangle::Symbol::new(name).ok()?.demangle().ok())
        .flatten();
    cpp.unwrap_or_else(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::FileExt;
    use std::process::{Child, Command, Stdio};

    use super::*;

    const PROGRAM: &str = r#"#include <stdio.h>
#include <unistd.h>

void *volatile inside_addr;
volatile int counter;

void target_fn(void) {
    inside_addr = &&inside;
inside:
    counter++;
}

int main(void) {
    target_fn();
    printf("%p %p\n", (void *)target_fn, inside_addr);
    fflush(stdout);
    sleep(60);
    return 0;
}
"#;

    #[test]
    fn demangles_only_mangled_names() {
        assert_eq!(demangle("f"), "f");
        assert_eq!(demangle("g"), "g");
        assert_eq!(demangle("malloc"), "malloc");
        assert_eq!(demangle("_Znwm"), "operator new(unsigned long)");
        assert_eq!(
            demangle("_ZN4node24NodeArrayBufferAllocator4FreeEPvm"),
            "node::NodeArrayBufferAllocator::Free(void*, unsigned long)"
        );
        assert_eq!(
            demangle("_ZN3std2rt10lang_start17h0123456789abcdefE"),
            "std::rt::lang_start"
        );
    }

    fn line_of(needle: &str) -> u32 {
        let idx = PROGRAM.lines().position(|l| l.contains(needle)).unwrap();
        u32::try_from(idx + 1).unwrap()
    }

    /// Kills the child even when an assertion fails.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn symbolizes_a_c_program_before_and_after_exit() {
        let dir = std::env::temp_dir().join(format!("leakscope-symbolize-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let source = dir.join("prog.c");
        let exe = dir.join("prog");
        std::fs::write(&source, PROGRAM).unwrap();
        let status = Command::new("gcc")
            .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&exe)
            .arg(&source)
            .status()
            .unwrap();
        assert!(status.success());

        let mut child = Reaped(Command::new(&exe).stdout(Stdio::piped()).spawn().unwrap());
        let mut out = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut out)
            .unwrap();
        let addrs: Vec<u64> = out
            .split_whitespace()
            .map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap())
            .collect();
        let (target_fn, inside) = (addrs[0], addrs[1]);

        let mut modules = ProcessModules::new(child.0.id());
        modules.refresh().unwrap();
        // Frame 1 is a return address: looked up one byte before it.
        let stack = [target_fn, inside + 1];
        let expected = |address, line| Frame {
            address,
            function: Some("target_fn".into()),
            file: Some(source.to_string_lossy().into_owned()),
            line: Some(line),
            module: Some(exe.to_string_lossy().into_owned()),
            inlined: Vec::new(),
        };
        let want = vec![
            expected(target_fn, line_of("void target_fn")),
            expected(inside + 1, line_of("counter++")),
        ];
        assert_eq!(Symbolizer::new().symbolize(&modules, &stack, false), want);

        // At the entry the CFA is rsp+8: the caller is at [rsp]; inside the
        // body it is rbp-based, and %rbp is not known here.
        let caller = inside + 1;
        let words = [caller; 16];
        let callers = |ip| unwound(&modules, ip, Registers { sp: STACK, bp: None }, &words);
        assert_eq!(callers(target_fn), ([target_fn, caller].to_vec(), false));
        assert_eq!(callers(inside), ([inside].to_vec(), false));
        // With %rbp the body's frame is unwound from it too.
        let bp = Some(STACK + 8);
        assert_eq!(
            unwound(&modules, inside, Registers { sp: STACK, bp }, &words),
            ([inside, caller].to_vec(), false)
        );

        drop(child);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(modules.refresh().is_err());
        // A fresh symbolizer has no cache: this reads the files kept open.
        assert_eq!(Symbolizer::new().symbolize(&modules, &stack, false), want);
    }

    #[test]
    fn unknown_addresses_are_empty_frames() {
        let mut modules = ProcessModules::new(std::process::id());
        modules.refresh().unwrap();
        // Frame 0 is kept even outside code; a later one ends the stack.
        let frames = Symbolizer::new().symbolize(&modules, &[1, 0x1234], true);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].function.is_none() && frames[0].module.is_none());
        assert_eq!(frames[0].address, 1);
    }

    /// Address of the first `syscall` instruction of a libc function.
    fn syscall_in(name: &CStr) -> u64 {
        // SAFETY: dlsym with a NUL-terminated name only looks the symbol up.
        let addr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as u64;
        assert_ne!(addr, 0, "{name:?} not found");
        let mut code = [0u8; 0x100];
        std::fs::File::open("/proc/self/mem")
            .unwrap()
            .read_exact_at(&mut code, addr)
            .unwrap();
        iced_x86::Decoder::with_ip(64, &code, addr, iced_x86::DecoderOptions::NONE)
            .into_iter()
            .find(|insn| insn.mnemonic() == iced_x86::Mnemonic::Syscall)
            .unwrap()
            .ip()
    }

    /// Where the stack memory of the unwinding tests starts.
    const STACK: u64 = 0x7ffd_0000_0000;

    /// The frames unwound from `ip` through `words` at `STACK`, and whether
    /// the outermost frame was reached.
    fn unwound(modules: &ProcessModules, ip: u64, registers: Registers, words: &[u64]) -> (Vec<u64>, bool) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut frames = Vec::new();
        let memory = StackMemory::new(STACK, &bytes);
        let complete = Unwinder::default().unwind(modules, ip, false, registers, &memory, &mut frames);
        (frames, complete)
    }

    #[test]
    fn unwinds_libc_syscall_wrappers_without_frame_pointers() {
        let mut modules = ProcessModules::new(std::process::id());
        modules.refresh().unwrap();
        // A return address into this test's own code.
        let caller = unwinds_libc_syscall_wrappers_without_frame_pointers as *const () as u64 + 1;
        let words = [caller; 16];
        let registers = Registers { sp: STACK, bp: None };
        // mmap64 keeps nothing on the stack: the return address is at [rsp].
        let (frames, _) = unwound(&modules, syscall_in(c"mmap64"), registers, &words);
        assert_eq!(frames[..2], [syscall_in(c"mmap64"), caller]);
        // mremap starts with `sub $0x58,%rsp`: its caller is above that.
        let mut words = [0x1234; 16];
        words[0x58 / 8] = caller;
        let (frames, _) = unwound(&modules, syscall_in(c"mremap"), registers, &words);
        assert_eq!(frames[..2], [syscall_in(c"mremap"), caller]);
        // Beyond the memory: nothing but frame 0.
        let (frames, complete) = unwound(&modules, syscall_in(c"mremap"), registers, &words[..4]);
        assert_eq!((frames, complete), (vec![syscall_in(c"mremap")], false));
        // A return address outside the code ends the stack.
        let (frames, complete) = unwound(&modules, syscall_in(c"mmap64"), registers, &[0x1234]);
        assert_eq!((frames, complete), (vec![syscall_in(c"mmap64")], false));
    }
}
