//! The operator documentation in README.md stays true to the code: every
//! field of the configuration model (src/config/model.rs and `[policy]`'s
//! `PolicyExtensions`) is in the "Configuration reference", every key that
//! section names exists in the model, and every command of the "CLI
//! reference" is accepted by the real binary (`--help` exits 0).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn read(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The text of README section `## title` (up to the next `## `).
fn section(title: &str) -> String {
    let readme = read("README.md");
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has no section {title}"));
    let rest = &readme[start + 4..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// `pub name:` fields of the `struct`s in a source file.
fn pub_fields(src: &str) -> BTreeSet<String> {
    src.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("pub "))
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
        .filter(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_string)
        .collect()
}

fn model_fields() -> BTreeSet<String> {
    let mut f = pub_fields(&read("src/config/model.rs"));
    let policy = read("src/policy/mod.rs");
    let start = policy
        .find("pub struct PolicyExtensions")
        .expect("PolicyExtensions");
    let end = policy[start..]
        .find("\n}")
        .map(|e| start + e)
        .unwrap_or(policy.len());
    f.extend(pub_fields(&policy[start..end]));
    f
}

fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_model_key_is_documented() {
    let doc = words(&section("Configuration reference"));
    let fields = model_fields();
    assert!(
        fields.len() > 30,
        "model parse found too few fields: {fields:?}"
    );
    let missing: Vec<&String> = fields.iter().filter(|f| !doc.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "README \"Configuration reference\" lacks {missing:?}"
    );
}

#[test]
fn every_documented_key_exists_in_the_model() {
    let fields = model_fields();
    let levels = ["ro", "rw", "migrate", "monitor"];
    let sec = section("Configuration reference");
    let mut unknown = Vec::new();
    for row in sec.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split(" | ").next().unwrap_or("");
        for code in first.split('`').skip(1).step_by(2) {
            // `[proxy] startup_timeout_ms`, `users.ro`, `tier`
            let key = code.rsplit(' ').next().unwrap_or(code);
            for part in key.split('.') {
                let part = part.trim_matches(|c| c == '[' || c == ']');
                if !fields.contains(part) && !levels.contains(&part) {
                    unknown.push(code.to_string());
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "documented but not in the model: {unknown:?}"
    );
}

#[test]
fn every_documented_command_exists() {
    let sec = section("CLI reference");
    let mut n = 0;
    for row in sec.lines().filter(|l| l.starts_with("| `tierwarden ")) {
        let cmd = row.split('`').nth(1).expect("command cell");
        let sub: Vec<&str> = cmd
            .split_whitespace()
            .skip(1)
            .take_while(|w| !w.starts_with('-') && !w.starts_with('['))
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_tierwarden"))
            .args(&sub)
            .arg("--help")
            .output()
            .expect("tierwarden runs");
        assert!(out.status.success(), "`{cmd}`: no such command");
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in cmd.split_whitespace().filter(|w| w.starts_with("--")) {
            let flag = flag.trim_end_matches([']', '.']);
            assert!(
                help.contains(flag),
                "`{cmd}`: {flag} unknown to `{sub:?} --help`"
            );
        }
        n += 1;
    }
    assert!(n >= 7, "CLI reference lists {n} commands");
}

/// Subcommand names listed under `Commands:` in `tierwarden ARGS --help`.
fn subcommands(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_tierwarden"))
        .args(args)
        .arg("--help")
        .output()
        .expect("tierwarden runs");
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_command_of_the_binary_is_documented() {
    let sec = section("CLI reference");
    let top = subcommands(&[]);
    assert!(top.len() >= 6, "no commands parsed from --help: {top:?}");
    for cmd in &top {
        let nested = subcommands(&[cmd.as_str()]);
        let names: Vec<String> = if nested.is_empty() {
            vec![format!("`tierwarden {cmd}")]
        } else {
            nested
                .iter()
                .map(|n| format!("`tierwarden {cmd} {n}"))
                .collect()
        };
        for n in names {
            let documented = sec.contains(&format!("{n} ")) || sec.contains(&format!("{n}`"));
            assert!(documented, "README \"CLI reference\" lacks {n}`");
        }
    }
}
