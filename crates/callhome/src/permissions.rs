//! The start-up check of the data directory and the secret files in it: the directory 0700,
//! every secret file 0600 (readable by its owner only). Loose permissions are a warning (the
//! files are tightened to 0600), or, with `security.strict_permissions`, a refusal to start
//! that names every offending path.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::server::{ADMIN_PASSWORD_FILE, CA_DIR, JWT_KEY_FILE, MASTER_KEY_FILE};

/// A path whose permissions are looser than they should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loose {
    /// The file or directory.
    pub path: PathBuf,
    /// Its mode (permission bits).
    pub mode: u32,
    /// The mode it should have.
    pub wanted: u32,
}

impl std::fmt::Display for Loose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has mode {:04o}; it should be {:04o}",
            self.path.display(),
            self.mode,
            self.wanted
        )
    }
}

/// The secret files Callhome keeps under `data_dir`, and the SQLite files of `database_url`
/// (when it names one).
pub fn secret_files(data_dir: &Path, database_url: &str) -> Vec<PathBuf> {
    let ca = data_dir.join(CA_DIR);
    let mut files = vec![
        data_dir.join(JWT_KEY_FILE),
        data_dir.join(MASTER_KEY_FILE),
        data_dir.join(ADMIN_PASSWORD_FILE),
        ca.join(callhome_ca::CA_KEY_FILE),
        ca.join(callhome_ca::SERVER_KEY_FILE),
    ];
    if let Some(db) = sqlite_file(database_url) {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            files.push(name.into());
        }
    }
    files
}

/// The file a `sqlite://PATH[?...]` URL names (`None` for other URLs and in-memory ones).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Every existing path among the data directory (wanted 0700) and [`secret_files`] (wanted
/// 0600) that group or others may access.
pub fn find_loose(data_dir: &Path, database_url: &str) -> std::io::Result<Vec<Loose>> {
    let mut out = Vec::new();
    let mut check = |path: &Path, wanted: u32| -> std::io::Result<()> {
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    out.push(Loose {
                        path: path.to_path_buf(),
                        mode,
                        wanted,
                    });
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    };
    check(data_dir, 0o700)?;
    for f in secret_files(data_dir, database_url) {
        check(&f, 0o600)?;
    }
    Ok(out)
}

/// Checks the permissions at start: with `strict`, an error naming every loose path; else a
/// warning for each, and the files tightened to 0600 (the directory is left as it is).
/// Returns what was found.
pub fn enforce(data_dir: &Path, database_url: &str, strict: bool) -> anyhow::Result<Vec<Loose>> {
    let loose = find_loose(data_dir, database_url)?;
    if loose.is_empty() {
        return Ok(loose);
    }
    if strict {
        let list: Vec<String> = loose.iter().map(ToString::to_string).collect();
        bail!(
            "refusing to start (security.strict_permissions = true): {}",
            list.join("; ")
        );
    }
    for l in &loose {
        if l.wanted == 0o600 {
            std::fs::set_permissions(&l.path, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(path = %l.path.display(), mode = %format!("{:04o}", l.mode),
                "secret file was readable by group or others; tightened to 0600 (set security.strict_permissions = true to refuse to start instead)");
        } else {
            tracing::warn!(path = %l.path.display(), mode = %format!("{:04o}", l.mode),
                "data directory is accessible by group or others; chmod 700 it (security.strict_permissions = true refuses to start)");
        }
    }
    Ok(loose)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_files_are_found_tightened_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        let url = format!("sqlite://{}?mode=rwc", data.join("callhome.db").display());
        assert_eq!(find_loose(&data, &url).unwrap(), vec![]);

        let jwt = data.join(JWT_KEY_FILE);
        let db = data.join("callhome.db");
        for f in [&jwt, &db] {
            std::fs::write(f, "x").unwrap();
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let err = enforce(&data, &url, true).unwrap_err().to_string();
        assert!(
            err.contains("jwt.key has mode 0644") && err.contains("callhome.db has mode 0644"),
            "{err}"
        );
        assert_eq!(
            std::fs::metadata(&jwt).unwrap().permissions().mode() & 0o777,
            0o644,
            "strict: nothing changed"
        );
        let found = enforce(&data, &url, false).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        for f in [&jwt, &db] {
            assert_eq!(
                std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = enforce(&data, &url, true).unwrap_err().to_string();
        assert!(err.contains("has mode 0755; it should be 0700"), "{err}");
        assert_eq!(sqlite_file("postgres://h/db"), None);
        assert_eq!(sqlite_file("sqlite::memory:"), None);
    }
}
