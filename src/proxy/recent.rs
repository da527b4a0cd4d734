//! The statements a session sent last, with their classification.
//!
//! Drivers send the same few texts over and over (an unnamed Parse of the
//! same query per request, a `BEGIN`, a `COMMIT`). A hit here costs a
//! length compare and a `memcmp`, where the classifier's shared cache
//! costs a UTF-8 check, a copy of the text, a hash, a lock and an LRU
//! update. Texts with inline literals (the simple protocol) never repeat
//! verbatim: they are remembered by their shape key instead (the same key
//! the classifier's shape cache uses), so a session repeating one
//! statement with new values pays the key, not the shared lookup.
//! Owns: that small per-session memory. Must never: outlive the session's
//! classifier (a reload gives new sessions a new one; this memory belongs
//! to one session and one classifier), or remember under a shape key a
//! result the classifier does not share by shape.

use std::sync::Arc;

use crate::policy::{Classified, Classifier};

/// How many texts a session remembers.
const SLOTS: usize = 8;
/// How many shape keys a session remembers: a transaction's statements
/// should fit (pgbench's TPC-B script alone has nine shapes: a negative
/// value keeps its sign outside the constant), since replacement is
/// round-robin and a cycle longer than the slots would always miss.
const SHAPE_SLOTS: usize = 16;
/// Longest shape key a session keeps (longer ones ask the shared cache).
const MAX_SHAPE_KEY: usize = 1024;

/// A remembered shape key and the classification it shares.
struct Shape {
    key: Box<str>,
    /// End of the key's kept bytes before its first constant marker
    /// (they start after the key's leading NUL): every text of this shape
    /// starts with them, so one short compare rejects most other shapes.
    lead: usize,
    classified: Arc<Classified>,
}

impl Shape {
    fn new(key: &str, classified: Arc<Classified>) -> Shape {
        let kept = key.as_bytes().get(1..).unwrap_or_default();
        Shape {
            key: Box::from(key),
            lead: 1 + memchr::memchr(b'$', kept).unwrap_or(kept.len()),
            classified,
        }
    }

    /// Whether `text` has this shape (see `Classifier::fits_shape`).
    fn fits(&self, text: &str) -> bool {
        let lead = self.key.as_bytes().get(1..self.lead).unwrap_or_default();
        text.as_bytes().starts_with(lead) && Classifier::fits_shape(text, &self.key)
    }
}

/// A session's recently classified texts and shapes (round-robin
/// replacement).
#[derive(Default)]
pub struct Recent {
    slots: [Option<(Arc<str>, Arc<Classified>)>; SLOTS],
    next: usize,
    shapes: [Option<Shape>; SHAPE_SLOTS],
    next_shape: usize,
    /// The shape key of the text being classified (allocation reused).
    key: String,
}

impl Recent {
    /// The remembered text equal to `text` and its classification.
    pub fn get(&self, text: &[u8]) -> Option<(&Arc<str>, &Arc<Classified>)> {
        self.slots
            .iter()
            .flatten()
            .find_map(|(t, c)| (t.len() == text.len() && t.as_bytes() == text).then_some((t, c)))
    }

    /// Remember `text` (replacing the oldest entry when full).
    pub fn put(&mut self, text: Arc<str>, classified: Arc<Classified>) {
        self.slots[self.next] = Some((text, classified));
        self.next = (self.next + 1) % SLOTS;
    }

