//! The shape cache: classification results shared by texts that differ
//! only in literal values (`... WHERE aid = 17` and `... WHERE aid = 42`),
//! so simple-protocol applications that inline values do not pay a full
//! classification per statement.
//!
//! Soundness: a result is stored under its shape only when it cannot depend
//! on a literal value: every statement is `read` or `write`, none makes the
//! session writable, prepares, executes or deallocates, and the text
//! mentions none of the constructs whose class depends on a constant
//! (`set_config`, EXPLAIN options, COPY targets). A lookup by shape can
//! therefore only return what a full classification would.
//!
//! The shape key is the full text with every constant replaced, never a
//! hash. Two ways to compute it:
//! - [`lexed_key`], a single pass in Rust over texts made only of plain
//!   tokens: identifiers, `"quoted identifiers"`, `'strings'` without
//!   prefix, unsigned decimal numbers, operators and whitespace. Anything
//!   whose lexing PostgreSQL could read differently (comments, `$`,
//!   backslashes, `E''`/`U&`/`B''`/`X''` prefixes, `UESCAPE`, exponents,
//!   hexadecimal or underscored numbers, a number touching a letter or a
//!   dot) makes it give up. Within that language every replaced span is
//!   exactly one constant token for PostgreSQL's lexer, and everything else
//!   is kept byte for byte, so texts with one key have the same token
//!   stream up to constant values.
//! - PostgreSQL's own `normalize` for everything else (about 100× slower).
//!
//! Keys of the two kinds cannot collide: lexed keys start with a NUL byte,
//! which no text from the wire (NUL-terminated) and no normalized text has.
//!
//! Owns: eligibility, the shape key and the storage rule. Must never: store
//! a result whose class could change with a literal.

use super::{Classified, StatementClass};

/// Words whose presence anywhere in the text keeps it out of the shape cache.
pub(super) const EXCLUDED: &[&str] = &["set_config", "explain", "copy"];

/// Whether `sql` may be looked up (and stored) by shape: it mentions none
/// of [`EXCLUDED`] anywhere, in any letter case (one pass, no allocation).
/// Each pair of adjacent bytes is compared, lowercased, with the first two
/// letters of the words (`| 0x20` lowercases an ASCII letter and maps no
/// other byte to one); only where they match is the whole word compared.
pub fn eligible(sql: &str) -> bool {
    const SE: u16 = u16::from_le_bytes(*b"se");
    const EX: u16 = u16::from_le_bytes(*b"ex");
    const CO: u16 = u16::from_le_bytes(*b"co");
    let b = sql.as_bytes();
    !b.windows(2).enumerate().any(|(i, pair)| {
        let word: &[u8] = match u16::from_le_bytes([pair[0], pair[1]]) | 0x2020 {
            SE => EXCLUDED[0].as_bytes(),
            EX => EXCLUDED[1].as_bytes(),
            CO => EXCLUDED[2].as_bytes(),
            _ => return false,
        };
        b.get(i..i + word.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(word))
    })
}

/// Whether a classification result is independent of literal values.
pub fn storable(c: &Classified) -> bool {
    !c.statements.is_empty()
        && c.statements.iter().all(|s| {
            matches!(s.class, StatementClass::Read | StatementClass::Write)
                && !s.makes_writable
                && s.tx.is_none()
                && s.prepare_name.is_none()
                && s.execute_name.is_none()
                && s.deallocate.is_none()
        })
}

/// The shape key of `sql` given its lexed key if it has one (None when
/// neither way can compute one), and whether the text's own literals vary
/// under it: the key was the cheap, lexed one and replaced at least one
/// constant. Such texts are best looked up by shape alone; the others
/// (parameterized texts of the extended protocol, say) repeat verbatim and
/// are best kept by exact text.
pub fn key(sql: &str, lexed: Option<String>) -> Option<(String, bool)> {
    match lexed {
        Some(k) => {
            let v = varies(&k, sql);
            Some((k, v))
        }
        None => pg_query::normalize(sql).ok().map(|k| (k, false)),
    }
}

