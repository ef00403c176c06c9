//! Files opened on a traced process's behalf (its perf map, its binaries by
//! path), under the rules a root tool next to other users' processes needs:
//! resolved inside the target's root without following any symlink, opened
//! with the target's file-system credentials (so nothing the target could not
//! read itself is read), never blocking (a FIFO is refused, not waited on),
//! only regular files, and read within a bound.

use std::{
    fs::{self, File},
    io::{self, Read as _, Seek as _, SeekFrom},
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
};

use nix::{
    fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag},
    sys::stat::Mode,
};

/// The identity the kernel checks the target's file accesses against.
#[derive(Clone, Debug, PartialEq)]
pub struct Credentials {
    pub fs_uid: u32,
    pub fs_gid: u32,
    pub groups: Vec<u32>,
}

impl Credentials {
    /// The target's file-system uid and gid and its supplementary groups.
    pub fn of(pid: u32) -> io::Result<Self> {
        parse_status(&fs::read_to_string(format!("/proc/{pid}/status"))?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("malformed /proc/{pid}/status")))
    }
}

/// `Uid:`/`Gid:` list real, effective, saved and file-system ids.
fn parse_status(status: &str) -> Option<Credentials> {
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map(|rest| {
            rest.split_whitespace()
                .map(str::parse::<u32>)
                .collect::<Result<Vec<_>, _>>()
        })
    };
    let uids = field("Uid:")?.ok()?;
    let gids = field("Gid:")?.ok()?;
    Some(Credentials {
        fs_uid: *uids.get(3)?,
        fs_gid: *gids.get(3)?,
        groups: field("Groups:").unwrap_or(Ok(Vec::new())).ok()?,
    })
}

/// Who must own a file for it to be read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Owner {
    /// Files the target writes itself (perf maps): owned by its fs uid, so a
    /// file planted by another user is not taken for the target's.
    Target,
    /// Files the target only reads (its binaries): any owner.
    Any,
}

/// Opens `path`, an absolute path as the target sees it, inside the target's
/// root. Fails with `NotFound` when it does not exist, and with another error
/// when it is a symlink, not a regular file, not readable by the target or
/// (for [`Owner::Target`]) not the target's.
pub fn open_in_root(pid: u32, path: &str, owner: Owner) -> io::Result<File> {
    let credentials = Credentials::of(pid)?;
    // The magic link is followed on purpose: it is the kernel's view of the
    // target's root (container, chroot), not a link anyone can plant.
    let root = open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: open returned a fresh descriptor that we now own.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    let relative = path.trim_start_matches('/').to_owned();
    let file = as_target(&credentials, move || {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let fd = openat2(std::os::fd::AsRawFd::as_raw_fd(&root), relative.as_str(), how)?;
        // SAFETY: openat2 returned a fresh descriptor that we now own.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    })?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if owner == Owner::Target && metadata.uid() != credentials.fs_uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "owned by uid {}, not by the target's uid {}",
                metadata.uid(),
                credentials.fs_uid
            ),
        ));
    }
    Ok(file)
}

/// Runs `open` on a thread of its own that takes the target's file-system
/// identity first. Credentials are per thread in the kernel, and raw
/// syscalls (unlike glibc's setgroups) change only the calling thread; the
/// thread ends with `open`, so no other work ever runs with them.
fn as_target(credentials: &Credentials, open: impl FnOnce() -> io::Result<File> + Send) -> io::Result<File> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let check = |result: libc::c_long| {
                    if result < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                // SAFETY: plain syscalls on this thread's credentials; the
                // group list outlives the call.
                unsafe {
                    check(libc::syscall(
                        libc::SYS_setgroups,
                        credentials.groups.len(),
                        credentials.groups.as_ptr(),
                    ))?;
                    libc::syscall(libc::SYS_setfsgid, credentials.fs_gid);
                    libc::syscall(libc::SYS_setfsuid, credentials.fs_uid);
                    // setfs[ug]id report no errors: an invalid id reads the current one back.
                    if libc::syscall(libc::SYS_setfsgid, u32::MAX) != credentials.fs_gid as libc::c_long
                        || libc::syscall(libc::SYS_setfsuid, u32::MAX) != credentials.fs_uid as libc::c_long
                    {
                        return Err(io::Error::other("cannot take the target's file-system identity"));
                    }
                }
                open()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the file-opening thread panicked")))
    })
}

/// Up to `limit` bytes of `file` from `offset`.
pub fn read_bounded(file: &mut File, offset: u64, limit: u64) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    file.take(limit).read_to_end(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt as _};

    use super::*;

    #[test]
    fn parses_fs_ids_and_groups() {
        let status = "Name:\tnode\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\nGroups:\t4 27 \n";
        assert_eq!(
            parse_status(status),
            Some(Credentials {
                fs_uid: 1003,
                fs_gid: 53,
                groups: vec![4, 27]
            })
        );
        assert_eq!(parse_status("Uid:\t1\t2\n").map(|c| c.fs_uid), None);
    }

    /// Runs as root, like leakscope: a file only root can read must stay
    /// unreadable when opened for a target running as `nobody`.
    fn as_nobody(path: &std::path::Path, owner: Owner) -> io::Result<File> {
        let credentials = Credentials {
            fs_uid: 65534,
            fs_gid: 65534,
            groups: Vec::new(),
        };
        let relative = path.to_str().unwrap().to_owned();
        let file = as_target(&credentials, move || File::open(relative))?;
        let metadata = file.metadata()?;
        if owner == Owner::Target && metadata.uid() != credentials.fs_uid {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        Ok(file)
    }

    #[test]
    fn reads_with_the_targets_rights() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("leakscope-target-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.join("secret");
        fs::write(&secret, "root only\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            as_nobody(&secret, Owner::Any).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        // The thread's identity does not leak into this one.
        assert!(File::open(&secret).is_ok());
        // Readable by all, but not owned by the target.
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(as_nobody(&secret, Owner::Any).is_ok());
        assert!(as_nobody(&secret, Owner::Target).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_symlinks_and_non_regular_files_in_the_targets_root() {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("leakscope-open-in-root-{pid}"));
        fs::create_dir_all(&dir).unwrap();
        let regular = dir.join("regular");
        fs::write(&regular, "x").unwrap();
        let link = dir.join("link");
        let _ = fs::remove_file(&link);
        symlink(&regular, &link).unwrap();
        let fifo = dir.join("fifo");
        let _ = fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
        let open = |p: &std::path::Path| open_in_root(pid, p.to_str().unwrap(), Owner::Target);
        assert!(open(&regular).is_ok());
        assert!(open(&link).is_err(), "a symlink was followed");
        // Returns at once (no reader blocks on the FIFO) with an error.
        assert_eq!(open(&fifo).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            open_in_root(pid, "/dev/zero", Owner::Any).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(open(&dir.join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_are_bounded() {
        let mut zero = File::open("/dev/zero").unwrap();
        assert_eq!(read_bounded(&mut zero, 0, 4096).unwrap().len(), 4096);
    }
}
