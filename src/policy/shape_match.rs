//! Whether a text fits a shape key already known, checked along the key.
//!
//! A session that repeats one statement with new values (the simple
//! protocol, client-side interpolation) would otherwise lex every text into
//! a new key only to find it equal to one it already has. Here the text is
//! walked along the remembered key: the key's kept bytes must be the text's
//! bytes, and at each constant marker the text must hold one constant token
//! of that kind, read by the same functions `shape::lexed_key` reads it
//! with (their checks on the bytes before and after it are implied by
//! those bytes being the remembered text's, and made anyway). Inside a new string
//! constant, the words that keep a text out of the shape cache and `$n`
//! parameter references are refused; the kept bytes are the remembered
//! text's, which had neither.
//!
//! Owns: that check. Must never: accept a text whose own lexed key differs
//! from the key, or that `Classifier::literal_shape` would decline (tests
//! below and a debug assertion at the caller hold it to that).

use super::shape::{eligible, ident_byte, number_end, string_end, NUMBER, STRING};

/// Whether `sql`'s lexed shape key is `key` (a key `lexed_key` produced
/// for a text with at least one constant and no `$n` parameter), and
/// `sql` is eligible for the shape cache.
pub fn fits(sql: &str, key: &str) -> bool {
    let (b, k) = (sql.as_bytes(), key.as_bytes());
    let Some((&0, mut k)) = k.split_first() else {
        return false;
    };
    let mut i = 0usize;
    let mut constants = 0usize;
    loop {
        // In such a key every `$` starts a marker (the lexer gives up on
        // any other `$` outside a string constant).
        let next = memchr::memchr(b'$', k);
        let kept = &k[..next.unwrap_or(k.len())];
        if b.get(i..i + kept.len()) != Some(kept) {
            return false;
        }
        i += kept.len();
        let Some(at) = next else {
            return i == b.len() && constants > 0;
        };
        let marker = &k[at..(at + 2).min(k.len())];
        let end = if marker == NUMBER.as_bytes() {
            number(b, i)
        } else if marker == STRING.as_bytes() {
            string(sql, i)
        } else {
            None
        };
        let Some(end) = end else {
            return false;
        };
        i = end;
        constants += 1;
        k = &k[at + 2..];
    }
}

/// The end of the numeric constant `lexed_key` reads at `i`, if it reads one.
fn number(b: &[u8], i: usize) -> Option<usize> {
    // After an identifier byte the digits are part of the identifier.
    if !b.get(i).is_some_and(u8::is_ascii_digit) || (i > 0 && ident_byte(b[i - 1])) {
        return None;
    }
    number_end(b, i)
}

