//! Tier 1: a process's memory and its cgroup's limit, read from /proc and
//! /sys/fs/cgroup. No probes, no cost to the target.

use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cgroup v1 writes "no limit" as a huge page-aligned number.
const V1_UNLIMITED: u64 = 1 << 62;

/// One sample of a process's memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemorySample {
    pub rss_bytes: u64,
    /// Anonymous resident memory (RssAnon): where leaks show.
    pub anon_bytes: u64,
    /// File-backed resident memory (RssFile + RssShmem).
    pub file_bytes: u64,
    pub cgroup: Option<CgroupMemory>,
    /// The tightest limit the process runs under: its cgroup's or an
    /// ancestor's memory.max, else the host's memory.
    pub limit_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CgroupMemory {
    /// As in /proc/PID/cgroup: `/system.slice/app.service`.
    pub path: String,
    /// memory.current: what the cgroup's OOM killer compares with its limit.
    pub usage_bytes: u64,
    /// The lowest memory.max of the cgroup and its ancestors; None when unlimited.
    pub limit_bytes: Option<u64>,
}

impl MemorySample {
    /// Memory use as a fraction of the limit: the cgroup's usage against a
    /// cgroup limit (that is what its OOM killer judges), else RSS against
    /// the host's memory.
    pub fn limit_ratio(&self) -> f64 {
        let used = match &self.cgroup {
            Some(CgroupMemory {
                usage_bytes,
                limit_bytes: Some(_),
                ..
            }) => *usage_bytes,
            _ => self.rss_bytes,
        };
        used as f64 / self.limit_bytes.max(1) as f64
    }
}

/// The memory of `pid` now; None when it has exited.
pub fn sample(pid: u32, host_bytes: u64) -> Option<MemorySample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut sample = parse_status(&status)?;
    sample.cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| memory_cgroup(&text))
        .and_then(|cgroup| cgroup_memory(&cgroup));
    let cgroup_limit = sample.cgroup.as_ref().and_then(|c| c.limit_bytes);
    sample.limit_bytes = cgroup_limit.map_or(host_bytes, |limit| limit.min(host_bytes));
    Some(sample)
}

/// The host's memory (MemTotal), the limit of a process without a cgroup limit.
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| kib_field(&text, "MemTotal:"))
        .unwrap_or(u64::MAX)
}

/// The memory cgroup of a process, from /proc/PID/cgroup: the v1 memory
/// controller's line where there is one (hybrid hosts), else the v2 line.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryCgroup {
    pub path: String,
    pub v1: bool,
}

pub fn memory_cgroup(proc_cgroup: &str) -> Option<MemoryCgroup> {
    let line = |prefix: &str| {
        proc_cgroup
            .lines()
            .find_map(|line| line.split_once(':').map(|(_, rest)| rest)?.strip_prefix(prefix))
            .map(|path| path.trim().to_string())
    };
    match line("memory:") {
        Some(path) => Some(MemoryCgroup { path, v1: true }),
        None => line(":").map(|path| MemoryCgroup { path, v1: false }),
    }
}

pub(crate) fn parse_status(status: &str) -> Option<MemorySample> {
    let field = |name| kib_field(status, name).unwrap_or(0);
    Some(MemorySample {
        // Kernel threads have no VmRSS line: nothing to watch.
        rss_bytes: kib_field(status, "VmRSS:")?,
        anon_bytes: field("RssAnon:"),
        file_bytes: field("RssFile:") + field("RssShmem:"),
        cgroup: None,
        limit_bytes: 0,
    })
}

/// A `Name:   123 kB` line, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Usage of a memory cgroup, and the tightest limit on the way up to the root.
fn cgroup_memory(cgroup: &MemoryCgroup) -> Option<CgroupMemory> {
    let root = if cgroup.v1 {
        Path::new(CGROUP_ROOT).join("memory")
    } else {
        PathBuf::from(CGROUP_ROOT)
    };
    cgroup_memory_under(&root, cgroup)
}