/// Whether the lexed key `key` of `sql` replaced at least one constant.
pub fn varies(key: &str, sql: &str) -> bool {
    key.get(1..) != Some(sql)
}

/// Marker of a numeric constant in a lexed key.
pub(super) const NUMBER: &str = "$n";
/// Marker of a string constant in a lexed key.
pub(super) const STRING: &str = "$s";

/// Identifier bytes (PostgreSQL: letters, digits, `_`, `$`, any byte ≥ 0x80),
/// by table: the lexer asks this for nearly every byte of a text.
const IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        c += 1;
    }
    t
};

#[inline]
pub(super) fn ident_byte(c: u8) -> bool {
    IDENT[c as usize]
}

/// Whether a string literal ending just before `rest` is continued by
/// another (`'a'` newline `'b'` is one constant for PostgreSQL).
fn continued(rest: &[u8]) -> bool {
    let ws = rest
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c'))
        .count();
    rest.get(ws) == Some(&b'\'') && rest[..ws].iter().any(|c| matches!(c, b'\n' | b'\r'))
}

/// The closing quote matching the opening quote `b[i]` (`'` or `"`; a
/// doubled quote inside stands for itself), or None when there is none or
/// `refused` comes first.
fn closing_quote(b: &[u8], i: usize, refused: u8) -> Option<usize> {
    let q = b[i];
    let mut j = i + 1;
    loop {
        match b.get(j) {
            None => return None,
            Some(&c) if c == q && b.get(j + 1) == Some(&q) => j += 2,
            Some(&c) if c == q => return Some(j),
            Some(&c) if c == refused => return None,
            Some(_) => j += 1,
        }
    }
}

/// The end of the plain string constant whose opening quote is `b[i]`, or
/// None where PostgreSQL could read it differently (a prefix, a backslash,
/// no closing quote, an identifier or a continuation right after it).
pub(super) fn string_end(b: &[u8], i: usize) -> Option<usize> {
    // A prefix (E, U&, B, X, N, a type name) changes the lexing.
    if i > 0 && (ident_byte(b[i - 1]) || b[i - 1] == b'&') {
        return None;
    }
    // A backslash is an escape if standard_conforming_strings is off.
    let j = closing_quote(b, i, b'\\')?;
    if b.get(j + 1).is_some_and(|&n| ident_byte(n)) || continued(&b[j + 1..]) {
        return None;
    }
    Some(j + 1)
}

/// The end of the unsigned decimal constant whose first digit is `b[i]`
/// (at the start of a token), or None where PostgreSQL could read it
/// differently (after a `.`, a `.` without digits, an exponent, a letter,
/// `_`, `.` or a quote right after it).
pub(super) fn number_end(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && b[i - 1] == b'.' {
        return None;
    }
    let digits = |mut j: usize| {
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        j
    };
    let mut j = digits(i);
    if b.get(j) == Some(&b'.') {
        if !b.get(j + 1).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        j = digits(j + 1);
    }
    if b.get(j)
        .is_some_and(|&n| ident_byte(n) || n == b'.' || n == b'\'')
    {
        return None;
    }
    Some(j)
}

/// The lexed shape key of `sql`, or None when the text is outside the
/// plain-token language (see the module documentation).
pub fn lexed_key(sql: &str) -> Option<String> {
    let mut key = String::with_capacity(sql.len() + 1);
    lexed_key_into(sql, &mut key).then_some(key)
}