    /// Classify a text [`Recent::get`] did not find, and remember it: a
    /// text with inline literals under its shape key when the classifier
    /// shares its result by shape, any other text verbatim.
    pub fn classify(&mut self, text: &Arc<str>, classifier: &Classifier) -> Arc<Classified> {
        // New values in a remembered shape: checked along its key, without
        // lexing a key of its own.
        let fit = self.shapes.iter().flatten().find(|s| s.fits(text));
        if let Some(shape) = fit {
            debug_assert!(
                Classifier::literal_shape(text, &mut self.key) && *self.key == *shape.key,
                "{text:?} fits {:?} but its own key is {:?}",
                shape.key,
                self.key
            );
            return Arc::clone(&shape.classified);
        }
        if !Classifier::literal_shape(text, &mut self.key) {
            let c = classifier.classify_verbatim(text);
            self.put(Arc::clone(text), Arc::clone(&c));
            return c;
        }
        // No remembered key is this text's own: `fits` says exactly that
        // (shape_match's tests hold it to it), so ask the classifier.
        let key = self.key.as_str();
        let (c, by_shape) = classifier.classify_shape(text, key);
        if !by_shape {
            self.put(Arc::clone(text), Arc::clone(&c));
        } else if key.len() <= MAX_SHAPE_KEY {
            self.shapes[self.next_shape] = Some(Shape::new(key, Arc::clone(&c)));
            self.next_shape = (self.next_shape + 1) % SHAPE_SLOTS;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classified() -> Arc<Classified> {
        Arc::new(Vec::new().into())
    }

    #[test]
    fn remembers_the_last_texts_and_forgets_the_oldest() {
        let mut r = Recent::default();
        assert!(r.get(b"SELECT 1").is_none());
        for i in 0..SLOTS {
            r.put(Arc::from(format!("SELECT {i}")), classified());
        }
        assert!(r.get(b"SELECT 0").is_some());
        assert!(r.get(b"SELECT 00").is_none(), "same prefix, other text");
        r.put(Arc::from("SELECT x"), classified());
        assert!(r.get(b"SELECT 0").is_none(), "oldest replaced");
        assert!(r.get(b"SELECT 1").is_some());
        assert_eq!(r.get(b"SELECT x").map(|(t, _)| &**t), Some("SELECT x"));
    }

    #[test]
    fn the_lead_compare_never_hides_a_fitting_shape() {
        let classifier = Classifier::new(&Default::default());
        let mut r = Recent::default();
        // Shapes that share a long start, one that starts with a constant,
        // and pgbench's TPC-B-like statements (nine shapes with the signs).
        let texts = |v: i64| {
            [
                format!("UPDATE pgbench_accounts SET abalance = abalance + {v} WHERE aid = 3"),
                format!("UPDATE pgbench_tellers SET tbalance = tbalance + {v} WHERE tid = 4"),
                format!("UPDATE pgbench_branches SET bbalance = bbalance + {v} WHERE bid = 5"),
                format!(
                    "SELECT abalance FROM pgbench_accounts WHERE aid = {}",
                    v.abs()
                ),
                format!("{} = 1", v.abs()),
                format!("SELECT {} AS a", v.abs()),
                format!("SELECT {} AS b", v.abs()),
            ]
        };
        for sql in texts(7).iter().chain(texts(-7).iter()) {
            r.classify(&Arc::from(sql.as_str()), &classifier);
        }
        let held = shapes_held(&r);
        for sql in texts(123).iter().chain(texts(-456).iter()) {
            let c = r.classify(&Arc::from(sql.as_str()), &classifier);
            assert_eq!(
                c.statements,
                classifier.classify_uncached(sql).statements,
                "{sql}"
            );
            let fitting = r.shapes.iter().flatten().filter(|s| s.fits(sql)).count();
            let by_key = r
                .shapes
                .iter()
                .flatten()
                .filter(|s| Classifier::fits_shape(sql, &s.key))
                .count();
            assert_eq!(fitting, by_key, "{sql}");
        }
        assert_eq!(shapes_held(&r), held, "new values found their shapes");
    }

    fn shapes_held(r: &Recent) -> usize {
        r.shapes.iter().flatten().count()
    }

    #[test]
    fn literal_texts_are_remembered_by_shape_and_answer_like_the_classifier() {
        let classifier = Classifier::new(&Default::default());
        let mut r = Recent::default();
        let classify = |r: &mut Recent, sql: &str| {
            let c = r.classify(&Arc::from(sql), &classifier);
            let full = classifier.classify_uncached(sql);
            assert_eq!(c.statements, full.statements, "{sql}");
            c
        };
        let a = classify(&mut r, "UPDATE t SET v = v + 5 WHERE id = 1");
        let b = classify(&mut r, "UPDATE t SET v = v + 9 WHERE id = 2");
        assert!(Arc::ptr_eq(&a, &b), "one result per shape");
        assert_eq!(shapes_held(&r), 1);
        assert!(
            r.get(b"UPDATE t SET v = v + 5 WHERE id = 1").is_none(),
            "literal texts are not kept verbatim"
        );
        // Results that may depend on a literal are never kept by shape.
        classify(&mut r, "SET default_transaction_read_only = on");
        let off = classify(&mut r, "SET default_transaction_read_only = off");
        assert!(off.statements[0].makes_writable, "the value decides");
        assert_eq!(shapes_held(&r), 1);
        assert!(r.get(b"SET default_transaction_read_only = off").is_some());
        // Texts without literals are kept verbatim.
        classify(&mut r, "BEGIN");
        assert!(r.get(b"BEGIN").is_some());
        // SHAPE_SLOTS shapes at most, the oldest replaced.
        for i in 0..SHAPE_SLOTS {
            classify(&mut r, &format!("SELECT c{i} FROM t WHERE id = 7"));
        }
        assert_eq!(shapes_held(&r), SHAPE_SLOTS);
        assert!(!r.shapes.iter().flatten().any(|s| s.key.contains("UPDATE")));
    }
}
