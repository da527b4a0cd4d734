//! The shape cache: classification results shared by texts that differ
//! only in literal values (`... WHERE aid = 17` and `... WHERE aid = 42`),
//! so simple-protocol applications that inline values do not pay a full
//! classification per statement.
//!
//! Soundness: a result is stored under its shape (PostgreSQL's own
//! `normalize`: every constant replaced by `$n`, everything else kept
//! verbatim, so the key is the full structure, not a hash) only when it
//! cannot depend on a literal value: every statement is `read` or `write`,
//! none makes the session writable, prepares, executes or deallocates,
//! and the text mentions none of the constructs whose class depends on a
//! constant (`set_config`, EXPLAIN options, COPY targets). A lookup by
//! shape can therefore only return what a full classification would.
//!
//! Owns: eligibility and the storage rule. Must never: store a result whose
//! class could change with a literal.

use super::{Classified, StatementClass};

/// Words whose presence anywhere in the text keeps it out of the shape cache.
const EXCLUDED: &[&str] = &["set_config", "explain", "copy"];

/// Whether `sql` may be looked up (and stored) by shape.
pub fn eligible(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    !EXCLUDED.iter().any(|w| lower.contains(w))
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

/// The shape key of `sql` (None when PostgreSQL's normalizer rejects it).
pub fn key(sql: &str) -> Option<String> {
    pg_query::normalize(sql).ok()
}

#[cfg(test)]
mod tests {
    use super::super::{corpus_all, Classifier, PolicyExtensions};
    use std::sync::Arc;

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
                let key = |x: &super::super::Classified| {
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
                        .collect::<Vec<_>>()
                };
                assert_eq!(key(&cached), key(&full), "{sql}");
            }
        }
    }
}
