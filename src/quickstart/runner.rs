//! Who runs the throwaway cluster's programs, and the filesystem chores that
//! go with it.
//!
//! Owns: the rule "never run initdb/postgres as root" (as root, the programs
//! run as the `postgres` system user and the cluster directory is chowned to
//! it; any other user runs them as itself), the check that every parent
//! directory is traversable by that user, owner-only secret files, and the
//! scan of `/proc` for postmasters of a data directory. May use: nix (user
//! lookup, chown), std process and filesystem. Must never: change a parent
//! directory (it only reports one that is closed), or signal a process.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use super::cluster::ClusterError;

/// The unprivileged system user used when started as root.
pub const SYSTEM_USER: &str = "postgres";

/// The user the PostgreSQL programs run as.
#[derive(Debug, Clone)]
pub struct Runner {
    /// `Some` when we are root and switch to an unprivileged user.
    switch_to: Option<SwitchTo>,
}

#[derive(Debug, Clone)]
struct SwitchTo {
    name: String,
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

impl Runner {
    /// As root: the `postgres` system user (error when it does not exist).
    /// Otherwise: the current user.
    pub fn detect() -> Result<Runner, ClusterError> {
        if !Uid::effective().is_root() {
            return Ok(Runner { switch_to: None });
        }
        let user = User::from_name(SYSTEM_USER)
            .ok()
            .flatten()
            .ok_or(ClusterError::NoUnprivilegedUser)?;
        let groups = CString::new(user.name.clone())
            .ok()
            .and_then(|n| nix::unistd::getgrouplist(&n, user.gid).ok())
            .unwrap_or_else(|| vec![user.gid]);
        Ok(Runner {
            switch_to: Some(SwitchTo {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
                groups,
            }),
        })
    }

    /// Name of the user the programs run as (for messages).
    pub fn user_name(&self) -> String {
        match &self.switch_to {
            Some(s) => s.name.clone(),
            None => User::from_uid(Uid::effective())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| Uid::effective().to_string()),
        }
    }

    /// A command for `program` that runs as the runner, in `cwd`, with the
    /// libpq/PostgreSQL environment variables removed.
    pub fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(cwd);
        for var in [
            "PGDATA",
            "PGPORT",
            "PGHOST",
            "PGHOSTADDR",
            "PGUSER",
            "PGPASSWORD",
            "PGPASSFILE",
            "PGDATABASE",
            "PGOPTIONS",
            "PGSERVICE",
        ] {
            cmd.env_remove(var);
        }
        if let Some(s) = &self.switch_to {
            // std drops supplementary groups (setgroups(0)) before setuid.
            cmd.uid(s.uid.as_raw()).gid(s.gid.as_raw());
            cmd.env("HOME", cwd)
                .env("USER", &s.name)
                .env("LOGNAME", &s.name);
        }
        cmd
    }

    /// Give `path` to the runner (no-op when not switching users).
    pub fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some(s) = &self.switch_to {
            nix::unistd::chown(path, Some(s.uid), Some(s.gid)).map_err(|e| ClusterError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::from(e),
            })?;
        }
        Ok(())
    }

    /// Give `dir` and everything below it to the runner, when `dir` is not
    /// already the runner's (a cluster created by another user earlier).
    pub fn chown_tree(&self, dir: &Path) -> Result<(), ClusterError> {
        let Some(s) = &self.switch_to else {
            return Ok(());
        };
        let meta = fs::symlink_metadata(dir).map_err(|e| io_err(dir, e))?;
        if meta.uid() == s.uid.as_raw() && meta.gid() == s.gid.as_raw() {
            return Ok(());
        }
        chown_recursive(dir, s)
    }

    /// Fail with a clear message when the runner cannot enter every parent
    /// directory of `dir` (for example `/root` with mode 0700).
    pub fn check_traversable(&self, dir: &Path) -> Result<(), ClusterError> {
        let Some(s) = &self.switch_to else {
            return Ok(());
        };
        for ancestor in dir.ancestors().skip(1) {
            let meta = fs::metadata(ancestor).map_err(|e| io_err(ancestor, e))?;
            let mode = meta.permissions().mode();
            let ok = mode & 0o001 != 0
                || (meta.uid() == s.uid.as_raw() && mode & 0o100 != 0)
                || (s.groups.iter().any(|g| g.as_raw() == meta.gid()) && mode & 0o010 != 0);
            if !ok {
                return Err(ClusterError::NotTraversable {
                    dir: ancestor.to_path_buf(),
                    user: s.name.clone(),
                    mode: mode & 0o7777,
                });
            }
        }
        Ok(())
    }
}

fn chown_recursive(path: &Path, s: &SwitchTo) -> Result<(), ClusterError> {
    nix::unistd::chown(path, Some(s.uid), Some(s.gid))
        .map_err(|e| io_err(path, std::io::Error::from(e)))?;
    let meta = fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(|e| io_err(path, e))? {
            let entry = entry.map_err(|e| io_err(path, e))?;
            let child = entry.path();
            if entry
                .file_type()
                .map_err(|e| io_err(&child, e))?
                .is_symlink()
            {
                continue;
            }
            chown_recursive(&child, s)?;
        }
    }
    Ok(())
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> ClusterError {
    ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Pids of processes whose command line mentions `data_dir` (the
/// postmaster is started with `-D <data_dir>`). Linux only (`/proc`);
/// empty elsewhere.
pub fn postgres_pids_for(data_dir: &Path) -> Vec<i32> {
    let needle = data_dir.to_string_lossy().into_owned();
    let own = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    let args: Vec<String> = raw
                        .split(|b| *b == 0)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    let is_postgres = args
                        .first()
                        .map(|a| a.ends_with("postgres") || a.starts_with("postgres"))
                        .unwrap_or(false);
                    is_postgres && args.contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_postgres_for_an_unused_dir() {
        assert!(postgres_pids_for(Path::new("/nonexistent/tierwarden/data")).is_empty());
    }

    #[test]
    fn traversal_check_names_the_closed_directory() {
        let runner = Runner {
            switch_to: Some(SwitchTo {
                name: "nobody-test".into(),
                uid: Uid::from_raw(65_533),
                gid: Gid::from_raw(65_533),
                groups: vec![Gid::from_raw(65_533)],
            }),
        };
        let tmp = tempfile::tempdir().unwrap();
        let closed = tmp.path().join("closed");
        let inner = closed.join("inner");
        fs::create_dir_all(&inner).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        match runner.check_traversable(&inner) {
            Err(ClusterError::NotTraversable { dir, mode, .. }) => {
                assert_eq!(dir, closed);
                assert_eq!(mode, 0o700);
            }
            other => panic!("expected NotTraversable, got {other:?}"),
        }
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o711)).unwrap();
        assert!(runner.check_traversable(&inner).is_ok());
    }
}
