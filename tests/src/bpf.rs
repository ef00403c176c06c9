//! The BPF programs and links a process holds, read from /proc/PID/fdinfo,
//! and whether the kernel still has them (by id, through the bpf syscall):
//! detaching must leave nothing behind.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
};

/// One BPF program or link descriptor of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfObject {
    pub kind: BpfKind,
    pub id: u32,
    /// Links: "uprobe", "tracepoint", ... (fdinfo's `event_type`, else
    /// `link_type`: "uprobe_multi").
    pub event_type: String,
    /// Uprobes the link places: a multi-link's `uprobe_cnt`, 1 for a perf
    /// event uprobe, else 0.
    pub uprobes: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpfKind {
    Program,
    Link,
}

/// The BPF programs and links `pid` holds open.
pub fn bpf_objects(pid: i32) -> Vec<BpfObject> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut objects = Vec::new();
    for fd in fds.filter_map(Result::ok) {
        let target = fs::read_link(fd.path()).unwrap_or_default();
        let kind = match target.to_str() {
            Some("anon_inode:bpf-prog") => BpfKind::Program,
            Some("anon_inode:bpf_link") => BpfKind::Link,
            _ => continue,
        };
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy())) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        let id_field = if kind == BpfKind::Program { "prog_id" } else { "link_id" };
        let Some(id) = field(id_field).and_then(|v| v.parse().ok()) else {
            continue;
        };
        let event_type = field("event_type").or_else(|| field("link_type")).unwrap_or_default();
        let uprobes = match field("uprobe_cnt") {
            Some(count) => count.parse().unwrap_or(0),
            None => u32::from(kind == BpfKind::Link && event_type == "uprobe"),
        };
        objects.push(BpfObject {
            kind,
            id,
            event_type,
            uprobes,
        });
    }
    objects
}

/// Whether the kernel still has this program or link (BPF_PROG_GET_FD_BY_ID,
/// BPF_LINK_GET_FD_BY_ID: ENOENT once it is gone).
pub fn bpf_object_exists(object: &BpfObject) -> bool {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let cmd = match object.kind {
        BpfKind::Program => BPF_PROG_GET_FD_BY_ID,
        BpfKind::Link => BPF_LINK_GET_FD_BY_ID,
    };
    // union bpf_attr for these commands: { u32 id; u32 next_id; u32 open_flags; }
    let attr: [u32; 3] = [object.id, 0, 0];
    // SAFETY: the attr buffer outlives the call and its size is passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if fd >= 0 {
        // SAFETY: a descriptor the syscall just opened for us.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOENT),
        "bpf(GET_FD_BY_ID, {object:?}) failed otherwise: {err}"
    );
    false
}

/// Waits up to `within` for every one of `objects` to be gone: the kernel
/// frees a closed program after an RCU grace period, and leakscope may leave
/// its tracepoint links to a child that closes them after it exits.
pub fn assert_gone_within(objects: &[BpfObject], within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left: Vec<&BpfObject> = objects.iter().filter(|o| bpf_object_exists(o)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{within:?} after the hunt: {left:?} still loaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Bytes of `pid`'s executable libc mapping that differ from the file: the
/// int3 instructions of uprobes.
pub fn patched_libc_bytes(pid: i32) -> usize {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps
        .lines()
        .find(|l| l.contains("r-xp") && l.contains("/libc.so"))
        .expect("an executable libc mapping");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (start, end) = fields[0].split_once('-').unwrap();
    let (start, end) = (
        u64::from_str_radix(start, 16).unwrap(),
        u64::from_str_radix(end, 16).unwrap(),
    );
    let offset = u64::from_str_radix(fields[2], 16).unwrap();
    let len = (end - start) as usize;
    let mut live = vec![0; len];
    let mut mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    mem.seek(SeekFrom::Start(start)).unwrap();
    mem.read_exact(&mut live).unwrap();
    let mut file = vec![0; len];
    let mut libc = fs::File::open(fields[5]).unwrap();
    libc.seek(SeekFrom::Start(offset)).unwrap();
    let read = libc.read(&mut file).unwrap();
    live[..read].iter().zip(&file[..read]).filter(|(a, b)| a != b).count()
}