/// [`lexed_key`] written into `key` (cleared first, its allocation
/// reused): whether the text is in the plain-token language. On `false`
/// `key` holds a partial key that must not be used.
pub fn lexed_key_into(sql: &str, key: &mut String) -> bool {
    let b = sql.as_bytes();
    key.clear();
    key.reserve(b.len() + 1);
    key.push('\0');
    let (mut i, mut kept) = (0usize, 0usize);
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let Some(end) = string_end(b, i) else {
                    return false;
                };
                key.push_str(&sql[kept..i]);
                key.push_str(STRING);
                i = end;
                kept = i;
            }
            b'"' => {
                if i > 0 && b[i - 1] == b'&' {
                    return false; // U&"..." (and its UESCAPE)
                }
                // Kept verbatim: must not look like a marker.
                let Some(j) = closing_quote(b, i, b'$') else {
                    return false;
                };
                if j == i + 1 {
                    return false; // zero-length delimited identifier
                }
                i = j + 1;
            }
            b'0'..=b'9' => {
                let Some(end) = number_end(b, i) else {
                    return false;
                };
                key.push_str(&sql[kept..i]);
                key.push_str(NUMBER);
                i = end;
                kept = i;
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // A parameter ($1): kept verbatim, unlike the markers.
                if i > 0 && ident_byte(b[i - 1]) {
                    return false;
                }
                let start = i + 1;
                i = start;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                // (more digits than an int32 holds: PostgreSQL refuses it)
                if i - start > 9
                    || b.get(i)
                        .is_some_and(|&n| ident_byte(n) || n == b'.' || n == b'\'')
                {
                    return false;
                }
            }
            b'\\' | b'$' | 0 => return false,
            b'-' if b.get(i + 1) == Some(&b'-') => return false,
            b'/' if b.get(i + 1) == Some(&b'*') => return false,
            _ if ident_byte(c) => {
                // A whole identifier or keyword: digits inside stay.
                while i < b.len() && ident_byte(b[i]) {
                    if b[i] == b'$' {
                        return false;
                    }
                    i += 1;
                }
                if b.get(i).is_some_and(|&n| n == b'\'' || n == b'"') {
                    return false;
                }
            }
            _ => i += 1,
        }
    }
    key.push_str(&sql[kept..]);
    true
}

#[cfg(test)]
mod tests {
    use super::super::{corpus_all, Classifier, PolicyExtensions};
    use super::lexed_key;
    use pg_query::protobuf::Token;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// The key PostgreSQL's own lexer implies: every numeric constant token
    /// replaced by `$n`, every plain string constant by `$s`, everything
    /// else (including the gaps between tokens) verbatim.
    fn key_by_postgres(sql: &str) -> Option<String> {
        let scan = pg_query::scan(sql).ok()?;
        let mut key = String::from("\0");
        let mut at = 0usize;
        for t in &scan.tokens {
            let (start, end) = (t.start as usize, t.end as usize);
            key.push_str(&sql[at..start]);
            let kind = Token::try_from(t.token).ok()?;
            match kind {
                Token::Iconst | Token::Fconst => key.push_str("$n"),
                Token::Sconst => key.push_str("$s"),
                _ => key.push_str(&sql[start..end]),
            }
            at = end;
        }
        key.push_str(&sql[at..]);
        Some(key)
    }

    /// What the policy reads of a classification.
    fn facts(
        x: &super::super::Classified,
    ) -> Vec<(super::super::StatementClass, bool, Vec<String>, bool)> {
        x.statements
            .iter()
            .map(|s| {
                (
                    s.class,
                    s.makes_writable,
                    s.tables_written.clone(),
                    s.ledger_only_write,
                )
            })
            .collect()
    }

    /// `sql` with every constant token replaced by another value.
    fn other_literals(sql: &str) -> Option<String> {
        let scan = pg_query::scan(sql).ok()?;
        let mut out = String::new();
        let mut at = 0usize;
        for t in &scan.tokens {
            let (start, end) = (t.start as usize, t.end as usize);
            out.push_str(&sql[at..start]);
            match Token::try_from(t.token).ok()? {
                Token::Iconst => out.push_str("987"),
                Token::Fconst => out.push_str("6.5"),
                Token::Sconst => out.push_str("'other value'"),
                _ => out.push_str(&sql[start..end]),
            }
            at = end;
        }
        out.push_str(&sql[at..]);
        Some(out)
    }

