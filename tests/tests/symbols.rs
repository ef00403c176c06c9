//! Names for optimized and stripped code. inlined.c, built with -O2, leaks
//! through functions GCC inlines: every function from the allocation to
//! `main` must be a frame, at the line of its call (`// SITE:` markers), in
//! the JSON report and as pprof's inline lines. Stripped copies must be named
//! the same through their debug file: by `.gnu_debuglink`, by
//! `/usr/lib/debug/.build-id/`, and from elfutils' debuginfod server; a slow
//! and a dead server must cost one time limit, not a stalled hunt.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use leakscope_tests::*;
use serde_json::Value;

const NAME: &str = "inlined";
const RECORDS: u64 = 5;
const RECORD_BYTES: u64 = 4099;

/// From the allocation to `main`: (function, also its `SITE:` marker at
/// the line of its call, inlined into the next frame).
const CHAIN: &[(&str, bool)] = &[
    ("alloc_record", true),
    ("build_record", true),
    ("make_records", false),
    ("handle_request", true),
    ("serve", false),
    ("main", false),
];

fn fixture() -> PathBuf {
    build_fixture(NAME, &["-O2"])
}

fn source() -> String {
    fixture_source(NAME).to_string_lossy().into_owned()
}

/// The one site that leaks through `alloc_record`, checked against CHAIN:
/// names, lines, inlining, source file, module, and what it holds.
fn check_chain<'a>(report: &'a Value, module: &Path, describe: &str) -> &'a Value {
    let leaking: Vec<&Value> = sites(report)
        .iter()
        .filter(|s| s["frames"][0]["function"] == "alloc_record")
        .collect();
    assert_eq!(leaking.len(), 1, "one site leaks through alloc_record:\n{describe}");
    let site = leaking[0];
    assert_eq!(
        u64_field(site, "outstanding_bytes"),
        RECORDS * RECORD_BYTES,
        "{describe}"
    );
    assert_eq!(u64_field(site, "outstanding_allocations"), RECORDS, "{describe}");
    let frames = site["frames"].as_array().unwrap();
    assert!(frames.len() >= CHAIN.len(), "stack too short: {site:#}");
    for (i, (&(function, inlined), frame)) in CHAIN.iter().zip(frames).enumerate() {
        let context = format!("frame {i} of {site:#}\n{describe}");
        assert_eq!(frame["function"], function, "{context}");
        assert_eq!(frame["line"], line_of(NAME, function), "{context}");
        assert_eq!(frame["file"], source().as_str(), "{context}");
        assert_eq!(frame["module"], module.to_str().unwrap(), "{context}");
        assert_eq!(frame["inlined"].as_bool().unwrap_or(false), inlined, "{context}");
        // An inlined function is part of its caller's machine frame.
        if inlined {
            assert_eq!(frame["address"], frames[i + 1]["address"], "{context}");
        }
    }
    assert!(report["modules_without_symbols"].is_null(), "{describe}");
    site
}

#[test]
fn inlined_functions_are_frames_in_json_and_pprof() {
    let fixture = fixture();
    let (out, text) = run_launch_raw(&fixture, &[], "json", &["--mode", "exact"]);
    assert!(out.status.success(), "{}", out.describe());
    let report = parse_report(&text, &out.describe());
    check_chain(&report, &fixture, &out.describe());

    let json = scratch_dir("symbols-pprof").join("report.json");
    fs::write(&json, &text).unwrap();
    let pprof = json.with_extension("pprof");
    let run = run_leakscope(
        &[
            "report",
            json.to_str().unwrap(),
            "--format",
            "pprof",
            "-o",
            pprof.to_str().unwrap(),
        ],
        ERROR_TIMEOUT,
        "symbols-report-pprof",
    );
    assert!(run.status.success(), "{}", run.describe());
    let profile = pprof::decode(&fs::read(&pprof).unwrap());
    let name = |function_id: u64| {
        let function = profile.function.iter().find(|f| f.id == function_id).unwrap();
        profile.string_table[function.name as usize].as_str()
    };
    let sample = profile
        .sample
        .iter()
        .find(|s| {
            let location = profile.location.iter().find(|l| l.id == s.location_id[0]).unwrap();
            name(location.line[0].function_id) == "alloc_record"
        })
        .expect("a sample through alloc_record");
    assert_eq!(sample.value[..2], [(RECORDS * RECORD_BYTES) as i64, RECORDS as i64]);
    // pprof: one location per machine frame, its inlined functions as
    // lines, innermost first.
    let want: [&[&str]; 3] = [
        &["alloc_record", "build_record", "make_records"],
        &["handle_request", "serve"],
        &["main"],
    ];
    for (location_id, functions) in sample.location_id.iter().zip(want) {
        let location = profile.location.iter().find(|l| l.id == *location_id).unwrap();
        let lines: Vec<(&str, i64)> = location.line.iter().map(|l| (name(l.function_id), l.line)).collect();
        let expected: Vec<(&str, i64)> = functions.iter().map(|&f| (f, i64::from(line_of(NAME, f)))).collect();
        assert_eq!(lines, expected, "location {location_id}");
    }
}

