//! The quickstart's files: atomic writes with explicit modes, generated
//! passwords that survive restarts (upstream password files, the identity
//! password store), the small state file, and URL encoding.
//!
//! Owns: reading and writing files under the quickstart directory. May use:
//! serde_json, rand. Must never: log a secret, or write a secret with a mode
//! other than 0600.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};

/// Length of generated passwords (alphanumeric: URL- and conninfo-safe).
pub const PASSWORD_LEN: usize = 24;

/// A file-level failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not the JSON we wrote.
    #[error("{}: not valid quickstart JSON ({source}); delete it to regenerate", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A random alphanumeric password.
pub fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), PASSWORD_LEN)
}

/// Write `contents` to `path` with `mode`, atomically (temporary sibling +
/// rename), so a reader never sees a half-written file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = tmp_sibling(path);
    let _ = fs::remove_file(&tmp);
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// [`write_atomic`] with mode 0600.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic(path, contents, 0o600)
}

/// `path` with `.tmp` appended to its file name.
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The password in `path` (first line), or a new one written there (0600).
pub fn load_or_create_password(path: &Path) -> Result<String, FileError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let pw = text.lines().next().unwrap_or("").trim().to_string();
            if !pw.is_empty() {
                return Ok(pw);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let pw = random_password();
    write_secret_file(path, format!("{pw}\n").as_bytes()).map_err(io(path))?;
    Ok(pw)
}

/// Identity passwords: role/identity name → environment → password.
pub type IdentityPasswords = BTreeMap<String, BTreeMap<String, String>>;

/// Load the identity password store, add a password for every missing
/// (identity, environment) pair, and write it back (0600) when it changed.
pub fn load_or_create_identity_passwords(
    path: &Path,
    identities: &[&str],
    envs: &[&str],
) -> Result<IdentityPasswords, FileError> {
    let mut store: IdentityPasswords = match fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw).map_err(|source| FileError::Json {
            path: path.to_path_buf(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(io(path)(e)),
    };
    let mut changed = false;
    for id in identities {
        let per_env = store.entry((*id).to_string()).or_default();
        for env in envs {
            if per_env.get(*env).is_none_or(|p| p.is_empty()) {
                per_env.insert((*env).to_string(), random_password());
                changed = true;
            }
        }
    }
    if changed {
        let text = serde_json::to_vec_pretty(&store).map_err(|source| FileError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        write_secret_file(path, &text).map_err(io(path))?;
    }
    Ok(store)
}

/// Non-secret state kept between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Port of the throwaway cluster (kept stable across restarts).
    pub pg_port: Option<u16>,
}

/// Read the state file; missing or unreadable → default state.
pub fn load_state(path: &Path) -> State {
    fs::read(path)
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .unwrap_or_default()
}

/// Write the state file (0644).
pub fn save_state(path: &Path, state: &State) -> Result<(), FileError> {
    let text = serde_json::to_vec_pretty(state).map_err(|source| FileError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &text, 0o644).map_err(io(path))
}

/// Percent-encode everything but RFC 3986 unreserved characters (for the
/// user and password parts of a `postgres://` URL).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A TOML basic string literal for `s` (double-quoted, escaped).
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A single-quoted SQL string literal for `s`.
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn secret_files_are_owner_only_and_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("s.password");
        write_secret_file(&p, b"one").unwrap();
        write_secret_file(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o600);
        assert!(!tmp_sibling(&p).exists());
    }

    #[test]
    fn passwords_survive_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("tw_dev_ro.password");
        let first = load_or_create_password(&p).unwrap();
        assert_eq!(first.len(), PASSWORD_LEN);
        assert!(first.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(load_or_create_password(&p).unwrap(), first);
        assert_eq!(mode(&p), 0o600);
    }

    #[test]
    fn identity_store_fills_gaps_and_keeps_existing() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("identities.json");
        let a = load_or_create_identity_passwords(&p, &["auditor"], &["dev"]).unwrap();
        let b = load_or_create_identity_passwords(&p, &["auditor", "dev_user"], &["dev", "prod"])
            .unwrap();
        assert_eq!(a["auditor"]["dev"], b["auditor"]["dev"]);
        assert_eq!(b.len(), 2);
        assert_eq!(b["dev_user"].len(), 2);
        assert_ne!(b["auditor"]["dev"], b["auditor"]["prod"]);
        assert_eq!(mode(&p), 0o600);
        let c = load_or_create_identity_passwords(&p, &["auditor", "dev_user"], &["dev", "prod"])
            .unwrap();
        assert_eq!(b, c);
    }

    #[test]
    fn corrupt_identity_store_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("identities.json");
        fs::write(&p, "{not json").unwrap();
        assert!(matches!(
            load_or_create_identity_passwords(&p, &["a"], &["dev"]),
            Err(FileError::Json { .. })
        ));
    }

    #[test]
    fn state_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("state.json");
        assert_eq!(load_state(&p), State::default());
        save_state(
            &p,
            &State {
                pg_port: Some(41234),
            },
        )
        .unwrap();
        assert_eq!(load_state(&p).pg_port, Some(41234));
    }

    #[test]
    fn encoding_helpers() {
        assert_eq!(percent_encode("a-b_c.d~9"), "a-b_c.d~9");
        assert_eq!(percent_encode("p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
        let tricky = "C:\\x \"y\"\n\u{1}";
        assert_eq!(toml_string(tricky), r#""C:\\x \"y\"\n\u0001""#);
        let parsed: toml::Table = toml::from_str(&format!("k = {}", toml_string(tricky))).unwrap();
        assert_eq!(parsed["k"].as_str(), Some(tricky));
        assert_eq!(sql_literal("it's"), "'it''s'");
    }
}
