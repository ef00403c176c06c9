//! Debug files from debuginfod servers (`DEBUGINFOD_URLS`), as gdb and perf
//! fetch them: `GET <url>/buildid/<hex>/debuginfo`, kept in leakscope's own
//! cache directory. Every request has a time limit and a size limit, and a
//! server that times out or fails is not asked again in this run, so a slow
//! or dead server costs a hunt one time limit at most.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read as _};
use std::path::PathBuf;
use std::time::Duration;

use super::debuginfo::{hex, is_debug_file_for};

/// `DEBUGINFOD_TIMEOUT` (seconds) overrides it, as for elfutils' client.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// `DEBUGINFOD_MAXSIZE` (bytes) overrides it.
const DEFAULT_MAX_BYTES: u64 = 1 << 30;

pub(super) struct Debuginfod {
    urls: Vec<String>,
    cache_dir: PathBuf,
    agent: ureq::Agent,
    max_bytes: u64,
    /// Servers that timed out or failed: skipped for the rest of the run.
    failed: HashSet<String>,
    /// By build-id, found or not: each is asked for once.
    fetched: HashMap<Vec<u8>, Option<PathBuf>>,
}

impl Debuginfod {
    /// None unless `DEBUGINFOD_URLS` names a server.
    pub(super) fn from_env() -> Option<Self> {
        let urls: Vec<String> = std::env::var("DEBUGINFOD_URLS")
            .ok()?
            .split_whitespace()
            .map(|url| url.trim_end_matches('/').to_string())
            .collect();
        if urls.is_empty() {
            return None;
        }
        let seconds = |name: &str| std::env::var(name).ok()?.parse::<u64>().ok();
        let timeout = seconds("DEBUGINFOD_TIMEOUT").map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Some(Self {
            urls,
            cache_dir: cache_dir().join("debuginfod"),
            agent,
            max_bytes: seconds("DEBUGINFOD_MAXSIZE").unwrap_or(DEFAULT_MAX_BYTES),
            failed: HashSet::new(),
            fetched: HashMap::new(),
        })
    }

    /// The debug file of `build_id`, from the cache or the first server
    /// that has it.
    pub(super) fn debuginfo(&mut self, build_id: &[u8]) -> Option<File> {
        if !self.fetched.contains_key(build_id) {
            let path = self.fetch(build_id);
            self.fetched.insert(build_id.to_vec(), path);
        }
        File::open(self.fetched.get(build_id)?.as_ref()?).ok()
    }

    fn fetch(&mut self, build_id: &[u8]) -> Option<PathBuf> {
        let hex = hex(build_id);
        let path = self.cache_dir.join(&hex).join("debuginfo");
        if let Ok(file) = File::open(&path) {
            if is_debug_file_for(&file, build_id) {
                return Some(path);
            }
        }
        for url in self.urls.clone() {
            if self.failed.contains(&url) {
                continue;
            }
            match self.download(&url, &hex, &path) {
                Ok(true) => {
                    let file = File::open(&path).ok()?;
                    if is_debug_file_for(&file, build_id) {
                        return Some(path);
                    }
                    log::warn!("debuginfod {url} sent a file that is not the debug file of build-id {hex}");
                    let _ = fs::remove_file(&path);
                }
                Ok(false) => {}
                Err(err) => {
                    eprintln!("leakscope: warning: debuginfod server {url}: {err}; not asked again");
                    self.failed.insert(url);
                }
            }
        }
        None
    }

    /// Ok(false) when the server does not have it.
    fn download(&self, url: &str, hex: &str, path: &std::path::Path) -> io::Result<bool> {
        let request = format!("{url}/buildid/{hex}/debuginfo");
        let response = self.agent.get(&request).call().map_err(io::Error::other)?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(false),
            status => return Err(io::Error::other(format!("HTTP {status} for {request}"))),
        }
        let dir = path.parent().expect("the cache path has a directory");
        fs::create_dir_all(dir)?;
        // Written aside and renamed: a partial download never looks cached.
        let partial = dir.join(format!(".debuginfo.{}", std::process::id()));
        let result = (|| {
            let mut body = response
                .into_body()
                .into_with_config()
                .limit(self.max_bytes + 1)
                .reader();
            let mut out = File::create(&partial)?;
            let copied = io::copy(&mut (&mut body).take(self.max_bytes + 1), &mut out)?;
            if copied > self.max_bytes {
                return Err(io::Error::other(format!(
                    "{request} is larger than {} bytes (DEBUGINFOD_MAXSIZE)",
                    self.max_bytes
                )));
            }
            fs::rename(&partial, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&partial);
        }
        result.map(|()| true)
    }
}

/// `$XDG_CACHE_HOME/leakscope`, else `$HOME/.cache/leakscope`.
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("leakscope")
}
