//! Settings: SET / RESET / SET TRANSACTION / set_config / startup `-c` settings
//! (THREATS.md #7, #11).
//!
//! Owns which settings are privileged (`role`, `session_authorization`,
//! `session_replication_role`, and values of `standard_conforming_strings` /
//! `client_encoding` that would make the server read statements differently
//! from the classifier) and which assignments turn a read-only session
//! writable (`default_transaction_read_only` / `transaction_read_only` to anything
//! that is not clearly true, their RESET or DEFAULT, `RESET ALL`, `DISCARD ALL`,
//! `… READ WRITE` transaction modes). Setting names are matched case-insensitively,
//! as PostgreSQL does. Pure; no IO.

use serde_json::Value;

use super::walk::{literal, Literal};
use super::StatementClass;

/// Settings whose assignment changes who the session is, or disables triggers
/// and rules: privileged whatever the value (SET, SET LOCAL, RESET, set_config).
pub const PRIVILEGED_SETTINGS: &[&str] =
    &["role", "session_authorization", "session_replication_role"];

/// Settings that keep a session read-only.
pub const READ_ONLY_SETTINGS: &[&str] = &["default_transaction_read_only", "transaction_read_only"];

/// Classification of one setting change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub class: StatementClass,
    pub makes_writable: bool,
    pub summary: String,
}

impl Outcome {
    pub fn privileged(summary: &str) -> Outcome {
        Outcome {
            class: StatementClass::Privileged,
            makes_writable: false,
            summary: summary.to_string(),
        }
    }
}

/// `true` only for values PostgreSQL's `parse_bool` reads as true. Anything else,
/// including values it would reject, counts as "not read-only" (fail closed).
fn clearly_true(value: &Literal) -> bool {
    match value {
        Literal::Bool(b) => *b,
        Literal::Int(i) => *i == 1,
        Literal::Str(s) => {
            let s = s.trim().to_ascii_lowercase();
            matches!(
                s.as_str(),
                "t" | "tr" | "tru" | "true" | "y" | "ye" | "yes" | "on" | "1"
            )
        }
        Literal::Other | Literal::Unknown => false,
    }
}

/// Client encodings whose multi-byte characters may contain ASCII bytes
/// (`\\`, `'`…): PostgreSQL converts them before parsing, the classifier
/// reads UTF-8, so the two would split the same bytes into different
/// statements (the classic Shift-JIS/GBK backslash injection). Names as
/// PostgreSQL's alias table spells them after removing non-alphanumerics.
const LEXER_UNSAFE_ENCODINGS: &[&str] = &[
    "big5",
    "win950",
    "windows950",
    "gb18030",
    "gbk",
    "cp936",
    "win936",
    "windows936",
    "johab",
    "mskanji",
    "shiftjis",
    "shiftjis2004",
    "sjis",
    "win932",
    "windows932",
    "uhc",
    "win949",
    "windows949",
];

/// Whether assigning `value` to `name` would make the server lex the
/// following statements differently from the classifier (which reads UTF-8
/// with `standard_conforming_strings = on`): then `'\\'` or a multi-byte
/// character ending in a backslash hides a statement from the proxy.
fn desyncs_lexer(name: &str, value: &Literal) -> bool {
    match name {
        "standard_conforming_strings" => !clearly_true(value),
        "client_encoding" => match value {
            Literal::Str(s) => {
                let clean: String = s
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                LEXER_UNSAFE_ENCODINGS.contains(&clean.as_str())
            }
            _ => true,
        },
        _ => false,
    }
}

/// `SET name = value` (or `set_config(name, value, …)`, or a startup setting).
/// `name` must be lower-cased.
pub(crate) fn assignment(name: &str, value: &Literal) -> Outcome {
    if PRIVILEGED_SETTINGS.contains(&name) {
        return Outcome::privileged(&format!("SET {name}"));
    }
    if desyncs_lexer(name, value) {
        return Outcome::privileged(&format!(
            "SET {name} to a value that changes how statements are read"
        ));
    }
    let makes_writable = READ_ONLY_SETTINGS.contains(&name) && !clearly_true(value);
    Outcome {
        class: StatementClass::Session,
        makes_writable,
        summary: format!("SET {name}"),
    }
}

/// `RESET name` / `SET name TO DEFAULT`.
fn reset(name: &str) -> Outcome {
    if PRIVILEGED_SETTINGS.contains(&name) {
        return Outcome::privileged(&format!("RESET {name}"));
    }
    Outcome {
        class: StatementClass::Session,
        makes_writable: READ_ONLY_SETTINGS.contains(&name),
        summary: format!("RESET {name}"),
    }
}

