//! The per-tier alert rules of `config/alerts/` (SPEC §5): runs
//! `config/alerts/check.sh`, i.e. `promtool check rules` on every tier file
//! and `promtool test rules` on every unit-test file in `config/alerts/tests/`.
//! promtool is required (Debian/Ubuntu package `prometheus`, installed in CI):
//! without it the test fails and says so instead of passing silently.

use std::path::Path;
use std::process::Command;

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let promtool = Command::new("promtool").arg("--version").output();
    assert!(
        matches!(&promtool, Ok(o) if o.status.success()),
        "promtool is not installed (or does not run): install the `prometheus` \
         package (apt-get install prometheus) to check config/alerts/ ({:?})",
        promtool.err()
    );
    let script = root.join("config/alerts/check.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "config/alerts/check.sh failed (exit {:?}):\n{text}",
        out.status.code()
    );
    assert!(
        text.contains("all rule checks and tests passed"),
        "unexpected check.sh output:\n{text}"
    );
}
