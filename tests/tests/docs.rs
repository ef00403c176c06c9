//! The docs stay true: every `console` block of README.md and docs/*.md is
//! run and its output compared with what the block shows, and every long
//! option a `sh` block gives a `leakscope` subcommand must be one its
//! `--help` lists. docs/GUIDE.md ("The docs are tested") states the rules.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leakscope_tests::console::{normalized, output_matches};
use leakscope_tests::*;
use pulldown_cmark::{CodeBlockKind, Event, Parser, Tag, TagEnd};

/// Upper bound for all the commands of one file.
const FILE_TIMEOUT: Duration = Duration::from_secs(900);
/// Marks the start of each command's output in the session's output.
const MARKER: &str = "@@docs-command";

/// README.md, then docs/*.md in name order.
fn doc_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    docs.insert(0, root.join("README.md"));
    docs
}

struct Block {
    /// The fence's info string: `console`, `sh`, ...
    info: String,
    /// 1-based line of the block's first line of content.
    line: usize,
    text: String,
}

fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let line_of = |offset: usize| markdown[..offset].matches('\n').count() + 2;
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (event, range) in Parser::new(markdown).into_offset_iter() {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                current = Some(Block {
                    info: info.to_string(),
                    line: line_of(range.start),
                    text: String::new(),
                })
            }
            Event::Text(text) => {
                if let Some(block) = current.as_mut() {
                    block.text.push_str(&text);
                }
            }
            Event::End(TagEnd::CodeBlock) => blocks.extend(current.take()),
            _ => {}
        }
    }
    blocks
}

/// One `$ ` command of a console block and the output shown under it.
struct Example {
    /// `FILE:LINE` of the command.
    at: String,
    command: String,
    expected: Vec<String>,
}

fn console_examples(file: &Path, blocks: &[Block]) -> Vec<Example> {
    let name = file
        .strip_prefix(workspace_root())
        .unwrap_or(file)
        .display()
        .to_string();
    let mut examples: Vec<Example> = Vec::new();
    for block in blocks.iter().filter(|block| block.info == "console") {
        let first_of_block = examples.len();
        let mut continued = false;
        for (n, line) in block.text.lines().enumerate() {
            if continued {
                let example = examples.last_mut().expect("a command is being continued");
                example.command.push('\n');
                example.command.push_str(line);
                continued = line.ends_with('\\');
            } else if let Some(command) = line.strip_prefix("$ ") {
                examples.push(Example {
                    at: format!("{name}:{}", block.line + n),
                    command: command.to_string(),
                    expected: Vec::new(),
                });
                continued = command.ends_with('\\');
            } else {
                let at = format!("{name}:{}", block.line + n);
                assert!(
                    examples.len() > first_of_block,
                    "{at}: output shown before any `$ ` command"
                );
                let example = examples.last_mut().expect("checked just above");
                example.expected.push(line.to_string());
            }
        }
    }
    examples
}

/// One bash session running the examples in order, each preceded by a
/// marker line and followed by a check of its exit status.
fn session_script(dir: &Path, examples: &[Example]) -> String {
    let mut script = format!("exec 2>&1\ncd '{}' || exit 1\n", dir.display());
    for (i, example) in examples.iter().enumerate() {
        script.push_str(&format!(
            "printf '\\n{MARKER} {i}\\n'\n{}\nstatus=$?; if [ $status -ne 0 ]; then printf '\\n{MARKER} {i} failed with exit status %d\\n' $status; exit 1; fi\n",
            example.command
        ));
    }
    // Background jobs an example left running (its process group is killed anyway).
    script.push_str("jobs -p | xargs -r kill 2>/dev/null; exit 0\n");
    script
}

/// Splits the session's output by the markers: each example's output lines.
fn outputs_by_example(output: &str) -> BTreeMap<usize, Vec<&str>> {
    let mut outputs: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    let mut current = None;
    for line in output.lines() {
        if let Some(index) = line.strip_prefix(MARKER).and_then(|rest| rest.trim().parse().ok()) {
            current = Some(index);
            outputs.entry(index).or_default();
        } else if let Some(index) = current {
            outputs.entry(index).or_default().push(line);
        }
    }
    outputs
}

/// A directory with `leakscope` (the binary under test) on PATH and the demo
/// as `./leaky`.
fn example_dir(label: &str) -> (PathBuf, OsString) {
    let dir = scratch_dir(label);
    build_demo(&dir.join("leaky")).expect("build the demo");
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("create bin/");
    std::os::unix::fs::symlink(leakscope_bin(), bin.join("leakscope")).expect("link leakscope into bin/");
    let mut path = bin.into_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    (dir, path)
}