    #[test]
    fn lexed_keys_match_postgres_lexer_on_the_corpus() {
        let mut lexed = 0;
        for (sql, _) in corpus_all() {
            if let Some(k) = lexed_key(sql) {
                lexed += 1;
                assert_eq!(Some(k), key_by_postgres(sql), "{sql}");
            }
        }
        assert!(
            lexed > 200,
            "most corpus statements have a lexed key ({lexed})"
        );
    }

    #[test]
    fn eligibility_excludes_the_words_anywhere_in_any_case() {
        for sql in [
            "EXPLAIN SELECT 1",
            "explain analyze select 1",
            "SELECT Set_Config('a', 'b', false)",
            "COPY t TO STDOUT",
            "select 1 from xcopy",
            "SELECT 'ExPlAiN'",
            "SELECT 1; copy",
        ] {
            assert!(!super::eligible(sql), "{sql}");
        }
        for sql in [
            "",
            "s",
            "SELECT 1",
            "SELECT cop, expla, set_confi FROM t",
            "SELECT \u{e9}xplain",
            "se",
            "co",
        ] {
            assert!(super::eligible(sql), "{sql}");
        }
    }

    #[test]
    fn lexed_key_gives_up_on_tokens_postgres_reads_differently() {
        for sql in [
            "SELECT E'\\''",
            "SELECT e'x'",
            "SELECT U&\"d!0061ta\" UESCAPE '!'",
            "SELECT U&'d!0061' UESCAPE '!'",
            "SELECT $$x$$",
            "SELECT $1a",
            "SELECT $1.5",
            "SELECT a$1",
            "SELECT a$b FROM t",
            "SELECT \"a$n\" FROM t",
            "SELECT 1e5",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT .5",
            "SELECT 5.",
            "SELECT 123abc",
            "SELECT 1 -- comment",
            "SELECT /* comment */ 1",
            "SELECT B'01'",
            "SELECT X'ff'",
            "SELECT N'x'",
            "SELECT date'2020-01-01'",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT 'a'\n'b'",
            "SELECT 'a\\'",
            "SELECT 5'x'",
            "SELECT 'x'y",
        ] {
            assert_eq!(lexed_key(sql), None, "{sql}");
        }
    }

    #[test]
    fn lexed_keys_replace_constants_and_keep_everything_else() {
        let k = |s: &str| lexed_key(s).expect(s);
        assert_eq!(
            k("SELECT abalance FROM pgbench_accounts WHERE aid = 17;"),
            k("SELECT abalance FROM pgbench_accounts WHERE aid = 424242;")
        );
        assert_eq!(k("SELECT 'it''s', 1.5"), k("SELECT '', 99999999999"));
        assert_eq!(k("SELECT 'a' 'b'"), "\0SELECT $s $s");
        assert_eq!(k("SELECT $1 + 5, $12"), "\0SELECT $1 + $n, $12");
        assert_eq!(
            super::key("SELECT $1", lexed_key("SELECT $1")).map(|x| x.1),
            Some(false)
        );
        assert_eq!(
            super::key("SELECT 1", lexed_key("SELECT 1")).map(|x| x.1),
            Some(true)
        );
        assert_eq!(
            super::key("SELECT 1e5", lexed_key("SELECT 1e5")).map(|x| x.1),
            Some(false)
        );
        assert_ne!(k("SELECT * FROM t1"), k("SELECT * FROM t2"));
        assert_ne!(k("SELECT * FROM \"t1\""), k("SELECT * FROM \"t2\""));
        assert_ne!(k("SELECT x - 1"), k("SELECT x -1"));
        assert_ne!(k("SELECT 1"), k("SELECT '1'"));
        assert_eq!(
            k("SELECT \"it's 1\" FROM é1"),
            "\0SELECT \"it's 1\" FROM é1"
        );
    }