/// `strip`ped copies of the fixture and its debug file, in a fresh directory.
struct Stripped {
    dir: PathBuf,
    exe: PathBuf,
    debug: PathBuf,
    build_id: String,
    /// Every copy has the fixture's build-id: while one test puts its debug
    /// file under /usr/lib/debug/.build-id, no other may run.
    _exclusive: MutexGuard<'static, ()>,
}

fn tool(program: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn stripped(label: &str, debuglink: bool) -> Stripped {
    static BUILD_ID_DIR: Mutex<()> = Mutex::new(());
    let exclusive = BUILD_ID_DIR.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir(label).canonicalize().unwrap();
    let fixture = fixture();
    let fixture = fixture.to_str().unwrap();
    tool("objcopy", &["--only-keep-debug", fixture, "inlined.debug"], &dir);
    tool("strip", &["--strip-all", "-o", "inlined-stripped", fixture], &dir);
    if debuglink {
        tool(
            "objcopy",
            &["--add-gnu-debuglink=inlined.debug", "inlined-stripped"],
            &dir,
        );
    }
    let notes = tool("readelf", &["-n", "inlined-stripped"], &dir);
    let build_id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("gcc gave the fixture a build-id")
        .to_string();
    let sections = tool("readelf", &["-S", "inlined-stripped"], &dir);
    assert!(
        !sections.contains(".symtab") && !sections.contains(".debug_info"),
        "{sections}"
    );
    Stripped {
        exe: dir.join("inlined-stripped"),
        debug: dir.join("inlined.debug"),
        dir,
        build_id,
        _exclusive: exclusive,
    }
}

fn hunt_env(exe: &Path, envs: &[(&str, &str)]) -> Launch {
    let run = run_launch_env(exe, &[], envs, &["--mode", "exact"]);
    assert!(run.status.success(), "{}", run.stderr);
    run
}

#[test]
fn stripped_binary_named_through_its_debuglink() {
    let s = stripped("symbols-debuglink", true);
    let run = hunt_env(&s.exe, &[]);
    check_chain(&run.report, &s.exe, &run.stderr);
}

#[test]
fn a_debuglink_file_with_another_crc_is_refused() {
    let s = stripped("symbols-bad-crc", true);
    let mut debug = fs::read(&s.debug).unwrap();
    debug.extend_from_slice(b"changed");
    fs::write(&s.debug, debug).unwrap();
    let run = hunt_env(&s.exe, &[]);
    assert_unnamed(&run, &s.exe);
}

/// Removes a file put under /usr/lib/debug, even when an assertion fails.
struct Installed(PathBuf);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn stripped_binary_named_through_the_build_id_directory() {
    let s = stripped("symbols-build-id", false);
    let path = PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &s.build_id[..2],
        &s.build_id[2..]
    ));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::copy(&s.debug, &path).unwrap();
    let installed = Installed(path);
    let run = hunt_env(&s.exe, &[]);
    check_chain(&run.report, &s.exe, &run.stderr);
    drop(installed);
}