#[test]
fn console_blocks_show_what_the_commands_print() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for file in doc_files() {
        let markdown = fs::read_to_string(&file).expect("read a doc");
        let examples = console_examples(&file, &fenced_blocks(&markdown));
        if examples.is_empty() {
            continue;
        }
        let label = format!("docs-{}", file.file_stem().unwrap().to_string_lossy());
        let (dir, path) = example_dir(&label);
        let script = session_script(&dir, &examples);
        let out = run_captured_env(
            Path::new("bash"),
            &["-c".into(), script.into()],
            &[("PATH", path.to_str().expect("a UTF-8 PATH"))],
            FILE_TIMEOUT,
            &label,
        );
        let outputs = outputs_by_example(&out.stdout);
        for (i, example) in examples.iter().enumerate() {
            ran += 1;
            let Some(output) = outputs.get(&i) else {
                failures.push(format!(
                    "{}: `{}` did not run\n{}",
                    example.at,
                    example.command,
                    out.describe()
                ));
                break;
            };
            let actual = normalized(output.iter().filter(|line| !line.starts_with(MARKER)));
            let failed = output.iter().any(|line| line.starts_with(MARKER));
            if failed || !output_matches(&normalized(&example.expected), &actual) {
                failures.push(format!(
                    "{}: `{}`{}\n--- the docs show ---\n{}\n--- it printed ---\n{}",
                    example.at,
                    example.command,
                    if failed { " failed" } else { "" },
                    example.expected.join("\n"),
                    output.join("\n")
                ));
            }
        }
    }
    assert!(ran >= 10, "only {ran} console commands found in the docs");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The range of `line` a `--flag` token occupies, for each long option.
fn long_options(line: &str) -> Vec<Range<usize>> {
    let bytes = line.as_bytes();
    let mut options = Vec::new();
    let mut i = 0;
    while let Some(at) = line[i..].find("--").map(|at| at + i) {
        let start_of_word = at == 0 || !bytes[at - 1].is_ascii_alphanumeric() && bytes[at - 1] != b'-';
        let end = at
            + 2
            + line[at + 2..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(line.len() - at - 2);
        if start_of_word && end > at + 2 {
            options.push(at..end);
        }
        i = end.max(at + 2);
    }
    options
}

/// `leakscope SUBCOMMAND ...` lines of the `sh` blocks, continuations joined,
/// quoted strings (commands given to an option) left out, and only the part
/// before a lone `--` (the traced command's own arguments).
fn synopses(blocks: &[Block]) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    for block in blocks.iter().filter(|block| block.info == "sh") {
        let joined = block.text.replace("\\\n", " ");
        for (n, line) in joined.lines().enumerate() {
            let line = line.trim();
            let unquoted: String = line.split('\'').step_by(2).collect::<Vec<_>>().join("''");
            let own = unquoted.split(" -- ").next().unwrap_or_default();
            if line.starts_with("leakscope ") {
                lines.push((block.line + n, own.to_string()));
            } else if let (true, Some((_, synopsis))) = (line.starts_with('['), lines.last_mut()) {
                // A synopsis's next line of options.
                synopsis.push(' ');
                synopsis.push_str(own);
            }
        }
    }
    lines
}

#[test]
fn sh_blocks_use_only_options_that_exist() {
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in doc_files() {
        let markdown = fs::read_to_string(&file).expect("read a doc");
        let name = file.strip_prefix(workspace_root()).unwrap().display().to_string();
        for (line, synopsis) in synopses(&fenced_blocks(&markdown)) {
            let subcommand = synopsis.split_whitespace().nth(1).unwrap_or_default().to_string();
            let text = help.entry(subcommand.clone()).or_insert_with(|| {
                let out = run_leakscope(&[&subcommand, "--help"], ERROR_TIMEOUT, "docs-help");
                if out.status.success() {
                    out.stdout
                } else {
                    String::new()
                }
            });
            if text.is_empty() {
                failures.push(format!("{name}:{line}: `leakscope {subcommand}` is not a subcommand"));
                continue;
            }
            let listed = normalized(text.lines()).join(" ");
            for option in long_options(&synopsis) {
                let flag = &synopsis[option];
                checked += 1;
                let known = listed
                    .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
                    .any(|word| word == flag);
                if !known {
                    failures.push(format!("{name}:{line}: `leakscope {subcommand}` has no option {flag}"));
                }
            }
        }
    }
    assert!(checked >= 30, "only {checked} options found in the docs' sh blocks");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
