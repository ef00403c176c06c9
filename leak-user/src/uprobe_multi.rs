//! Uprobe multi-links (kernel 6.6+): all the uprobes of one program in one
//! module are created by one `BPF_LINK_CREATE` and torn down by one close,
//! which waits for one RCU grace period where a perf event per probe waits
//! for one each (~0.1–0.2 s here: seconds per hunt).
//!
//! aya 0.14 cannot load a program with the expected attach type these links
//! need, so such programs are loaded here from the eBPF object as aya-obj
//! parses it, relocated against the maps aya created: they share every map
//! (and the patched read-only globals) with the programs aya loads.

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{maps::Map, Ebpf};
use aya_obj::generated::{
    bpf_attach_type::BPF_TRACE_UPROBE_MULTI, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_info, bpf_prog_type,
    BPF_F_UPROBE_MULTI_RETURN,
};

/// Programs loaded for multi-links, by name, loaded on first use.
pub struct MultiPrograms {
    /// The eBPF object file, and once needed, its parse, relocated, with its
    /// BTF loaded into the kernel (function info needs it: a `bpf_loop`
    /// callback must be known static).
    object_bytes: &'static [u8],
    object: Option<(aya_obj::Object, Option<OwnedFd>)>,
    loaded: BTreeMap<String, OwnedFd>,
}

/// One uprobe of a multi-link: where, and the cookie the program reads.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub file_offset: u64,
    pub cookie: u64,
}

impl MultiPrograms {
    pub fn new(object_bytes: &'static [u8]) -> MultiPrograms {
        MultiPrograms {
            object_bytes,
            object: None,
            loaded: BTreeMap::new(),
        }
    }

    /// The program `name`, loaded for multi-links.
    fn program(&mut self, ebpf: &Ebpf, name: &str) -> Result<BorrowedFd<'_>> {
        if !self.loaded.contains_key(name) {
            if self.object.is_none() {
                self.object = Some(relocated_object(ebpf, self.object_bytes)?);
            }
            let (object, btf) = self.object.as_ref().expect("relocated above");
            let fd = load_program(object, btf.as_ref().map(|fd| fd.as_fd()), name)?;
            self.loaded.insert(name.to_string(), fd);
        }
        Ok(self.loaded[name].as_fd())
    }

    /// Attaches program `name` at `points` of `module` (a path as this
    /// process opens it), for thread group `pid` only, as entry probes or
    /// (`returns`) return probes. Returns the link.
    pub fn attach(
        &mut self,
        ebpf: &Ebpf,
        name: &str,
        module: &Path,
        points: &[Point],
        returns: bool,
        pid: u32,
    ) -> Result<OwnedFd> {
        let program = self.program(ebpf, name)?.as_raw_fd();
        let path = CString::new(module.as_os_str().as_bytes()).context("module path has a NUL byte")?;
        let offsets: Vec<u64> = points.iter().map(|p| p.file_offset).collect();
        let cookies: Vec<u64> = points.iter().map(|p| p.cookie).collect();
        // SAFETY: all-zero is a valid bpf_attr (the kernel requires unused fields zero).
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writes the link_create member of a zeroed union; the
        // pointers stay valid until the syscall returns.
        unsafe {
            let create = &mut attr.link_create;
            create.__bindgen_anon_1.prog_fd = program as u32;
            create.attach_type = BPF_TRACE_UPROBE_MULTI as u32;
            let multi = &mut create.__bindgen_anon_3.uprobe_multi;
            multi.path = path.as_ptr() as u64;
            multi.offsets = offsets.as_ptr() as u64;
            multi.cookies = cookies.as_ptr() as u64;
            multi.cnt = points.len() as u32;
            multi.flags = if returns { BPF_F_UPROBE_MULTI_RETURN } else { 0 };
            multi.pid = pid;
        }
        bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
            .with_context(|| format!("cannot create the uprobe multi-link of {name} on {}", module.display()))
    }

    /// The programs loaded here so far, with their run time.
    pub fn runs(&self) -> Vec<ProgramRun> {
        self.loaded
            .iter()
            .filter_map(|(name, fd)| {
                let (run_ns, runs) = program_run_time(fd.as_fd())?;
                Some(ProgramRun {
                    name: name.clone(),
                    run_ns,
                    runs,
                })
            })
            .collect()
    }
}

/// How long a program ran and how often, per the kernel's statistics
/// (counted while they are enabled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRun {
    pub name: String,
    pub run_ns: u64,
    pub runs: u64,
}

