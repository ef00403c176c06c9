//! Files a user names on the command line (saved reports, the watch
//! config): read whole, but only regular files and only up to a bound, so
//! that /dev/zero or a FIFO gives an error instead of filling memory or hanging.

use std::{fs::OpenOptions, io::Read as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::{bail, Result};

use crate::report::human_bytes;

/// A saved report: far above what a hunt writes, far below what hurts.
pub const REPORT_LIMIT: u64 = 1 << 30;
/// The watch config: a few `[[target]]` entries.
pub const CONFIG_LIMIT: u64 = 1 << 20;

/// The text of the regular file at `path`, at most `limit` bytes.
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    let shown = path.display();
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {shown}: {e}"))?;
    let metadata = file
        .metadata()
        .map_err(|e| anyhow::anyhow!("cannot read {shown}: {e}"))?;
    if !metadata.is_file() {
        bail!("cannot read {shown}: not a regular file");
    }
    let too_big = || anyhow::anyhow!("cannot read {shown}: larger than the limit of {}", human_bytes(limit));
    if metadata.len() > limit {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // One byte past the limit tells a file that grew meanwhile.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("cannot read {shown}: not UTF-8 text ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("leakscope-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn refuses_devices_fifos_and_oversized_files() {
        let error = |path: &Path, limit| read_text(path, limit).unwrap_err().to_string();
        assert_eq!(
            error(Path::new("/dev/zero"), 1 << 20),
            "cannot read /dev/zero: not a regular file"
        );
        let fifo = scratch("fifo");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(error(&fifo, 1 << 20).ends_with("not a regular file"));
        let big = scratch("big");
        std::fs::write(&big, "x".repeat(1025)).unwrap();
        assert!(error(&big, 1024).ends_with("larger than the limit of 1.0 KiB"));
        assert_eq!(read_text(&big, 1025).unwrap().len(), 1025);
        std::fs::remove_dir_all(big.parent().unwrap()).unwrap();
    }
}
