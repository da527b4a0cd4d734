//! Per-session maps of protocol-level names (prepared statements, portals).
//!
//! Owns: lookup by the name bytes a client sent. Most drivers use the
//! unnamed statement and portal for almost every query (pgbench, JDBC below
//! its prepare threshold, psycopg, sqlx one-off queries): that one lives in
//! its own slot, so the hot path neither hashes nor allocates a key.

use std::collections::HashMap;

/// Values by protocol name; the empty name is the unnamed slot.
pub struct Names<T> {
    unnamed: Option<T>,
    named: HashMap<Vec<u8>, T>,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names {
            unnamed: None,
            named: HashMap::new(),
        }
    }
}

impl<T> Names<T> {
    /// The value under `name`.
    pub fn get(&self, name: &[u8]) -> Option<&T> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    /// Set `name` to `value` (replacing what it held).
    pub fn insert(&mut self, name: &[u8], value: T) {
        if name.is_empty() {
            self.unnamed = Some(value);
        } else {
            self.named.insert(name.to_vec(), value);
        }
    }

    /// Forget `name`; the value it held.
    pub fn remove(&mut self, name: &[u8]) -> Option<T> {
        if name.is_empty() {
            self.unnamed.take()
        } else {
            self.named.remove(name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn unnamed_and_named_are_separate() {
        let mut n = Names::default();
        assert_eq!(n.get(b""), None);
        n.insert(b"", 1);
        n.insert(b"s1", 2);
        assert_eq!(n.get(b""), Some(&1));
        assert_eq!(n.get(b"s1"), Some(&2));
        n.insert(b"", 3);
        assert_eq!(n.remove(b""), Some(3));
        assert_eq!(n.get(b""), None);
        assert_eq!(n.get(b"s1"), Some(&2));
        assert_eq!(n.remove(b"s1"), Some(2));
        assert_eq!(n.remove(b"s1"), None);
    }
}