/// The end of the plain string constant `lexed_key` reads at `i`, if it
/// reads one whose contents may be shared by shape.
fn string(sql: &str, i: usize) -> Option<usize> {
    let b = sql.as_bytes();
    if b.get(i) != Some(&b'\'') {
        return None;
    }
    let end = string_end(b, i)?;
    let contents = &b[i + 1..end - 1];
    let parameter = memchr::memchr_iter(b'$', contents)
        .any(|p| contents.get(p + 1).is_some_and(u8::is_ascii_digit));
    if parameter || !eligible(&sql[i + 1..end - 1]) {
        return None;
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::fits;
    use crate::policy::shape::lexed_key;
    use crate::policy::{corpus_all, Classifier};
    use proptest::prelude::*;

    /// What `fits` must agree with: the text's own key, when the
    /// classifier would answer it by shape.
    fn own_key(sql: &str) -> Option<String> {
        let mut k = String::new();
        Classifier::literal_shape(sql, &mut k).then_some(k)
    }

    /// `fits(sql, key)` exactly when `sql`'s own key is `key`.
    fn check(sql: &str, key: &str) {
        assert_eq!(
            fits(sql, key),
            own_key(sql).as_deref() == Some(key),
            "{sql:?} against {key:?}"
        );
    }

    #[test]
    fn new_values_fit_and_other_texts_do_not() {
        let key = lexed_key("SELECT abalance FROM pgbench_accounts WHERE aid = 17;").unwrap();
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4.25;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 17;",
        ] {
            assert!(fits(sql, &key), "{sql}");
            check(sql, &key);
        }
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = '42';",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1e5;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 0x1F;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1_000;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4.;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = ;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42 OR true;",
            "select abalance FROM pgbench_accounts WHERE aid = 42;",
        ] {
            assert!(!fits(sql, &key), "{sql}");
            check(sql, &key);
        }
    }

    #[test]
    fn pgbench_statements_fit_with_new_values() {
        let tpcb = |d: i64, a: u32, t: u32, b: u32| {
            [
                format!("UPDATE pgbench_accounts SET abalance = abalance + {d} WHERE aid = {a};"),
                format!("SELECT abalance FROM pgbench_accounts WHERE aid = {a};"),
                format!("UPDATE pgbench_tellers SET tbalance = tbalance + {d} WHERE tid = {t};"),
                format!("UPDATE pgbench_branches SET bbalance = bbalance + {d} WHERE bid = {b};"),
                format!("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({t}, {b}, {a}, {d}, CURRENT_TIMESTAMP);"),
            ]
        };
        // A negative delta keeps its sign outside the constant: pgbench's
        // TPC-B script has two shapes of each statement with a delta.
        for (first, next) in [
            (tpcb(-1234, 5678, 3, 1), tpcb(-4321, 99, 7, 2)),
            (tpcb(1234, 5678, 3, 1), tpcb(4321, 99, 7, 2)),
        ] {
            for (a, b) in first.iter().zip(&next) {
                let key = own_key(a).unwrap_or_else(|| panic!("no key: {a}"));
                assert!(fits(b, &key), "{b} against {key:?}");
            }
        }
        let negative = own_key(&tpcb(-1, 1, 1, 1)[0]).unwrap_or_default();
        assert!(!fits(&tpcb(1, 1, 1, 1)[0], &negative));
    }

    #[test]
    fn string_constants_follow_the_lexers_rules() {
        let key = lexed_key("UPDATE t SET note = 'a' WHERE id = 1").unwrap();
        for (sql, fit) in [
            ("UPDATE t SET note = 'it''s' WHERE id = 2", true),
            ("UPDATE t SET note = '' WHERE id = 2", true),
            ("UPDATE t SET note = 'h\u{e9}llo' WHERE id = 2", true),
            // Backslash escapes (standard_conforming_strings off).
            ("UPDATE t SET note = 'a\\' WHERE id = 2", false),
            // Words that keep a text out of the shape cache, anywhere.
            ("UPDATE t SET note = 'COPY' WHERE id = 2", false),
            ("UPDATE t SET note = 'please explain' WHERE id = 2", false),
            ("UPDATE t SET note = 'set_config' WHERE id = 2", false),
            // A parameter reference anywhere sends a text the other way.
            ("UPDATE t SET note = '$1' WHERE id = 2", false),
            ("UPDATE t SET note = '$x' WHERE id = 2", true),
            // Unterminated.
            ("UPDATE t SET note = 'a WHERE id = 2", false),
        ] {
            assert_eq!(fits(sql, &key), fit, "{sql}");
            check(sql, &key);
        }
        // A constant continued on the next line is one constant for
        // PostgreSQL; the lexer gives up on it, and so does `fits`.
        let key = lexed_key("SELECT 'a' ").unwrap();
        check("SELECT 'a' \n'b'", &key);
        assert!(!fits("SELECT 'a' \n'b'", &key));
        // Keys without a constant, or not lexed keys, never fit.
        assert!(!fits("BEGIN", "\0BEGIN"));
        assert!(!fits("SELECT 1", "SELECT $n"));
        assert!(!fits("SELECT 1", ""));
    }

    #[test]
    fn every_corpus_text_fits_its_own_key_and_no_other() {
        let keyed: Vec<(&str, String)> = corpus_all()
            .filter_map(|(sql, _)| own_key(sql).map(|k| (*sql, k)))
            .collect();
        assert!(
            keyed.len() > 50,
            "corpus texts with literals: {}",
            keyed.len()
        );
        for (sql, key) in &keyed {
            assert!(fits(sql, key), "{sql}");
        }
        for (sql, _) in corpus_all() {
            for (_, key) in keyed.iter().take(80) {
                check(sql, key);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn fits_agrees_with_the_texts_own_key(
            base in prop::sample::select(vec![
                "SELECT a FROM t WHERE id = 1 AND name = 'x'",
                "UPDATE t SET v = v + 5 WHERE id = 7;",
                "INSERT INTO h (a, b) VALUES (1, 'two')",
            ]),
            value in "[0-9a-zA-Z_.'\\\\$\" \n&;-]{0,12}",
        ) {
            // Put arbitrary bytes where a constant was: `fits` against the
            // base's key must say exactly what the text's own key says.
            let key = own_key(base).unwrap();
            for (at, _) in base.match_indices(|c: char| c.is_ascii_digit() || c == '\'') {
                let sql = format!("{}{}{}", &base[..at], value, &base[at + 1..]);
                check(&sql, &key);
            }
        }
    }
}
