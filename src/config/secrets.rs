//! Resolving upstream secrets from environment variables or files.
//!
//! Owns: reading secret values. Must never: log or display a secret value.

use std::path::{Path, PathBuf};

use super::model::UpstreamUser;

/// A secret reference that cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The variable is not set.
    #[error("environment variable {0} (password_env of upstream user {1}) is not set")]
    MissingEnv(String, String),
    /// The file cannot be read.
    #[error("cannot read password_file {0} of upstream user {1}: {2}")]
    File(PathBuf, String, std::io::Error),
}

/// The password of an upstream user; `None` when the user has no secret
/// (trust authentication upstream).
pub fn resolve_secret(u: &UpstreamUser, base: &Path) -> Result<Option<String>, SecretError> {
    if let Some(var) = &u.password_env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| SecretError::MissingEnv(var.clone(), u.user.clone()));
    }
    if let Some(file) = &u.password_file {
        let path = if file.is_absolute() {
            file.clone()
        } else {
            base.join(file)
        };
        warn_if_world_readable(&path);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| SecretError::File(path.clone(), u.user.clone(), e))?;
        return Ok(Some(text.lines().next().unwrap_or("").to_string()));
    }
    Ok(None)
}

fn warn_if_world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                file = %path.display(),
                "secret file is world-readable; fix: chmod 600"
            );
        }
    }
}
