//! The BPF programs and links a process holds, read from /proc/PID/fdinfo,
//! and whether the kernel still has them (by id, through the bpf syscall):
//! detaching must leave nothing behind.

use std::fs;

/// One BPF program or link descriptor of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfObject {
    pub kind: BpfKind,
    pub id: u32,
    /// Links: "uprobe", "tracepoint", ... (fdinfo's `event_type`, else `link_type`).
    pub event_type: String,
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
        objects.push(BpfObject { kind, id, event_type });
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
