//! Which processes are watched, and under which rules: `-p`, `--comm` and
//! `--cgroup` selectors, plus the `[[target]]` entries of a `--config` file,
//! which come first so that their rules win.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use super::memory::memory_cgroup;
use crate::{
    cli::{parse_rate, seconds, RuleArgs, WatchArgs},
    target::ProcStat,
};

/// The kernel keeps 15 bytes of a process name (TASK_COMM_LEN − 1).
const COMM_LEN: usize = 15;

#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    Pid(u32),
    Comm(String),
    /// A memory cgroup path (v2, or v1's memory controller on hybrid
    /// hosts); processes in its children match too.
    Cgroup(String),
}

/// A selector and the rules of the processes it matches.
#[derive(Clone, Debug)]
pub struct Selection {
    pub selector: Selector,
    pub rules: RuleArgs,
}

/// A process picked by a selection.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub comm: String,
    /// Start time in clock ticks since boot: tells a reused PID apart.
    pub start_ticks: u64,
    /// Index into the selections: whose rules apply.
    pub selection: usize,
}

/// One `[[target]]` entry of the config file: a selector, then the rules
/// that differ from the command line's.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TargetConfig {
    pid: Option<u32>,
    comm: Option<String>,
    cgroup: Option<String>,
    window: Option<f64>,
    warn_rate: Option<String>,
    crit_rate: Option<String>,
    warn_limit: Option<f64>,
    crit_limit: Option<f64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    target: Vec<TargetConfig>,
}

/// The selections of the command line and config file, config entries first.
pub fn selections(args: &WatchArgs) -> Result<Vec<Selection>> {
    let mut selections = Vec::new();
    if let Some(path) = &args.config {
        let text = crate::input::read_text(path, crate::input::CONFIG_LIMIT)?;
        selections = parse_config(&text, &args.rules).with_context(|| format!("{}", path.display()))?;
    }
    let cli = args
        .pids
        .iter()
        .map(|&pid| Selector::Pid(pid))
        .chain(args.comms.iter().cloned().map(Selector::Comm))
        .chain(args.cgroups.iter().cloned().map(Selector::Cgroup));
    selections.extend(cli.map(|selector| Selection {
        selector,
        rules: args.rules.clone(),
    }));
    if selections.is_empty() {
        bail!("nothing to watch: give -p PID, --comm NAME, --cgroup PATH or a --config with [[target]] entries");
    }
    for selection in &selections {
        check_rules(&selection.rules).with_context(|| format!("rules for {:?}", selection.selector))?;
    }
    Ok(selections)
}

pub(crate) fn check_rules(rules: &RuleArgs) -> Result<()> {
    if rules.window.is_zero() {
        bail!("the window must be longer than 0 s");
    }
    if rules.warn_rate > rules.crit_rate {
        bail!("the warning growth rate is above the critical one");
    }
    if rules.warn_limit > rules.crit_limit {
        bail!("the warning limit % is above the critical one");
    }
    Ok(())
}

pub(crate) fn parse_config(text: &str, defaults: &RuleArgs) -> Result<Vec<Selection>> {
    let config: ConfigFile = toml::from_str(text)?;
    config
        .target
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let context = || format!("[[target]] number {}", index + 1);
            let selector = match (entry.pid, entry.comm, entry.cgroup) {
                (Some(pid), None, None) => Selector::Pid(pid),
                (None, Some(comm), None) => Selector::Comm(comm),
                (None, None, Some(cgroup)) => Selector::Cgroup(cgroup),
                _ => bail!("{}: give exactly one of pid, comm, cgroup", context()),
            };
            let rate = |value: Option<String>, default: f64| match value {
                Some(text) => parse_rate(&text).map_err(|e| anyhow::anyhow!("{}: {e}", context())),
                None => Ok(default),
            };
            let window = match entry.window {
                Some(secs) => seconds(secs).map_err(|e| anyhow::anyhow!("{}: window: {e}", context()))?,
                None => defaults.window,
            };
            let rules = RuleArgs {
                window,
                warn_rate: rate(entry.warn_rate, defaults.warn_rate)?,
                crit_rate: rate(entry.crit_rate, defaults.crit_rate)?,
                warn_limit: entry.warn_limit.unwrap_or(defaults.warn_limit),
                crit_limit: entry.crit_limit.unwrap_or(defaults.crit_limit),
            };
            Ok(Selection { selector, rules })
        })
        .collect()
}

/// Every live process some selection picks (never leakscope itself), by PID.
/// An error (out of descriptors, say) is not "no processes": the caller
/// keeps its targets rather than drop them.
pub fn scan(selections: &[Selection]) -> std::io::Result<BTreeMap<u32, Candidate>> {
    let own = std::process::id();
    // PIDs alone need no walk over every process.
    let pids: Vec<u32> = match selections
        .iter()
        .map(|s| match s.selector {
            Selector::Pid(pid) => Some(pid),
            _ => None,
        })
        .collect::<Option<Vec<u32>>>()
    {
        Some(pids) => pids,
        None => std::fs::read_dir("/proc")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .collect(),
    };
    let mut found = BTreeMap::new();
    for pid in pids.into_iter().filter(|&pid| pid != own) {
        if let Some(candidate) = candidate(Path::new("/proc"), pid, selections)? {
            found.insert(pid, candidate);
        }
    }
    Ok(found)
}