fn cgroup_memory_under(root: &Path, cgroup: &MemoryCgroup) -> Option<CgroupMemory> {
    let (usage_file, limit_file) = if cgroup.v1 {
        ("memory.usage_in_bytes", "memory.limit_in_bytes")
    } else {
        ("memory.current", "memory.max")
    };
    // Inside a container the cgroup's own directory is often mounted as the root.
    let mut dir = root.join(cgroup.path.trim_start_matches('/'));
    if !dir.exists() {
        dir = root.to_path_buf();
    }
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok();
    let usage_bytes = read(&dir, usage_file)?.trim().parse().ok()?;
    let mut limit_bytes: Option<u64> = None;
    let mut current = Some(dir.as_path());
    while let Some(dir) = current.filter(|dir| dir.starts_with(root)) {
        // v2's "max" does not parse, v1's unlimited is huge: no limit at this level.
        let limit = read(dir, limit_file).and_then(|text| text.trim().parse::<u64>().ok());
        if let Some(limit) = limit.filter(|&l| l < V1_UNLIMITED) {
            limit_bytes = Some(limit_bytes.map_or(limit, |l| l.min(limit)));
        }
        current = dir.parent();
    }
    Some(CgroupMemory {
        path: cgroup.path.clone(),
        usage_bytes,
        limit_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let status =
            "Name:\tapp\nVmRSS:\t   10240 kB\nRssAnon:\t    8192 kB\nRssFile:\t    1024 kB\nRssShmem:\t  1024 kB\n";
        let sample = parse_status(status).unwrap();
        assert_eq!(
            (sample.rss_bytes, sample.anon_bytes, sample.file_bytes),
            (10 << 20, 8 << 20, 2 << 20)
        );
        assert_eq!(parse_status("Name:\tkthreadd\n"), None, "kernel threads have no RSS");
        let v2 = memory_cgroup("0::/system.slice/app.service\n").unwrap();
        assert_eq!((v2.path.as_str(), v2.v1), ("/system.slice/app.service", false));
        let hybrid = memory_cgroup("4:memory:/docker/abc\n1:name=systemd:/x\n0::/\n").unwrap();
        assert_eq!((hybrid.path.as_str(), hybrid.v1), ("/docker/abc", true));
        assert_eq!(memory_cgroup("1:name=systemd:/x\n"), None);
    }

    #[test]
    fn cgroup_limit_is_the_tightest_on_the_way_up() {
        let root = std::env::temp_dir().join(format!("leakscope-cgroup-test-{}", std::process::id()));
        let leaf = root.join("parent/leaf");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.join("parent/memory.max"), "1048576\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        std::fs::write(leaf.join("memory.current"), "524288\n").unwrap();
        let leaf_cgroup = MemoryCgroup {
            path: "/parent/leaf".into(),
            v1: false,
        };
        let memory = cgroup_memory_under(&root, &leaf_cgroup).unwrap();
        assert_eq!((memory.usage_bytes, memory.limit_bytes), (524288, Some(1048576)));
        let sample = MemorySample {
            rss_bytes: 100,
            limit_bytes: 1048576,
            cgroup: Some(memory),
            ..MemorySample::default()
        };
        assert_eq!(
            sample.limit_ratio(),
            0.5,
            "the cgroup's usage counts against a cgroup limit"
        );
        std::fs::write(root.join("parent/memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_memory_under(&root, &leaf_cgroup).unwrap().limit_bytes, None);
        // cgroup v1 files; a path that is not there (a container's view) falls back to the root.
        std::fs::write(root.join("memory.usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(root.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        let v1 = MemoryCgroup {
            path: "/elsewhere".into(),
            v1: true,
        };
        let memory = cgroup_memory_under(&root, &v1).unwrap();
        assert_eq!((memory.usage_bytes, memory.limit_bytes), (4096, None));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
