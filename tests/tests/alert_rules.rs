//! The shipped Prometheus alerting rules (packaging/prometheus) pass
//! `promtool check rules` and their unit tests (`promtool test rules`).
use std::process::Command;

use leakscope_tests::prometheus::PROMTOOL_BIN;

fn promtool(args: &[&str]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus");
    let out = Command::new(PROMTOOL_BIN)
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("run {PROMTOOL_BIN} (installed by `cargo xtask setup`): {e}"));
    assert!(
        out.status.success(),
        "promtool {args:?} in {}: {}\n{}{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_rules_are_valid_and_pass_their_unit_tests() {
    promtool(&["check", "rules", "leakscope.rules.yml"]);
    promtool(&["test", "rules", "leakscope.rules.test.yml"]);
}