/// Whether transaction-mode options (`DefElem` list of BEGIN / SET TRANSACTION /
/// SET SESSION CHARACTERISTICS) ask for READ WRITE.
pub(crate) fn modes_make_writable(options: &Value) -> bool {
    let Some(items) = options.as_array() else {
        return false;
    };
    items.iter().any(|item| {
        let Some(def) = item.pointer("/node/DefElem") else {
            return false;
        };
        let name = def.get("defname").and_then(Value::as_str).unwrap_or("");
        if !READ_ONLY_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
            return false;
        }
        let value = def.get("arg").and_then(literal).unwrap_or(Literal::Unknown);
        !clearly_true(&value)
    })
}

/// A `VariableSetStmt` image (SET / SET LOCAL / RESET / RESET ALL / SET TRANSACTION
/// / SET SESSION CHARACTERISTICS).
pub(crate) fn variable_set(stmt: &Value) -> Outcome {
    let kind = stmt.get("kind").and_then(Value::as_i64).unwrap_or(0);
    let name = stmt
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_lowercase();
    let args = stmt.get("args").cloned().unwrap_or(Value::Null);
    match kind {
        // VAR_SET_VALUE
        1 => {
            let first = args.get(0).and_then(literal).unwrap_or(Literal::Unknown);
            let value = if args.as_array().map_or(0, Vec::len) > 1 {
                Literal::Other
            } else {
                first
            };
            assignment(&name, &value)
        }
        // VAR_SET_DEFAULT, VAR_RESET
        2 | 5 => reset(&name),
        // VAR_SET_MULTI: SET TRANSACTION …, SET SESSION CHARACTERISTICS …,
        // SET TRANSACTION SNAPSHOT
        4 => {
            let writable = modes_make_writable(&args);
            if name.starts_with("transaction") {
                Outcome {
                    class: StatementClass::Transaction,
                    makes_writable: writable,
                    summary: "SET TRANSACTION".to_string(),
                }
            } else if name == "session characteristics" {
                Outcome {
                    class: StatementClass::Session,
                    makes_writable: writable,
                    summary: "SET SESSION CHARACTERISTICS".to_string(),
                }
            } else {
                Outcome::privileged("SET of an unknown multi-valued setting")
            }
        }
        // VAR_RESET_ALL: drops a read-only default set by the session
        6 => Outcome {
            class: StatementClass::Session,
            makes_writable: true,
            summary: "RESET ALL".to_string(),
        },
        // VAR_SET_CURRENT (SET x FROM CURRENT) is only valid in function
        // definitions; anything else is unknown: fail closed.
        _ => Outcome::privileged("unknown SET form"),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn truthiness_is_strict() {
        for v in ["on", "ON", "true", "t", "yes", "1", " on "] {
            assert!(clearly_true(&Literal::Str(v.into())), "{v}");
        }
        for v in ["off", "of", "false", "0", "no", "", "o", "maybe", "2"] {
            assert!(!clearly_true(&Literal::Str(v.into())), "{v}");
        }
        assert!(clearly_true(&Literal::Int(1)));
        assert!(!clearly_true(&Literal::Int(0)));
        assert!(!clearly_true(&Literal::Unknown));
    }

    #[test]
    fn settings_that_desync_the_lexer_are_privileged() {
        let s = |v: &str| Literal::Str(v.into());
        for (name, value) in [
            ("standard_conforming_strings", s("off")),
            ("standard_conforming_strings", Literal::Bool(false)),
            ("standard_conforming_strings", Literal::Unknown),
            ("client_encoding", s("SJIS")),
            ("client_encoding", s("Shift_JIS")),
            ("client_encoding", s("win-932")),
            ("client_encoding", s("GBK")),
            ("client_encoding", s("big5")),
            ("client_encoding", s("GB18030")),
            ("client_encoding", s("UHC")),
            ("client_encoding", s("johab")),
            ("client_encoding", Literal::Other),
        ] {
            assert_eq!(
                assignment(name, &value).class,
                StatementClass::Privileged,
                "{name} = {value:?}"
            );
        }
        for (name, value) in [
            ("standard_conforming_strings", s("on")),
            ("client_encoding", s("UTF8")),
            ("client_encoding", s("unicode")),
            ("client_encoding", s("LATIN1")),
            ("client_encoding", s("EUC_JP")),
            ("client_encoding", s("WIN1252")),
        ] {
            assert_eq!(
                assignment(name, &value).class,
                StatementClass::Session,
                "{name} = {value:?}"
            );
        }
    }
}