    #[test]
    fn texts_differing_in_literals_classify_like_a_full_classification() {
        let c = Classifier::new(&PolicyExtensions::default());
        for (sql, _) in corpus_all() {
            let Some(other) = other_literals(sql) else {
                continue;
            };
            c.classify(sql);
            assert_eq!(
                facts(&c.classify(&other)),
                facts(&c.classify_uncached(&other)),
                "{sql}  →  {other}"
            );
        }
    }

    /// Pieces whose concatenations exercise every boundary rule.
    const PIECES: &[&str] = &[
        "SELECT",
        " ",
        "\n",
        "$2",
        "$10",
        "\t",
        "a",
        "t1",
        "x_2",
        "é",
        "int",
        "date",
        "E",
        "U",
        "B",
        "X",
        "N",
        "1",
        "42",
        "1.5",
        "5.",
        ".5",
        "1e5",
        "0x1F",
        "1_000",
        "99999999999",
        "'s'",
        "'it''s'",
        "''",
        "'",
        "\"",
        "\"q\"",
        "\"a b\"",
        "\"x$n\"",
        "$1",
        "$$",
        "$",
        "-",
        "--",
        "/*",
        "*/",
        "+",
        "=",
        "::",
        "(",
        ")",
        ",",
        ";",
        ".",
        "&",
        "\\",
        "UESCAPE",
        "'a'\n'b'",
        "*",
        "<",
        ">",
        "!",
        "%",
        "^",
        "|",
        "#",
        "@",
        "~",
        "`",
        "?",
        "[",
        "]",
        ":",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// Whenever the lexed key exists, PostgreSQL's lexer agrees with it
        /// token for token.
        #[test]
        fn lexed_key_agrees_with_postgres_lexer(
            picks in proptest::collection::vec(0..PIECES.len(), 1..14)
        ) {
            let sql: String = picks.iter().map(|&i| PIECES[i]).collect();
            if let Some(k) = lexed_key(&sql) {
                prop_assert_eq!(Some(k), key_by_postgres(&sql), "{:?}", sql);
            }
        }
    }

    #[test]
    fn texts_differing_in_literals_share_a_result() {
        let c = Classifier::new(&PolicyExtensions::default());
        let a = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 17;");
        let b = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 42;");
        assert!(
            Arc::ptr_eq(&a, &b),
            "second text answered from the shape cache"
        );
        let x = c.classify("UPDATE t SET v = v + 5 WHERE id = 1");
        let y = c.classify("UPDATE t SET v = v + 9 WHERE id = 2");
        assert!(Arc::ptr_eq(&x, &y));
    }

    #[test]
    fn literal_dependent_statements_are_never_shared() {
        let c = Classifier::new(&PolicyExtensions::default());
        let a = c.classify("SELECT set_config('application_name', 'x', false)");
        let b = c.classify("SELECT set_config('default_transaction_read_only', 'off', false)");
        assert!(!a.statements[0].makes_writable);
        assert!(b.statements[0].makes_writable);
        let r = c.classify("BEGIN READ ONLY");
        let w = c.classify("BEGIN READ WRITE");
        assert!(!r.statements[0].makes_writable && w.statements[0].makes_writable);
        let s1 = c.classify("SET default_transaction_read_only = on");
        let s2 = c.classify("SET default_transaction_read_only = off");
        assert!(!s1.statements[0].makes_writable && s2.statements[0].makes_writable);
    }

    #[test]
    fn cached_answers_equal_full_classification_over_the_corpus() {
        let c = Classifier::new(&PolicyExtensions::default());
        for _ in 0..2 {
            for (sql, _) in corpus_all() {
                let cached = c.classify(sql);
                let full = c.classify_uncached(sql);
                assert_eq!(facts(&cached), facts(&full), "{sql}");
            }
        }
    }
}
