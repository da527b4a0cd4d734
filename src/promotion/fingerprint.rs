//! Canonical fingerprints of migrations.
//!
//! A statement's fingerprint is the SHA-256 of its parse tree (PostgreSQL's
//! own parser, via pg_query) with every source location removed: whitespace,
//! comments and keyword case never change it, while identifiers and literal
//! values do (`DEFAULT 5` and `DEFAULT 6` are different migrations). A
//! migration's fingerprint is the SHA-256 of its ddl statements'
//! fingerprints in order.
//!
//! Owns: fingerprinting. Must never: perform IO.

use serde_json::Value;
use sha2::{Digest, Sha256};

fn strip_locations(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|k, _| k != "location" && k != "stmt_location" && k != "stmt_len");
            for x in map.values_mut() {
                strip_locations(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_locations),
        _ => {}
    }
}

/// Fingerprints of every statement of `sql`, in order; `None` when the
/// text cannot be parsed.
pub fn statement_fingerprints(sql: &str) -> Option<Vec<String>> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let node = raw.stmt.as_ref()?.node.as_ref()?;
        let mut v = serde_json::to_value(node).ok()?;
        strip_locations(&mut v);
        let bytes = serde_json::to_vec(&v).ok()?;
        out.push(hex::encode(Sha256::digest(&bytes)));
    }
    Some(out)
}

/// The fingerprint of a migration made of these statement fingerprints.
pub fn migration_fingerprint(stmts: &[String]) -> String {
    let mut h = Sha256::new();
    for s in stmts {
        h.update(s.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// The short form shown to people (12 hex digits).
pub fn short(fp: &str) -> &str {
    fp.get(..12).unwrap_or(fp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_comments_and_keyword_case_do_not_matter() {
        let a = statement_fingerprints("CREATE TABLE t (id int PRIMARY KEY, n text DEFAULT 'x')")
            .unwrap();
        let b = statement_fingerprints(
            "-- add t\ncreate   table T (\n  id INT primary key, /* name */ n TEXT default 'x'\n);",
        )
        .unwrap();
        assert_eq!(a, b);
        let c = statement_fingerprints("CREATE TABLE t (id int PRIMARY KEY, n text DEFAULT 'y')")
            .unwrap();
        assert_ne!(a, c, "literal values are part of the migration");
        let d = statement_fingerprints("CREATE TABLE u (id int PRIMARY KEY, n text DEFAULT 'x')")
            .unwrap();
        assert_ne!(a, d);
        assert!(statement_fingerprints("CREATE TABLE (").is_none());
    }

    #[test]
    fn migration_fingerprint_is_ordered() {
        let x = vec!["a".to_string(), "b".to_string()];
        let y = vec!["b".to_string(), "a".to_string()];
        assert_ne!(migration_fingerprint(&x), migration_fingerprint(&y));
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
    }
}