/// The fixture's frames are unnamed, and its module is reported once.
fn assert_unnamed(run: &Launch, exe: &Path) {
    let exe = exe.to_str().unwrap();
    assert_eq!(
        run.report["modules_without_symbols"],
        serde_json::json!([exe]),
        "{}",
        run.stderr
    );
    let in_fixture: Vec<&Value> = sites(&run.report)
        .iter()
        .flat_map(|s| s["frames"].as_array().unwrap())
        .filter(|f| f["module"] == exe)
        .collect();
    assert!(!in_fixture.is_empty(), "{:#}", run.report);
    assert!(in_fixture.iter().all(|f| f["function"].is_null()), "{:#}", run.report);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// HTTP GET on localhost: the status code, or None when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// elfutils' debuginfod serving one directory; killed on drop.
struct Debuginfod(#[allow(dead_code)] Proc);

impl Debuginfod {
    fn serve(dir: &Path, build_id: &str) -> (Self, u16) {
        let port = free_port();
        let mut cmd = Command::new("debuginfod");
        cmd.args(["-F", "-p", &port.to_string(), "-d"])
            .arg(dir.join("debuginfod.sqlite"))
            .arg(dir.join("served"));
        let server = Debuginfod(Proc::spawn(cmd, "debuginfod"));
        // Ready once its first scan has indexed the debug file.
        let started = Instant::now();
        let path = format!("/buildid/{build_id}/debuginfo");
        while http_status(port, &path) != Some(200) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "debuginfod never served {path}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        (server, port)
    }
}

#[test]
fn stripped_binary_named_from_debuginfod_and_cached() {
    assert!(
        Command::new("debuginfod").arg("--version").output().is_ok(),
        "`debuginfod` is not installed: cargo xtask setup installs it (Debian package debuginfod)"
    );
    let s = stripped("symbols-debuginfod", false);
    let served = s.dir.join("served");
    fs::create_dir_all(&served).unwrap();
    fs::rename(&s.debug, served.join("inlined.debug")).unwrap();
    let (server, port) = Debuginfod::serve(&s.dir, &s.build_id);
    let cache = s.dir.join("cache");
    let urls = format!("http://127.0.0.1:{port}");
    let envs = [
        ("DEBUGINFOD_URLS", urls.as_str()),
        ("XDG_CACHE_HOME", cache.to_str().unwrap()),
    ];
    let run = hunt_env(&s.exe, &envs);
    check_chain(&run.report, &s.exe, &run.stderr);
    let cached = cache.join(format!("leakscope/debuginfod/{}/debuginfo", s.build_id));
    assert!(cached.is_file(), "{} not cached", cached.display());

    // From the cache, with the server gone.
    drop(server);
    assert_eq!(http_status(port, "/"), None);
    let run = hunt_env(&s.exe, &envs);
    check_chain(&run.report, &s.exe, &run.stderr);
}

#[test]
fn a_slow_and_a_dead_debuginfod_cost_one_time_limit_each() {
    let s = stripped("symbols-slow-debuginfod", false);
    // Accepts connections and never answers.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_port = slow.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = slow.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let dead_port = free_port();
    let urls = format!("http://127.0.0.1:{slow_port} http://127.0.0.1:{dead_port}");
    let cache = s.dir.join("cache");
    let envs = [
        ("DEBUGINFOD_URLS", urls.as_str()),
        ("DEBUGINFOD_TIMEOUT", "2"),
        ("XDG_CACHE_HOME", cache.to_str().unwrap()),
    ];
    let run = hunt_env(&s.exe, &envs);
    assert_unnamed(&run, &s.exe);
    let json = s.dir.join("report.json");
    fs::write(&json, run.report.to_string()).unwrap();
    let text = run_leakscope(
        &["report", json.to_str().unwrap()],
        ERROR_TIMEOUT,
        "symbols-report-text",
    );
    let note = format!("no symbols for {} (stripped, no debug file found)", s.exe.display());
    assert_eq!(text.stdout.matches(&note).count(), 1, "{}", text.describe());
    // Each server failed once and was not asked for the other modules
    // without DWARF (libc, ld.so).
    for port in [slow_port, dead_port] {
        let warning = format!("debuginfod server http://127.0.0.1:{port}:");
        assert_eq!(run.stderr.matches(&warning).count(), 1, "{}", run.stderr);
    }
}

/// The parts of pprof's profile.proto this test reads.
mod pprof {
    use std::io::Read as _;

    use prost::Message as _;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
    }

    pub fn decode(gzipped: &[u8]) -> Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gzipped)
            .read_to_end(&mut raw)
            .expect("gzip");
        Profile::decode(raw.as_slice()).expect("a profile.proto message")
    }
}
