//! The statements a session sent last, with their classification.
//!
//! Drivers send the same few texts over and over (an unnamed Parse of the
//! same query per request, a `BEGIN`, a `COMMIT`). A hit here costs a
//! length compare and a `memcmp`, where the classifier's shared cache
//! costs a UTF-8 check, a copy of the text, a hash, a lock and an LRU
//! update. Owns: that small per-session memory. Must never: outlive the
//! session's classifier (a reload gives new sessions a new one; this
//! memory belongs to one session and one classifier).

use std::sync::Arc;

use crate::policy::Classified;

/// How many texts a session remembers.
const SLOTS: usize = 8;

/// A session's recently classified texts (round-robin replacement).
#[derive(Default)]
pub struct Recent {
    slots: [Option<(Arc<str>, Arc<Classified>)>; SLOTS],
    next: usize,
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
}
