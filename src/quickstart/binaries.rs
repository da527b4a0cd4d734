//! Locating the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`).
//!
//! Owns: the search order (`TIERWARDEN_PG_BINDIR`, then `PATH`, then
//! `pg_config --bindir`, then `/usr/lib/postgresql/<version>/bin`, newest
//! version first) and the error that names the package to install. May use:
//! the filesystem and `pg_config` as a subprocess. Must never: start a
//! server or change a file.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The server programs the quickstart needs, all from one directory.
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Environment variable that overrides the search with one directory.
pub const BINDIR_ENV: &str = "TIERWARDEN_PG_BINDIR";

/// Why the server binaries could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    /// Nothing usable anywhere we looked.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in {searched}; \
         install the PostgreSQL server package (Debian/Ubuntu: `apt-get install postgresql`, \
         Fedora: `dnf install postgresql-server`, macOS: `brew install postgresql`) \
         or set {env} to the directory that holds initdb"
    )]
    NotFound {
        /// Human-readable list of the places searched.
        searched: String,
        /// The override variable's name.
        env: &'static str,
    },
    /// The override variable names a directory without the programs.
    #[error("{env}={dir} does not contain initdb, pg_ctl and postgres")]
    BadOverride {
        /// The override variable's name.
        env: &'static str,
        /// Its value.
        dir: String,
    },
}

/// A directory holding `initdb`, `pg_ctl` and `postgres`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// The directory (symlinks resolved).
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// Path of one program in the directory, e.g. `bin("initdb")`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
    /// `initdb`.
    pub fn initdb(&self) -> PathBuf {
        self.bin("initdb")
    }
    /// `pg_ctl`.
    pub fn pg_ctl(&self) -> PathBuf {
        self.bin("pg_ctl")
    }
    /// `postgres`.
    pub fn postgres(&self) -> PathBuf {
        self.bin("postgres")
    }
}

/// Find the server binaries: `TIERWARDEN_PG_BINDIR`, `PATH`,
/// `pg_config --bindir`, `/usr/lib/postgresql/*/bin` (newest first).
pub fn find_pg_binaries() -> Result<PgBinaries, BinariesError> {
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        let dir = PathBuf::from(dir);
        return complete_dir(&dir).ok_or_else(|| BinariesError::BadOverride {
            env: BINDIR_ENV,
            dir: dir.display().to_string(),
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = search_path(&path) {
        return Ok(found);
    }
    if let Some(found) = pg_config_bindir().and_then(|d| complete_dir(&d)) {
        return Ok(found);
    }
    if let Some(found) = search_debian_layout(Path::new("/usr/lib/postgresql")) {
        return Ok(found);
    }
    Err(BinariesError::NotFound {
        searched: "PATH, `pg_config --bindir` and /usr/lib/postgresql/*/bin".to_string(),
        env: BINDIR_ENV,
    })
}

/// The first `PATH` entry holding `initdb` whose real directory also holds
/// `pg_ctl` and `postgres`.
fn search_path(path: &OsStr) -> Option<PgBinaries> {
    std::env::split_paths(path).find_map(|dir| {
        let initdb = dir.join("initdb");
        if !is_executable(&initdb) {
            return None;
        }
        // /usr/local/bin/initdb may be a symlink into the real bindir.
        let real = std::fs::canonicalize(&initdb).ok()?;
        real.parent().and_then(complete_dir)
    })
}

/// `pg_config --bindir`, if pg_config runs.
fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.trim();
    (!line.is_empty()).then(|| PathBuf::from(line))
}

/// `<root>/<version>/bin`, highest version first.
fn search_debian_layout(root: &Path) -> Option<PgBinaries> {
    let mut versions: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = version_key(&name)?;
            Some((key, e.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().find_map(|(_, dir)| complete_dir(&dir))
}

/// "15" → [15], "9.6" → [9, 6]; anything else → None.
fn version_key(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|p| p.parse::<u64>().ok()).collect()
}

/// `dir` as binaries if it holds every required program.
fn complete_dir(dir: &Path) -> Option<PgBinaries> {
    let real = std::fs::canonicalize(dir).ok()?;
    REQUIRED
        .iter()
        .all(|p| is_executable(&real.join(p)))
        .then_some(PgBinaries { bindir: real })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_bindir(root: &Path, version: &str, programs: &[&str]) -> PathBuf {
        let dir = root.join(version).join("bin");
        std::fs::create_dir_all(&dir).unwrap();
        for p in programs {
            let f = dir.join(p);
            std::fs::write(&f, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    #[test]
    fn version_keys_order_numerically() {
        assert_eq!(version_key("15"), Some(vec![15]));
        assert_eq!(version_key("9.6"), Some(vec![9, 6]));
        assert_eq!(version_key("common"), None);
        assert!(version_key("16").unwrap() > version_key("9.6").unwrap());
    }

    #[test]
    fn debian_layout_prefers_newest_complete_version() {
        let tmp = tempfile::tempdir().unwrap();
        fake_bindir(tmp.path(), "9.6", &REQUIRED);
        let v15 = fake_bindir(tmp.path(), "15", &REQUIRED);
        // 17 is newest but incomplete (client package only).
        fake_bindir(tmp.path(), "17", &["psql"]);
        std::fs::create_dir_all(tmp.path().join("common")).unwrap();
        let found = search_debian_layout(tmp.path()).unwrap();
        assert_eq!(found.bindir, std::fs::canonicalize(v15).unwrap());
    }

    #[test]
    fn path_search_follows_symlinks_to_the_real_bindir() {
        let tmp = tempfile::tempdir().unwrap();
        let real = fake_bindir(tmp.path(), "15", &REQUIRED);
        let links = tmp.path().join("links");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(real.join("initdb"), links.join("initdb")).unwrap();
        let path = std::env::join_paths([tmp.path().join("nowhere"), links]).unwrap();
        let found = search_path(&path).unwrap();
        assert_eq!(found.bindir, std::fs::canonicalize(&real).unwrap());
        assert_eq!(found.initdb(), found.bindir.join("initdb"));
    }

    #[test]
    fn incomplete_dirs_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fake_bindir(tmp.path(), "15", &["initdb", "pg_ctl"]);
        assert_eq!(complete_dir(&dir), None);
        let path = std::env::join_paths([dir]).unwrap();
        assert_eq!(search_path(&path), None);
    }

    #[test]
    fn not_found_names_the_package() {
        let e = BinariesError::NotFound {
            searched: "PATH".into(),
            env: BINDIR_ENV,
        };
        assert!(e.to_string().contains("apt-get install postgresql"));
    }
}
