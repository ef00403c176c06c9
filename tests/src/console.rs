//! Commands' output against the output shown for them (in the docs, or
//! expected by a test): whitespace runs count as one space, `...` inside a
//! line matches any text and a line of only `...` any number of lines.

/// Runs runs of spaces together and drops blank lines: columns in the docs
/// need not line up as they do on a terminal.
pub fn normalized(lines: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<String> {
    lines
        .into_iter()
        .map(|line| line.as_ref().split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect()
}

/// `...` inside a pattern matches any text.
pub fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    let (first, rest) = parts.split_first().expect("split yields a part");
    let Some(mut remaining) = line.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// Every line must be matched in order; a pattern line `...` stands for any
/// number of lines.
pub fn output_matches(patterns: &[String], lines: &[String]) -> bool {
    match patterns.split_first() {
        None => lines.is_empty(),
        Some((pattern, rest)) if pattern == "..." => (0..=lines.len()).any(|skip| output_matches(rest, &lines[skip..])),
        Some((pattern, rest)) => {
            lines.first().is_some_and(|line| line_matches(pattern, line)) && output_matches(rest, &lines[1..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_patterns() {
        assert!(line_matches("PID ... (13 probes)", "PID 42 (13 probes)"));
        assert!(!line_matches("PID ... (13 probes)", "PID 42 (12 probes)"));
        assert!(line_matches("a...", "a"));
        assert!(!line_matches("ab...b", "ab"));
        let lines = normalized(["one", "two  three", "four"]);
        assert!(output_matches(&normalized(["one", "...", "four"]), &lines));
        assert!(!output_matches(&normalized(["one", "four"]), &lines));
        assert!(output_matches(&normalized(["...", "two three", "..."]), &lines));
    }
}
