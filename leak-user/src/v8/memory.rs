//! Reads of the target's memory through `/proc/PID/mem`, bounded in size.

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};

use anyhow::{Context as _, Result};

/// The most one read may ask for: names, tables and sources beyond it are
/// not read (a corrupt length must not make the tracer allocate gigabytes).
pub const MAX_READ: usize = 16 << 20;

/// The address space of one process.
pub struct ProcessMemory {
    mem: File,
    /// Reads made so far: whoever validates what was read (the frame
    /// namer, against GCs) knows whether anything was.
    reads: Cell<u64>,
}

impl ProcessMemory {
    /// Opens `/proc/PID/mem` itself: O_NOFOLLOW refuses a symlink in its place.
    pub fn open(pid: u32) -> Result<ProcessMemory> {
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(format!("/proc/{pid}/mem"))
            .with_context(|| format!("cannot open the memory of process {pid}"))?;
        Ok(ProcessMemory {
            mem,
            reads: Cell::new(0),
        })
    }

    /// How many reads were made so far.
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }

    fn read_into(&self, buf: &mut [u8], addr: u64) -> Option<()> {
        self.reads.set(self.reads.get() + 1);
        self.mem.read_exact_at(buf, addr).ok()
    }

    /// `len` bytes at `addr`, or None when any of them is unmapped or `len`
    /// is over [`MAX_READ`].
    pub fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        if len > MAX_READ || addr.checked_add(len as u64).is_none() {
            return None;
        }
        let mut buf = vec![0; len];
        self.read_into(&mut buf, addr)?;
        Some(buf)
    }

    pub fn u64(&self, addr: u64) -> Option<u64> {
        let mut buf = [0; 8];
        self.read_into(&mut buf, addr)?;
        Some(u64::from_le_bytes(buf))
    }

    pub fn u32(&self, addr: u64) -> Option<u32> {
        let mut buf = [0; 4];
        self.read_into(&mut buf, addr)?;
        Some(u32::from_le_bytes(buf))
    }

    pub fn u16(&self, addr: u64) -> Option<u16> {
        let mut buf = [0; 2];
        self.read_into(&mut buf, addr)?;
        Some(u16::from_le_bytes(buf))
    }
}