/// A /proc file of a process; None once the process is gone.
fn read_proc_file(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn candidate(proc: &Path, pid: u32, selections: &[Selection]) -> std::io::Result<Option<Candidate>> {
    let dir = proc.join(pid.to_string());
    let Some(comm) = read_proc_file(&dir.join("comm"))? else {
        return Ok(None);
    };
    let comm = comm.trim_end().to_string();
    let by_cgroup = selections.iter().any(|s| matches!(s.selector, Selector::Cgroup(_)));
    let cgroup = match by_cgroup {
        true => read_proc_file(&dir.join("cgroup"))?
            .and_then(|t| memory_cgroup(&t))
            .map(|c| c.path),
        false => None,
    };
    let Some(selection) = selections.iter().position(|s| match &s.selector {
        Selector::Pid(wanted) => *wanted == pid,
        Selector::Comm(name) => name.get(..COMM_LEN.min(name.len())) == Some(comm.as_str()),
        Selector::Cgroup(wanted) => cgroup.as_deref().is_some_and(|path| in_cgroup(path, wanted)),
    }) else {
        return Ok(None);
    };
    let Some(stat) = read_proc_file(&dir.join("stat"))?.and_then(|stat| ProcStat::parse(&stat)) else {
        return Ok(None);
    };
    // Kernel threads and zombies have no memory of their own to watch.
    if stat.kernel_thread || stat.zombie {
        return Ok(None);
    }
    Ok(Some(Candidate {
        comm,
        start_ticks: stat.start_ticks,
        selection,
    }))
}

fn in_cgroup(path: &str, wanted: &str) -> bool {
    let wanted = wanted.trim_end_matches('/');
    path == wanted || wanted.is_empty() || path.strip_prefix(wanted).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn defaults() -> RuleArgs {
        RuleArgs {
            window: Duration::from_secs(600),
            warn_rate: 1.0,
            crit_rate: 1e9,
            warn_limit: 80.0,
            crit_limit: 95.0,
        }
    }

    #[test]
    fn config_entries_override_rules() {
        let text = r#"
            [[target]]
            comm = "node"
            warn_rate = "5MiB/h"
            window = 300

            [[target]]
            cgroup = "/system.slice/db.service"
            crit_limit = 90
        "#;
        let selections = parse_config(text, &defaults()).unwrap();
        assert_eq!(selections[0].selector, Selector::Comm("node".into()));
        assert_eq!(selections[0].rules.warn_rate, 5.0 * 1048576.0 / 3600.0);
        assert_eq!(selections[0].rules.window, Duration::from_secs(300));
        assert_eq!(selections[0].rules.crit_rate, 1e9);
        assert_eq!(
            selections[1].selector,
            Selector::Cgroup("/system.slice/db.service".into())
        );
        assert_eq!(
            (selections[1].rules.crit_limit, selections[1].rules.warn_limit),
            (90.0, 80.0)
        );
        assert!(parse_config("[[target]]\npid = 1\ncomm = \"x\"\n", &defaults()).is_err());
        assert!(parse_config("[[target]]\npid = 1\nwarn_rate = \"1MB/week\"\n", &defaults()).is_err());
        assert!(parse_config("[[target]]\npid = 1\nwarn_rat = \"1MB\"\n", &defaults()).is_err());
        for window in ["-5", "nan", "inf", "1e300"] {
            let error = parse_config(&format!("[[target]]\npid = 1\nwindow = {window}\n"), &defaults()).unwrap_err();
            assert!(
                error.to_string().starts_with("[[target]] number 1: window: "),
                "{window}: {error}"
            );
        }
        let inverted = parse_config("[[target]]\npid = 1\nwarn_rate = \"2GiB/s\"\n", &defaults()).unwrap();
        assert!(check_rules(&inverted[0].rules).is_err());
        assert!(check_rules(&selections[0].rules).is_ok());
    }

    #[test]
    fn matches_this_process_and_reads_its_start() {
        let pid = std::process::id();
        let comm = std::fs::read_to_string("/proc/self/comm")
            .unwrap()
            .trim_end()
            .to_string();
        let cgroup = memory_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap())
            .unwrap()
            .path;
        let select = |selector| {
            candidate(
                Path::new("/proc"),
                pid,
                &[Selection {
                    selector,
                    rules: defaults(),
                }],
            )
            .unwrap()
        };
        let by_pid = select(Selector::Pid(pid)).unwrap();
        assert_eq!(by_pid.comm, comm);
        assert!(by_pid.start_ticks > 0);
        assert_eq!(select(Selector::Comm(comm.clone())), Some(by_pid.clone()));
        assert_eq!(select(Selector::Cgroup(cgroup)), Some(by_pid));
        assert_eq!(select(Selector::Comm(format!("x{comm}"))), None);
        assert_eq!(select(Selector::Pid(pid + 1_000_000)), None);
    }

    #[test]
    fn cgroup_prefixes_and_stat_fields() {
        assert!(in_cgroup("/system.slice/a.service", "/system.slice"));
        assert!(in_cgroup("/system.slice", "/system.slice/"));
        assert!(!in_cgroup("/system.slicer/a", "/system.slice"));
        assert!(in_cgroup("/anything", "/"));
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 987654 1000 10";
        let fields = ProcStat::parse(stat).unwrap();
        assert_eq!(
            fields,
            ProcStat {
                zombie: false,
                kernel_thread: false,
                start_ticks: 987654
            }
        );
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0";
        assert!(ProcStat::parse(kthread).unwrap().kernel_thread);
        assert!(
            ProcStat::parse("7 (z) Z 1 7 7 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0")
                .unwrap()
                .zombie
        );
    }
}
