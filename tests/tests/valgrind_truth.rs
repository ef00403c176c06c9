//! Ground truth from outside: real Debian programs that nobody here wrote,
//! run once under valgrind and once under a launch-mode hunt. What is still
//! allocated through malloc at exit must agree byte for byte and block for
//! block with valgrind's "in use at exit".
//!
//! valgrind runs without its libc/libstdc++ freeing (`--run-libc-freeres=no
//! --run-cxx-freeres=no`): otherwise it frees libc's stdio buffers and
//! libstdc++'s emergency pool before counting, which a tracer never sees.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::time::Duration;

use leakscope_tests::*;

/// Runs `program args...` with its standard input read from `stdin` (through
/// `sh -c 'exec "$@" < FILE'`, as the programs read their script there).
fn run_with_stdin(program: &Path, args: Vec<OsString>, stdin: &Path, timeout: Duration, label: &str) -> HuntOutput {
    let mut argv: Vec<OsString> = vec![
        "-c".into(),
        format!("exec \"$@\" < '{}'", stdin.display()).into(),
        "sh".into(),
        program.into(),
    ];
    argv.extend(args);
    run_captured(Path::new("/bin/sh"), &argv, timeout, label)
}

/// valgrind's `in use at exit: X bytes in Y blocks`, from its log.
fn valgrind_in_use(program: &Path, args: &[&str], stdin: &Path, label: &str) -> (u64, u64) {
    let dir = scratch_dir(label);
    let log = dir.join("valgrind.log");
    let mut argv: Vec<OsString> = [
        "--tool=memcheck",
        "--leak-check=no",
        "--run-libc-freeres=no",
        "--run-cxx-freeres=no",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    argv.push(format!("--log-file={}", log.display()).into());
    argv.push(program.into());
    argv.extend(args.iter().map(OsString::from));
    let out = run_with_stdin(Path::new("valgrind"), argv, stdin, Duration::from_secs(300), label);
    assert!(out.status.success(), "valgrind run failed\n{}", out.describe());
    let text = fs::read_to_string(&log).unwrap_or_else(|e| panic!("no valgrind log {} ({e})", log.display()));
    let line = text
        .lines()
        .find_map(|l| l.split_once("in use at exit: ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("valgrind log has no \"in use at exit\" line:\n{text}"));
    // "1,234 bytes in 5 blocks"
    let number = |s: &str| {
        s.replace(',', "")
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("{s:?}: {e} in {line}"))
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    (number(words[0]), number(words[3]))
}

/// Outstanding malloc bytes and blocks at exit, from a launch-mode hunt.
fn hunted_in_use(program: &Path, args: &[&str], stdin: &Path, label: &str) -> (u64, u64) {
    let dir = scratch_dir(label);
    let report_path = dir.join("report.json");
    let mut argv: Vec<OsString> = ["hunt", "--mode", "exact", "--format", "json", "--top", "100000", "-o"]
        .iter()
        .map(OsString::from)
        .collect();
    argv.push(report_path.clone().into());
    argv.push("--".into());
    argv.push(program.into());
    argv.extend(args.iter().map(OsString::from));
    let out = run_with_stdin(&leakscope_bin(), argv, stdin, LAUNCH_TIMEOUT, label);
    assert!(out.status.success(), "hunt failed\n{}", out.describe());
    let text = fs::read_to_string(&report_path).unwrap_or_else(|e| panic!("no report ({e})\n{}", out.describe()));
    let report = parse_report(&text, &out.describe());
    let malloc_sites = || sites(&report).iter().filter(|s| s["kind"].as_str() == Some("malloc"));
    let bytes: u64 = malloc_sites().map(|s| u64_field(s, "outstanding_bytes")).sum();
    let blocks: u64 = malloc_sites().map(|s| u64_field(s, "outstanding_allocations")).sum();
    assert_eq!(
        bytes,
        u64_field(&report["totals"]["by_kind"], "malloc"),
        "the malloc sites do not add up to the malloc total: some site is missing from the report"
    );
    (bytes, blocks)
}

fn agree_with_valgrind(name: &str, args: &[&str], input: &str) {
    let program = Path::new("/usr/bin").join(name);
    assert!(
        program.exists(),
        "{} is missing: cargo xtask setup installs it",
        program.display()
    );
    let dir = scratch_dir(&format!("truth-{name}"));
    let stdin = dir.join("input");
    fs::write(&stdin, input).unwrap();
    let expected = valgrind_in_use(&program, args, &stdin, &format!("truth-{name}-valgrind"));
    let seen = hunted_in_use(&program, args, &stdin, &format!("truth-{name}-hunt"));
    assert_eq!(
        seen, expected,
        "{name}: leakscope saw (bytes, blocks) {seen:?} outstanding at exit, valgrind {expected:?}"
    );
}

#[test]
fn sqlite3_agrees_with_valgrind() {
    let script = "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT);\n\
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000)\n\
        INSERT INTO t SELECT x, printf('row %d', x) FROM c;\n\
        CREATE INDEX tb ON t(b);\n\
        SELECT count(*), sum(length(b)) FROM t WHERE b LIKE 'row 4%';\n";
    agree_with_valgrind("sqlite3", &[":memory:"], script);
}

#[test]
fn bc_agrees_with_valgrind() {
    agree_with_valgrind("bc", &["-q", "-l"], "scale=400\n4*a(1)\ne(10)\nquit\n");
}

#[test]
fn jq_agrees_with_valgrind() {
    let input: String = (0..500)
        .map(|i| format!("{{\"id\":{i},\"tags\":[\"a{i}\",\"b\"]}}\n"))
        .collect();
    agree_with_valgrind(
        "jq",
        &["-c", "select(.id % 7 == 0) | {id, n: (.tags | length)}"],
        &input,
    );
}