/// The eBPF object, its map references pointed at the maps of `ebpf` and
/// its calls linked, and its BTF loaded (None where the kernel has no BTF
/// support), as aya does before loading.
fn relocated_object(ebpf: &Ebpf, object_bytes: &[u8]) -> Result<(aya_obj::Object, Option<OwnedFd>)> {
    let mut object = aya_obj::Object::parse(object_bytes).map_err(|e| anyhow!("cannot parse the eBPF object: {e}"))?;
    if object.has_btf_relocations() {
        // Never so far: CO-RE would need the kernel's BTF loaded here too.
        bail!("the eBPF object has CO-RE relocations, which multi-link loading does not apply");
    }
    let btf = match aya::features().btf() {
        Some(features) => match object
            .fixup_and_sanitize_btf(features)
            .map_err(|e| anyhow!("cannot prepare the eBPF object's BTF: {e}"))?
        {
            Some(btf) => Some(load_btf(&btf.to_bytes())?),
            None => None,
        },
        None => None,
    };
    let definitions = std::mem::take(&mut object.maps);
    let mut maps = Vec::new();
    for (name, map) in ebpf.maps() {
        let definition = definitions
            .get(name)
            .with_context(|| format!("map {name} is not in the eBPF object"))?;
        maps.push((name, map_fd(map)?.as_raw_fd(), definition));
    }
    let text_sections: HashSet<usize> = object.functions.keys().map(|(section, _)| *section).collect();
    object
        .relocate_maps(maps.into_iter(), &text_sections)
        .map_err(|e| anyhow!("cannot relocate the eBPF maps: {e}"))?;
    object
        .relocate_calls(&text_sections)
        .map_err(|e| anyhow!("cannot link the eBPF calls: {e}"))?;
    Ok((object, btf))
}

/// BPF_BTF_LOAD of the object's (sanitized) BTF.
fn load_btf(bytes: &[u8]) -> Result<OwnedFd> {
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writes the BTF-load member of a zeroed union; `bytes` outlives the syscall.
    unsafe {
        let u = &mut attr.__bindgen_anon_7;
        u.btf = bytes.as_ptr() as u64;
        u.btf_size = bytes.len() as u32;
    }
    bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr).context("the kernel refused the eBPF object's BTF")
}

/// The descriptor of a map aya created, whatever its kind.
fn map_fd(map: &Map) -> Result<BorrowedFd<'_>> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::PerCpuLruHashMap(data)
        | Map::RingBuf(data)
        | Map::StackTraceMap(data)
        | Map::Stack(data)
        | Map::Queue(data)
        | Map::BloomFilter(data)
        | Map::LpmTrie(data)
        | Map::PerfEventArray(data)
        | Map::ProgramArray(data) => data,
        _ => bail!("a map kind multi-link loading does not handle"),
    };
    Ok(data.fd().as_fd())
}

/// BPF_PROG_LOAD of program `name` as a kprobe-type program for uprobe
/// multi-links, with its function and line info where `btf` is loaded. On
/// rejection, the verifier's last lines are in the error.
fn load_program(object: &aya_obj::Object, btf: Option<BorrowedFd<'_>>, name: &str) -> Result<OwnedFd> {
    let program = object
        .programs
        .get(name)
        .with_context(|| format!("no program {name} in the eBPF object"))?;
    let function = object
        .functions
        .get(&program.function_key())
        .with_context(|| format!("no code for program {name}"))?;
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    let load = |log: &mut [u8]| {
        let instructions: &[bpf_insn] = &function.instructions;
        // SAFETY: all-zero is a valid bpf_attr.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writes the program-load member of a zeroed union; the
        // pointers stay valid until the syscall returns.
        unsafe {
            let u = &mut attr.__bindgen_anon_3;
            u.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
            u.expected_attach_type = BPF_TRACE_UPROBE_MULTI as u32;
            u.insns = instructions.as_ptr() as u64;
            u.insn_cnt = instructions.len() as u32;
            u.license = program.license.as_ptr() as u64;
            u.kern_version = program.kernel_version.unwrap_or(0);
            for (slot, byte) in u.prog_name.iter_mut().zip(name.bytes().take(15)) {
                *slot = byte as _;
            }
            if let Some(btf) = btf {
                u.prog_btf_fd = btf.as_raw_fd() as u32;
                if function.func_info_rec_size > 0 {
                    u.func_info = func_info.as_ptr() as u64;
                    u.func_info_cnt = function.func_info.len() as u32;
                    u.func_info_rec_size = function.func_info_rec_size as u32;
                }
                if function.line_info_rec_size > 0 {
                    u.line_info = line_info.as_ptr() as u64;
                    u.line_info_cnt = function.line_info.len() as u32;
                    u.line_info_rec_size = function.line_info_rec_size as u32;
                }
            }
            if !log.is_empty() {
                u.log_level = 1;
                u.log_buf = log.as_mut_ptr() as u64;
                u.log_size = log.len() as u32;
            }
        }
        bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    load(&mut []).or_else(|_| {
        let mut log = vec![0u8; 1 << 20];
        load(&mut log).map_err(|e| {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim_end();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            e.context(format!(
                "the kernel rejected {name} for multi-links: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ))
        })
    })
}

/// A program's run time (ns) and run count.
fn program_run_time(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    // SAFETY: all-zero is a valid bpf_prog_info and bpf_attr.
    let (mut info, mut attr): (bpf_prog_info, bpf_attr) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    (bpf_call(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) == 0).then_some((info.run_time_ns, info.run_cnt))
}

/// A bpf() command that returns a new descriptor.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> Result<OwnedFd> {
    let rc = bpf_call(cmd, attr);
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: the kernel returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn bpf_call(cmd: bpf_cmd, attr: &mut bpf_attr) -> i64 {
    // SAFETY: `attr` is a valid bpf_attr for `cmd`, which the callers filled;
    // its pointers outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as i64,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    }
}
